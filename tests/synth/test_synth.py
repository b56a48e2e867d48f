"""Synthetic Sentinel-2 L2A: MGRS origins against real items, COG structure, items, spectra, clouds, changes."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from shapely.geometry import Point, shape

from geofm import storage
from geofm.aoi import load_aoi
from geofm.layout import Layout
from geofm.sentinel2 import BANDS, L2A_BANDS, SCL_CLOUD_CLASSES, parse_scene_id
from geofm.synth import SynthResult, synthesize, tile_origin
from geofm.synth.mgrs import parse_grid

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
V1_KEYS = set(L2A_BANDS) | {"scl", "visual"}


def _read(item: dict, key: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(item["assets"][key]["href"]) as ds:
        return ds.read(1), ds.transform


def _real_items(shared_data: Path) -> list[dict]:
    files = sorted((shared_data / "earthsearch-items").glob("*/*.json"))
    files += sorted((shared_data / "s2l2a-33TWL-full120m" / "sentinel-2-l2a").glob("S2*/*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_tile_origin_matches_every_real_item(shared_data: Path) -> None:
    items = _real_items(shared_data)
    grids = set()
    for it in items:
        grid = it["properties"]["grid:code"].removeprefix("MGRS-")
        t = it["assets"]["blue"]["proj:transform"]
        assert tile_origin(grid) == (t[2], t[5]), it["id"]
        grids.add(grid)
    assert len(grids) >= 10 and "33TWL" in grids  # both hemispheres, many zones


def test_bad_tile_names_are_named() -> None:
    for bad in ("33TIL", "99TWL", "33T", "hello"):
        with pytest.raises(ValueError, match=bad):
            parse_grid(bad)
    with pytest.raises(ValueError, match="column letter"):
        tile_origin("33TAL")  # column A is not used in zone 33


def test_cogs_are_tiled_with_overviews_on_the_tile_grid(synth_scenes: SynthResult) -> None:
    item = synth_scenes.items[0]
    assert set(item["assets"]) == V1_KEYS
    for key, asset in item["assets"].items():
        with rasterio.open(asset["href"]) as ds:
            assert ds.crs.to_epsg() == 32633
            assert list(ds.transform)[:6] == asset["proj:transform"]
            assert [ds.height, ds.width] == asset["proj:shape"]
            assert (ds.transform.c, ds.transform.f) == (499980.0, 5100000.0)
            assert ds.profile["tiled"] and ds.compression.name == "deflate"
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            if key in ("blue", "visual"):
                assert ds.overviews(1), key
            if key in L2A_BANDS:
                res = next(b.resolution for b in BANDS if b.name == key)
                assert ds.res == (res, res) and ds.dtypes[0] == "uint16" and ds.nodata == 0
    assert item["assets"]["scl"]["proj:shape"] == [128, 128]
    assert item["assets"]["coastal"]["proj:shape"] == [43, 43]  # 2560 m / 60 m, rounded up


def test_item_fields_like_earth_search(synth_scenes: SynthResult) -> None:
    for item, day in zip(synth_scenes.items, synth_scenes.dates, strict=True):
        sid = parse_scene_id(item["id"])
        assert sid.grid == "33TWL" and sid.date == day
        p = item["properties"]
        assert p["grid:code"] == "MGRS-33TWL" and p["mgrs:utm_zone"] == 33
        assert (p["mgrs:latitude_band"], p["mgrs:grid_square"]) == ("T", "WL")
        assert p["proj:code"] == "EPSG:32633" and "proj:epsg" not in p  # projection v2.0.0
        assert p["s2:processing_baseline"] == "05.09" and p["earthsearch:boa_offset_applied"] is True
        assert p["datetime"].startswith(f"{day:%Y-%m-%d}T09:") or p["datetime"].startswith(f"{day:%Y-%m-%d}T10:")
        rb = item["assets"]["red"]["raster:bands"][0]
        assert (rb["nodata"], rb["scale"], rb["offset"]) == (0, 0.0001, -0.1)
        assert item["assets"]["red"]["eo:bands"][0]["name"] == "red"
        # footprint: inside the extent, excluding the nodata corner
        geom = shape(item["geometry"])
        to_ll = Transformer.from_crs(32633, 4326, always_xy=True)
        assert geom.contains(Point(*to_ll.transform(499980 + 2000, 5100000 - 500)))
        assert not geom.contains(Point(*to_ll.transform(499980 + 50, 5100000 - 2510)))
    fc = json.loads(Path(synth_scenes.items_path).read_text())
    assert [f["id"] for f in fc["features"]] == synth_scenes.scene_ids
    lay = Layout(synth_scenes.root, synth_scenes.aoi_name)
    for sid in synth_scenes.scene_ids:
        assert storage.read_json(lay.scene_metadata(sid))["id"] == sid
    assert load_aoi(lay.aoi_geojson).equals(load_aoi(synth_scenes.aoi_path))


def test_aoi_inside_extent_but_not_all_of_it(synth_scenes: SynthResult) -> None:
    aoi = load_aoi(synth_scenes.aoi_path)
    footprint = shape(synth_scenes.items[0]["geometry"])
    assert footprint.contains(aoi)
    assert 0.15 < aoi.area / footprint.area < 0.5


def _ndvi(item: dict, window: tuple[slice, slice]) -> float:
    red, _ = _read(item, "red")
    nir, _ = _read(item, "nir")
    r, n = red[window].astype(float), nir[window].astype(float)
    return float(np.median((n - r) / (n + r)))


def _landcover(result: SynthResult) -> np.ndarray:
    with rasterio.open(result.landcover_path) as ds:
        return ds.read(1)


def test_spectral_shapes(synth_scenes: SynthResult) -> None:
    lc = _landcover(synth_scenes)
    clear = [synth_scenes.item(s) for s in synth_scenes.clear_scene_ids]
    winter, summer = clear[0], clear[1]  # 2023-01-15 and 2023-07-14
    red, _ = _read(summer, "red")
    nir, _ = _read(summer, "nir")
    green, _ = _read(summer, "green")
    r, n, g = (a.astype(float) for a in (red, nir, green))
    forest = lc == 1
    lc_summer = rasterio.open(synth_scenes.landcover_paths[summer["id"]]).read(1)
    water = lc_summer == 4
    assert forest.sum() > 500 and water.sum() > 500
    assert np.median(((n - r) / (n + r))[forest & (lc_summer == 1)]) > 0.6
    assert np.median(((g - n) / (g + n))[water]) > 0
    crop = lc == 2
    ndvi_crop = {}
    for item in (winter, summer):
        rr, _ = _read(item, "red")
        nn, _ = _read(item, "nir")
        rr, nn = rr.astype(float), nn.astype(float)
        ndvi_crop[item["id"]] = np.median(((nn - rr) / (nn + rr))[crop])
    assert ndvi_crop[summer["id"]] > 0.6 > 0.3 > ndvi_crop[winter["id"]]


def test_clouds_match_scl_and_cloud_cover(synth_scenes: SynthResult) -> None:
    heavy = [s for s in synth_scenes.scene_ids if synth_scenes.sky[s] == "heavy"]
    assert len(heavy) == 1
    for sid in synth_scenes.scene_ids:
        item = synth_scenes.item(sid)
        scl, _ = _read(item, "scl")
        valid = scl > 0
        cloudy = np.isin(scl, [8, 9, 10])
        share = 100 * cloudy[valid].mean()
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(share, abs=1e-3)
        if synth_scenes.sky[sid] == "clear":
            assert not np.isin(scl, list(SCL_CLOUD_CLASSES)).any()
        blue, _ = _read(item, "blue")
        blue20 = blue.reshape(128, 2, 128, 2).astype(float).mean(axis=(1, 3))
        if (scl == 9).any():
            assert np.median(blue20[scl == 9]) > 3000  # bright, flat clouds
            assert np.median(blue20[scl == 3]) < np.median(blue20[scl == 5])  # shadows are dark
    assert synth_scenes.cloud_cover[heavy[0]] > 50
    assert max(synth_scenes.cloud_cover.values()) == synth_scenes.cloud_cover[heavy[0]]


def test_scl_follows_land_cover(synth_scenes: SynthResult) -> None:
    first = synth_scenes.items[0]
    scl, _ = _read(first, "scl")
    lc = _landcover(synth_scenes).reshape(128, 2, 128, 2)
    lc20 = np.where((lc.min(axis=(1, 3)) == lc.max(axis=(1, 3))), lc[:, 0, :, 0], 255)  # pure 20 m pixels
    assert np.mean(scl[lc20 == 1] == 4) > 0.95  # forest: vegetation
    assert np.mean(scl[lc20 == 4] == 6) > 0.9  # water
    assert np.mean(scl[lc20 == 5] == 5) > 0.9  # urban: not vegetated


def test_planted_changes_happen_on_their_dates(synth_scenes: SynthResult) -> None:
    truth = json.loads(Path(synth_scenes.truth_path).read_text())
    kinds = {f["properties"]["kind"]: f["properties"] for f in truth["features"]}
    assert set(kinds) == {"forest_cleared", "new_water"}
    for kind, props in kinds.items():
        rows = slice(props["row_start"], props["row_stop"])
        cols = slice(props["col_start"], props["col_stop"])
        assert props["row_stop"] - props["row_start"] >= 64 + 12  # a whole 64 px chip and margins
        start = date.fromisoformat(props["start_date"])
        for sid, day in zip(synth_scenes.scene_ids, synth_scenes.dates, strict=True):
            if synth_scenes.sky[sid] != "clear":
                continue
            item = synth_scenes.item(sid)
            ndvi = _ndvi(item, (rows, cols))
            if kind == "forest_cleared":
                assert (ndvi < 0.3) if day >= start else (ndvi > 0.6), (sid, ndvi)
            else:
                green, _ = _read(item, "green")
                nir, _ = _read(item, "nir")
                g, n = green[rows, cols].astype(float), nir[rows, cols].astype(float)
                ndwi = float(np.median((g - n) / (g + n)))
                assert (ndwi > 0.3) if day >= start else (ndwi < 0), (sid, ndwi)
        # the ground-truth polygon sits where the pixels are
        x0, y0 = synth_scenes.origin
        assert props["utm_minx"] == x0 + 10 * props["col_start"]
        assert props["utm_maxy"] == y0 - 10 * props["row_start"]


def test_nodata_wedge_is_zero_everywhere(synth_scenes: SynthResult) -> None:
    for item in synth_scenes.items:
        for key in (*L2A_BANDS, "scl", "visual"):
            with rasterio.open(item["assets"][key]["href"]) as ds:
                a = ds.read()
                assert (a[:, -1, 0] == 0).all(), key  # lower-left corner pixel
                assert (a[:, 0, -1] > 0).all(), key  # upper-right corner has data
                assert (a[:, 0, 0] > 0).all(), key
        scl, _ = _read(item, "scl")
        blue, _ = _read(item, "blue")
        assert ((blue[::2, ::2] == 0) == (scl == 0)).mean() > 0.99


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    days = [date(2023, 6, 1), date(2023, 8, 1)]
    a = synthesize(str(tmp_path / "a"), dates=days, extent_m=640, seed=3)
    b = synthesize(str(tmp_path / "b"), dates=days, extent_m=640, seed=3)
    c = synthesize(str(tmp_path / "c"), dates=days, extent_m=640, seed=4, into_layout=False)
    for i in range(2):
        ra, _ = _read(a.items[i], "nir08")
        rb, _ = _read(b.items[i], "nir08")
        rc, _ = _read(c.items[i], "nir08")
        assert np.array_equal(ra, rb) and not np.array_equal(ra, rc)
    assert not Path(Layout(c.root, c.aoi_name).scenes_dir).exists()


def test_unharmonised_scenes_carry_the_offset(tmp_path: Path) -> None:
    days = [date(2023, 6, 1)]
    h = synthesize(str(tmp_path / "h"), dates=days, extent_m=640, seed=1)
    u = synthesize(str(tmp_path / "u"), dates=days, extent_m=640, seed=1, harmonised=False)
    p = u.items[0]["properties"]
    assert p["s2:processing_baseline"] == "04.00" and p["earthsearch:boa_offset_applied"] is False
    rh, _ = _read(h.items[0], "red")
    ru, _ = _read(u.items[0], "red")
    valid = rh > 0
    assert np.array_equal(ru[valid].astype(int) - 1000, rh[valid].astype(int))


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extent_m"):
        synthesize(str(tmp_path), extent_m=1234)
    with pytest.raises(ValueError, match="extent_m"):
        synthesize(str(tmp_path), extent_m=200_000)
    with pytest.raises(ValueError, match="duplicates"):
        synthesize(str(tmp_path), dates=[date(2023, 1, 1)] * 2, extent_m=640)
    with pytest.raises(ValueError, match="33TIL"):
        synthesize(str(tmp_path), grid="33TIL", extent_m=640)
