"""GeoParquet tables at URLs (local or s3://): read and atomic write.

Every GeoParquet geofm writes goes through :func:`write` and is GeoParquet 1.1 laid out for spatial range
reads (docs/formats.md "GeoParquet"): a ``bbox`` covering column (``gpd.read_parquet(url, bbox=...)``,
DuckDB and GDAL skip row groups by its statistics), rows in Hilbert order of their geometry (rows with
one geometry keep their order, so a chip's dates stay together and sorted), ZSTD compression and row
groups of about :data:`ROW_GROUP_BYTES`.
"""

from __future__ import annotations

import io

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geofm import storage

COMPRESSION = "zstd"
# ZSTD level: decompression speed does not depend on it; level 9 gives most of what 15+ gives on these
# tables at a fraction of the time (BENCHMARKS.md, "GeoParquet").
COMPRESSION_LEVEL = 9
# A bbox read fetches whole row groups: a group should be one efficient ranged GET (a few MB compressed),
# while a whole-tile-year table (~90,000 rows) keeps its groups (and so its footer) few. Rows per group
# follow from the table's mean row size, within the bounds below (the upper one is the GeoParquet
# community's lower recommendation, for tables of small rows).
ROW_GROUP_BYTES = 8 * 2**20
MIN_ROW_GROUP_ROWS = 2_048
MAX_ROW_GROUP_ROWS = 50_000


def read(url: str, columns: list[str] | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
    """The GeoParquet file at ``url`` as a GeoDataFrame; with ``columns``, only those of them the file
    has, as a plain DataFrame (no geometry unless asked for)."""
    data = io.BytesIO(storage.read_bytes(url))
    if columns is None:
        return gpd.read_parquet(data)
    present = set(pq.read_schema(data).names)
    data.seek(0)
    return pd.read_parquet(data, columns=[c for c in columns if c in present])


def hilbert_order(frame: gpd.GeoDataFrame) -> np.ndarray:
    """Row positions sorted along a Hilbert curve over the frame's bounds (stable: equal geometries keep
    their order); rows without a geometry go last."""
    geoms = frame.geometry
    ok = (~(geoms.isna() | geoms.is_empty)).to_numpy()
    dist = np.full(len(frame), np.iinfo(np.int64).max, dtype=np.int64)
    if ok.any():
        dist[ok] = geoms[ok].hilbert_distance().to_numpy(np.int64)
    return np.argsort(dist, kind="stable")


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: about :data:`ROW_GROUP_BYTES` of the table's (uncompressed) data, bounded."""
    per_row = table.nbytes / max(table.num_rows, 1)
    return int(np.clip(ROW_GROUP_BYTES // max(per_row, 1.0), MIN_ROW_GROUP_ROWS, MAX_ROW_GROUP_ROWS))


def to_bytes(frame: gpd.GeoDataFrame) -> bytes:
    """``frame`` as GeoParquet 1.1 bytes (module doc)."""
    if len(frame):
        frame = frame.iloc[hilbert_order(frame)]
    raw = io.BytesIO()  # geopandas writes the geo metadata and the covering; compression comes below
    frame.to_parquet(raw, index=False, compression=None, write_covering_bbox=True)
    table = pq.read_table(io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    pq.write_table(table, out, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
                   row_group_size=row_group_rows(table))
    return out.getvalue()


def write(url: str, frame: gpd.GeoDataFrame) -> None:
    """Write ``frame`` atomically (one rename or PUT) as :func:`to_bytes` lays it out."""
    storage.write_bytes(url, to_bytes(frame))
