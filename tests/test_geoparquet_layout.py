"""Every GeoParquet geofm writes is GeoParquet 1.1 laid out for spatial range reads: a ``bbox`` covering
column declared in the geo metadata (so ``gpd.read_parquet(path, bbox=...)`` works and returns the right
rows), ZSTD, row groups sized by :func:`geofm.geoparquet.row_group_rows`, rows in Hilbert order (a chip's
dates kept together and sorted). Checked on a real pipeline run's files and on a tile-sized table."""

from __future__ import annotations

import io
import json
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from fixtures.relative_run import RelativeRun
from geofm import geoparquet, storage

pytestmark = pytest.mark.slow


def run_files(run: RelativeRun) -> dict[str, str]:
    lay = run.layout
    grid = storage.list_folders(lay.consolidated_root)[0]
    return {"meta": lay.meta_files()[0], "analyze_rows": lay.analyze_rows,
            "processed": lay.processed_files(grid)[0], "consolidated": lay.consolidated_output(grid)}


def assert_geoparquet_11_layout(path: str) -> pq.FileMetaData:
    meta = pq.ParquetFile(path).metadata
    geo = json.loads(meta.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["covering"] == {"bbox": {
        "xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"], "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}}
    table = pq.read_table(path)
    assert meta.num_row_groups == max(1, math.ceil(meta.num_rows / geoparquet.row_group_rows(table)))
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            assert group.column(c).compression == "ZSTD", group.column(c).path_in_schema
        names = {group.column(c).path_in_schema: group.column(c) for c in range(group.num_columns)}
        assert names["bbox.xmin"].statistics.has_min_max  # what readers skip row groups by
    return meta


def test_pipeline_tables_are_geoparquet_11(relative_run: RelativeRun) -> None:
    for name, url in run_files(relative_run).items():
        assert_geoparquet_11_layout(url)
        frame = gpd.read_parquet(url)
        assert "bbox" not in frame.columns, name  # readers get the table as written, covering aside
        dist = frame.geometry.hilbert_distance().to_numpy()
        assert (np.diff(dist) >= 0).all(), f"{name}: rows not in Hilbert order"
        if name in ("processed", "consolidated"):  # one chip's rows stay together, sorted by date
            for _, rows in frame.groupby("chip_id", sort=False):
                assert np.ptp(rows.index) == len(rows) - 1 and rows["date"].is_monotonic_increasing, name


def test_bbox_read_returns_the_rows_meeting_the_box(relative_run: RelativeRun) -> None:
    url = run_files(relative_run)["consolidated"]
    full = gpd.read_parquet(url)
    minx, miny, maxx, maxy = full.total_bounds
    box = (minx, miny, (minx + maxx) / 2, (miny + maxy) / 2)  # the south-west quarter
    got = gpd.read_parquet(url, bbox=box)
    b = full.geometry.bounds
    want = full[(b.minx <= box[2]) & (b.maxx >= box[0]) & (b.miny <= box[3]) & (b.maxy >= box[1])]
    assert 0 < len(got) < len(full)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def tile_year_table(n_side: int = 42, dates: int = 24) -> gpd.GeoDataFrame:
    """Chip polygons of a 42 x 42 chip tile x ``dates`` dates, with a 256-float patch map per row (as a
    tile-year of step 3/4 rows carries), rows in chip-then-date order as step 4 reads them."""
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(n_side), np.arange(n_side))
    cells = [shapely.box(15 + x * 0.03, 45 - (y + 1) * 0.03, 15 + (x + 1) * 0.03, 45 - y * 0.03)
             for x, y in zip(xs.ravel(), ys.ravel(), strict=True)]
    n = len(cells) * dates
    return gpd.GeoDataFrame({
        "chip_id": np.repeat([f"{x}_{y}" for x, y in zip(xs.ravel(), ys.ravel(), strict=True)], dates),
        "date": np.tile(pd.date_range("2023-01-01", periods=dates, freq="15D"), len(cells)),
        "cosine_sim": rng.random(n),
        "patch_sim_map": list(rng.random((n, 256)).astype(np.float32)),
    }, geometry=np.repeat(cells, dates), crs="EPSG:4326")


def test_a_tile_sized_table_skips_row_groups_by_bbox(tmp_path) -> None:
    frame = tile_year_table()
    url = str(tmp_path / "tile.parquet")
    geoparquet.write(url, frame)
    meta = assert_geoparquet_11_layout(url)
    assert meta.num_row_groups >= 4
    # Hilbert order makes each row group a compact area: a one-chip box meets few of them (any order
    # that is not spatial would make every group's bbox span the tile: all groups met)
    groups = []
    for g in range(meta.num_row_groups):
        stats = {meta.row_group(g).column(c).path_in_schema: meta.row_group(g).column(c).statistics
                 for c in range(meta.row_group(g).num_columns)}
        groups.append((stats["bbox.xmin"].min, stats["bbox.ymin"].min, stats["bbox.xmax"].max,
                       stats["bbox.ymax"].max))
    b = np.array(groups)
    met = []
    for x in range(42):
        for y in range(42):  # a box inside chip x_y
            q = (15 + (x + 0.2) * 0.03, 45 - (y + 0.8) * 0.03, 15 + (x + 0.8) * 0.03, 45 - (y + 0.2) * 0.03)
            met.append(int(((b[:, 0] <= q[2]) & (b[:, 2] >= q[0]) & (b[:, 1] <= q[3]) & (b[:, 3] >= q[1])).sum()))
    assert np.mean(met) < 2 and max(met) <= 3, (np.mean(met), max(met), meta.num_row_groups)
    query = (15 + 20.2 * 0.03, 45 - 20.8 * 0.03, 15 + 20.4 * 0.03, 45 - 20.6 * 0.03)
    got = gpd.read_parquet(url, bbox=query)
    assert set(got["chip_id"]) == {"20_20"} and len(got) == 24
    assert got["date"].is_monotonic_increasing
    np.testing.assert_array_equal(np.stack(got["patch_sim_map"]),
                                  np.stack(frame.loc[frame["chip_id"] == "20_20", "patch_sim_map"]))


def test_rows_without_geometry_go_last_and_empty_tables_write() -> None:
    frame = gpd.GeoDataFrame({"a": [1, 2, 3]}, geometry=[shapely.box(5, 5, 6, 6), None, shapely.box(0, 0, 1, 1)],
                             crs="EPSG:4326")
    back = gpd.read_parquet(io.BytesIO(geoparquet.to_bytes(frame)))
    assert back["a"].tolist() == [3, 1, 2] and back.geometry.iloc[2] is None
    empty = gpd.read_parquet(io.BytesIO(geoparquet.to_bytes(frame.iloc[:0])))
    assert len(empty) == 0 and list(empty.columns) == ["a", "geometry"]


def test_older_snappy_files_without_covering_are_still_read(tmp_path) -> None:
    """Files written before GeoParquet 1.1 read as before; only bbox reads need the covering (rerun the
    step with --force to rewrite them)."""
    frame = tile_year_table(n_side=4, dates=2)
    old = tmp_path / "old.parquet"
    frame.to_parquet(old, index=False, compression="snappy")
    pd.testing.assert_frame_equal(geoparquet.read(str(old)), frame)
    with pytest.raises(ValueError, match="bbox"):
        gpd.read_parquet(old, bbox=(15, 44, 16, 45))
