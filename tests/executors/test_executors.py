"""The local executor (``LocalExecutor`` running ``UnitTask``\\ s, through ``run_step``): every unit runs,
failures are retried then recorded, a worker process that dies fails only its own unit, model workers set
up once per process (one per GPU, each pinned to its own); and the Ray executor's fail-fast checks."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest

from geofm.config import PipelineConfig
from geofm.errors import RayError
from geofm.executors import LocalExecutor, UnitTask
from geofm.executors import local as local_executor
from geofm.executors.local import local_model_devices
from geofm.executors.ray import check_reachable, forwarded_env
from geofm.pipeline import run_step
from geofm.steps.base import Step, UnitOutput


def _cfg(tmp_path: Path, **kw: Any) -> PipelineConfig:
    return PipelineConfig(output_root=str(tmp_path / "out"), **kw)


def _out(cfg: PipelineConfig, name: str) -> Path:
    folder = Path(cfg.output_root, "files")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class ToyStep(Step):
    """A step over a fixed list of units (a test step: the pipeline's steps find theirs on disk)."""

    name: ClassVar[str] = "toy"
    params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, units: list[str]) -> None:
        self._units = list(units)

    def units(self, cfg: PipelineConfig) -> list[str]:
        return self._units

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return unit

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        url = _out(cfg, f"{unit}.txt")
        url.write_text(self.work(cfg, unit))
        return UnitOutput([str(url)], {"pid": os.getpid(),
                                       "device": os.environ.get("CUDA_VISIBLE_DEVICES", "-")})

    def work(self, cfg: PipelineConfig, unit: str) -> str:
        return unit


class Square(ToyStep):
    """Writes the square of its unit; ``bad`` fails, ``die`` kills its worker process."""

    name: ClassVar[str] = "toy-square"

    def work(self, cfg: PipelineConfig, unit: str) -> str:
        if unit == "bad":
            raise ValueError(f"unit {unit} is broken on purpose")
        if unit == "die":
            os._exit(3)  # the worker process vanishes without raising
        return unit if unit == "old" else str(int(unit) ** 2)


class Flaky(ToyStep):
    """Fails on its first attempt, succeeds on the second (attempts counted in a file)."""

    name: ClassVar[str] = "toy-flaky"

    def work(self, cfg: PipelineConfig, unit: str) -> str:
        counter = _out(cfg, f"{unit}.attempts")
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        if n < 2:
            raise OSError("transient read error")
        return str(n)


_MODEL: dict[str, int] = {}


class WithModel(ToyStep):
    """Needs its "model", loaded once per worker process by ``setup_worker`` (loads counted by files)."""

    name: ClassVar[str] = "toy-model"

    def setup_worker(self, cfg: PipelineConfig) -> None:
        _MODEL["pid"] = os.getpid()
        with _out(cfg, f"load-{os.getpid()}").open("a") as f:
            f.write(os.environ.get("CUDA_VISIBLE_DEVICES", "-") + "\n")

    def work(self, cfg: PipelineConfig, unit: str) -> str:
        if _MODEL.get("pid") != os.getpid():
            raise RuntimeError("model not loaded in this worker")
        return unit


class ModelWorker(WithModel):
    """The same, run as a model step (long-lived workers, one per device)."""

    name: ClassVar[str] = "toy-model-worker"
    model_worker: ClassVar[bool] = True


def _loads(cfg: PipelineConfig) -> dict[str, list[str]]:
    """pid -> the device it saw at each model load."""
    return {p.name.removeprefix("load-"): p.read_text().splitlines()
            for p in Path(cfg.output_root, "files").glob("load-*")}


@pytest.mark.parametrize("workers", [1, 2])
def test_all_units_run_and_failure_is_recorded(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(tmp_path, retries=1, workers=workers)
    assert run_step(Square(["old"]), cfg).count("done") == 1  # finished by an earlier run
    report = run_step(Square(["2", "bad", "3", "old", "4"]), cfg)
    assert [r.unit for r in report.results] == ["2", "bad", "3", "old", "4"]  # unit order kept
    assert [r.status for r in report.results] == ["done", "failed", "done", "skipped", "done"]
    bad = report.results[1]
    assert bad.error == "ValueError: unit bad is broken on purpose" and bad.attempts == 2
    assert [_out(cfg, f"{u}.txt").read_text() for u in ("2", "3", "4")] == ["4", "9", "16"]
    assert not report.ok and report.count("done") == 3


def test_process_pool_spreads_units(tmp_path: Path) -> None:
    report = run_step(Square([str(i) for i in range(6)]), _cfg(tmp_path, workers=2))
    pids = {r.info["pid"] for r in report.results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_retry_recovers_transient_failure(tmp_path: Path) -> None:
    report = run_step(Flaky(["a"]), _cfg(tmp_path, retries=1, workers=1))
    assert report.results[0].status == "done" and report.results[0].attempts == 2


def test_no_retries_means_one_attempt(tmp_path: Path) -> None:
    result = UnitTask(Flaky(["a"]), _cfg(tmp_path, retries=0))("a")
    assert result.status == "failed" and result.attempts == 1 and "transient read error" in result.error


def test_dead_worker_fails_only_its_own_unit(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, workers=2)
    report = run_step(Square(["1", "die", "2", "3", "4"]), cfg)
    by_unit = {r.unit: r for r in report.results}
    assert by_unit["die"].status == "failed" and by_unit["die"].error.startswith("worker crashed")
    assert by_unit["die"].error_kind == "crash"
    assert [by_unit[u].status for u in ("1", "2", "3", "4")] == ["done"] * 4  # the others finish
    assert [_out(cfg, f"{u}.txt").read_text() for u in ("1", "2", "3", "4")] == ["1", "4", "9", "16"]


def test_model_worker_runs_inline_and_sets_up_once(tmp_path: Path) -> None:
    _MODEL.clear()
    cfg = _cfg(tmp_path)
    report = run_step(ModelWorker(["a", "b", "c"]), cfg)
    assert report.ok, report.summary()
    assert {r.info["pid"] for r in report.results} == {os.getpid()}  # one model, in this process
    assert list(_loads(cfg)) == [str(os.getpid())]


def test_setup_once_per_pool_worker(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, workers=2)
    report = run_step(WithModel([str(i) for i in range(6)]), cfg)
    assert report.ok, report.summary()
    loads = _loads(cfg)
    # every worker that ran units had loaded the model, and no worker loaded it twice; a worker may load
    # and then get no unit (the other took them all), so there are one or two loads
    assert {str(r.info["pid"]) for r in report.results} <= set(loads)
    assert 1 <= len(loads) <= 2 and all(len(v) == 1 for v in loads.values())


def test_empty_unit_list_starts_nothing(tmp_path: Path) -> None:
    report = run_step(Square([]), _cfg(tmp_path, executor="ray"))  # no Ray is started for no work
    assert report.results == [] and report.ok


def test_forwarded_env_carries_s3_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "3")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    env = forwarded_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert env["GDAL_HTTP_MAX_RETRY"] == "3" and "UNRELATED_VAR" not in env and "PATH" not in env


def test_unreachable_ray_address_fails_fast_naming_it() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RayError, match=f"'127.0.0.1:{port}' \\(ray_address\\)"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(RayError, match="ray://127.0.0.1"):
        check_reachable(f"ray://127.0.0.1:{port}", timeout_s=2)
    check_reachable("auto")  # left to Ray


def test_one_model_worker_per_gpu_each_pinned_to_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two GPUs (the count is faked: this machine has none; the worker processes are real): two model
    workers, each sees only its own device when its model loads and when it runs units."""
    monkeypatch.setattr(local_executor, "local_model_devices", lambda cfg: ["0", "1"])
    cfg = _cfg(tmp_path)
    report = run_step(ModelWorker([str(i) for i in range(6)]), cfg)
    assert report.ok, report.summary()
    seen = _loads(cfg)
    assert sorted(d for devices in seen.values() for d in devices) == ["0", "1"]  # two workers, one GPU each
    for r in report.results:
        assert [r.info["device"]] == seen[str(r.info["pid"])]  # units run on their worker's GPU


def test_no_gpus_means_one_inline_model_worker(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert local_model_devices(cfg) == []  # this machine has no GPU
    assert local_model_devices(cfg.model_copy(update={"device": "cpu"})) == []
    results: list[Any] = []
    LocalExecutor(cfg).map(UnitTask(ModelWorker(["a", "b"]), cfg), ["a", "b"], results.append)
    assert {r.info["pid"] for r in results} == {os.getpid()}
