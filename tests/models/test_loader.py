"""The embedding step's chip loader (geofm.models.loader): batches in order, each chip as read and prepared,
unreadable chips reported with their batch, and the prepared path of the embedders equal to the plain one."""

from __future__ import annotations

import functools
import io
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from geofm import netcdf
from geofm.config import PipelineConfig
from geofm.models import load_embedder
from geofm.models.loader import ChipLoader, read_chip
from geofm.models.registry import normalise
from geofm.steps import preprocess
from geofm.synth import SynthResult
from helpers import run_step, stage_scenes

BANDS = ["blue", "green", "red", "nir", "swir16"]


@pytest.fixture(scope="module")
def chip_urls(synth_scenes: SynthResult, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Step 1's chips of two synthetic scenes (64 px): 32 NetCDF files."""
    cfg = PipelineConfig(aoi_name="loader", output_root=str(tmp_path_factory.mktemp("out")), chip_size=64,
                         whole_tile=True, workers=1)
    stage_scenes(cfg.output_root, cfg.aoi_name, synth_scenes, synth_scenes.scene_ids[:2])
    assert run_step(cfg, "preprocess").ok
    return [cfg.layout.resolve(u) for s in synth_scenes.scene_ids[:2]
            for u in preprocess.read_meta(cfg.layout.meta(s))["s3_location_netcdf"]]


def test_batches_come_in_order_with_every_chip_read_and_prepared(chip_urls: list[str]) -> None:
    prepare = functools.partial(normalise, bands=BANDS)
    expected = [normalise(read_chip(u, BANDS)[None], BANDS)[0] for u in chip_urls]
    loader = ChipLoader(chip_urls, BANDS, (64, 64), batch_size=5, readers=3, prepare=prepare, prefetch=2)
    assert len(loader) == 7
    seen: list[int] = []
    for batch in loader:  # checked as it comes: buffers are reused for later batches
        assert batch.failed == [] and batch.pixels.shape == (len(batch.index), len(BANDS), 64, 64)
        for k, pos in enumerate(batch.index):
            np.testing.assert_array_equal(batch.pixels[k], expected[pos])
        seen += batch.index
    assert seen == list(range(len(chip_urls)))


def test_unreadable_or_misshapen_chips_are_reported_and_the_others_kept(chip_urls: list[str],
                                                                        tmp_path: Path) -> None:
    broken = tmp_path / "broken.nc"
    broken.write_bytes(Path(chip_urls[0]).read_bytes()[:5000])
    urls = [chip_urls[1], str(tmp_path / "missing.nc"), chip_urls[2], str(broken), chip_urls[3]]
    misshapen = list(ChipLoader(urls, BANDS, (32, 32), batch_size=3, readers=2))  # the chips are 64 px
    assert [b.index for b in misshapen] == [[], []]
    assert [p for b in misshapen for p, e in b.failed if "chip shape (5, 64, 64), expected (5, 32, 32)" in e] \
        == [0, 2, 4]
    loader = ChipLoader(urls, BANDS, (64, 64), batch_size=3, readers=2)
    batches = list(loader)
    assert [b.index for b in batches] == [[0, 2], [4]]
    assert [p for b in batches for p, _ in b.failed] == [1, 3]
    errors = dict(p for b in batches for p in b.failed)
    assert "missing.nc" in errors[1] and "truncated" in errors[3], errors
    np.testing.assert_array_equal(batches[0].pixels[1], read_chip(chip_urls[2], BANDS))
    np.testing.assert_array_equal(batches[1].pixels[0], read_chip(chip_urls[3], BANDS))
    with pytest.raises(ValueError, match="chip lacks bands"):
        netcdf.read_bands(Path(chip_urls[0]).read_bytes(), ["blue", "lidar"], "x.nc")


@pytest.mark.parametrize("model", ["clay-tiny", "spectral"])
def test_prepared_pixels_embed_as_the_raw_ones(model: str, chip_urls: list[str]) -> None:
    embedder = load_embedder(model, "random" if model.startswith("clay") else None, device="cpu")
    assert embedder.pin_memory is False
    bands = ["blue", "green", "red", "nir"]
    raw = np.stack([read_chip(u, bands) for u in chip_urls[:3]])
    meta = ([datetime(2023, 7, 14, 10)] * 3, [41.0] * 3, [15.0] * 3, 10.0)
    plain = embedder.embed(raw, bands, *meta)
    prepared = embedder.embed(embedder.prepare(raw, bands), bands, *meta, prepared=True)
    for a, b in zip(plain, prepared, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_bands_decodes_every_stored_integer_type_as_written() -> None:
    rng = np.random.default_rng(5)
    coords = {"y": netcdf.Variable(("y",), np.arange(8.0)), "x": netcdf.Variable(("x",), np.arange(8.0))}
    values = {"scl": rng.integers(0, 12, (8, 8)).astype(np.uint8),
              "dem": rng.integers(-400, 4000, (8, 8)).astype(np.int16),
              "red": rng.random((8, 8)).astype(np.float32)}
    variables = {k: netcdf.Variable(("y", "x"), v) for k, v in values.items()}
    for shuffle in (True, False):
        blob = netcdf.arrays_bytes({**variables, **coords}, {}, complevel=2, shuffle=shuffle)
        got = netcdf.read_bands(blob, ["red", "dem", "scl"], "x.nc")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.stack([values[k].astype(np.float32) for k in ("red", "dem", "scl")]))


def test_read_bands_of_a_variable_never_written_gives_its_fill_value() -> None:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("red", shape=(4, 4), dtype="f4", chunks=(4, 4), compression="gzip", shuffle=True,
                         fillvalue=np.float32(np.nan))
    out = np.zeros((1, 4, 4), np.float32)
    assert netcdf.read_bands(buf.getvalue(), ["red"], "x.nc", out) is out
    assert np.isnan(out).all()


def test_normalise_in_place_equals_the_formula() -> None:
    """Clay's (DN - mean) / std, nodata (NaN, inf) as 0: the same in place (the loader's way) as not."""
    rng = np.random.default_rng(9)
    bands = ["blue", "nir", "swir22"]
    x = rng.integers(0, 12000, (2, 3, 8, 8)).astype(np.float32)
    x[0, 1, :2] = np.nan
    x[1, 2, 3, 3] = np.inf
    mean = np.array([1105.0, 2743.0, 1835.0], np.float32)[None, :, None, None]  # Clay's statistics
    std = np.array([1809.0, 1742.0, 1379.0], np.float32)[None, :, None, None]
    expected = (x - mean) / std
    expected[~np.isfinite(expected)] = 0
    np.testing.assert_allclose(normalise(x, bands), expected, rtol=1e-6)
    scratch = x.copy()
    assert normalise(scratch, bands, out=scratch) is scratch
    np.testing.assert_array_equal(scratch, normalise(x, bands))
    assert scratch[0, 1, 0, 0] == 0 and scratch[1, 2, 3, 3] == 0
