"""GeoParquet layout for range reads: geofm's writer (GeoParquet 1.1, bbox covering, ZSTD, row groups by
size, Hilbert order) against the previous one (geopandas defaults: Snappy, one row group, no covering, rows
in grid order), on a tile-year-sized consolidated table.

The table: the consolidated output of one ``geofm synth`` pipeline run (``--model spectral``, patch
embeddings: realistic columns and values) replicated onto every chip of a whole MGRS tile (42 x 42 chips of
256 px) for ``--dates`` dates, each copy with its own chip polygon, ids and paths. Measured, each writer
alternating, median of ``--repeats``: write time, file size, and for a one-chip and a one-sixteenth-tile
bbox: the bytes a reader must fetch (column chunks of the row groups the box meets, by the file's own
statistics; all of the file without a covering) and the local read time (``gpd.read_parquet(bbox=...)``,
else a full read and a filter). ZSTD levels are compared on the same table.

    .venv/bin/python benchmarks/bench_geoparquet.py [--dates 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely

from _machine import machine
from geofm import geoparquet, storage
from geofm.layout import Layout

SIDE = 42  # chips of 256 px along a 10,980 px tile side
CHIP_DEG = 0.0265  # about 2.56 km in degrees of latitude at 45 N


def template(tmp: Path) -> gpd.GeoDataFrame:
    """The consolidated rows of a small real pipeline run (synthetic scenes, spectral model)."""
    out = tmp / "run"
    subprocess.run([str(Path(sys.executable).with_name("geofm")), "demo", "--out", str(out), "--model", "spectral",
                    "--quiet"], check=True, capture_output=True, timeout=1800)
    lay = Layout(str(out), "demo")
    return geoparquet.read(lay.consolidated_output(storage.list_folders(lay.consolidated_root)[0]))


def tile_year(rows: gpd.GeoDataFrame, dates: int, seed: int = 0) -> gpd.GeoDataFrame:
    """``rows`` replicated onto a whole tile of chips x ``dates`` dates, in grid order (y, x, date)."""
    rng = np.random.default_rng(seed)
    per_chip = [g for _, g in rows.groupby("chip_id")]
    frames = []
    days = pd.date_range("2023-01-01", periods=dates, freq=f"{max(1, 365 // dates)}D", tz="UTC")
    for y in range(SIDE):
        for x in range(SIDE):
            src = per_chip[rng.integers(len(per_chip))]
            g = src.iloc[rng.integers(0, len(src), dates)].copy()
            g["date"] = days
            g["chip_id"], g["x_dim"], g["y_dim"] = f"{x}_{y}", x, y
            for col in Layout.PATH_COLUMNS:
                if col in g.columns:
                    g[col] = [str(v).replace(str(src["chip_id"].iloc[0]), f"{x}_{y}") for v in g[col]]
            g["cosine_sim"] = np.clip(g["cosine_sim"].to_numpy() + rng.normal(0, 0.02, dates), -1, 1)
            g["geometry"] = shapely.box(15 + x * CHIP_DEG, 45 - (y + 1) * CHIP_DEG, 15 + (x + 1) * CHIP_DEG,
                                        45 - y * CHIP_DEG)
            frames.append(g)
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=rows.crs)


def before_bytes(frame: gpd.GeoDataFrame) -> bytes:
    """The previous writer: geopandas' defaults."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def bytes_to_fetch(blob: bytes, box: tuple[float, float, float, float]) -> int:
    """Compressed bytes of the row groups a bbox reader must fetch (the whole file without a covering)."""
    meta = pq.ParquetFile(io.BytesIO(blob)).metadata
    names = [meta.row_group(0).column(c).path_in_schema for c in range(meta.row_group(0).num_columns)]
    if "bbox.xmin" not in names:
        return len(blob)
    total = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        st = {rg.column(c).path_in_schema: rg.column(c).statistics for c in range(rg.num_columns)}
        if (st["bbox.xmin"].min <= box[2] and st["bbox.xmax"].max >= box[0] and st["bbox.ymin"].min <= box[3]
                and st["bbox.ymax"].max >= box[1]):
            total += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
    return total


def read_box(path: Path, box: tuple[float, float, float, float], covering: bool) -> int:
    if covering:
        return len(gpd.read_parquet(path, bbox=box))
    frame = gpd.read_parquet(path)
    return int(frame.intersects(shapely.box(*box)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gpq-") as tmp:
        frame = tile_year(template(Path(tmp)), args.dates)
        print(f"table: {len(frame):,} rows ({SIDE}x{SIDE} chips x {args.dates} dates), {frame.shape[1]} columns, "
              f"{frame.memory_usage(deep=True).sum() / 2**20:.0f} MiB in pandas")
        writers = {"before (snappy, 1 group, no covering)": before_bytes, "geofm (1.1, zstd 9, Hilbert)": geoparquet.to_bytes}
        times: dict[str, list[float]] = {k: [] for k in writers}
        blobs: dict[str, bytes] = {}
        for _ in range(args.repeats):
            for name, write in writers.items():
                t = time.perf_counter()
                blobs[name] = write(frame)
                times[name].append(time.perf_counter() - t)
        x0, y0 = 15 + 20.3 * CHIP_DEG, 45 - 20.7 * CHIP_DEG
        boxes = {"one chip": (x0, y0, x0 + 0.3 * CHIP_DEG, y0 + 0.3 * CHIP_DEG),
                 "1/16 tile": (15 + 10 * CHIP_DEG, 45 - 20 * CHIP_DEG, 15 + 20 * CHIP_DEG, 45 - 10 * CHIP_DEG)}
        print(f"\n| writer | write s | MB | groups | {' | '.join(f'{b}: MB fetched, read s' for b in boxes)} |")
        print("|---|---:|---:|---:|" + "---:|" * len(boxes))
        for name, blob in blobs.items():
            path = Path(tmp) / f"{len(name)}.parquet"
            path.write_bytes(blob)
            groups = pq.ParquetFile(path).metadata.num_row_groups
            cells = []
            for box in boxes.values():
                covering = "bbox" in pq.read_schema(path).names
                reads = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    n = read_box(path, box, covering)
                    reads.append(time.perf_counter() - t)
                cells.append(f"{bytes_to_fetch(blob, box) / 1e6:.2f}, {statistics.median(reads):.2f} ({n} rows)")
            print(f"| {name} | {statistics.median(times[name]):.2f} | {len(blob) / 1e6:.2f} | {groups} | "
                  + " | ".join(cells) + " |")
        print("\n| ZSTD level | write s | MB |\n|---:|---:|---:|")
        default = geoparquet.COMPRESSION_LEVEL
        for level in (1, 3, 9, 15, 19):
            geoparquet.COMPRESSION_LEVEL = level
            t = time.perf_counter()
            size = len(geoparquet.to_bytes(frame))
            print(f"| {level} | {time.perf_counter() - t:.2f} | {size / 1e6:.2f} |")
        geoparquet.COMPRESSION_LEVEL = default
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
