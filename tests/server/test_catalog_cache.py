"""The explorer's catalog serves new outputs after step 4 reran, without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import pandas as pd
from shapely.geometry import box

from geofm import geoparquet
from geofm.layout import Layout
from geofm.server.catalog import Catalog


def _write(lay: Layout, grid: str, sims: list[float]) -> None:
    frame = gpd.GeoDataFrame({
        "chip_id": [f"{i}_0" for i in range(len(sims))], "x_dim": list(range(len(sims))), "y_dim": 0,
        "date": pd.Timestamp("2023-06-01"), "cosine_sim": sims,
        "geometry": [box(16 + i * 0.01, 46, 16.01 + i * 0.01, 46.01) for i in range(len(sims))],
    }, crs="EPSG:4326")
    geoparquet.write(lay.consolidated_output(grid), frame)


def test_table_reloads_when_the_consolidated_output_changes(tmp_path: Path) -> None:
    lay = Layout(str(tmp_path), "aoi")
    _write(lay, "33TWL", [0.9, 0.8])
    catalog = Catalog(str(tmp_path))
    assert list(catalog.table("aoi", "33TWL")["cosine_sim"]) == [0.9, 0.8]
    assert catalog.table("aoi", "33TWL") is catalog.table("aoi", "33TWL")  # cached while unchanged
    _write(lay, "33TWL", [0.1, 0.2, 0.3])  # a rerun of step 4
    out = Path(lay.consolidated_output("33TWL"))
    os.utime(out, ns=(out.stat().st_atime_ns, out.stat().st_mtime_ns + 1_000_000_000))
    assert list(catalog.table("aoi", "33TWL")["cosine_sim"]) == [0.1, 0.2, 0.3]
