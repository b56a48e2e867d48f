"""Step 1 (preprocess) on real Sentinel-2 COGs (../shared/data/s2l2a-33TWL-cogcrop) and on small
synthetic scenes written here (10/20/60 m COGs, SCL with planted clouds, a nodata edge)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine
from PIL import Image
from pyproj import Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from fixtures.raster_reference import bilinear_reference
from geofm import columns, sentinel2, storage, thumbnails
from geofm.config import PipelineConfig
from geofm.errors import AoiError, SceneError
from geofm.pipeline import run_pipeline
from geofm.steps import preprocess
from helpers import run_step, stage_scenes

CHIP = 64
RGBN = ["blue", "green", "red", "nir"]
TO_WGS84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)


def write_aoi(path: Path, minx: float, miny: float, maxx: float, maxy: float) -> str:
    """A UTM (EPSG:32633) rectangle written as a WGS84 GeoJSON AOI."""
    geom = shp_transform(lambda x, y: TO_WGS84.transform(x, y), box(minx, miny, maxx, maxy).segmentize(50))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(geom)}]}))
    return str(path)


def install_item(cfg: PipelineConfig, item: dict[str, Any], folder: Path) -> None:
    """Put an item in the input layout, with relative asset hrefs made absolute (as Earth Search serves)."""
    for a in item["assets"].values():
        if "://" not in a["href"] and not a["href"].startswith("/"):
            a["href"] = str(folder / a["href"])
    storage.write_json(cfg.layout.scene_metadata(item["id"]), item)


def sample(href: str, x: float, y: float) -> int:
    with rasterio.open(href) as src:
        return int(next(src.sample([(x, y)]))[0])


# ================================= real data: 33TWL COG crops ======================================
COGCROP = "s2l2a-33TWL-cogcrop"


@pytest.fixture(scope="module")
def real_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    root = tmp_path_factory.mktemp("real")
    cfg = PipelineConfig(aoi_name="real", output_root=str(root), s2_bands=RGBN, chip_size=CHIP,
                         whole_tile=True, workers=1, retries=0)
    for folder in sorted((shared_data / COGCROP).iterdir()):
        if folder.is_dir():
            install_item(cfg, json.loads((folder / f"{folder.name}.json").read_text()), folder)
    report = run_step(cfg, "preprocess")
    assert report.ok, report.summary()
    assert report.count("done") == 5
    return cfg


def real_metas(cfg: PipelineConfig) -> dict[str, gpd.GeoDataFrame]:
    return {s: preprocess.read_meta(cfg.layout.meta(s)) for s in cfg.layout.meta_scene_ids()}


def test_real_whole_tile_gives_16_chips_per_date_with_same_ground(real_run: PipelineConfig) -> None:
    metas = real_metas(real_run)
    assert len(metas) == 5
    ref = None
    for meta in metas.values():
        assert len(meta) == 16  # 256 px / 64 -> 4 x 4
        assert meta.crs.to_epsg() == 4326
        by_id = meta.set_index("chip_id")[["utm_minx", "utm_miny", "utm_maxx", "utm_maxy"]].sort_index()
        ref = by_id if ref is None else ref
        assert by_id.equals(ref)  # the same chip_id covers the same ground on every date
    # chip 1_2: column 1, row 2 from the top of the crop grid (origin 553740, 5076960, 120 m)
    row = ref.loc["1_2"]
    assert tuple(row) == (553740 + 64 * 120, 5076960 - 3 * 64 * 120, 553740 + 128 * 120, 5076960 - 128 * 120)


def test_real_pixels_equal_the_cog_at_the_same_map_coordinates(real_run: PipelineConfig,
                                                               shared_data: Path) -> None:
    scene = "S2B_33TWL_20230813_0_L2A"
    meta = preprocess.read_meta(real_run.layout.meta(scene)).set_index("chip_id")
    ds = xr.open_dataset(real_run.layout.resolve(meta.loc["2_1", "s3_location_netcdf"]), engine="h5netcdf",
                         mask_and_scale=False)  # SCL raw: class 0 is its _FillValue
    assert ds.attrs["boa_offset_subtracted"] == 0  # items say earthsearch:boa_offset_applied: true
    folder = shared_data / COGCROP / scene
    for (r, c) in [(0, 0), (10, 37), (63, 63), (40, 5)]:
        x, y = float(ds.x[c]), float(ds.y[r])
        for name, file in [("blue", "B02"), ("red", "B04"), ("nir", "B08")]:
            assert float(ds[name][r, c]) == sample(str(folder / f"{file}.tif"), x, y)
        assert int(ds.scl[r, c]) == sample(str(folder / "SCL.tif"), x, y)


def test_real_cloud_shares_equal_the_scl_count(real_run: PipelineConfig, shared_data: Path) -> None:
    scene = "S2A_33TWL_20230818_0_L2A"  # about half cloudy in this window
    meta = preprocess.read_meta(real_run.layout.meta(scene))
    with rasterio.open(shared_data / COGCROP / scene / "SCL.tif") as src:
        scl = src.read(1)
    shares = []
    for _, row in meta.iterrows():
        win = scl[row.y_dim * CHIP:(row.y_dim + 1) * CHIP, row.x_dim * CHIP:(row.x_dim + 1) * CHIP]
        valid = win[win > 0]
        expected = np.isin(valid, [3, 8, 9, 10]).sum() / valid.size
        assert row.cloud_cover_perc == pytest.approx(expected, abs=1e-12)
        assert row.missing_data_perc == 0.0
        shares.append(expected)
    assert max(shares) - min(shares) > 0.3  # the shares really differ between chips


def test_real_netcdf_crs_and_attributes(real_run: PipelineConfig) -> None:
    meta = real_metas(real_run)["S2A_33TWL_20230815_0_L2A"]
    url = real_run.layout.resolve(meta.s3_location_netcdf.iloc[0])
    ds = xr.open_dataset(url)
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.blue.attrs["grid_mapping"] == "spatial_ref" and ds.blue.dtype == np.float32
    assert ds.scl.encoding["dtype"] == np.uint8 and ds.scl.encoding["_FillValue"] == 0
    assert ds.blue.encoding.get("zlib") or ds.blue.encoding.get("compression") == "gzip"
    assert list(ds.attrs["bands"]) == RGBN
    assert list(ds.attrs["wavelengths"]) == [sentinel2.band(b).wavelength for b in RGBN]
    assert ds.attrs["mgrs_grid"] == "33TWL" and ds.attrs["gsd"] == 120.0 and ds.attrs["chip_size"] == CHIP
    assert str(ds.time.values).startswith("2023-08-15T09:58:11")
    assert float(ds.y[0]) > float(ds.y[-1])  # y descending
    da = rioxarray.open_rasterio(url, variable="red")
    assert da.rio.crs.to_epsg() == 32633


def test_real_aoi_selects_only_its_chips(shared_data: Path, tmp_path: Path) -> None:
    aoi = write_aoi(tmp_path / "aoi.geojson", 553740 + 70 * 120, 5076960 - 100 * 120,
                    553740 + 140 * 120, 5076960 - 80 * 120)  # columns 70..140, rows 80..100
    cfg = PipelineConfig(aoi_name="a", aoi=aoi, output_root=str(tmp_path / "out"), s2_bands=RGBN,
                         chip_size=CHIP, workers=1, retries=0)
    folder = shared_data / COGCROP / "S2A_33TWL_20230815_0_L2A"
    install_item(cfg, json.loads((folder / f"{folder.name}.json").read_text()), folder)
    assert run_step(cfg, "preprocess").ok
    meta = preprocess.read_meta(cfg.layout.meta(folder.name))
    assert sorted(meta.chip_id) == ["1_1", "2_1"]
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 2 and len(list((tmp_path / "out").rglob("*.nc"))) == 2


# ================================= synthetic scenes ================================================
ORIGIN = (499980.0, 5100000.0)  # 33TWL tile origin
N10 = 256  # 10 m pixels per side: 4 x 4 chips of 64
SYN_BANDS = ["blue", "green", "red", "nir", "rededge1", "swir16", "coastal"]
NODATA_COLS = 12  # 10 m columns of nodata on the west edge (120 m: whole 20 m and 60 m pixels)


def _write_tif(path: Path, arr: np.ndarray, res: int) -> None:
    profile = {"driver": "GTiff", "width": arr.shape[1], "height": arr.shape[0], "count": 1,
               "dtype": arr.dtype.name, "crs": "EPSG:32633", "nodata": 0, "tiled": True,
               "blockxsize": 32, "blockysize": 32, "compress": "deflate",
               "transform": Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1])}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)


def make_scene(folder: Path, scene_id: str, seed: int, cloud: tuple[int, int, int, int] | None = None,
               baseline: str = "05.09", offset_applied: bool = True, drop: str | None = None
               ) -> dict[str, Any]:
    """Per-band GeoTIFFs (12 L2A bands at 10/20/60 m, SCL at 20 m) and an Earth-Search-like item.

    ``cloud`` = (row0, row1, col0, col1) in 20 m SCL pixels, marked high-probability cloud (9).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    assets: dict[str, Any] = {}
    for b in sentinel2.BANDS:
        n = -(-N10 * 10 // b.resolution)
        arr = rng.integers(200, 4000, (n, n)).astype(np.uint16)
        arr[:, : -(-NODATA_COLS * 10 // b.resolution)] = 0
        _write_tif(folder / f"{b.band_id}.tif", arr, b.resolution)
        assets[b.name] = {"href": str(folder / f"{b.band_id}.tif"), "roles": ["data"]}
    scl = np.full((N10 // 2, N10 // 2), 4, np.uint8)
    scl[:, : NODATA_COLS // 2] = 0
    if cloud:
        scl[cloud[0]:cloud[1], cloud[2]:cloud[3]] = 9
    _write_tif(folder / "SCL.tif", scl, 20)
    assets["scl"] = {"href": str(folder / "SCL.tif"), "roles": ["data"]}
    if drop:
        del assets[drop]
    day = sentinel2.parse_scene_id(scene_id).date
    return {"type": "Feature", "stac_version": "1.0.0", "id": scene_id, "links": [], "assets": assets,
            "properties": {"datetime": f"{day}T10:00:00.000000Z", "s2:processing_baseline": baseline,
                           "earthsearch:boa_offset_applied": offset_applied, "eo:cloud_cover": 10.0}}


@pytest.fixture(scope="module")
def syn_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """Two dates of a synthetic tile, the whole tile chipped with 7 bands (10, 20 and 60 m)."""
    root = tmp_path_factory.mktemp("syn")
    cfg = PipelineConfig(aoi_name="syn", output_root=str(root / "out"), s2_bands=SYN_BANDS, chip_size=CHIP,
                         whole_tile=True, workers=1, retries=0)
    install_item(cfg, make_scene(root / "a", "S2A_33TWL_20230601_0_L2A", 1, cloud=(40, 72, 40, 56)),
                 root / "a")
    install_item(cfg, make_scene(root / "b", "S2B_33TWL_20230611_0_L2A", 2), root / "b")
    assert run_step(cfg, "preprocess").ok
    return cfg


def chip_ds(cfg: PipelineConfig, scene: str, chip_id: str) -> xr.Dataset:
    meta = preprocess.read_meta(cfg.layout.meta(scene)).set_index("chip_id")
    return xr.open_dataset(cfg.layout.resolve(meta.loc[chip_id, "s3_location_netcdf"]))


def test_syn_10m_exact_20m_and_60m_bilinear_scl_nearest(syn_run: PipelineConfig) -> None:
    scene = "S2A_33TWL_20230601_0_L2A"
    item = storage.read_json(syn_run.layout.scene_metadata(scene))
    ds = chip_ds(syn_run, scene, "2_1")
    xs, ys = ds.x.values, ds.y.values
    assert xs[0] == ORIGIN[0] + 128 * 10 + 5 and ys[0] == ORIGIN[1] - 64 * 10 - 5
    with rasterio.open(item["assets"]["red"]["href"]) as src:
        red = src.read(1)
    np.testing.assert_array_equal(ds.red.values, red[64:128, 128:192].astype(np.float32))
    for name in ("rededge1", "swir16", "coastal"):
        expected = bilinear_reference(item["assets"][name]["href"], xs, ys)
        np.testing.assert_allclose(ds[name].values, expected, atol=1e-3, rtol=0)
    # one pixel by hand: the centre of 10 m pixel (row 1, col 1) of the chip (global 65, 129) lies a quarter
    # of the way from the centre of 20 m pixel (32, 64) towards (33, 65)
    with rasterio.open(item["assets"]["rededge1"]["href"]) as src:
        a = src.read(1).astype(np.float64)
    r, c = 32, 64
    hand = 0.75 * (0.75 * a[r, c] + 0.25 * a[r, c + 1]) + 0.25 * (0.75 * a[r + 1, c] + 0.25 * a[r + 1, c + 1])
    assert float(ds.rededge1[1, 1]) == pytest.approx(hand, abs=1e-3)
    with rasterio.open(item["assets"]["scl"]["href"]) as src:
        scl = src.read(1)
    np.testing.assert_array_equal(ds.scl.values, np.repeat(np.repeat(scl[32:64, 64:96], 2, 0), 2, 1))


def test_syn_cloud_share_matches_planted_cloud(syn_run: PipelineConfig) -> None:
    meta = preprocess.read_meta(syn_run.layout.meta("S2A_33TWL_20230601_0_L2A")).set_index("chip_id")
    # cloud: SCL rows 40..72, cols 40..56 (20 m) = 10 m rows 80..144, cols 80..112
    # chip 1_1 (rows 64..128, cols 64..128): 48 x 32 cloudy px of 4096
    assert meta.loc["1_1", "cloud_cover_perc"] == pytest.approx(48 * 32 / 4096)
    assert meta.loc["1_2", "cloud_cover_perc"] == pytest.approx(16 * 32 / 4096)
    assert meta.loc["3_3", "cloud_cover_perc"] == 0.0
    # chip 0_0 has the nodata edge: missing share = 12 of 64 columns
    assert meta.loc["0_0", "missing_data_perc"] == pytest.approx(NODATA_COLS / CHIP)
    assert meta.loc["1_0", "missing_data_perc"] == 0.0
    ds = chip_ds(syn_run, "S2A_33TWL_20230601_0_L2A", "0_0")
    assert np.isnan(ds.blue.values[:, :NODATA_COLS]).all() and not np.isnan(ds.blue.values[:, NODATA_COLS:]).any()
    assert np.isnan(ds.scl.values[:, :NODATA_COLS]).all()  # SCL 0 = nodata is the _FillValue


def test_syn_meta_columns_and_polygons(syn_run: PipelineConfig) -> None:
    meta = preprocess.read_meta(syn_run.layout.meta("S2B_33TWL_20230611_0_L2A"))
    assert list(meta.columns) == list(columns.META)
    assert meta.crs.to_epsg() == 4326 and len(meta) == 16
    row = meta.set_index("chip_id").loc["3_2"]
    minx, maxy = ORIGIN[0] + 3 * 640, ORIGIN[1] - 2 * 640
    assert (row.utm_minx, row.utm_maxy, row.utm_maxx, row.utm_miny) == (minx, maxy, minx + 640, maxy - 640)
    lon, lat = TO_WGS84.transform(minx, maxy - 640)  # south-west corner
    assert row.geometry.exterior.coords[0] == pytest.approx((lon, lat), abs=1e-9)
    assert str(row.date) == "2023-06-11 00:00:00+00:00" and str(row.datetime) == "2023-06-11 10:00:00+00:00"
    assert row.origin_tile == "S2B_33TWL_20230611_0_L2A" and row.mgrs_grid == "33TWL" and row.gsd == 10.0
    assert row.file_name == "S2B_33TWL_20230611_0_L2A_64_chipped_3_2.nc"
    assert storage.exists(syn_run.layout.resolve(row.s3_location_png_thumbnail))


def test_syn_thumbnail_has_fixed_stretch_and_transparent_nodata(syn_run: PipelineConfig) -> None:
    scene = "S2A_33TWL_20230601_0_L2A"
    meta = preprocess.read_meta(syn_run.layout.meta(scene)).set_index("chip_id")
    png = syn_run.layout.resolve(meta.loc["0_0", "s3_location_png_thumbnail"])
    img = np.asarray(Image.open(io.BytesIO(storage.read_bytes(png))))
    assert img.shape == (CHIP, CHIP, 4)
    assert (img[:, :NODATA_COLS, 3] == 0).all() and (img[:, NODATA_COLS:, 3] == 255).all()
    ds = chip_ds(syn_run, scene, "0_0")
    np.testing.assert_array_equal(img[:, NODATA_COLS:, 0], thumbnails.to_uint8(ds.red.values[:, NODATA_COLS:]))
    # the stretch is fixed: 0.3 reflectance is white, 0 black, whatever the chip holds
    assert thumbnails.to_uint8(np.array([3000.0, 0.0, 6000.0])).tolist() == [255, 0, 255]


def test_harmonisation_subtracts_1000_when_the_item_is_not_harmonised(tmp_path: Path) -> None:
    cfg = PipelineConfig(aoi_name="h", output_root=str(tmp_path / "out"), s2_bands=["red", "rededge1"],
                         chip_size=CHIP, whole_tile=True, workers=1, retries=0)
    item = make_scene(tmp_path / "s", "S2B_33TWL_20220301_0_L2A", 3, baseline="04.00", offset_applied=False)
    install_item(cfg, item, tmp_path / "s")
    assert run_step(cfg, "preprocess").ok
    ds = chip_ds(cfg, item["id"], "1_1")
    assert ds.attrs["boa_offset_subtracted"] == 1000
    with rasterio.open(item["assets"]["red"]["href"]) as src:
        red = src.read(1)[64:128, 64:128].astype(np.float64)
    np.testing.assert_array_equal(ds.red.values, np.maximum(red - 1000, 0).astype(np.float32))
    assert (ds.red.values == 0).any()  # clipped, and still valid data (not NaN)
    expected = bilinear_reference(item["assets"]["rededge1"]["href"], ds.x.values, ds.y.values, 1000)
    np.testing.assert_allclose(ds.rededge1.values, expected, atol=1e-3, rtol=0)


def test_bad_scenes_fail_alone_with_clear_errors(tmp_path: Path) -> None:
    cfg = PipelineConfig(aoi_name="bad", output_root=str(tmp_path / "out"), s2_bands=["red", "rededge1"],
                         chip_size=CHIP, whole_tile=True, workers=1, retries=0)
    good = "S2A_33TWL_20230601_0_L2A"
    install_item(cfg, make_scene(tmp_path / "g", good, 1), tmp_path / "g")
    lacking = "S2A_33TWL_20230602_0_L2A"
    install_item(cfg, make_scene(tmp_path / "m", lacking, 1, drop="rededge1"), tmp_path / "m")
    broken = "S2A_33TWL_20230603_0_L2A"
    storage.write_text(cfg.layout.scene_metadata(broken), '{"id": "S2A_33TWL_20230603_0_L2A", "assets": {')
    unreadable = "S2A_33TWL_20230604_0_L2A"
    item = make_scene(tmp_path / "u", unreadable, 1)
    Path(item["assets"]["red"]["href"]).write_bytes(b"this is not a GeoTIFF")
    install_item(cfg, item, tmp_path / "u")

    report = run_step(cfg, "preprocess")
    status = {r.unit: (r.status, r.error or "") for r in report.results}
    assert status[good][0] == "done"
    assert status[lacking][0] == "failed" and "rededge1" in status[lacking][1] and lacking in status[lacking][1]
    assert status[broken][0] == "failed" and "JSON" in status[broken][1] and broken in status[broken][1]
    assert status[unreadable][0] == "failed" and "'red'" in status[unreadable][1]
    assert unreadable in status[unreadable][1] and "B04.tif" in status[unreadable][1]
    assert "FAILED" in report.summary() and not report.ok
    assert storage.exists(cfg.layout.meta(good)) and not storage.exists(cfg.layout.meta(lacking))
    failed = {r.unit: r for r in report.failed}
    assert failed[lacking].error.startswith(f"{SceneError.__name__}: ") and failed[lacking].error_kind == "input"
    # only the good scene has a marker: the failed ones are tried again by the next run
    assert sorted(storage.list_files(cfg.layout.markers_dir("preprocess"), ".json")) == [
        cfg.layout.marker("preprocess", good)]


def test_missing_aoi_is_an_error_before_any_work(tmp_path: Path) -> None:
    cfg = PipelineConfig(aoi_name="x", output_root=str(tmp_path / "out"), chip_size=CHIP, workers=1)
    install_item(cfg, make_scene(tmp_path / "s", "S2A_33TWL_20230601_0_L2A", 1), tmp_path / "s")
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(AoiError, match="AOI file not found"):
        run_pipeline(cfg, ["preprocess"])
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before  # no chip, no run record


def test_chip_compression_changes_file_sizes_never_values(tmp_path: Path) -> None:
    scene = "S2A_33TWL_20230601_0_L2A"
    item = make_scene(tmp_path / "s", scene, 3)
    chips = {}
    for compression in ("deflate", "fast"):
        cfg = PipelineConfig(aoi_name="c", output_root=str(tmp_path / compression), s2_bands=SYN_BANDS,
                             chip_size=128, whole_tile=True, workers=1, retries=0,
                             chip_compression=compression)
        install_item(cfg, item, tmp_path / "s")
        assert run_step(cfg, "preprocess").ok
        meta = preprocess.read_meta(cfg.layout.meta(scene))
        chips[compression] = {row.chip_id: Path(cfg.layout.resolve(row.s3_location_netcdf))
                              for row in meta.itertuples()}
    assert sorted(chips["deflate"]) == sorted(chips["fast"]) == ["0_0", "0_1", "1_0", "1_1"]
    for chip_id, path in chips["deflate"].items():
        with xr.open_dataset(path) as small, xr.open_dataset(chips["fast"][chip_id]) as fast:
            xr.testing.assert_identical(small.load(), fast.load())
    sizes = {c: sum(p.stat().st_size for p in files.values()) for c, files in chips.items()}
    assert sizes["fast"] != sizes["deflate"]  # the setting reached the writer (random DN: planes stored)


def test_rerun_skips_and_force_redoes(tmp_path: Path) -> None:
    aoi = write_aoi(tmp_path / "aoi.geojson", ORIGIN[0] + 700, ORIGIN[1] - 700, ORIGIN[0] + 800, ORIGIN[1] - 650)
    cfg = PipelineConfig(aoi_name="r", aoi=aoi, output_root=str(tmp_path / "out"), s2_bands=["red"],
                         chip_size=CHIP, workers=1, retries=0)
    scene = "S2A_33TWL_20230601_0_L2A"
    install_item(cfg, make_scene(tmp_path / "s", scene, 1), tmp_path / "s")
    first = run_step(cfg, "preprocess")
    assert first.count("done") == 1
    meta = preprocess.read_meta(cfg.layout.meta(scene))
    assert sorted(meta.chip_id) == ["1_1"]  # AOI inside chip 1_1 (pixels 70..80, 65..70)
    nc = Path(cfg.layout.resolve(meta.s3_location_netcdf.iloc[0]))
    stamp = nc.stat().st_mtime_ns
    assert run_step(cfg, "preprocess").count("skipped") == 1
    assert nc.stat().st_mtime_ns == stamp  # skipped: not rewritten
    png = Path(cfg.layout.resolve(meta.s3_location_png_thumbnail.iloc[0]))
    png.unlink()  # an output lost: no longer complete
    redone = run_step(cfg, "preprocess")
    assert redone.count("done") == 1 and redone.results[0].info["chips"] == 1
    assert png.exists()
    assert run_step(cfg, "preprocess").count("skipped") == 1
    forced = run_step(cfg.model_copy(update={"force": True}), "preprocess")
    assert forced.count("done") == 1 and nc.stat().st_mtime_ns != stamp


def test_changed_aoi_removes_chips_no_longer_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first_aoi = write_aoi(tmp_path / "a1.geojson", ORIGIN[0] + 700, ORIGIN[1] - 700, ORIGIN[0] + 800, ORIGIN[1] - 650)
    cfg = PipelineConfig(aoi_name="c", aoi=first_aoi, output_root=str(out), s2_bands=["red"],
                         chip_size=CHIP, workers=1, retries=0)
    scene = "S2A_33TWL_20230601_0_L2A"
    install_item(cfg, make_scene(tmp_path / "s", scene, 1), tmp_path / "s")
    assert run_step(cfg, "preprocess").ok
    old = preprocess.read_meta(cfg.layout.meta(scene))
    assert sorted(old.chip_id) == ["1_1"]
    # a new AOI in chip 2_2 (pixels 130..190): the rerun (no --force: the AOI is among the unit's inputs)
    # makes 2_2 and removes 1_1's files
    second_aoi = write_aoi(tmp_path / "a2.geojson", ORIGIN[0] + 1400, ORIGIN[1] - 1500, ORIGIN[0] + 1500, ORIGIN[1] - 1400)
    report = run_step(cfg.model_copy(update={"aoi": second_aoi}), "preprocess")
    assert report.count("done") == 1 and report.results[0].info["chips"] == 1
    new = preprocess.read_meta(cfg.layout.meta(scene))
    assert sorted(new.chip_id) == ["2_2"]
    assert not any(Path(cfg.layout.resolve(old[c].iloc[0])).exists()
                   for c in ("s3_location_netcdf", "s3_location_png_thumbnail"))
    assert sorted(p.name for p in out.rglob("*.nc")) == [f"{scene}_{CHIP}_chipped_2_2.nc"]


def test_outputs_to_s3(s3_bucket: str, tmp_path: Path) -> None:
    cfg = PipelineConfig(aoi_name="s3", output_root=f"s3://{s3_bucket}/geofm", s2_bands=["red", "swir16"],
                         chip_size=CHIP, whole_tile=True, workers=1, retries=0)
    scene = "S2A_33TWL_20230601_0_L2A"
    item = make_scene(tmp_path / "s", scene, 1)
    install_item(cfg, item, tmp_path / "s")
    assert run_step(cfg, "preprocess").ok
    meta = preprocess.read_meta(cfg.layout.meta(scene)).set_index("chip_id")
    url = cfg.layout.resolve(meta.loc["2_3", "s3_location_netcdf"])
    assert len(meta) == 16 and url.startswith(f"s3://{s3_bucket}/geofm/output/s3/raw-chips/")
    with storage.local_file_for_read(url, ".nc") as p:
        ds = xr.open_dataset(p).load()
    with rasterio.open(item["assets"]["red"]["href"]) as src:
        red = src.read(1)
    np.testing.assert_array_equal(ds.red.values, red[192:256, 128:192].astype(np.float32))
    assert run_step(cfg, "preprocess").count("skipped") == 1


# ================================= the shared synthetic archive (geofm synth) ======================
@pytest.fixture(scope="module")
def synth_run(synth_scenes: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, list[str]]:
    """The heaviest-cloud date and a clear one of the shared archive, all 12 bands, chips of the synth AOI."""
    heavy = next(s for s in synth_scenes.scene_ids if synth_scenes.sky[s] == "heavy")
    clear = synth_scenes.clear_scene_ids[0]
    cfg = PipelineConfig(aoi_name="synth-pre", aoi=synth_scenes.aoi_path, chip_size=CHIP, workers=1, retries=0,
                         output_root=str(tmp_path_factory.mktemp("synthpre")))
    stage_scenes(cfg.output_root, cfg.aoi_name, synth_scenes, [heavy, clear])
    report = run_step(cfg, "preprocess")
    assert report.ok, report.summary()
    return cfg, [heavy, clear]


def test_synth_only_aoi_chips_same_ground_every_date(synth_run: tuple[PipelineConfig, list[str]],
                                                     synth_scenes: Any) -> None:
    cfg, scenes = synth_run
    aoi = gpd.read_file(synth_scenes.aoi_path).to_crs(synth_scenes.crs).union_all()
    x0, y0 = synth_scenes.origin
    n = synth_scenes.shape[1] // CHIP
    expected = sorted(f"{x}_{y}" for x in range(n) for y in range(n)
                      if (cell := box(x0 + x * 640, y0 - (y + 1) * 640, x0 + (x + 1) * 640, y0 - y * 640))
                      .intersects(aoi) and not cell.touches(aoi))
    assert 0 < len(expected) < n * n  # the AOI is a real subset of the scene
    metas = [preprocess.read_meta(cfg.layout.meta(s)).set_index("chip_id").sort_index() for s in scenes]
    for meta in metas:
        assert sorted(meta.index) == expected
    cols = ["utm_minx", "utm_miny", "utm_maxx", "utm_maxy"]
    assert metas[0][cols].equals(metas[1][cols])
    assert metas[0].geometry.geom_equals_exact(metas[1].geometry, 1e-12).all()
    nc_files = list(Path(cfg.output_root).rglob("*.nc"))
    assert len(nc_files) == 2 * len(expected)


def test_synth_pixels_and_planted_cloud_shares(synth_run: tuple[PipelineConfig, list[str]],
                                               synth_scenes: Any) -> None:
    cfg, (heavy, _) = synth_run
    item = synth_scenes.item(heavy)
    meta = preprocess.read_meta(cfg.layout.meta(heavy))
    with rasterio.open(item["assets"]["scl"]["href"]) as src:
        scl20 = src.read(1)
    for _, row in meta.iterrows():
        win = scl20[row.y_dim * 32:(row.y_dim + 1) * 32, row.x_dim * 32:(row.x_dim + 1) * 32]
        valid = win[win > 0]
        share = np.isin(valid, list(sentinel2.SCL_CLOUD_CLASSES)).sum() / valid.size if valid.size else 1.0
        assert row.cloud_cover_perc == pytest.approx(share, abs=1e-12)
    assert meta.cloud_cover_perc.max() > 0.2  # the heavy-cloud date really has clouds in the AOI
    row = meta.iloc[len(meta) // 2]
    ds = xr.open_dataset(cfg.layout.resolve(row.s3_location_netcdf))
    assert list(ds.attrs["bands"]) == list(sentinel2.L2A_BANDS)
    with rasterio.open(item["assets"]["nir"]["href"]) as src:
        nir = src.read(1, window=((row.y_dim * CHIP, (row.y_dim + 1) * CHIP),
                                  (row.x_dim * CHIP, (row.x_dim + 1) * CHIP)))
    offset = sentinel2.boa_offset_to_subtract(item["properties"])
    np.testing.assert_array_equal(ds.nir.values, np.maximum(nir.astype(np.float32) - offset, 0))
    for name in ("rededge2", "swir22", "nir09"):
        expected = bilinear_reference(item["assets"][name]["href"], ds.x.values, ds.y.values, offset)
        np.testing.assert_allclose(ds[name].values, expected, atol=1e-3, rtol=0)


def test_real_full_tile_jp2_nodata_wedge_gives_missing_share(shared_data: Path, tmp_path: Path) -> None:
    """Whole-tile 120 m JPEG2000 files (georeferenced by .aux.xml sidecars): the grid comes from the
    files, not from the items' 10 m proj:* fields, and the real nodata wedge is counted as missing."""
    folder = shared_data / "s2l2a-33TWL-full120m" / "sentinel-2-l2a" / "S2B_33TWL_20230810_0_L2A"
    x0, y0 = 499980.0, 5100000.0
    aoi = write_aoi(tmp_path / "aoi.geojson", x0 + 10 * 120, y0 - 60 * 120, x0 + 100 * 120, y0 - 10 * 120)
    cfg = PipelineConfig(aoi_name="full", aoi=aoi, output_root=str(tmp_path / "out"), s2_bands=RGBN,
                         chip_size=CHIP, workers=1, retries=0)
    install_item(cfg, json.loads((folder / f"{folder.name}.json").read_text()), folder)
    assert run_step(cfg, "preprocess").ok
    meta = preprocess.read_meta(cfg.layout.meta(folder.name)).set_index("chip_id")
    assert sorted(meta.index) == ["0_0", "1_0"]
    assert (meta.loc["0_0", "utm_minx"], meta.loc["0_0", "utm_maxy"]) == (x0, y0)
    bands = []
    for f in ("B02", "B03", "B04", "B08"):
        with rasterio.open(folder / f"{f}.tif") as src:
            bands.append(src.read(1, window=((0, CHIP), (0, CHIP))))
    missing = np.any(np.stack(bands) == 0, axis=0)
    assert 0 < missing.mean() < 0.2
    assert meta.loc["0_0", "missing_data_perc"] == pytest.approx(missing.mean())
    assert meta.loc["1_0", "missing_data_perc"] == 0.0
    ds = xr.open_dataset(cfg.layout.resolve(meta.loc["0_0", "s3_location_netcdf"]))
    np.testing.assert_array_equal(np.isnan(ds.blue.values), bands[0] == 0)
    np.testing.assert_array_equal(ds.nir.values[~missing], bands[3][~missing].astype(np.float32))


def test_aoi_missing_the_scene_writes_an_empty_meta(tmp_path: Path) -> None:
    aoi = write_aoi(tmp_path / "aoi.geojson", ORIGIN[0] + 50_000, ORIGIN[1] - 50_000, ORIGIN[0] + 51_000,
                    ORIGIN[1] - 49_000)
    cfg = PipelineConfig(aoi_name="e", aoi=aoi, output_root=str(tmp_path / "out"), s2_bands=["red"],
                         chip_size=CHIP, workers=1, retries=0)
    scene = "S2A_33TWL_20230601_0_L2A"
    install_item(cfg, make_scene(tmp_path / "s", scene, 1), tmp_path / "s")
    assert run_step(cfg, "preprocess").results[0].info["chips"] == 0
    meta = preprocess.read_meta(cfg.layout.meta(scene))
    assert len(meta) == 0 and list(meta.columns) == list(columns.META) and meta.crs.to_epsg() == 4326
    assert run_step(cfg, "preprocess").count("skipped") == 1  # an empty scene is complete too
