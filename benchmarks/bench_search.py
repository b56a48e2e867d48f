"""Vector search latency and recall in LanceDB: exact (brute force, the baseline) vs the ANN index.

For each table size (default 100k and 1M float32 vectors of 1024 dims, written in chunks to a LanceDB
table in a temp dir) it measures query latency p50/p95 without and with the ANN index (the pipeline's
``vector_index_config``, default IVF_SQ, cosine), unfiltered and filtered (date + MGRS grid prefilter,
BTree scalar indices), and recall@10 of the indexed search against exact search, with the pipeline's
search knobs (nprobes, refine_factor). ``--data random`` (standard normal: the hardest case, no
structure) or ``clustered`` (200 centres + noise, closer to real embeddings). Prints a table;
``--append`` adds it to BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_search.py [--sizes 100000 1000000] [--queries 20] [--index IVF_SQ]
        [--data random|clustered] [--append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree

from _machine import machine
from geofm.vectordb import DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR, ivf_partitions, vector_index_config

DIM = 1024
CHUNK = 50_000
N_DATES = 24
N_GRIDS = 10
K = 10
BASE_DATE = dt.date(2023, 1, 1)


N_CENTRES = 200


def centres(dim: int) -> np.ndarray:
    return np.random.default_rng(12345).standard_normal((N_CENTRES, dim), dtype=np.float32)


def draw(rng: np.random.Generator, m: int, dim: int, data: str) -> np.ndarray:
    noise = rng.standard_normal((m, dim), dtype=np.float32)
    if data == "random":
        return noise
    return centres(dim)[rng.integers(0, N_CENTRES, m)] + 0.5 * noise


def batches(n: int, dim: int, seed: int, data: str) -> Iterator[pa.RecordBatch]:
    """``n`` rows in chunks (1M x 1024 float32 is 4 GB: never held at once)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        vec = draw(rng, m, dim, data)
        idx = np.arange(start, start + m)
        yield pa.RecordBatch.from_arrays([
            pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim),
            pa.array([f"{i % 1000}_{i // 1000}" for i in idx]),
            pa.array((idx % N_DATES).astype("int32") * 14 + (BASE_DATE - dt.date(1970, 1, 1)).days,
                     pa.int32()).cast(pa.date32()),
            pa.array([f"{33 + g}TWL" for g in idx % N_GRIDS]),
        ], names=["vector", "chip_id", "date", "mgrs_grid"])


def schema(dim: int) -> pa.Schema:
    return pa.schema([pa.field("vector", pa.list_(pa.float32(), dim)), pa.field("chip_id", pa.string()),
                      pa.field("date", pa.date32()), pa.field("mgrs_grid", pa.string())])


def timed_queries(tbl, queries: np.ndarray, where: str | None, exact: bool) -> tuple[list[float], list[set]]:
    lat, ids = [], []
    for q in queries:
        s = tbl.search(q).distance_type("cosine").limit(K).with_row_id(True)
        if where:
            s = s.where(where, prefilter=True)
        s = s.bypass_vector_index() if exact else s.nprobes(DEFAULT_NPROBES).refine_factor(DEFAULT_REFINE_FACTOR)
        t0 = time.perf_counter()
        res = s.to_arrow()
        lat.append((time.perf_counter() - t0) * 1000)
        ids.append(set(res.column("_rowid").to_pylist()))
    return lat, ids


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def bench(n: int, n_queries: int, workdir: Path, index: str, data: str) -> list[dict]:
    db = lancedb.connect(str(workdir / f"db{n}"))
    t0 = time.perf_counter()
    tbl = db.create_table("vector_db", batches(n, DIM, n, data), schema=schema(DIM))
    load_s = time.perf_counter() - t0
    queries = draw(np.random.default_rng(1), n_queries, DIM, data)
    filt = f"date = date '{BASE_DATE + dt.timedelta(days=14 * 3)}' AND mgrs_grid = '36TWL'"
    for col in ("date", "mgrs_grid"):
        tbl.create_index(col, config=BTree(), replace=True)

    rows = []
    exact: dict[str, tuple[list[float], list[set]]] = {}
    for label, where in (("unfiltered", None), ("date+grid", filt)):
        timed_queries(tbl, queries[:2], where, exact=True)  # warm caches
        exact[label] = timed_queries(tbl, queries, where, exact=True)
    t0 = time.perf_counter()
    partitions = ivf_partitions(n)
    tbl.create_index("vector", config=vector_index_config(index, n, DIM), replace=True)
    index_s = time.perf_counter() - t0
    for label, where in (("unfiltered", None), ("date+grid", filt)):
        timed_queries(tbl, queries[:2], where, exact=False)
        ann_lat, ann_ids = timed_queries(tbl, queries, where, exact=False)
        ex_lat, ex_ids = exact[label]
        recall = statistics.mean(len(a & e) / max(1, len(e)) for a, e in zip(ann_ids, ex_ids, strict=True))
        rows.append({"n": n, "data": data, "index": index, "filter": label, "exact_p50": pct(ex_lat, 50), "exact_p95": pct(ex_lat, 95),
                     "ann_p50": pct(ann_lat, 50), "ann_p95": pct(ann_lat, 95),
                     "speedup_p50": pct(ex_lat, 50) / pct(ann_lat, 50), "recall10": recall,
                     "load_s": load_s, "index_s": index_s, "partitions": partitions})
    shutil.rmtree(workdir / f"db{n}", ignore_errors=True)
    return rows


def table(rows: list[dict], n_queries: int) -> str:
    head = ("| rows | data | filter | exact p50 / p95 ms | index | ANN p50 / p95 ms | speed-up p50 | "
            "recall@10 | load s | index build s (partitions) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['n']:,} | {r['data']} | {r['filter']} | {r['exact_p50']:.1f} / {r['exact_p95']:.1f} | "
        f"{r['index']} | {r['ann_p50']:.1f} / {r['ann_p95']:.1f} | {r['speedup_p50']:.1f}x | "
        f"{r['recall10']:.3f} | {r['load_s']:.0f} | {r['index_s']:.0f} ({r['partitions']}) |\n" for r in rows)
    return head + body + f"\n{n_queries} queries per cell, k={K}, nprobes={DEFAULT_NPROBES}, " \
        f"refine_factor={DEFAULT_REFINE_FACTOR}, dim={DIM}, cosine.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--index", default="IVF_SQ", help="IVF_SQ (pipeline default), IVF_PQ or IVF_HNSW_SQ")
    ap.add_argument("--data", choices=["random", "clustered"], nargs="+", default=["random"])
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a line added under the table (e.g. what did not fit)")
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="geofm-bench-search-") as tmp:
        for n in args.sizes:
            for data in args.data:
                print(f"{n:,} {data} rows, {args.index} ...", flush=True)
                rows += bench(n, args.queries, Path(tmp), args.index, data)
            print(table(rows, args.queries), flush=True)
    out = table(rows, args.queries)
    if args.append:
        section = (f"\n## Vector search (LanceDB {lancedb.__version__}): exact vs ANN index, "
                   f"`benchmarks/bench_search.py`\n\nMachine: {machine()} (shared with other work); "
                   "date 2026-11-25.\n`random`: standard-normal vectors (the hardest case: no structure, "
                   f"neighbours barely closer than anything else); `clustered`: {N_CENTRES} centres + noise. "
                   f"Filter = one of {N_DATES} dates and one of {N_GRIDS} grids (~0.8% of rows), "
                   "BTree scalar indices on date and grid.\n\n" + out + (f"\n{args.note}\n" if args.note else ""))
        with open(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
