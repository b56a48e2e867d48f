"""``geofm finetune predict``'s COGs: valid Cloud-Optimized GeoTIFFs (rio-cogeo's validator, no warnings),
tiled, with overviews, DEFLATE with the floating-point predictor (3) for the float32 probabilities and none
for the uint8 class map (categories: differencing them makes the file larger), and the pixels written are
the pixels read (NaN included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from geofm.finetune.config import SegmentationConfig
from geofm.finetune.predict import Prediction, write_class_cog, write_probability_cog

CLASSES = [{"id": 0, "name": "nodata", "color": "#000000"}, {"id": 1, "name": "forest", "color": "#147828"},
           {"id": 2, "name": "water", "color": "#1e3cc8"}]


@pytest.fixture(scope="module")
def prediction() -> Prediction:
    """A 1,100 x 900 px prediction with smooth probabilities (as a model gives) and a nodata corner."""
    h, w = 1100, 900
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    water = 1 / (1 + np.exp(-(np.sin(xx / 90) + np.cos(yy / 70)) * 3))
    probs = np.stack([np.zeros_like(water), 1 - water, water]).astype(np.float32)
    classes = probs.argmax(0).astype(np.uint8)
    probs[:, :100, :150] = np.nan
    classes[:100, :150] = 0
    return Prediction(classes, probs, CRS.from_epsg(32633), Affine(10, 0, 499980, 0, -10, 5100000))


def _cfg(tmp_path: Path) -> SegmentationConfig:
    return SegmentationConfig(images=[str(tmp_path)], labels=str(tmp_path), classes=CLASSES)


def _check_cog(path: Path, predictor: str | None) -> rasterio.DatasetReader:
    valid, errors, warnings = cog_validate(str(path), strict=True, quiet=True)
    assert valid and not errors and not warnings, (errors, warnings)
    src = rasterio.open(path)
    structure = src.tags(ns="IMAGE_STRUCTURE")
    assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
    assert structure.get("PREDICTOR") == predictor
    assert src.block_shapes[0] == (512, 512) and src.overviews(1) == [2, 4]
    return src


def test_class_cog_without_predictor(prediction: Prediction, tmp_path: Path) -> None:
    path = tmp_path / "classes.tif"
    write_class_cog(prediction, _cfg(tmp_path), str(path))
    with _check_cog(path, None) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 0
        np.testing.assert_array_equal(src.read(1), prediction.classes)
        assert set(np.unique(src.read(1, out_shape=(275, 225)))) <= {0, 1, 2}  # nearest overviews: ids only


def test_probability_cog_uses_predictor_3(prediction: Prediction, tmp_path: Path) -> None:
    path = tmp_path / "probabilities.tif"
    write_probability_cog(prediction, _cfg(tmp_path), str(path))
    with _check_cog(path, "3") as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata) and src.descriptions == ("nodata", "forest", "water")
        np.testing.assert_array_equal(src.read(), prediction.probabilities)  # NaN where NaN, bit for bit
        over = src.read(3, out_shape=(275, 225))
        assert 0 < np.nanmin(over) and np.nanmax(over) < 1  # averaged overviews: probabilities in between
    plain = tmp_path / "plain.tif"  # the same data without a predictor is larger
    with rasterio.open(plain, "w", driver="COG", width=900, height=1100, count=3, dtype="float32",
                       compress="deflate", blocksize=512) as dst:
        dst.write(prediction.probabilities)
    assert path.stat().st_size < plain.stat().st_size
