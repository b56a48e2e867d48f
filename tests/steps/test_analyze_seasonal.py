"""Steps 3-4 with ``baseline: seasonal`` on hand-made embeddings (fixtures.hand_embeddings): the seasonal
model, z-scores per chip and per patch, the change-intensity layer from z thresholds, the vector DB's
change columns, resume and the other rules' new columns."""

from __future__ import annotations

from datetime import date

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from fixtures.hand_embeddings import CHANGE_CHIP, CHANGE_INDEX, DATES, GRID, PATCH, cid
from geofm import geoparquet, storage, vectordb
from geofm.pipeline import run_pipeline

PERIOD_END = date(2023, 5, 31)  # baseline: the March, April and May dates; the change comes in June


def _run(cfg):
    record = run_pipeline(cfg, ["analyze", "consolidate"])
    assert record.ok, record.summary()
    return record


def _processed(cfg, chip_id: str) -> pd.DataFrame:
    x, y = (int(v) for v in chip_id.split("_"))
    return geoparquet.read(cfg.layout.processed_embeddings(GRID, x, y))


@pytest.fixture
def seasonal(hand_embeddings):
    cfg = hand_embeddings.cfg(baseline="seasonal", baseline_period_end=PERIOD_END)
    return cfg, _run(cfg)


def test_seasonal_model_records_the_period_and_an_aoi_wide_floor(seasonal) -> None:
    cfg, record = seasonal
    model = storage.read_json(cfg.layout.seasonal_model)
    assert model["rule"] == "nearest-doy"
    assert model["period_start"] == DATES[0].isoformat() and model["period_end"] == PERIOD_END.isoformat()
    assert model["sample_chips"] == 6 and 0 < model["chip_floor"] < 0.05 and 0 < model["patch_floor"] < 0.05
    prepared = {r.unit: r.status for r in record.reports[0].results}
    assert prepared["pca"] == prepared["seasonal"] == "done"


def test_planted_change_has_large_z_after_the_baseline_period_and_steady_chips_small(seasonal) -> None:
    cfg, _ = seasonal
    rows = _processed(cfg, CHANGE_CHIP)
    assert set(rows["baseline_rule"]) == {"seasonal/nearest-doy"}
    assert (pd.to_datetime(rows["baseline_date"]).dt.date == PERIOD_END).all()
    late = rows[pd.to_datetime(rows["date"]).dt.date >= DATES[CHANGE_INDEX]]
    assert len(late) == 3 and (late["change_z"] >= cfg.change_z_high).all()
    np.testing.assert_allclose(rows["change_score"], rows["change_z"])
    side = 64 // PATCH
    zmap = np.asarray(late["patch_z_map"].iloc[0], float).reshape(side, side)
    # the left half of the chip was cleared: its patches (and only those) pass the patch threshold
    assert (zmap[:, : side // 2] >= cfg.patch_z_threshold).all()
    assert (zmap[:, side // 2:] < cfg.patch_z_threshold).all()
    assert late["patch_changed_share"].iloc[0] == pytest.approx(0.5)
    for chip in (cid(0, 0), cid(2, 0), cid(0, 1), cid(1, 1), cid(2, 1)):
        other = _processed(cfg, chip)
        after = other[pd.to_datetime(other["date"]).dt.date > PERIOD_END]
        assert after["change_z"].max() < cfg.change_z_medium, chip


def test_intensity_layer_and_vector_db_use_the_z_thresholds(seasonal) -> None:
    cfg, _ = seasonal
    layer = gpd.read_file(cfg.layout.change_intensity(GRID)).set_index("chip_id")
    assert layer.loc[CHANGE_CHIP, "change_intensity"] == "High"
    assert (layer.drop(index=CHANGE_CHIP)["change_intensity"] == "Low").all()
    assert pd.Timestamp(layer.loc[CHANGE_CHIP, "max_z_date"]).date() >= DATES[CHANGE_INDEX]
    assert set(layer["baseline_rule"]) == {"seasonal/nearest-doy"}
    rows = vectordb.open_table(cfg.layout.lance_db).to_pandas()
    day = pd.to_datetime(rows["date"]).dt.date
    assert rows.loc[day <= PERIOD_END, "change_score"].isna().all()  # the baseline is not monitored
    assert set(rows.loc[rows["changed"], "chip_id"]) == {CHANGE_CHIP}
    assert rows.loc[(rows["chip_id"] == CHANGE_CHIP) & (day >= DATES[CHANGE_INDEX]), "changed"].all()


def test_rerun_skips_and_another_rule_redoes_the_chips(seasonal) -> None:
    cfg, _ = seasonal
    again = _run(cfg)
    assert {r.status for r in again.reports[0].results} == {"skipped"}
    harmonic = cfg.model_copy(update={"seasonal_rule": "harmonic"})
    redone = _run(harmonic)
    statuses = {r.unit: r.status for r in redone.reports[0].results}
    assert statuses["seasonal"] == "done" and statuses[f"{GRID}/{CHANGE_CHIP}"] == "done"
    assert set(_processed(cfg, CHANGE_CHIP)["baseline_rule"]) == {"seasonal/harmonic"}


def test_first_clear_rows_carry_their_rule_and_change_score(hand_embeddings) -> None:
    cfg = hand_embeddings.cfg()
    _run(cfg)
    rows = _processed(cfg, CHANGE_CHIP)
    assert set(rows["baseline_rule"]) == {"first-clear"} and "change_z" not in rows.columns
    np.testing.assert_allclose(rows["change_score"], 1 - rows["cosine_sim"])
    table = vectordb.open_table(cfg.layout.lance_db).to_pandas()
    changed = set(table.loc[table["changed"], "chip_id"])
    assert changed == {CHANGE_CHIP}
