"""Resume converges, through ``geofm run`` as users run it: a scene that failed and was mended reaches every
step; after random failures and kills over several reruns, one more run equals a clean run; a killed run
leaves no worker behind finishing units."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geofm.layout import Layout
from geofm.markers import FAULTS_ENV
from geofm.synth import SynthResult, paths, synthesize
from helpers import (
    assert_same,
    counts,
    geofm_exe,
    lance_rows,
    run_args,
    run_records,
    scene_subset,
    stage_scenes,
)

pytestmark = pytest.mark.slow

AOI = "resume"
RUN_TIMEOUT_S = 300


def _run(lay: Layout, aoi: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([geofm_exe(), *run_args(lay.root, AOI, aoi, *extra)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env)


def test_a_mended_scene_reaches_every_step(tmp_path: Path) -> None:
    """The issue's scenario: one scene's band COG is unreadable, the run fails that scene alone; the COG
    is mended and the run repeated: the outputs (files, rows, LanceDB) equal a clean run's."""
    synth = synthesize(str(tmp_path / "archive"), aoi_name=AOI, grid="33TWL", extent_m=2560.0, seed=0,
                       dates=[pd.Timestamp(d).date() for d in ("2023-03-01", "2023-05-01", "2023-07-01",
                                                                "2023-09-01")], into_layout=False)
    scenes = synth.scene_ids
    mended = stage_scenes(str(tmp_path / "mended"), AOI, synth, scenes)
    clean = stage_scenes(str(tmp_path / "clean"), AOI, synth, scenes)
    cog = Path(paths.asset(synth.root, scenes[-1], "B04.tif"))
    good = cog.read_bytes()
    cog.write_bytes(np.random.default_rng(0).bytes(len(good)))

    broken = _run(mended, synth.aoi_path)
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert f"FAILED {scenes[-1]}" in broken.stderr and "B04.tif" in broken.stderr
    first = counts(run_records(mended)[0])
    assert first["preprocess"] == {"done": 3, "skipped": 0, "failed": 1}

    cog.write_bytes(good)
    again = _run(mended, synth.aoi_path)
    assert again.returncode == 0, again.stderr[-2000:]
    second = counts(run_records(mended)[1])
    assert second["preprocess"] == {"done": 1, "skipped": 3, "failed": 0}
    assert second["embed"] == {"done": 1, "skipped": 3, "failed": 0}
    assert second["analyze"]["done"] > 1 and second["consolidate"]["skipped"] == 0  # downstream redone

    straight = _run(clean, synth.aoi_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert_same(mended, clean)
    rows = lance_rows(mended)
    assert pd.to_datetime(rows["date"]).dt.strftime("%Y-%m-%d").eq("2023-09-01").any()  # the mended date
    grid = synth.grid
    consolidated = pd.read_parquet(mended.consolidated_output(grid))
    assert len(consolidated) == len(pd.read_parquet(clean.consolidated_output(grid)))
    assert pd.to_datetime(consolidated["date"]).dt.strftime("%Y-%m-%d").eq("2023-09-01").any()


def test_random_failures_and_kills_then_one_run_equals_a_clean_run(synth_scenes: SynthResult,
                                                                   tmp_path: Path) -> None:
    """Several runs with units failing (before or after their work) and processes killed at random
    (``GEOFM_FAULTS``), some runs also killed from outside mid-way; then one plain run."""
    scenes = scene_subset(synth_scenes)
    chaos = stage_scenes(str(tmp_path / "chaos"), AOI, synth_scenes, scenes)
    clean = stage_scenes(str(tmp_path / "clean"), AOI, synth_scenes, scenes)
    rng = random.Random(11)
    extra = ("--set", "workers=2", "--set", "retries=0")
    codes = []
    for i in range(5):
        env = {**os.environ, FAULTS_ENV: f"fail=0.25,kill=0.04,seed={i}"}
        proc = subprocess.Popen([geofm_exe(), *run_args(chaos.root, AOI, synth_scenes.aoi_path, *extra)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        if i % 2:  # killed from outside at a random moment as well
            try:
                proc.wait(timeout=rng.uniform(1.0, 6.0))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        codes.append(proc.wait(timeout=RUN_TIMEOUT_S))
    records = run_records(chaos)
    failed = sum(c["failed"] for r in records for c in counts(r).values())
    assert failed > 0 and any(c != 0 for c in codes), (codes, failed)  # the chaos did hit

    final = _run(chaos, synth_scenes.aoi_path, *extra)
    assert final.returncode == 0, final.stderr[-3000:]
    straight = _run(clean, synth_scenes.aoi_path, *extra)
    assert straight.returncode == 0, straight.stderr[-3000:]
    files = assert_same(chaos, clean)
    assert any(f.endswith(".npy") for f in files) and any("consolidated_output" in f for f in files)


# `geofm run` whose step-1 units each take a while: the slow-down lives in this driver, not in geofm.
SLOW_DRIVER = textwrap.dedent('''
    import sys, time
    from geofm.steps import preprocess
    _process_unit = preprocess.process_unit
    def slow_process_unit(cfg, scene_id):
        time.sleep(3.0)
        return _process_unit(cfg, scene_id)
    preprocess.process_unit = slow_process_unit
    from geofm.cli import app
    app(sys.argv[1:], prog_name="geofm")
''')


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_run_leaves_no_worker_finishing_units(synth_scenes: SynthResult, tmp_path: Path) -> None:
    lay = stage_scenes(str(tmp_path / "out"), AOI, synth_scenes, scene_subset(synth_scenes))
    driver = tmp_path / "slow_geofm.py"
    driver.write_text(SLOW_DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), *run_args(lay.root, AOI, synth_scenes.aoi_path,
                                                                     "--set", "workers=2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no pool workers started"
        workers = _children(proc.pid)
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as `kill -9 <pid of geofm run>` does
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "pool workers outlived the run"
    time.sleep(4.0)  # longer than a unit: an orphan would have finished one by now
    assert not list(Path(lay.markers_dir("preprocess")).glob("*.json"))
