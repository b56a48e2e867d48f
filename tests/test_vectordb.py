"""LanceDB load and search: classes of hits, filters, reruns without duplicates, ANN index, errors, S3."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geofm import vectordb
from geofm.cli import app
from geofm.errors import ConfigError, InputError, NotFoundError
from geofm.layout import Layout
from geofm.vectordb import replace_aoi_rows, rows_table, search

DIM = 32
DATES = [date(2023, 3, 1), date(2023, 6, 1), date(2023, 9, 1)]
CLASSES = ("water", "forest", "urban")


def _rows(aoi: str = "t", n_side: int = 6, seed: int = 0, grid: str = "33TWL") -> tuple[pd.DataFrame, np.ndarray]:
    """Chips on an n x n grid: column x // 2 gives the class; 0.01-degree boxes; one row per date."""
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=DIM) for c in CLASSES}
    recs, vecs = [], []
    for x in range(n_side):
        for y in range(n_side):
            cls = CLASSES[(x // 2) % 3]
            for d in DATES:
                recs.append({"chip_id": f"{x}_{y}", "x_dim": x, "y_dim": y, "date": pd.Timestamp(d),
                             "mgrs_grid": grid, "aoi_name": aoi, "cls": cls,
                             "minx": 15 + x * 0.01, "maxx": 15 + (x + 1) * 0.01,
                             "miny": 45 - (y + 1) * 0.01, "maxy": 45 - y * 0.01,
                             "s3_location_png_thumbnail": f"thumbs/{x}_{y}_{d}.png"})
                vecs.append(centres[cls] + rng.normal(0, 0.3, DIM))
    return pd.DataFrame(recs), np.asarray(vecs, np.float32)


@pytest.fixture
def db(tmp_path) -> str:
    uri = str(tmp_path / "lance-db")
    df, vecs = _rows()
    replace_aoi_rows(uri, rows_table(df, vecs), "t", index_min_rows=10**9)
    return uri


def test_water_chip_finds_water_first(db):
    hits = search(db, chip_id="0_0", date="2023-06-01", k=10)
    assert len(hits) == 10
    assert (hits["cls"] == "water").all()
    assert "0_0" not in set(hits["chip_id"])
    assert list(hits["score"]) == sorted(hits["score"], reverse=True)
    assert hits["score"].between(0.5, 1.0001).all()
    assert {"chip_id", "date", "score", "mgrs_grid", "s3_location_png_thumbnail"} <= set(hits.columns)
    # the query chip itself comes back first when not excluded
    own = search(db, chip_id="0_0", date="2023-06-01", k=1, exclude_query_chip=False)
    assert own.loc[0, "chip_id"] == "0_0" and own.loc[0, "score"] == pytest.approx(1.0, abs=1e-5)


def test_filters(db):
    one_day = search(db, chip_id="2_3", date="2023-06-01", k=50, date_range=("2023-06-01", "2023-06-01"))
    assert set(pd.to_datetime(one_day["date"]).dt.date) == {date(2023, 6, 1)}
    later = search(db, chip_id="2_3", date="2023-06-01", k=200, date_range=(date(2023, 5, 1), None))
    assert pd.to_datetime(later["date"]).min().date() == date(2023, 6, 1)
    # bbox covering only columns x = 4, 5 (urban) -> only those chips
    boxed = search(db, chip_id="0_0", date="2023-03-01", k=100, bbox="15.041,44.9,15.059,45.0")
    assert set(boxed["x_dim"]) == {4, 5} and len(boxed) == 2 * 6 * 3
    assert search(db, chip_id="0_0", date="2023-03-01", k=5, grids=["99XXX"]).empty
    strict = search(db, chip_id="0_0", date="2023-06-01", k=100, min_score=0.95)
    assert (strict["score"] >= 0.95).all() and len(strict) < 100
    by_vector = search(db, vector=np.ones(DIM), k=3)
    assert len(by_vector) == 3


def test_bad_queries(db):
    with pytest.raises(NotFoundError, match="chip '77_77' is not in the vector DB"):
        search(db, chip_id="77_77", date="2023-06-01")
    with pytest.raises(NotFoundError, match="no row for date 2023-06-02; its dates: 2023-03-01"):
        search(db, chip_id="0_0", date="2023-06-02")
    with pytest.raises(InputError, match="query vector has 3 values"):
        search(db, vector=[1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="bbox '1,2,3': expected four numbers"):
        search(db, chip_id="0_0", date="2023-06-01", bbox="1,2,3")
    with pytest.raises(InputError, match="k must be at least 1"):
        search(db, chip_id="0_0", date="2023-06-01", k=0)
    with pytest.raises(InputError, match="needs chip_id and date, or a vector"):
        search(db, chip_id="0_0")
    with pytest.raises(NotFoundError, match="no table 'nope'"):
        search(db, chip_id="0_0", date="2023-06-01", table="nope")


def test_rerun_replaces_only_that_aoi(tmp_path):
    uri = str(tmp_path / "db")
    a, va = _rows("a", n_side=3)
    b, vb = _rows("b", n_side=2, seed=1)
    replace_aoi_rows(uri, rows_table(a, va), "a")
    replace_aoi_rows(uri, rows_table(b, vb), "b")
    replace_aoi_rows(uri, rows_table(a, va), "a")  # rerun
    tbl = vectordb.open_table(uri)
    assert tbl.count_rows() == len(a) + len(b)
    assert tbl.count_rows("aoi_name = 'a'") == len(a)
    assert {i.columns[0] for i in tbl.list_indices()} >= {"chip_id", "date", "mgrs_grid"}


def test_ann_index_built_and_agrees_with_exact(tmp_path):
    uri = str(tmp_path / "db")
    df, vecs = _rows(n_side=12)  # 432 rows
    info = replace_aoi_rows(uri, rows_table(df, vecs), "t", index_min_rows=400)
    assert info == {"rows": 432, "vector_index": "IVF_SQ"}
    assert any(i.columns == ["vector"] for i in vectordb.open_table(uri).list_indices())
    ann = search(uri, chip_id="0_0", date="2023-06-01", k=10, exact=False)
    exact = search(uri, chip_id="0_0", date="2023-06-01", k=10, exact=True)
    assert (ann["cls"] == "water").all()
    assert len(set(ann["chip_id"] + ann["date"].astype(str)) & set(exact["chip_id"] + exact["date"].astype(str))) >= 8
    small = replace_aoi_rows(str(tmp_path / "db2"), rows_table(df, vecs), "t", index_min_rows=1000)
    assert small["vector_index"] is None
    pq = replace_aoi_rows(str(tmp_path / "db3"), rows_table(df, vecs), "t", index_min_rows=400,
                          index_type="IVF_PQ")
    assert pq["vector_index"] == "IVF_PQ"
    assert (search(str(tmp_path / "db3"), chip_id="0_0", date="2023-06-01", k=5, exact=False)["cls"]
            == "water").all()
    with pytest.raises(ConfigError, match="unknown vector index type 'FLAT'"):
        replace_aoi_rows(str(tmp_path / "db4"), rows_table(df, vecs), "t", index_min_rows=1, index_type="FLAT")


def test_cli_search_table_and_json(tmp_path):
    lay = Layout(str(tmp_path), "cli")
    df, vecs = _rows("cli")
    replace_aoi_rows(lay.lance_db, rows_table(df, vecs), "cli")
    runner = CliRunner()
    res = runner.invoke(app, ["search", "--out", str(tmp_path), "--aoi-name", "cli", "--chip", "1_2",
                              "--date", "2023-06-01", "-k", "4", "--json", "--start", "2023-06-01"])
    assert res.exit_code == 0, res.output
    recs = json.loads(res.stdout)
    assert len(recs) == 4 and all(r["chip_id"].split("_")[0] in ("0", "1") for r in recs)
    assert all(r["date"].startswith("2023-06-01") or r["date"].startswith("2023-09-01") for r in recs)
    res = runner.invoke(app, ["search", "--out", str(tmp_path), "--aoi-name", "cli", "--chip", "1_2",
                              "--date", "2023-06-01", "-k", "3"])
    assert res.exit_code == 0 and "most similar to chip 1_2" in res.stdout
    res = runner.invoke(app, ["search", "--out", str(tmp_path), "--aoi-name", "cli", "--chip", "9_9",
                              "--date", "2023-06-01"])
    assert res.exit_code == 2 and "chip '9_9' is not in the vector DB" in res.output


def test_search_on_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/out/lance-db"
    df, vecs = _rows(n_side=4)
    replace_aoi_rows(uri, rows_table(df, vecs), "t")
    replace_aoi_rows(uri, rows_table(df, vecs), "t")
    assert vectordb.open_table(uri).count_rows() == len(df)
    hits = search(uri, chip_id="0_1", date="2023-03-01", k=5)
    assert (hits["cls"] == "water").all()
