"""The whole pipeline as one ``geofm run``: killed with SIGKILL in the middle of step 2, rerun to completion,
its outputs equal an uninterrupted run's, and the units finished before the kill are not redone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geofm.cli import app
from geofm.layout import Layout
from geofm.synth import SynthResult
from helpers import assert_same, counts, geofm_exe, run_args, run_records, scene_subset, stage_scenes

pytestmark = pytest.mark.slow

AOI = "e2e"
RUN_TIMEOUT_S = 300
NPY_DELAY_S = 0.15  # test-only slow-down of step 2 (the driver below), so the kill lands inside it

# `geofm run` with step 2 slowed down: every .npy it writes first waits NPY_DELAY_S. The slow-down lives
# here, in the test's driver, not in production code; the CLI and the pipeline are the real ones.
SLOW_DRIVER = textwrap.dedent(f'''
    import sys, time
    from geofm.steps import embed
    _npy_bytes = embed.npy_bytes
    def slow_npy_bytes(array):
        time.sleep({NPY_DELAY_S})
        return _npy_bytes(array)
    embed.npy_bytes = slow_npy_bytes
    from geofm.cli import app
    app(sys.argv[1:], prog_name="geofm")
''')


# ---- the test ---------------------------------------------------------------------------------------
def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


def _markers(lay: Layout, step: str) -> list[Path]:
    folder = Path(lay.markers_dir(step))
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def test_sigkill_in_step_2_then_rerun_equals_an_uninterrupted_run(synth_scenes: SynthResult,
                                                                   tmp_path: Path) -> None:
    scenes = scene_subset(synth_scenes)
    killed = stage_scenes(str(tmp_path / "killed"), AOI, synth_scenes, scenes)
    whole = stage_scenes(str(tmp_path / "whole"), AOI, synth_scenes, scenes)
    driver = tmp_path / "slow_geofm.py"
    driver.write_text(SLOW_DRIVER)

    # 1. start the run, kill it (the whole process group) as soon as the first scene of step 2 is done
    proc = subprocess.Popen([sys.executable, str(driver), *run_args(killed.root, AOI, synth_scenes.aoi_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not _markers(killed, "embed"):
            assert proc.poll() is None, f"run ended before step 2 could be interrupted: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "step 2 never finished a scene"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    done_before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in _markers(killed, "embed")}
    assert 1 <= len(done_before) < len(scenes), "the kill must land inside step 2 with scenes left"
    assert len(_markers(killed, "preprocess")) == len(scenes)
    assert not _markers(killed, "analyze") and run_records(killed) == []
    finished = [n.removesuffix(".json") for n in done_before]
    emb_dir = Path(killed.embeddings_dir("spectral"))
    npy_before = {k: v for k, v in _mtimes(emb_dir, "*.npy").items() if any(s in k for s in finished)}
    assert npy_before
    chips_before = _mtimes(Path(killed.output_dir) / "raw-chips", "*.nc")

    # 2. rerun with the plain CLI: it resumes, and skips what was finished
    rerun = subprocess.run([geofm_exe(), *run_args(killed.root, AOI, synth_scenes.aoi_path)],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (record,) = run_records(killed)
    steps = counts(record)
    assert steps["preprocess"] == {"done": 0, "skipped": len(scenes), "failed": 0}
    assert steps["embed"] == {"done": len(scenes) - len(finished), "skipped": len(finished), "failed": 0}
    assert steps["analyze"]["failed"] == 0 and steps["analyze"]["skipped"] == 0
    # finished units were not redone: their markers and files are untouched
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in _markers(killed, "embed")
            if p.name in done_before} == done_before
    assert {k: v for k, v in _mtimes(emb_dir, "*.npy").items() if k in npy_before} == npy_before
    assert _mtimes(Path(killed.output_dir) / "raw-chips", "*.nc") == chips_before

    # 3. an uninterrupted run elsewhere gives the same outputs
    straight = subprocess.run([geofm_exe(), *run_args(whole.root, AOI, synth_scenes.aoi_path)],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert straight.returncode == 0, straight.stderr[-3000:]
    files = assert_same(killed, whole)
    kinds = {Path(f).suffix for f in files}
    assert {".npy", ".parquet", ".nc", ".png", ".json", ".geojson", ".txt", ".npz"} <= kinds
    n_npy = sum(f.endswith(".npy") for f in files)
    assert n_npy == 2 * sum(len(pd.read_parquet(killed.meta(s)).query("embedding_status == 'ok'"))
                            for s in scenes)


def test_changed_chip_size_redoes_every_step_and_equals_a_clean_run(synth_scenes: SynthResult,
                                                                    tmp_path: Path) -> None:
    """``chip_size`` shapes step 1 and, through what step 1 writes, every later step: a rerun with another
    size redoes them all, leaves no file of the old size behind and ends equal to a clean run."""
    scenes = scene_subset(synth_scenes, (0, 5))
    changed = stage_scenes(str(tmp_path / "changed"), AOI, synth_scenes, scenes)
    clean = stage_scenes(str(tmp_path / "clean"), AOI, synth_scenes, scenes)
    runner = CliRunner()
    first = runner.invoke(app, run_args(changed.root, AOI, synth_scenes.aoi_path))
    assert first.exit_code == 0, first.output
    old_chips = sorted(Path(changed.output_dir).rglob("*_64_chipped_*.nc"))
    assert old_chips

    bigger = [*run_args(changed.root, AOI, synth_scenes.aoi_path), "--set", "chip_size=128"]
    again = runner.invoke(app, bigger)
    assert again.exit_code == 0, again.output
    steps = counts(run_records(changed)[-1])
    for step in ("preprocess", "embed", "analyze", "consolidate"):
        assert steps[step]["skipped"] == 0 and steps[step]["done"] > 0 and steps[step]["failed"] == 0, steps
    assert not [p for p in old_chips if p.exists()]
    assert not list(Path(changed.output_dir).rglob("*_64_*"))  # no chip, thumbnail or embedding of size 64

    straight = runner.invoke(app, [*run_args(clean.root, AOI, synth_scenes.aoi_path), "--set", "chip_size=128"])
    assert straight.exit_code == 0, straight.output
    assert_same(changed, clean)
