"""Step 4 writes the consolidated GeoParquet chip by chip (a row group at a time, so memory does not grow
with a grid's chips and dates): the file must be the one that writing all rows at once gives (same rows in
the same Hilbert order, same geo metadata, same row groups), and parts with a column that is all null
in some of them must still make one file. Checked on a real pipeline run's files."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from fixtures.relative_run import RelativeRun
from geofm import geoparquet, storage

pytestmark = pytest.mark.slow


def test_streamed_consolidated_output_equals_the_whole_frame_written_at_once(relative_run: RelativeRun,
                                                                             tmp_path) -> None:
    lay = relative_run.layout
    grid = storage.list_folders(lay.consolidated_root)[0]
    streamed = lay.consolidated_output(grid)
    frames = [gpd.read_parquet(u) for u in lay.processed_files(grid)]
    whole = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    whole = whole.sort_values(["y_dim", "x_dim", "date"], kind="stable").reset_index(drop=True)
    at_once = str(tmp_path / "at_once.parquet")
    geoparquet.write(at_once, whole)

    got, want = gpd.read_parquet(streamed), gpd.read_parquet(at_once)
    assert len(got) == len(whole) and got["chip_id"].nunique() == len(frames)
    pd.testing.assert_frame_equal(got.drop(columns="patch_sim_map"), want.drop(columns="patch_sim_map"))
    np.testing.assert_array_equal(np.stack(got["patch_sim_map"]), np.stack(want["patch_sim_map"]))
    meta_got, meta_want = pq.ParquetFile(streamed).metadata, pq.ParquetFile(at_once).metadata
    geo_got, geo_want = (json.loads(m.metadata[b"geo"]) for m in (meta_got, meta_want))
    assert geo_got["columns"]["geometry"] == geo_want["columns"]["geometry"]  # bbox, covering, types, CRS
    assert geo_got["version"] == "1.1.0"
    assert meta_got.num_row_groups == meta_want.num_row_groups
    assert meta_got.row_group(0).column(0).compression == "ZSTD"


def test_parts_with_an_all_null_column_and_several_row_groups(tmp_path) -> None:
    """Chips whose maps are all null in one part, 5,000 rows in row groups of 2,048: one readable file."""
    parts, schemas = [], []
    for i in range(5):
        n = 1000
        part = gpd.GeoDataFrame({
            "chip_id": [f"{i}_0"] * n, "k": np.arange(n) + i * n,
            "patch_sim_map": [None] * n if i == 1 else list(np.full((n, 4), float(i))),
        }, geometry=[shapely.box(i, 0, i + 1, 1)] * n, crs="EPSG:4326")
        parts.append(part)
        schemas.append(geoparquet.to_arrow(part).schema)
    types, geo = geoparquet.parts_schema(schemas)
    path = tmp_path / "parts.parquet"
    with geoparquet.PartsWriter(path, 2048, types, geo) as writer:
        for part in parts:
            writer.write(part)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 5000 and [meta.row_group(g).num_rows for g in range(3)] == [2048, 2048, 904]
    back = gpd.read_parquet(path)
    assert back["k"].tolist() == list(range(5000))
    assert back["patch_sim_map"].iloc[1500] is None and list(back["patch_sim_map"].iloc[4999]) == [4.0] * 4
    assert json.loads(meta.metadata[b"geo"])["columns"]["geometry"]["bbox"] == [0.0, 0.0, 5.0, 1.0]
    assert len(gpd.read_parquet(path, bbox=(3.2, 0.2, 3.8, 0.8))) == 1000  # the covering works
