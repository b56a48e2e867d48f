"""Fine-tuning data: labels line up with chips pixel for pixel (raster labels in another CRS, vector
labels), spatial splits keep every place on one side, augmentations move image and label alike, band
mapping by name/wavelength, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from pydantic import ValidationError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from shapely.geometry import box
from shapely.ops import transform as shp_transform

from geofm.errors import ConfigError, NotFoundError
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.data import (
    ChipRef,
    LabelSource,
    assert_disjoint,
    augment,
    expand_images,
    model_bands,
    normalise,
    prepare_data,
    raster_info,
    read_window,
    spatial_split,
    tile_chips,
)
from geofm.sentinel2 import band

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5100000.0)
CLASSES = [
    {"id": 0, "name": "nodata", "color": "#000000"},
    {"id": 1, "name": "forest", "color": "#1b5e20"},
    {"id": 2, "name": "water", "color": "#1565c0"},
    {"id": 3, "name": "urban", "color": "#c62828"},
    {"id": 4, "name": "crop", "color": "#f9a825"},
]
ESA_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def write_image(path: Path, size: int = 64, origin: tuple[float, float] = ORIGIN, seed: int = 0,
                names: list[str] = ESA_BANDS) -> Path:
    """A small multi-band GeoTIFF in UTM 33N, 10 m, band descriptions = ESA ids."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(500, 4000, (len(names), size, size)).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=len(names), dtype="float32",
                       crs=UTM, transform=Affine(10, 0, origin[0], 0, -10, origin[1])) as dst:
        dst.write(data)
        for i, n in enumerate(names):
            dst.set_band_description(i + 1, n)
    return path


def write_labels(path: Path, labels: np.ndarray, transform: Affine | None = None, crs: str | CRS = UTM,
                 nodata: int | None = None) -> Path:
    """A uint8 label GeoTIFF; by default on the 10 m UTM grid at ``ORIGIN``."""
    transform = transform or Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    h, w = labels.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=crs,
                       transform=transform, nodata=nodata) as dst:
        dst.write(labels.astype(np.uint8), 1)
    return path


def pattern(size: int) -> np.ndarray:
    """A label pattern that any one-pixel shift would break (neighbours always differ)."""
    r, c = np.mgrid[0:size, 0:size]
    return (((r * 7 + c * 3) // 1) % 4 + 1).astype(np.uint8)


def cfg_for(tmp_path: Path, images: list[str], labels: str, **kw) -> SegmentationConfig:
    base = dict(images=images, labels=labels, classes=CLASSES, chip_size=32, output_dir=str(tmp_path / "run"))
    base.update(kw)
    return SegmentationConfig(**base)


def test_raster_labels_in_another_crs_line_up_pixel_for_pixel(tmp_path: Path) -> None:
    image = write_image(tmp_path / "scene.tif")
    truth = pattern(64)
    src_transform = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    # the labels, warped (nearest) to a finer WGS84 grid: another CRS, another grid
    dst_crs = CRS.from_epsg(4326)
    left, bottom, right, top = ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1]
    t, w, h = calculate_default_transform(UTM, dst_crs, 64, 64, left, bottom, right, top, resolution=2e-5)
    warped = np.zeros((h, w), np.uint8)
    reproject(truth, warped, src_transform=src_transform, src_crs=UTM, dst_transform=t, dst_crs=dst_crs,
              resampling=Resampling.nearest, dst_nodata=0)
    labels = write_labels(tmp_path / "labels_wgs84.tif", warped, t, crs=dst_crs, nodata=0)

    cfg = cfg_for(tmp_path, [str(image)], str(labels))
    chips = tile_chips(raster_info(str(image)), 32)
    assert len(chips) == 4
    source = LabelSource(str(labels), cfg)
    for chip in chips:
        got = source.for_chip(chip)
        want = truth[chip.row_off:chip.row_off + 32, chip.col_off:chip.col_off + 32]
        np.testing.assert_array_equal(got, want)


def test_labels_outside_the_label_raster_are_ignored(tmp_path: Path) -> None:
    image = write_image(tmp_path / "scene.tif")
    labels = write_labels(tmp_path / "half.tif", np.full((64, 32), 2, np.uint8))
    cfg = cfg_for(tmp_path, [str(image)], str(labels))
    chip = next(c for c in tile_chips(raster_info(str(image)), 32) if c.col_off == 32)
    assert (LabelSource(str(labels), cfg).for_chip(chip) == cfg.ignore_id).all()


@pytest.mark.parametrize("fmt", ["geojson", "parquet"])
def test_vector_labels_rasterise_onto_each_chip(tmp_path: Path, fmt: str) -> None:
    image = write_image(tmp_path / "scene.tif")
    # pixel-aligned rectangles in UTM (rows/cols of the 64x64 grid), stored in WGS84
    rects = [((5, 20), (3, 40), "water"), ((30, 60), (10, 25), "urban"), ((40, 50), (45, 62), 1)]
    from pyproj import Transformer

    to_wgs = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform
    geoms, names = [], []
    for (r0, r1), (c0, c1), name in rects:
        poly = box(ORIGIN[0] + c0 * 10, ORIGIN[1] - r1 * 10, ORIGIN[0] + c1 * 10, ORIGIN[1] - r0 * 10)
        geoms.append(shp_transform(to_wgs, poly.segmentize(5)))
        names.append(name)
    gdf = gpd.GeoDataFrame({"landcover": [str(n) for n in names]}, geometry=geoms, crs="EPSG:4326")
    path = tmp_path / f"labels.{fmt}"
    gdf.to_parquet(path) if fmt == "parquet" else gdf.to_file(path, driver="GeoJSON")

    cfg = cfg_for(tmp_path, [str(image)], str(path), label_attribute="landcover")
    want = np.zeros((64, 64), np.uint8)
    ids = {"water": 2, "urban": 3, "1": 1}
    for (r0, r1), (c0, c1), name in rects:
        want[r0:r1, c0:c1] = ids[str(name)]
    source = LabelSource(str(path), cfg)
    for chip in tile_chips(raster_info(str(image)), 32):
        got = source.for_chip(chip)
        np.testing.assert_array_equal(got, want[chip.row_off:chip.row_off + 32, chip.col_off:chip.col_off + 32])


def test_spatial_split_has_no_chip_on_both_sides(tmp_path: Path) -> None:
    # two dates of one 128 px scene, plus a raster shifted by half a chip that overlaps them
    images = [write_image(tmp_path / f"d{i}.tif", 128, seed=i) for i in range(2)]
    images.append(write_image(tmp_path / "shifted.tif", 64, (ORIGIN[0] + 160, ORIGIN[1] - 160), seed=5))
    chips = [c for p in images for c in tile_chips(raster_info(str(p)), 32)]
    assert len(chips) == 16 + 16 + 4
    parts = spatial_split(chips, block_chips=1, val_fraction=0.25, test_fraction=0.2, seed=3)
    assert sum(len(v) for v in parts.values()) == len(chips)
    assert all(parts[k] for k in ("train", "val", "test"))
    sides = {}
    for side, cs in parts.items():
        for c in cs:
            assert sides.setdefault(c.location, side) == side, f"{c.location} on two sides"
    # no footprint of one side overlaps a footprint of another (the shifted chips joined their neighbours)
    for a in parts:
        for b in parts:
            if a < b:
                for ca in parts[a]:
                    for cb in parts[b]:
                        x0, y0, x1, y1 = ca.bounds
                        u0, v0, u1, v1 = cb.bounds
                        assert not (x0 < u1 and x1 > u0 and y0 < v1 and y1 > v0)
    # bigger blocks: 2x2 chips per block, still disjoint, and the same seed gives the same split
    again = spatial_split(chips, block_chips=2, val_fraction=0.25, test_fraction=0.0, seed=3)
    assert not again["test"] and again["val"]
    assert spatial_split(chips, 2, 0.25, 0.0, 3) == again


def test_assert_disjoint_catches_a_leaky_split() -> None:
    a = ChipRef("x.tif", 0, 0, 32, UTM, (10, 0, 0, 0, -10, 320))
    b = ChipRef("y.tif", 0, 0, 32, UTM, (10, 0, 0, 0, -10, 320))  # same place, another date
    c = ChipRef("y.tif", 0, 0, 32, UTM, (10, 0, 100, 0, -10, 320))  # overlaps a
    with pytest.raises(AssertionError, match="both sides"):
        assert_disjoint({"train": [a], "val": [b]})
    with pytest.raises(AssertionError, match="overlapping"):
        assert_disjoint({"train": [a], "val": [c]})


def test_too_few_blocks_to_split_is_a_clear_error(tmp_path: Path) -> None:
    chips = tile_chips(raster_info(str(write_image(tmp_path / "s.tif", 32))), 32)
    with pytest.raises(ValueError, match="1 spatial blocks cannot be split"):
        spatial_split(chips, block_chips=1, val_fraction=0.2, test_fraction=0.0, seed=0)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_image_and_label_alike(k: int, flip: bool) -> None:
    label = torch.from_numpy(np.random.default_rng(0).integers(0, 100, (16, 16)))
    pixels = torch.stack([label.float(), -label.float()])
    p2, l2 = augment(pixels, label, k, flip)
    assert torch.equal(p2[0].long(), l2) and torch.equal(p2[1].long(), -l2)
    if k or flip:
        assert not torch.equal(l2, label)
    # a 90-degree rotation moves the top-left pixel to the bottom-left
    if k == 1 and not flip:
        assert l2[-1, 0] == label[0, 0]


def test_bands_are_mapped_by_name_and_normalised_with_clay_stats(tmp_path: Path) -> None:
    l1c = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    picked = model_bands(l1c)
    assert [b.band_id for _, b in picked] == ESA_BANDS  # no B01/B09 (no Clay stats), no B10 (not L2A)
    assert [i for i, _ in picked] == [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]
    assert picked[2][1].wavelength == pytest.approx(0.665)
    raw = np.full((2, 2, 2), 0.2, np.float32)
    raw[0, 0, 0] = np.nan
    out = normalise(raw, [band("B04"), band("B08")], value_scale=10000)
    assert out[0, 1, 1] == pytest.approx((2000 - 1552) / 1888)
    assert out[1, 0, 0] == pytest.approx((2000 - 2743) / 1742)
    assert out[0, 0, 0] == 0.0  # nodata -> band mean


def test_read_window_and_prepare_data(tmp_path: Path) -> None:
    image = write_image(tmp_path / "scene.tif", 96)
    info = raster_info(str(image))
    chip = tile_chips(info, 32)[4]
    with rasterio.open(image) as src:
        want = src.read(3, window=chip.window)
    np.testing.assert_array_equal(read_window(info, chip.window, [2])[0], want)
    labels = write_labels(tmp_path / "labels.tif", pattern(96), info.transform)
    cfg = cfg_for(tmp_path, [str(tmp_path / "*.tif").replace("*.tif", "scene.tif")], str(labels),
                  val_fraction=0.2, test_fraction=0.12)
    data = prepare_data(cfg)
    assert [b.band_id for b in data.bands] == ESA_BANDS
    assert data.gsd == pytest.approx(10.0)
    assert sum(len(s.chips) for s in data.splits.values()) == 9
    train = data.splits["train"]
    assert train.pixels.shape[1:] == (10, 32, 32) and train.labels.shape[1:] == (32, 32)
    c0 = train.chips[0]
    np.testing.assert_array_equal(train.labels[0], pattern(96)[c0.row_off:c0.row_off + 32, c0.col_off:c0.col_off + 32])


# ---- bad input -------------------------------------------------------------------------------------
def test_unknown_label_ids_name_the_file(tmp_path: Path) -> None:
    image = write_image(tmp_path / "scene.tif")
    labels = write_labels(tmp_path / "bad.tif", np.full((64, 64), 9, np.uint8))
    with pytest.raises(ValueError, match=r"bad.tif.*\[9\].*class table"):
        LabelSource(str(labels), cfg_for(tmp_path, [str(image)], str(labels)))


def test_vector_label_errors(tmp_path: Path) -> None:
    image = str(write_image(tmp_path / "scene.tif"))
    poly = box(ORIGIN[0], ORIGIN[1] - 100, ORIGIN[0] + 100, ORIGIN[1])
    path = tmp_path / "v.geojson"
    gpd.GeoDataFrame({"class": ["lava"]}, geometry=[poly], crs=UTM).to_file(path, driver="GeoJSON")
    with pytest.raises(ValueError, match=r"v.geojson.*'lava'.*class table"):
        LabelSource(str(path), cfg_for(tmp_path, [image], str(path)))
    with pytest.raises(ValueError, match=r"no column 'kind'"):
        LabelSource(str(path), cfg_for(tmp_path, [image], str(path), label_attribute="kind"))
    with pytest.raises(NotFoundError, match="labels not found"):
        LabelSource(str(tmp_path / "missing.geojson"), cfg_for(tmp_path, [image], str(path)))


def test_image_errors(tmp_path: Path) -> None:
    small = write_image(tmp_path / "small.tif", 16)
    with pytest.raises(ValueError, match=r"small.tif.*smaller than chip_size 32"):
        tile_chips(raster_info(str(small)), 32)
    nameless = tmp_path / "nameless.tif"
    with rasterio.open(nameless, "w", driver="GTiff", width=8, height=8, count=2, dtype="float32", crs=UTM,
                       transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"nameless.tif.*set `bands`"):
        raster_info(str(nameless))
    assert raster_info(str(nameless), ["B04", "B08"]).band_names == ("B04", "B08")
    with pytest.raises(NotFoundError, match="no image rasters match"):
        expand_images([str(tmp_path / "nothing*.tif")])
    with pytest.raises(NotFoundError, match="image raster not found"):
        expand_images([str(tmp_path / "absent.tif")])
    with pytest.raises(ValueError, match="none of the bands"):
        model_bands(["B01", "B10"])


def test_config_errors(tmp_path: Path) -> None:
    ok = dict(images=["a.tif"], labels="l.tif", classes=CLASSES)
    with pytest.raises(ValidationError, match="chip_size 30 is not a multiple of clay-tiny's patch size 8"):
        SegmentationConfig(**ok, chip_size=30)
    with pytest.raises(ValidationError, match="class ids repeat"):
        SegmentationConfig(**{**ok, "classes": CLASSES + [{"id": 1, "name": "again"}]})
    with pytest.raises(ValidationError, match="not #rrggbb"):
        SegmentationConfig(**{**ok, "classes": [{"id": 1, "name": "a", "color": "red"}, CLASSES[0]]})
    with pytest.raises(ValidationError, match="unknown Sentinel-2 band"):
        SegmentationConfig(**ok, bands=["B99"])
    with pytest.raises(ValidationError, match="leave blocks for training"):
        SegmentationConfig(**ok, val_fraction=0.6, test_fraction=0.5)
    path = tmp_path / "seg.yaml"
    path.write_text(json.dumps({**ok, "chip_size": 64}))
    cfg = SegmentationConfig.from_yaml(path)
    assert cfg.images == [str(tmp_path / "a.tif")] and cfg.chip_size == 64  # paths relative to the file
    assert cfg.num_classes == 5 and cfg.class_names[2] == "water"
    assert cfg.colormap()[2] == (0x15, 0x65, 0xC0, 255) and cfg.colormap()[0][3] == 0
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        SegmentationConfig.from_yaml(tmp_path / "absent.yaml")


def test_chip_metadata_mode_feeds_date_and_place(tmp_path: Path) -> None:
    from datetime import datetime

    from geofm.finetune.data import chip_metadata
    from geofm.models import registry

    t = (10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    when = datetime(2023, 6, 1, 10)
    meta = chip_metadata(ChipRef("a.tif", 0, 0, 32, UTM, t, when))
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(ORIGIN[0] + 160, ORIGIN[1] - 160)
    np.testing.assert_allclose(meta, registry.time_latlon([when], [lat], [lon])[0], atol=1e-5)
    undated = chip_metadata(ChipRef("a.tif", 0, 0, 32, UTM, t, None))
    assert (undated[:4] == 0).all() and np.allclose(undated[4:], meta[4:])


def test_cli_reports_bad_config_clearly(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geofm.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["finetune", "train", "--config", str(tmp_path / "absent.yaml")])
    assert r.exit_code == 2 and "config file not found" in r.output
    path = tmp_path / "seg.yaml"
    path.write_text(json.dumps({"images": ["a.tif"], "labels": "l.tif", "classes": CLASSES}))
    r = runner.invoke(app, ["finetune", "train", "--config", str(path), "--set", "epochz=3"])
    assert r.exit_code == 2 and "unknown parameter 'epochz'" in r.output
    r = runner.invoke(app, ["finetune", "train", "--config", str(path), "--set", "chip_size=20"])
    assert r.exit_code == 2 and "chip_size 20 is not a multiple of clay-tiny's patch size 8" in " ".join(r.output.split())
    r = runner.invoke(app, ["finetune", "train", "--config", str(path)])
    assert r.exit_code == 2 and "image raster not found" in r.output
