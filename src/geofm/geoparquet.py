"""GeoParquet tables at URLs (local or s3://): read, atomic write, and small schema metadata entries
(the digests steps keep to know what a file was made from)."""

from __future__ import annotations

import io

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq

from geofm import storage


def read(url: str, columns: list[str] | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
    """The GeoParquet file at ``url`` as a GeoDataFrame; with ``columns``, only those of them the file
    has, as a plain DataFrame (no geometry unless asked for)."""
    data = io.BytesIO(storage.read_bytes(url))
    if columns is None:
        return gpd.read_parquet(data)
    present = set(pq.read_schema(data).names)
    data.seek(0)
    return pd.read_parquet(data, columns=[c for c in columns if c in present])


def write(url: str, frame: gpd.GeoDataFrame, metadata: dict[str, str] | None = None) -> None:
    """Write ``frame`` atomically (one rename or PUT), adding ``metadata`` to the schema metadata."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    if metadata:
        table = pq.read_table(io.BytesIO(buf.getvalue()))
        extra = {k.encode(): v.encode() for k, v in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        buf = io.BytesIO()
        pq.write_table(table, buf)
    storage.write_bytes(url, buf.getvalue())


def read_metadata(url: str) -> dict[str, str]:
    """The schema metadata of a Parquet file (without reading its rows from a local file)."""
    with storage.local_file_for_read(url, ".parquet") as path:
        raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}
