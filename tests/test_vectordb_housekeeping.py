"""LanceDB housekeeping after each load (geofm.vectordb.housekeeping, called by replace_aoi_rows, i.e.
by step 4): old versions and superseded index folders are deleted, so reloads no longer pile them up,
while searches running during reloads keep answering correctly."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from geofm import vectordb
from geofm.vectordb import housekeeping, replace_aoi_rows, rows_table, search

DIM = 16
CLASSES = ("water", "forest")


def _rows(seed: int, n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` chips on one date; even x is water, odd x forest (two well separated class centres)."""
    rng = np.random.default_rng(seed)
    centres = {c: np.eye(DIM, dtype=np.float32)[i] * 3 for i, c in enumerate(CLASSES)}
    df = pd.DataFrame({"chip_id": [f"{i}_0" for i in range(n)], "x_dim": range(n), "y_dim": 0,
                       "date": pd.Timestamp("2024-01-05"), "mgrs_grid": "20LPP", "aoi_name": "a",
                       "cls": [CLASSES[i % 2] for i in range(n)]})
    vecs = np.stack([centres[c] + rng.normal(0, 0.2, DIM).astype(np.float32) for c in df["cls"]])
    return df, vecs


def _files(uri: str) -> dict[str, int]:
    t = Path(uri) / f"{vectordb.DEFAULT_TABLE}.lance"
    return {"manifests": len(list((t / "_versions").glob("*.manifest"))),
            "index_dirs": len(list((t / "_indices").iterdir())),
            "data_files": len(list((t / "data").iterdir()))}


def _load(uri: str, seed: int) -> None:
    df, vecs = _rows(seed)
    replace_aoi_rows(uri, rows_table(df, vecs), "a", index_min_rows=256)  # scalar + IVF_SQ indices


def test_reloads_do_not_pile_up_versions_or_indices(tmp_path, monkeypatch):
    """Ten reloads, each later than the grace: the files on disk reach a steady state (before
    housekeeping every reload added ~6 manifests and ~5 index folders: 37 manifests after 9 runs)."""
    monkeypatch.setattr(vectordb, "HOUSEKEEPING_GRACE", timedelta(seconds=0.3))
    uri = str(tmp_path / "db")
    counts = []
    for run in range(10):
        _load(uri, run)
        counts.append(_files(uri))
        time.sleep(0.4)
    assert counts[-1] == counts[2], counts
    per_load = counts[0]  # what one load writes
    assert counts[-1]["manifests"] <= per_load["manifests"] + 1
    assert counts[-1]["index_dirs"] <= per_load["index_dirs"] + 4
    hits = search(uri, chip_id="0_0", date="2024-01-05", k=10)
    assert (hits["cls"] == "water").all()


def test_housekeeping_without_grace_keeps_only_the_latest(tmp_path):
    uri = str(tmp_path / "db")
    for run in range(3):
        _load(uri, run)
    tbl = vectordb.open_table(uri)
    assert len(tbl.list_versions()) > 1
    stats = housekeeping(tbl, grace=timedelta(0))
    assert stats["versions_after"] == 1 < stats["versions_before"]
    files = _files(uri)
    assert files["index_dirs"] == len(tbl.list_indices()) == 4  # chip_id, date, mgrs_grid, vector
    assert files["data_files"] == 1  # compacted into one fragment
    assert tbl.count_rows() == 300
    assert (search(uri, chip_id="1_0", date="2024-01-05", k=10)["cls"] == "forest").all()


def test_searches_during_reloads_are_never_torn(tmp_path):
    """Searches run in a thread while the table is reloaded (delete, add, reindex, housekeeping) eight
    times: every one answers, and with hits of the query's class."""
    uri = str(tmp_path / "db")
    _load(uri, 0)
    stop = threading.Event()
    results: list[str] = []

    def searcher() -> None:
        while not stop.is_set():
            try:
                hits = search(uri, chip_id="0_0", date="2024-01-05", k=5)
                results.append("ok" if len(hits) == 5 and (hits["cls"] == "water").all() else "wrong")
            except Exception as exc:  # what a torn read looks like: a missing fragment or index file
                results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for run in range(1, 9):
            _load(uri, run)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert len(results) > 8
    assert set(results) == {"ok"}, [r for r in results if r != "ok"][:3]
