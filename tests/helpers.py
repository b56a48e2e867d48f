"""Plain helpers shared by several test files (importable as ``helpers``: ``tests/`` is on ``sys.path``).

Pytest fixtures live in ``tests/fixtures/`` (loaded by ``tests/conftest.py``); this module holds the
functions: where the repository and the shared data are, running steps through the public API and
``geofm run`` through the CLI, and comparing the outputs of two output roots file by file.
"""

from __future__ import annotations

import functools
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from geofm import netcdf, storage, vectordb
from geofm.config import PipelineConfig
from geofm.layout import Layout
from geofm.pipeline import RunRecord, run_pipeline
from geofm.report import StepReport
from geofm.synth import SynthResult

if TYPE_CHECKING:
    import torch

    from geofm.models.clay import ClayEncoder

REPO = Path(__file__).resolve().parents[1]  # the checkout (holds src/, tests/, examples/)
SHARED = REPO.parent / "shared"  # data and references beside the checkout (not in git)
TINY_CLAY = dict(dim=72, depth=2, heads=4, dim_head=16)  # a Clay encoder small enough for CPU tests
E2E_SCENES = (0, 1, 3, 5)  # of the shared synthetic archive: clear, light cloud, clear (forest cleared), clear


# ---- running ---------------------------------------------------------------------------------------------
def run_steps(cfg: PipelineConfig, *steps: str) -> RunRecord:
    """Steps through the public API, as ``geofm run --steps ...`` runs them (input checks first, a run
    record written); the record says whether every unit finished."""
    return run_pipeline(cfg, list(steps))


def run_step(cfg: PipelineConfig, step: str) -> StepReport:
    """One step as ``geofm <step>`` runs it; its report (units, plus ``pca``/``lance-db`` where the
    step has them)."""
    (report,) = run_steps(cfg, step).reports
    return report


def geofm_exe() -> str:
    """The ``geofm`` console script of the interpreter running the tests."""
    return str(Path(sys.executable).with_name("geofm"))


def scene_subset(synth: SynthResult, indices: tuple[int, ...] = E2E_SCENES) -> list[str]:
    return [synth.scene_ids[i] for i in indices]


def stage_scenes(root: str, aoi_name: str, synth: SynthResult, scene_ids: list[str]) -> Layout:
    """Put the scenes' STAC items into the input layout of ``root`` (their hrefs stay on the archive),
    as ``geofm discover`` would."""
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
    """step -> {"done", "skipped", "failed"} of a run record."""
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
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
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
    if url.endswith(".png"):
        return png_content(data)
    return data


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
    """The AOI's LanceDB table, sorted by chip and date."""
    table = vectordb.open_table(lay.lance_db).to_pandas()
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


# ---- models --------------------------------------------------------------------------------------------
def perturbed_tiny(seed: int = 3) -> ClayEncoder:
    """Tiny Clay encoder whose LayerNorm weights/biases and patch-embedding biases are not their init values."""
    import torch

    from geofm.models.clay import ClayEncoder

    torch.manual_seed(seed)
    model = ClayEncoder(**TINY_CLAY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def official_layout_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    """Save like a Clay Lightning checkpoint: model.encoder.* plus decoder/proj/teacher and hparams."""
    import torch

    state = {f"model.encoder.{k}": v for k, v in model.state_dict().items()}
    state |= {
        "model.decoder.enc_to_dec.weight": torch.randn(4, 72),
        "model.decoder.transformer.norm.weight": torch.ones(4),
        "model.proj.weight": torch.randn(4, 4),
        "model.teacher.blocks.0.attn.qkv.weight": torch.randn(12, 4),
    }
    torch.save({"state_dict": state, "hyper_parameters": {"mask_ratio": 0.75, "shuffle": True},
                "epoch": 3}, path)
    return path


# ---- comparing written files ------------------------------------------------------------------------------
# ISA-L's deflate output is not the same from run to run for the same input (intel/isa-l#140: its work
# buffers are not initialised), so chip files and thumbnails are compared as readers see them.
hdf5_content = functools.partial(netcdf.stored_content, decoded=True)


def png_content(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """A PNG as readers see it: mode, size and pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.mode, img.size, np.asarray(img).tobytes()
