"""Column names of the tables the steps write (docs/formats.md): the one schema that the steps, the
explorer and the test fixtures share."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Step 1's chip meta, in file order (one row per chip of a scene).
META: tuple[str, ...] = (
    "x_dim", "y_dim", "chip_id", "date", "datetime", "aoi_name", "origin_tile", "mgrs_grid", "chip_size",
    "gsd", "file_name", "geometry", "crs", "utm_minx", "utm_miny", "utm_maxx", "utm_maxy", "centroid_lat",
    "centroid_lon", "cloud_cover_perc", "missing_data_perc", "s3_location_netcdf",
    "s3_location_png_thumbnail",
)
# Chip files listed by the meta.
FILE_COLUMNS: tuple[str, ...] = ("s3_location_netcdf", "s3_location_png_thumbnail")
# What step 2 adds to the meta, in file order.
EMBED: tuple[str, ...] = (
    "year", "month", "s3_location_cls_emb", "s3_location_patch_emb", "model", "embedding_dim",
    "embedding_status",
)
# The embedding file column of each embedding kind.
EMBEDDING_FILE: dict[str, str] = {"patch": "s3_location_patch_emb", "cls": "s3_location_cls_emb"}
# What identifies a chip-date and its quality: the explorer's index of chips and dates.
CHIP_INDEX: tuple[str, ...] = (
    "chip_id", "x_dim", "y_dim", "date", "origin_tile", "chip_size", "mgrs_grid", "cloud_cover_perc",
    "missing_data_perc",
)
# Step 3's per-date change columns that a chip's time series carries (those present are sent).
SERIES: tuple[str, ...] = (
    "cosine_sim", "patch_sim_mean", "patch_sim_p10", "patch_changed_share", "cloud_cover_perc",
    "missing_data_perc",
)


def series_fields(names: Iterable[str]) -> list[str]:
    """The time-series fields among column ``names``: :data:`SERIES` in order, then the PCA components
    (``<kind>_emb_pca_<n>``) by kind and number (``pca_2`` before ``pca_10``)."""
    names = list(names)
    pca = sorted((c for c in names if re.search(r"_pca_\d+$", c)),
                 key=lambda c: (c.rsplit("_", 1)[0], int(c.rsplit("_", 1)[1])))
    return [c for c in SERIES if c in names] + pca
