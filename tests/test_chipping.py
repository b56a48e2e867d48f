"""Step 1's scene-organised engine (geofm.scene windows, geofm.chipping threads, the array chip writer):
the same pixels and files whatever the window and thread counts, exact interpolation, the same content as
the xarray-built chip."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from rasterio.windows import Window

from fixtures.raster_reference import bilinear_reference
from geofm import chipping, scene, sentinel2
from geofm.chips import ChipGrid
from geofm.scene import SceneReader
from geofm.steps import preprocess
from geofm.synth import SynthResult
from helpers import hdf5_content

ALL_BANDS = [b.name for b in sentinel2.BANDS]


def reader(synth: SynthResult, scene: str, threads: int = 1) -> SceneReader:
    return SceneReader(synth.item(scene), ALL_BANDS, scene, "item.json", threads=threads)


def test_chip_file_reads_as_the_xarray_built_one() -> None:
    """Written straight from arrays, the chip reads as the file ``netcdf_bytes(chip_dataset(...))`` gives."""
    rng = np.random.default_rng(3)
    grid = ChipGrid(Affine(10, 0, 499980, 0, -10, 5100000), 256, 256, "EPSG:32633", 64)
    chip = grid.chip(2, 1)
    data: dict[str, np.ndarray] = {b: rng.integers(0, 9000, (64, 64)).astype(np.float32) for b in ALL_BANDS}
    data["red"][:4] = np.nan
    data["nir09"] = data["nir09"] + np.float32(0.25)  # interpolated bands are not whole DN
    data["scl"] = rng.integers(0, 12, (64, 64)).astype(np.uint8)
    when = pd.Timestamp("2023-07-14T09:50:31.024Z")
    attrs: dict[str, Any] = {"scene_id": "S2A_33TWL_20230714_0_L2A", "chip_id": chip.chip_id, "x_dim": 2,
                             "bands": ALL_BANDS, "centroid_lat": 41.2, "boa_offset_subtracted": 0}
    ours = preprocess.chip_netcdf(data, ALL_BANDS, grid, chip, attrs, when)
    reference = preprocess.netcdf_bytes(preprocess.chip_dataset(data, ALL_BANDS, grid, chip, attrs, when))
    assert hdf5_content(ours) == hdf5_content(reference)  # ISA-L's compressed bytes may differ run to run
    other = dict(data, red=data["red"] + 1)
    assert hdf5_content(preprocess.chip_netcdf(other, ALL_BANDS, grid, chip, attrs, when)) != hdf5_content(ours)


@pytest.mark.parametrize("strip_rows", [scene.STRIP_ROWS, 5])
def test_coarse_bands_are_exact_bilinear_interpolation(synth_scenes: SynthResult, strip_rows: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """20 and 60 m bands in float32 equal float64 bilinear interpolation (scipy) rounded once, bit for bit,
    wherever no neighbour is nodata; 10 m bands are the COG's DN. Whatever the strips of rows a window
    is interpolated in."""
    monkeypatch.setattr(scene, "STRIP_ROWS", strip_rows)
    scene_id = synth_scenes.scene_ids[2]
    with reader(synth_scenes, scene_id) as r:
        grid = r.grid(64)
        window = Window(64, 0, 192, 256)  # three chips wide, the whole height: raster edges included
        data = r.read_window(grid, window)
    t = grid.transform
    xs = t.c + (64 + np.arange(192) + 0.5) * t.a
    ys = t.f + (np.arange(256) + 0.5) * t.e
    item = synth_scenes.item(scene_id)
    compared = 0
    for name in ("rededge1", "swir22", "coastal", "nir09"):
        expected = bilinear_reference(item["assets"][name]["href"], xs, ys).astype(np.float32)
        mask = bilinear_reference(item["assets"][name]["href"], xs, ys, valid=True)
        assert 0.5 < mask.mean() < 1  # nodata (the wedge) nearby, and most pixels away from it
        np.testing.assert_array_equal(data[name][mask], expected[mask])
        compared += int(mask.sum())
        # next to nodata: the mean of the valid neighbours (weights renormalised); NaN where none is valid
        aware = bilinear_reference(item["assets"][name]["href"], xs, ys, nodata_aware=True)
        partly = ~mask & ~np.isnan(aware)
        assert partly.any() and np.isnan(aware).any()
        np.testing.assert_array_equal(np.isnan(data[name]), np.isnan(aware))
        np.testing.assert_allclose(data[name][partly], aware[partly], rtol=1e-6)  # float32: one rounding
    assert compared > 100_000
    blue = bilinear_reference(item["assets"]["blue"]["href"], xs, ys)
    np.testing.assert_array_equal(np.nan_to_num(data["blue"]), blue.astype(np.float32))


def test_windows_and_threads_give_the_chips_of_single_chip_reads(synth_scenes: SynthResult,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 1, 4 and all chips, on 1-3 threads, interpolated in strips of rows or not: every chip's
    pixels are those of reading the chip alone (nodata edge and raster edges included)."""
    scene_id = synth_scenes.scene_ids[1]
    with reader(synth_scenes, scene_id) as r:
        grid = r.grid(64)
        chips = list(grid.all_chips())
        one_by_one = {c.chip_id: r.read_chip(grid, c) for c in chips}
    switch_interval = sys.getswitchinterval()
    for threads, window_px, strip_rows in ((1, 64, 256), (3, 128, 256), (2, 1024, 256), (2, 1024, 50)):
        monkeypatch.setattr(scene, "STRIP_ROWS", strip_rows)
        with reader(synth_scenes, scene_id, threads=threads) as r:
            got = chipping.chip_scene(r, r.grid(64), chips, lambda c, d: (c.chip_id, {k: v.copy()
                                                                                      for k, v in d.items()}),
                                      threads=threads, window_px=window_px)
        assert [g[0] for g in got] == [c.chip_id for c in chips]  # results in chip order
        for chip_id, data in got:
            for name, values in one_by_one[chip_id].items():
                np.testing.assert_array_equal(data[name], values)
                assert data[name].dtype == values.dtype
    assert sys.getswitchinterval() == switch_interval  # shortened GIL turns while threads ran, restored


def test_plan_windows_groups_chips_into_bounded_blocks() -> None:
    grid = ChipGrid(Affine(10, 0, 0, 0, -10, 0), 2560, 2560, "EPSG:32633", 256)
    chips = [grid.chip(x, y) for x, y in [(0, 0), (1, 0), (3, 3), (4, 3), (9, 9), (5, 5)]]
    windows = chipping.plan_windows(chips, 256, window_px=1024)  # blocks of 4 x 4 chips from the origin
    assert [[c.chip_id for c in w.chips] for w in windows] == [["0_0", "1_0", "3_3"], ["4_3"], ["9_9"], ["5_5"]]
    # each window is the bounding box of its own chips (never the whole block when fewer chips are made)
    assert [tuple(w.window.flatten()) for w in windows] == [
        (0, 0, 1024, 1024), (1024, 768, 256, 256), (2304, 2304, 256, 256), (1280, 1280, 256, 256)]
    assert chipping.plan_windows(chips, 256, window_px=100)[0].chips == (chips[0],)  # at least one chip


def test_chip_threads_share_the_cores() -> None:
    cores = os.cpu_count() or 1
    assert chipping.chip_threads(None, 1) == cores
    assert chipping.chip_threads(None, cores) == 1
    assert chipping.chip_threads(None, 10 * cores) == 1
    assert chipping.chip_threads(3, 8) == 3


def test_an_error_in_one_chip_stops_the_scene_and_is_raised(synth_scenes: SynthResult) -> None:
    scene_id = synth_scenes.scene_ids[0]

    def make(chip: Any, data: dict[str, np.ndarray]) -> str:
        if chip.chip_id == "2_1":
            raise OSError("disk full")
        return chip.chip_id

    with reader(synth_scenes, scene_id, threads=2) as r, pytest.raises(OSError, match="disk full"):
        grid = r.grid(64)
        chipping.chip_scene(r, grid, list(grid.all_chips()), make, threads=2, window_px=64)
