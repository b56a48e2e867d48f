"""The whole pipeline as one ``geofm run``: killed with SIGKILL in the middle of step 2, rerun to completion,
its outputs equal an uninterrupted run's, and the units finished before the kill are not redone.

Also the home of the output comparison the Ray and S3 tests use (:func:`snapshot`, :func:`assert_same`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geofm import storage
from geofm.layout import Layout
from geofm.synth import SynthResult

pytestmark = pytest.mark.slow

AOI = "e2e"
SCENE_INDICES = (0, 1, 3, 5)  # clear, light cloud, clear (forest cleared), clear: 4 scenes, 2 dates of change
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


# ---- set-up and running --------------------------------------------------------------------------------
def geofm_exe() -> str:
    return str(Path(sys.executable).with_name("geofm"))


def scene_subset(synth: SynthResult, indices: tuple[int, ...] = SCENE_INDICES) -> list[str]:
    return [synth.scene_ids[i] for i in indices]


def stage_scenes(root: str, aoi_name: str, synth: SynthResult, scene_ids: list[str]) -> Layout:
    """Put the scenes' STAC items into the input layout of ``root`` (their hrefs stay on the archive)."""
    lay = Layout(root, aoi_name)
    for sid in scene_ids:
        storage.write_json(lay.scene_metadata(sid), synth.item(sid))
    return lay


def run_args(root: str, aoi_name: str, aoi: str, *extra: str) -> list[str]:
    """``geofm run`` on staged scenes with small chips and the weights-free model."""
    return ["run", "--out", root, "--aoi-name", aoi_name, "--aoi", aoi, "--skip-discover", "--model", "spectral",
            "--set", "chip_size=64", "--set", "batch_size=1", "--quiet", *extra]


def run_records(lay: Layout) -> list[dict[str, Any]]:
    """Run records, oldest first."""
    return [storage.read_json(u) for u in sorted(storage.list_files(lay.runs_dir, ".json"))]


def counts(record: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {r["step"]: r["counts"] for r in record["reports"]}


# ---- comparing two output roots -------------------------------------------------------------------------
def _relative(url: str, base: str) -> str:
    return url[len(base.rstrip("/")) + 1:]


def output_files(lay: Layout) -> list[str]:
    """Files of the AOI's output (relative URLs), without run records and LanceDB internals (which carry
    random names); markers are kept."""
    base = lay.output_dir
    fs = storage.filesystem(base)
    if storage.is_remote(base):
        found = [("s3://" if storage.is_s3(base) else "") + f for f in fs.find(base)]
    else:
        found = [str(p) for p in Path(base).rglob("*") if p.is_file()]
    rel = [_relative(f, base) for f in found]
    return sorted(r for r in rel if not r.startswith("lance-db/")
                  and not (r.startswith("runs/") and r.count("/") == 1))


def _normalise(value: Any, root: str) -> Any:
    if isinstance(value, str):
        return value.replace(root.rstrip("/"), "<root>")
    if isinstance(value, dict):
        return {k: _normalise(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, root) for v in value]
    return value


def file_content(url: str, root: str) -> Any:
    """What a file holds, in a form two runs in different roots can be compared by (root -> <root>)."""
    data = storage.read_bytes(url)
    if url.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if url.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # the fingerprint hashes input URLs
            return {k: z[k] for k in z.files if k != "fingerprint"}
    if url.endswith(".parquet"):
        frame = pd.read_parquet(io.BytesIO(data))
        for col in frame.columns:
            if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
                frame[col] = frame[col].map(lambda v: _normalise(v, root))
        return frame
    if url.endswith(".nc"):
        with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as ds:
            return ds.load()
    if url.endswith((".json", ".geojson")):
        obj = _normalise(json.loads(data), root)
        if "/runs/markers/" in url:
            obj.pop("finished", None)  # the marker's timestamp
        return obj
    if url.endswith(".txt"):
        return data.decode()
    return data  # png and others: bytes


def assert_equal_content(a: Any, b: Any, what: str) -> None:
    if isinstance(a, np.ndarray):
        nan_ok = a.dtype.kind in "fc"
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=nan_ok), what
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=what)
    elif isinstance(a, xr.Dataset):
        xr.testing.assert_identical(a, b)
    elif isinstance(a, dict) and a and all(isinstance(v, np.ndarray) for v in a.values()):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_equal_content(a[k], b[k], f"{what}:{k}")
    else:
        assert a == b, what


def lance_rows(lay: Layout) -> pd.DataFrame:
    db = lancedb.connect(lay.lance_db, storage_options=storage.lancedb_storage_options(lay.lance_db))
    table = db.open_table(Layout.LANCE_TABLE).to_pandas()
    return table.sort_values(["chip_id", "date"]).reset_index(drop=True)


def assert_same(a: Layout, b: Layout, skip: tuple[str, ...] = ()) -> list[str]:
    """Both roots hold the same files with the same contents and the same LanceDB rows; returns the files.
    Paths containing any of ``skip`` are left out (e.g. a scene that failed in both)."""
    files_a = [f for f in output_files(a) if not any(s in f for s in skip)]
    files_b = [f for f in output_files(b) if not any(s in f for s in skip)]
    assert files_a == files_b
    for rel in files_a:
        assert_equal_content(file_content(f"{a.output_dir}/{rel}", a.root),
                             file_content(f"{b.output_dir}/{rel}", b.root), rel)
    rows_a, rows_b = lance_rows(a), lance_rows(b)
    assert len(rows_a) == len(rows_b) > 0
    assert np.array_equal(np.stack(rows_a["vector"]), np.stack(rows_b["vector"]))
    assert rows_a["chip_id"].tolist() == rows_b["chip_id"].tolist()
    return files_a


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
