"""GeoParquet tables at URLs (local or s3://): read and atomic write."""

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


def write(url: str, frame: gpd.GeoDataFrame) -> None:
    """Write ``frame`` atomically (one rename or PUT)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    storage.write_bytes(url, buf.getvalue())
