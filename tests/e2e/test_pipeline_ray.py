"""``geofm run --executor ray`` on a real two-node Ray cluster (loopback, own network namespace): a scene
made unreadable on purpose fails alone, every other unit finishes, the summary and the run record name the
failure, and the outputs of the good scenes equal a local-executor run's."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fixtures.ray_cluster import RayTestCluster
from geofm import storage
from geofm.layout import Layout
from geofm.synth import SynthResult
from helpers import assert_same, counts, geofm_exe, run_args, run_records, scene_subset, stage_scenes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AOI = "raytest"
RUN_TIMEOUT_S = 420


def stage_with_bad_scene(root: str, synth: SynthResult, scenes: list[str], bad: str, garbage: Path) -> Layout:
    """Items of ``scenes`` in the input layout; ``bad``'s red band points at a file of garbage bytes."""
    lay = stage_scenes(root, AOI, synth, scenes)
    item = copy.deepcopy(synth.item(bad))
    item["assets"]["red"]["href"] = str(garbage)
    storage.write_json(lay.scene_metadata(bad), item)
    return lay


def test_ray_run_with_one_unreadable_scene(ray_cluster: RayTestCluster, synth_scenes: SynthResult,
                                           tmp_path: Path) -> None:
    scenes = scene_subset(synth_scenes)
    bad = scenes[1]
    good = [s for s in scenes if s != bad]
    garbage = tmp_path / "B04-garbage.tif"
    garbage.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(50_000))  # a TIFF header, then noise
    on_ray = stage_with_bad_scene(str(tmp_path / "ray"), synth_scenes, scenes, bad, garbage)
    local = stage_with_bad_scene(str(tmp_path / "local"), synth_scenes, scenes, bad, garbage)

    proc = ray_cluster.run(
        [geofm_exe(), *run_args(on_ray.root, AOI, synth_scenes.aoi_path, "--executor", "ray",
                                "--ray-address", ray_cluster.address)],
        timeout=RUN_TIMEOUT_S, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "FAILED" in output and bad in output  # the summary names the failed scene

    (record,) = run_records(on_ray)
    assert record["ok"] is False and record["config"]["executor"] == "ray"
    steps = counts(record)
    assert steps["preprocess"] == {"done": len(good), "skipped": 0, "failed": 1}
    assert steps["embed"] == {"done": len(good), "skipped": 0, "failed": 0}
    assert steps["analyze"]["failed"] == 0 and steps["analyze"]["done"] > 0
    assert steps["consolidate"]["failed"] == 0 and steps["consolidate"]["done"] > 0
    preprocess = next(r for r in record["reports"] if r["step"] == "preprocess")
    (failed,) = [r for r in preprocess["results"] if r["status"] == "failed"]
    # an unreadable COG is an input error: recorded at once, not retried (the same bytes fail the same way)
    assert failed["unit"] == bad and failed["attempts"] == 1 and failed["error_kind"] == "input"
    assert "B04-garbage.tif" in failed["error"] or "red" in failed["error"], failed["error"]
    embedded = next(r for r in record["reports"] if r["step"] == "embed")
    assert sorted(r["unit"] for r in embedded["results"]) == sorted(good)

    # the same inputs through the local executor: the same failure, the same outputs for the good scenes
    loc = subprocess.run([geofm_exe(), *run_args(local.root, AOI, synth_scenes.aoi_path)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert loc.returncode == 1, loc.stderr[-3000:]
    assert counts(run_records(local)[0]) == steps
    files = assert_same(on_ray, local)
    assert not any(bad in f for f in files)  # nothing of the bad scene, in either run
    for sid in good:
        assert any(sid in f and f.endswith(".npy") for f in files)
    assert json.loads(Path(on_ray.frontend_config(synth_scenes.grid)).read_text())["demos"]
