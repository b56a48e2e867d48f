"""Search within change on hand-made embeddings (fixtures.hand_embeddings: chip 41_30 cleared from the
fourth date): `changed_since`/`min_change` in vector search and few-shot search, and a table written
before the change columns existed."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from fixtures.hand_embeddings import CHANGE_CHIP, CHANGE_INDEX, DATES, cid
from geofm import fewshot, vectordb
from geofm.errors import NotFoundError
from geofm.pipeline import run_pipeline


@pytest.fixture
def db(hand_embeddings) -> str:
    cfg = hand_embeddings.cfg()
    record = run_pipeline(cfg, ["analyze", "consolidate"])
    assert record.ok, record.summary()
    return cfg.layout.lance_db


def test_vector_search_keeps_only_chips_that_changed(db: str) -> None:
    query, day = cid(0, 0), DATES[-1]
    everything = vectordb.search(db, chip_id=query, date=day, k=50)
    assert len(set(everything["chip_id"])) == 5  # every other chip
    since = vectordb.search(db, chip_id=query, date=day, k=50, changed_since=DATES[CHANGE_INDEX])
    assert set(since["chip_id"]) == {CHANGE_CHIP} and len(since) == len(DATES)  # all its dates
    later = vectordb.search(db, chip_id=query, date=day, k=50, changed_since=DATES[-1] + timedelta(days=1))
    assert later.empty
    strong = vectordb.search(db, chip_id=query, date=day, k=50, min_change=0.2)
    assert set(strong["chip_id"]) == {CHANGE_CHIP}
    assert vectordb.search(db, chip_id=query, date=day, k=50, min_change=1.5).empty  # 1 - cosine <= 2


def test_few_shot_search_within_change(db: str) -> None:
    day = DATES[-1]
    examples = [f"{cid(1, 1)}@{day}", f"{cid(0, 1)}@{day}"], [f"{cid(2, 1)}@{day}"]
    result = fewshot.classify(db, fewshot.Query.of(*examples))
    # 42_30 has no row on the last date (10 % missing): 5 chips that day, 3 of them examples
    assert set(result.scored["chip_id"]) == {CHANGE_CHIP, cid(0, 0)}
    within = fewshot.classify(db, fewshot.Query.of(*examples, changed_since=DATES[CHANGE_INDEX]))
    assert list(within.scored["chip_id"]) == [CHANGE_CHIP]
    assert np.isfinite(within.scored["score"]).all()


def test_a_table_without_change_columns_asks_for_consolidate(db: str, tmp_path) -> None:
    rows = vectordb.open_table(db).to_pandas()
    old = rows.drop(columns=["change_score", "changed"])
    uri = str(tmp_path / "old-db")
    vectors = np.stack(old.pop("vector").to_numpy())
    vectordb.replace_aoi_rows(uri, vectordb.rows_table(old, vectors), "hand")
    with pytest.raises(NotFoundError, match="rerun consolidate"):
        vectordb.search(uri, chip_id=cid(0, 0), date=DATES[-1], changed_since=DATES[0])
    assert len(vectordb.search(uri, chip_id=cid(0, 0), date=DATES[-1], k=3)) == 3  # plain search still works
