"""Resume semantics: complete units are skipped, parameter changes invalidate, failures are recorded."""

from pathlib import Path

from geofm.config import PipelineConfig
from geofm.executors import map_units
from geofm.markers import digest, fingerprint


def _count_unit(cfg: PipelineConfig, unit: str) -> dict:
    """Appends to a log file per call, so the test can count real executions; 'bad' always fails."""
    if unit == "bad":
        raise RuntimeError("planted failure")
    log = Path(cfg.output_root) / "calls.log"
    with log.open("a") as f:
        f.write(f"{unit} {cfg.chip_size} force={cfg.force}\n")
    return {"outputs": 1}


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_rerun_skips_complete_units_and_redoes_failed(tmp_path):
    cfg = PipelineConfig(output_root=str(tmp_path), aoi_name="t", workers=1, retries=1)
    first = map_units(_count_unit, cfg, ["a", "b", "bad"], "preprocess", quiet=True)
    assert [r.status for r in first.results] == ["done", "done", "failed"]
    assert first.results[2].attempts == 2 and "planted failure" in first.results[2].error
    assert len(_calls(tmp_path)) == 2

    second = map_units(_count_unit, cfg, ["a", "b", "bad"], "preprocess", quiet=True)
    assert [r.status for r in second.results] == ["skipped", "skipped", "failed"]
    assert len(_calls(tmp_path)) == 2  # nothing redone


def test_parameter_change_invalidates_step_and_downstream(tmp_path):
    cfg = PipelineConfig(output_root=str(tmp_path), aoi_name="t", workers=1)
    map_units(_count_unit, cfg, ["a"], "preprocess", quiet=True)
    changed = cfg.model_copy(update={"chip_size": 128})
    again = map_units(_count_unit, changed, ["a"], "preprocess", quiet=True)
    assert again.results[0].status == "done"
    assert _calls(tmp_path)[-1] == "a 128 force=True"
    # chip_size shapes every later step; a step-3-only parameter does not touch step 1
    assert digest(fingerprint(cfg, "embed")) != digest(fingerprint(changed, "embed"))
    other = cfg.model_copy(update={"n_components": 5})
    assert digest(fingerprint(cfg, "preprocess")) == digest(fingerprint(other, "preprocess"))
    assert digest(fingerprint(cfg, "analyze")) != digest(fingerprint(other, "analyze"))


def test_force_redoes_everything(tmp_path):
    cfg = PipelineConfig(output_root=str(tmp_path), aoi_name="t", workers=1)
    map_units(_count_unit, cfg, ["a"], "embed", quiet=True)
    forced = map_units(_count_unit, cfg.model_copy(update={"force": True}), ["a"], "embed", quiet=True)
    assert forced.results[0].status == "done" and len(_calls(tmp_path)) == 2


def test_process_pool_runs_units_and_isolates_failures(tmp_path):
    cfg = PipelineConfig(output_root=str(tmp_path), aoi_name="t", workers=2, retries=0)
    report = map_units(_count_unit, cfg, ["a", "bad", "c"], "preprocess", quiet=True)
    assert [r.unit for r in report.results] == ["a", "bad", "c"]
    assert report.count("done") == 2 and report.count("failed") == 1 and not report.ok
