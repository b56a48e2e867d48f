"""GeoParquet tables at URLs (local or s3://): read and atomic write.

Every GeoParquet geofm writes goes through :func:`write` and is GeoParquet 1.1 laid out for spatial range
reads (docs/formats.md "GeoParquet"): a ``bbox`` covering column (``gpd.read_parquet(url, bbox=...)``,
DuckDB and GDAL skip row groups by its statistics), rows in Hilbert order of their geometry (rows with
one geometry keep their order, so a chip's dates stay together and sorted), ZSTD compression and row
groups of about :data:`ROW_GROUP_BYTES`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def read(url: str, columns: list[str] | None = None, exclude: Sequence[str] = ()
         ) -> gpd.GeoDataFrame | pd.DataFrame:
    """The GeoParquet file at ``url`` as a GeoDataFrame; with ``columns``, only those of them the file
    has, as a plain DataFrame (no geometry unless asked for). ``exclude``: a GeoDataFrame of every
    column but these, read from the file (or a local copy) without loading its bytes at once."""
    if exclude:
        with storage.local_file_for_read(url, ".parquet") as path:
            keep = [c for c in pq.read_schema(path).names if c not in set(exclude) and c != "bbox"]
            return gpd.read_parquet(path, columns=keep)
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


def rows_per_group(nbytes: int, num_rows: int) -> int:
    """Rows per row group: about :data:`ROW_GROUP_BYTES` of (uncompressed) data, bounded."""
    per_row = nbytes / max(num_rows, 1)
    return int(np.clip(ROW_GROUP_BYTES // max(per_row, 1.0), MIN_ROW_GROUP_ROWS, MAX_ROW_GROUP_ROWS))


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group of ``table`` (:func:`rows_per_group`)."""
    return rows_per_group(table.nbytes, table.num_rows)


def to_arrow(frame: gpd.GeoDataFrame) -> pa.Table:
    """``frame`` as the arrow table a GeoParquet 1.1 file holds (WKB geometry, the ``bbox`` covering
    column, geo and pandas metadata), rows in the frame's order."""
    raw = io.BytesIO()  # geopandas writes the geo metadata and the covering; compression comes later
    frame.to_parquet(raw, index=False, compression=None, write_covering_bbox=True)
    return pq.read_table(io.BytesIO(raw.getvalue()))


def to_bytes(frame: gpd.GeoDataFrame) -> bytes:
    """``frame`` as GeoParquet 1.1 bytes (module doc)."""
    if len(frame):
        frame = frame.iloc[hilbert_order(frame)]
    table = to_arrow(frame)
    out = io.BytesIO()
    pq.write_table(table, out, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
                   row_group_size=row_group_rows(table))
    return out.getvalue()


def write(url: str, frame: gpd.GeoDataFrame) -> None:
    """Write ``frame`` atomically (one rename or PUT) as :func:`to_bytes` lays it out."""
    storage.write_bytes(url, to_bytes(frame))


# ---- one file from many parts, a row group at a time -----------------------------------------------------
def read_arrow(url: str) -> pa.Table:
    """The arrow table of a GeoParquet file (as written: WKB geometry, covering column, metadata)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def from_arrow(table: pa.Table, crs: Any) -> gpd.GeoDataFrame:
    """A GeoParquet file's arrow table (:func:`read_arrow`) as the GeoDataFrame ``gpd.read_parquet`` gives,
    with ``crs`` given rather than parsed from the file: parsing it costs ~15 ms per file, which dominated
    reading a grid's thousands of small files."""
    meta = json.loads(table.schema.metadata[b"geo"])
    primary = meta["primary_column"]
    frame = table.drop_columns([c for c in ("bbox",) if c in table.column_names]).to_pandas()
    frame[primary] = gpd.GeoSeries.from_wkb(frame[primary].to_numpy(), crs=crs)
    return gpd.GeoDataFrame(frame, geometry=primary, crs=crs)


def parts_schema(schemas: Sequence[pa.Schema]) -> tuple[pa.Schema, dict[str, Any]]:
    """The column types of parts read from several GeoParquet files, unified (a column that is all
    null in one part takes the type it has in the others), and their ``geo`` metadata merged: the
    union of the bboxes and of the geometry types (the file-level facts a writer of parts must state),
    and the first part's CRS (PROJJSON)."""
    types = pa.unify_schemas([s.remove_metadata() for s in schemas])
    geos = [json.loads(s.metadata[b"geo"]) for s in schemas if s.metadata and b"geo" in s.metadata]
    primary = geos[0]["primary_column"] if geos else "geometry"
    boxes = np.array([g["columns"][primary]["bbox"] for g in geos if g["columns"][primary].get("bbox")])
    kinds = sorted({k for g in geos for k in g["columns"][primary].get("geometry_types", [])})
    merged = {"primary_column": primary, "geometry_types": kinds,
              "crs": geos[0]["columns"][primary].get("crs") if geos else None,
              "bbox": [*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)] if len(boxes) else None}
    return types, merged


class PartsWriter:
    """Writes one GeoParquet 1.1 file from frames given in the file's row order (for tables too large to
    hold at once), keeping at most one row group in memory. The layout is :func:`write`'s (bbox
    covering, ZSTD, row groups of ``rows`` rows), except that the order of the rows is the caller's:
    pass the parts in Hilbert order (rows of one geometry together) to get :func:`write`'s order.
    ``types`` and ``geo`` come from :func:`parts_schema` over the parts' files. Use as a context
    manager around a local ``path``; nothing is written when the block raises."""

    def __init__(self, path: Path, rows: int, types: pa.Schema, geo: dict[str, Any]) -> None:
        self.path, self.rows, self.types, self.geo = path, rows, types, geo
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._frames: list[gpd.GeoDataFrame] = []  # appended, not yet converted
        self._pending: list[pa.Table] = []  # converted, not yet written (less than a row group)
        self._pending_rows = 0

    def __enter__(self) -> PartsWriter:
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None:
            self._flush(final=True)
        if self._writer is not None:
            self._writer.close()

    def _open(self, first: pa.Table) -> pa.Schema:
        """The file's schema: ``first``'s columns with the unified types, its pandas metadata and its geo
        metadata (covering, CRS) stating the bbox and geometry types of all parts."""
        known = set(self.types.names)
        fields = [self.types.field(f.name).with_metadata(f.metadata) if f.name in known else f
                  for f in first.schema]
        geo = json.loads(first.schema.metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        column["geometry_types"] = self.geo["geometry_types"]
        if self.geo["bbox"] is not None:
            column["bbox"] = self.geo["bbox"]
        metadata = {**first.schema.metadata, b"geo": json.dumps(geo).encode()}
        schema = pa.schema(fields, metadata=metadata)
        self._writer = pq.ParquetWriter(self.path, schema, compression=COMPRESSION,
                                        compression_level=COMPRESSION_LEVEL)
        return schema

    def write(self, frame: gpd.GeoDataFrame) -> None:
        """Append ``frame``'s rows (after those written before); frames are converted a row group at a
        time (converting each small frame alone costs more than writing it)."""
        if not len(frame):
            return
        self._frames.append(frame)
        self._pending_rows += len(frame)
        if self._pending_rows >= self.rows:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        if self._frames:
            frame = self._frames[0] if len(self._frames) == 1 else gpd.GeoDataFrame(
                pd.concat(self._frames, ignore_index=True), geometry=self._frames[0].geometry.name,
                crs=self._frames[0].crs)
            self._pending.append(to_arrow(frame))
            self._frames = []
        if not self._pending:
            return
        if self._schema is None:
            self._schema = self._open(self._pending[0])
        schema = self._schema
        table = pa.concat_tables([t.select(schema.names).cast(schema) for t in self._pending])
        full = table.num_rows if final else table.num_rows - table.num_rows % self.rows
        assert self._writer is not None
        for start in range(0, full, self.rows):
            part = table.slice(start, min(self.rows, full - start))
            self._writer.write_table(part, row_group_size=self.rows)
        rest = table.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
