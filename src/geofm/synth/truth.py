"""What a synthetic archive's planted truth says about chips and polygons (for tests, benchmarks, demo).

The synthetic extent starts at the tile's upper-left corner, so the chip ``<x>_<y>`` of the pipeline's
tile-anchored grid covers rows ``y * chip_size ... (y + 1) * chip_size`` (same for columns) of the
10 m land-cover and truth grids.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import rasterio

from geofm import storage


def _chip_means(mask: np.ndarray, chip_size: int) -> dict[str, float]:
    c = chip_size
    n_rows, n_cols = mask.shape[0] // c, mask.shape[1] // c
    return {f"{x}_{y}": float(mask[y * c:(y + 1) * c, x * c:(x + 1) * c].mean())
            for y in range(n_rows) for x in range(n_cols)}


def class_shares(landcover_url: str, class_id: int, chip_size: int) -> dict[str, float]:
    """chip_id -> share of its pixels in ``class_id`` on a land-cover raster of the archive."""
    with storage.local_file_for_read(landcover_url, ".tif") as path, rasterio.open(path) as ds:
        lc = ds.read(1)
    return _chip_means(lc == class_id, chip_size)


def changed_mask(truth_url: str, shape: tuple[int, int]) -> np.ndarray:
    """The planted changes as a boolean mask of the 10 m grid (``shape``: the archive's ``shape``)."""
    mask = np.zeros(shape, bool)
    for feat in storage.read_json(truth_url)["features"]:
        p = feat["properties"]
        mask[p["row_start"]:p["row_stop"], p["col_start"]:p["col_stop"]] = True
    return mask


def change_shares(truth_url: str, shape: tuple[int, int], chip_size: int) -> dict[str, float]:
    """chip_id -> share of its pixels inside a planted change."""
    return _chip_means(changed_mask(truth_url, shape), chip_size)


def iou(polygons: gpd.GeoDataFrame, truth_url: str, within: Any = None) -> float:
    """Intersection over union of ``polygons`` and the planted change polygons (areas in the truth's
    UTM CRS), both clipped to ``within`` (a WGS84 geometry, e.g. the analysed chips) when given."""
    with storage.local_file_for_read(truth_url, ".geojson") as path:
        truth = gpd.read_file(path)
    if truth.empty:
        return float("nan")
    crs = str(truth["crs"].iloc[0])
    t = truth.to_crs(crs).union_all()
    a = polygons.to_crs(crs).union_all() if len(polygons) else None
    if within is not None:
        w = gpd.GeoSeries([within], crs=4326).to_crs(crs).iloc[0]
        t = t.intersection(w)
        a = a.intersection(w) if a is not None else None
    if a is None or a.is_empty:
        return 0.0
    union = a.union(t).area
    return float(a.intersection(t).area / union) if union > 0 else float("nan")
