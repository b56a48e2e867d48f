"""The local executor: every unit runs, failures are retried then recorded, a dead worker process fails
only its unit, and model workers (``model_actor``/``actor_setup``) set up once per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geofm import ray_executor
from geofm.config import PipelineConfig
from geofm.executors import map_units, run_unit

STEP = "test-step"  # not a pipeline step: no completion markers


def _cfg(tmp_path: Path, **kw: object) -> PipelineConfig:
    return PipelineConfig(output_root=str(tmp_path / "out"), **kw)


def _square(cfg: PipelineConfig, unit: str) -> dict[str, object]:
    if unit == "bad":
        raise ValueError(f"unit {unit} is broken on purpose")
    if unit == "old":
        return {"skipped": True}
    Path(cfg.output_root).mkdir(parents=True, exist_ok=True)
    Path(cfg.output_root, f"{unit}.txt").write_text(str(int(unit) ** 2))
    return {"pid": os.getpid()}


def _flaky(cfg: PipelineConfig, unit: str) -> dict[str, int]:
    """Fails on its first attempt, succeeds on the second (attempts counted in a file)."""
    counter = Path(cfg.output_root, f"{unit}.attempts")
    counter.parent.mkdir(parents=True, exist_ok=True)
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n < 2:
        raise OSError("transient read error")
    return {"n": n}


def _die(cfg: PipelineConfig, unit: str) -> None:
    if unit == "die":
        os._exit(3)  # the worker process vanishes without raising


_MODEL: dict[str, int] = {}


def _load_model(cfg: PipelineConfig) -> None:
    _MODEL["pid"] = os.getpid()
    Path(cfg.output_root).mkdir(parents=True, exist_ok=True)
    with Path(cfg.output_root, f"load-{os.getpid()}").open("a") as f:
        f.write("loaded\n")


def _use_model(cfg: PipelineConfig, unit: str) -> dict[str, int]:
    if "pid" not in _MODEL:
        raise RuntimeError("model not loaded in this worker")
    return {"pid": _MODEL["pid"]}


@pytest.mark.parametrize("workers", [1, 2])
def test_all_units_run_and_failure_is_recorded(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(tmp_path, retries=1)
    report = map_units(_square, cfg, ["2", "bad", "3", "old", "4"], STEP, workers=workers, quiet=True)
    assert [r.unit for r in report.results] == ["2", "bad", "3", "old", "4"]  # input order kept
    assert [r.status for r in report.results] == ["done", "failed", "done", "skipped", "done"]
    bad = report.results[1]
    assert bad.error == "ValueError: unit bad is broken on purpose" and bad.attempts == 2
    assert [(tmp_path / "out" / f"{u}.txt").read_text() for u in ("2", "3", "4")] == ["4", "9", "16"]
    assert not report.ok and report.count("done") == 3


def test_process_pool_spreads_units(tmp_path: Path) -> None:
    report = map_units(_square, _cfg(tmp_path), [str(i) for i in range(6)], STEP, workers=2, quiet=True)
    pids = {r.info["pid"] for r in report.results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_retry_recovers_transient_failure(tmp_path: Path) -> None:
    report = map_units(_flaky, _cfg(tmp_path, retries=1), ["a"], STEP, workers=1, quiet=True)
    assert report.results[0].status == "done" and report.results[0].attempts == 2


def test_no_retries_means_one_attempt(tmp_path: Path) -> None:
    result = run_unit(_flaky, _cfg(tmp_path, retries=0), "a", retries=0)
    assert result.status == "failed" and result.attempts == 1 and "transient read error" in result.error


def test_dead_worker_is_recorded_not_raised(tmp_path: Path) -> None:
    report = map_units(_die, _cfg(tmp_path), ["die", "die"], STEP, workers=2, quiet=True)
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert all(r.error.startswith("worker crashed") for r in report.results)


def test_model_actor_runs_inline_and_sets_up_once(tmp_path: Path) -> None:
    _MODEL.clear()
    cfg = _cfg(tmp_path)
    report = map_units(_use_model, cfg, ["a", "b", "c"], STEP, quiet=True, model_actor=True,
                       actor_setup=_load_model)
    assert report.ok
    assert {r.info["pid"] for r in report.results} == {os.getpid()}  # one model, in this process
    assert [p.name for p in (tmp_path / "out").glob("load-*")] == [f"load-{os.getpid()}"]


def test_actor_setup_once_per_pool_worker(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    report = map_units(_use_model, cfg, [str(i) for i in range(6)], STEP, workers=2, quiet=True,
                       actor_setup=_load_model)
    assert report.ok
    loads = {p.name: p.read_text().count("loaded") for p in (tmp_path / "out").glob("load-*")}
    # every worker that ran units had loaded the model, and no worker loaded it twice; a worker may load
    # and then get no unit (the other took them all), so there are one or two loads
    assert {f"load-{r.info['pid']}" for r in report.results} <= set(loads)
    assert 1 <= len(loads) <= 2 and set(loads.values()) == {1}


def test_empty_unit_list(tmp_path: Path) -> None:
    report = map_units(_square, _cfg(tmp_path, executor="ray"), [], STEP, quiet=True)
    assert report.results == [] and report.ok


def test_forwarded_env_carries_s3_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "3")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    env = ray_executor.forwarded_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert env["GDAL_HTTP_MAX_RETRY"] == "3" and "UNRELATED_VAR" not in env and "PATH" not in env


def test_unreachable_ray_address_fails_fast_naming_it() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"'127.0.0.1:{port}' \\(ray_address\\)"):
        ray_executor.check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ConnectionError, match="ray://127.0.0.1"):
        ray_executor.check_reachable(f"ray://127.0.0.1:{port}", timeout_s=2)
    ray_executor.check_reachable("auto")  # left to Ray


def _note_device(cfg: PipelineConfig) -> None:
    Path(cfg.output_root).mkdir(parents=True, exist_ok=True)
    Path(cfg.output_root, f"device-{os.getpid()}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))


def _unit_device(cfg: PipelineConfig, unit: str) -> dict[str, str | int]:
    return {"pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES", "-")}


def test_one_model_worker_per_gpu_each_pinned_to_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two GPUs (the count is faked: this machine has none; the worker processes are real): two model
    workers, each sees only its own device when its model loads and when it runs units."""
    from geofm import executors

    monkeypatch.setattr(executors, "local_model_devices", lambda cfg: ["0", "1"])
    cfg = _cfg(tmp_path)
    report = map_units(_unit_device, cfg, [str(i) for i in range(6)], STEP, quiet=True, model_actor=True,
                       actor_setup=_note_device)
    assert report.ok
    seen = {p.name.removeprefix("device-"): p.read_text() for p in (tmp_path / "out").glob("device-*")}
    assert sorted(seen.values()) == ["0", "1"]  # two workers, one GPU each
    for r in report.results:
        assert r.info["device"] == seen[str(r.info["pid"])]  # units run on their worker's GPU


def test_no_gpus_means_one_inline_model_worker(tmp_path: Path) -> None:
    from geofm.executors import local_model_devices

    cfg = _cfg(tmp_path)
    assert local_model_devices(cfg) == []  # this machine has no GPU
    assert local_model_devices(cfg.model_copy(update={"device": "cpu"})) == []
    report = map_units(_unit_device, cfg, ["a", "b"], STEP, quiet=True, model_actor=True)
    assert {r.info["pid"] for r in report.results} == {os.getpid()}
