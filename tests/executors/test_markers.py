"""The one resume mechanism (geofm.markers), through ``run_step`` on two small steps defined here: a unit is
skipped only when its fingerprint (step, parameters, identity of its inputs) matches its marker and its
recorded outputs exist; a parameter or input change redoes the unit and everything downstream of it, and
the outputs the redone unit no longer writes are removed. Failures are recorded and tried again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from geofm import markers, storage
from geofm.config import PipelineConfig
from geofm.digest import digest_bytes
from geofm.errors import InputError
from geofm.pipeline import run_step
from geofm.steps.base import Step, UnitOutput


def _log(cfg: PipelineConfig, line: str) -> None:
    """One line per real execution of a unit, so the tests can count them."""
    with Path(cfg.output_root, "calls.log").open("a") as f:
        f.write(line + "\n")


def _calls(cfg: PipelineConfig) -> list[str]:
    log = Path(cfg.output_root, "calls.log")
    return log.read_text().splitlines() if log.exists() else []


def _inputs_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.output_root, "inputs")


class Cut(Step):
    """Stands for step 1: one unit per input file; its output's name depends on ``chip_size``. Unit
    ``bad`` always fails; unit ``wrong`` fails with an input error."""

    name: ClassVar[str] = "toy-cut"
    params: ClassVar[tuple[str, ...]] = ("chip_size",)

    def units(self, cfg: PipelineConfig) -> list[str]:
        return sorted(p.stem for p in _inputs_dir(cfg).glob("*.txt"))

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return digest_bytes((_inputs_dir(cfg) / f"{unit}.txt").read_bytes())

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        if unit == "bad":
            raise RuntimeError("planted failure")
        if unit == "wrong":
            raise InputError("unit wrong: planted input error")
        _log(cfg, f"cut {unit} {cfg.chip_size} force={cfg.force}")
        url = f"{cfg.layout.output_dir}/cut/{unit}_{cfg.chip_size}.txt"
        text = (_inputs_dir(cfg) / f"{unit}.txt").read_text()
        storage.write_text(url, text * (cfg.chip_size // 64))
        return UnitOutput([url], {"chars": len(text)})


class Describe(Step):
    """Stands for step 2: reads what :class:`Cut` wrote for the same unit; ``model`` shapes its output."""

    name: ClassVar[str] = "toy-describe"
    params: ClassVar[tuple[str, ...]] = ("model",)

    def units(self, cfg: PipelineConfig) -> list[str]:
        return Cut().units(cfg)

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return {"cut": markers.upstream(cfg.layout, Cut.name, unit)}

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        _log(cfg, f"describe {unit} {cfg.model}")
        (cut,) = markers.read(cfg.layout, Cut.name, unit).outputs
        url = f"{cfg.layout.output_dir}/describe/{unit}.txt"
        storage.write_text(url, f"{cfg.model}: {storage.read_text(cut)}")
        return UnitOutput([url])


def _setup(tmp_path: Path, units: dict[str, str], **kw: Any) -> PipelineConfig:
    cfg = PipelineConfig(output_root=str(tmp_path), aoi_name="t", workers=1, chip_size=64, model="m1", **kw)
    _inputs_dir(cfg).mkdir(parents=True, exist_ok=True)
    for unit, text in units.items():
        (_inputs_dir(cfg) / f"{unit}.txt").write_text(text)
    return cfg


def _statuses(cfg: PipelineConfig, step: Step) -> dict[str, str]:
    return {r.unit: r.status for r in run_step(step, cfg).results}


def test_rerun_skips_complete_units_and_redoes_failed(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A", "b": "B", "bad": "X", "wrong": "Y"}, retries=1)
    first = run_step(Cut(), cfg)
    assert [(r.unit, r.status) for r in first.results] == [
        ("a", "done"), ("b", "done"), ("bad", "failed"), ("wrong", "failed")]
    bad, wrong = first.results[2], first.results[3]
    assert bad.attempts == 2 and bad.error == "RuntimeError: planted failure"  # retried once, then recorded
    assert wrong.attempts == 1 and wrong.error_kind == "input"  # the same input fails the same way
    assert len(_calls(cfg)) == 2
    assert markers.read(cfg.layout, Cut.name, "bad") is None  # no marker: tried again next time

    assert _statuses(cfg, Cut()) == {"a": "skipped", "b": "skipped", "bad": "failed", "wrong": "failed"}
    assert len(_calls(cfg)) == 2  # nothing redone


def test_parameter_change_redoes_the_step_and_downstream_and_removes_stale_outputs(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A", "b": "B"})
    assert _statuses(cfg, Cut()) == _statuses(cfg, Describe()) == {"a": "done", "b": "done"}
    old = Path(cfg.layout.output_dir, "cut", "a_64.txt")
    assert old.read_text() == "A"

    bigger = cfg.model_copy(update={"chip_size": 128})  # shapes step 1 and, through it, step 2
    assert _statuses(bigger, Cut()) == {"a": "done", "b": "done"}
    assert _calls(cfg)[-1] == "cut b 128 force=False"
    assert not old.exists() and Path(cfg.layout.output_dir, "cut", "a_128.txt").read_text() == "AA"
    assert _statuses(bigger, Describe()) == {"a": "done", "b": "done"}
    assert Path(cfg.layout.output_dir, "describe", "a.txt").read_text() == "m1: AA"

    # a step-2-only parameter does not touch step 1
    other = bigger.model_copy(update={"model": "m2"})
    assert _statuses(other, Cut()) == {"a": "skipped", "b": "skipped"}
    assert _statuses(other, Describe()) == {"a": "done", "b": "done"}
    assert Path(cfg.layout.output_dir, "describe", "b.txt").read_text() == "m2: BB"


def test_changed_input_redoes_its_unit_and_downstream_only(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A", "b": "B"})
    run_step(Cut(), cfg)
    run_step(Describe(), cfg)
    (_inputs_dir(cfg) / "a.txt").write_text("mended")
    assert _statuses(cfg, Cut()) == {"a": "done", "b": "skipped"}
    assert _statuses(cfg, Describe()) == {"a": "done", "b": "skipped"}
    assert Path(cfg.layout.output_dir, "describe", "a.txt").read_text() == "m1: mended"


def test_removed_output_or_torn_marker_redoes_the_unit(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A", "b": "B"})
    run_step(Cut(), cfg)
    run_step(Describe(), cfg)
    Path(cfg.layout.output_dir, "cut", "b_64.txt").unlink()  # an output lost
    Path(cfg.layout.marker(Cut.name, "a")).write_text('{"fingerprint": ')  # a marker cut short by a kill
    assert _statuses(cfg, Cut()) == {"a": "done", "b": "done"}
    assert Path(cfg.layout.output_dir, "cut", "b_64.txt").read_text() == "B"
    # what step 1 wrote is what it wrote before (same fingerprint): step 2 has nothing to redo
    assert _statuses(cfg, Describe()) == {"a": "skipped", "b": "skipped"}


def test_unit_whose_upstream_never_finished_fails_naming_it(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A", "bad": "X"}, retries=0)
    run_step(Cut(), cfg)
    report = run_step(Describe(), cfg)
    assert {r.unit: r.status for r in report.results} == {"a": "done", "bad": "failed"}
    (failed,) = report.failed
    assert failed.error_kind == "not-found" and "step 'toy-cut' has not finished it" in failed.error


def test_force_redoes_everything(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, {"a": "A"})
    run_step(Cut(), cfg)
    forced = run_step(Cut(), cfg.model_copy(update={"force": True}))
    assert forced.results[0].status == "done" and len(_calls(cfg)) == 2
    assert _calls(cfg)[-1] == "cut a 64 force=True"


@pytest.mark.parametrize("workers", [1, 2])
def test_process_pool_runs_units_and_isolates_failures(tmp_path: Path, workers: int) -> None:
    cfg = _setup(tmp_path, {"a": "A", "bad": "X", "c": "C"}, retries=0)
    cfg = cfg.model_copy(update={"workers": workers})
    report = run_step(Cut(), cfg)
    assert [r.unit for r in report.results] == ["a", "bad", "c"]  # unit order, whatever the completion order
    assert report.count("done") == 2 and report.count("failed") == 1 and not report.ok
    assert sorted(markers.identities(cfg.layout, Cut.name)) == ["a", "c"]
