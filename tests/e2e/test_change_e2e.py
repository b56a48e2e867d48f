"""End to end on the synthetic archive: preprocess (64 px chips) -> embed (spectral) -> analyze ->
consolidate; the planted changes (truth GeoJSON) are found at chip-date level, water finds water."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window

from geofm import storage, vectordb
from geofm.config import PipelineConfig
from helpers import run_steps, stage_scenes

CHIP = 64
WATER_CLASS = "water"


@pytest.fixture(scope="module")
def pipeline_run(synth_scenes: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Any]:
    """All six synthetic dates through steps 1-4 with the weights-free ``spectral`` encoder."""
    root = tmp_path_factory.mktemp("change-e2e")
    cfg = PipelineConfig(aoi_name="e2e", aoi=synth_scenes.aoi_path, output_root=str(root), chip_size=CHIP,
                         whole_tile=True, model="spectral", batch_size=16, workers=1, retries=0)
    stage_scenes(cfg.output_root, cfg.aoi_name, synth_scenes, synth_scenes.scene_ids)
    record = run_steps(cfg, "preprocess", "embed", "analyze", "consolidate")
    assert record.ok, record.summary()
    return cfg, synth_scenes


def _consolidated(cfg: PipelineConfig, grid: str) -> gpd.GeoDataFrame:
    return gpd.read_parquet(io.BytesIO(storage.read_bytes(cfg.layout.consolidated_output(grid))))


def _truth_by_chip(rows: gpd.GeoDataFrame, truth_path: str) -> dict[str, date]:
    """chip_id -> start of the planted change, for chips at least half covered by a truth polygon."""
    truth = gpd.read_file(truth_path)
    chips = rows.drop_duplicates("chip_id").set_index("chip_id").geometry
    utm = chips.to_crs(rows["crs"].iloc[0])
    out: dict[str, date] = {}
    for _, t in truth.to_crs(rows["crs"].iloc[0]).iterrows():
        share = utm.intersection(t.geometry).area / utm.area
        for chip_id in share.index[share >= 0.5]:
            out[chip_id] = date.fromisoformat(str(t["start_date"])[:10])
    return out


@pytest.mark.slow
def test_planted_changes_detected(pipeline_run):
    cfg, synth = pipeline_run
    rows = _consolidated(cfg, synth.grid)
    truth = _truth_by_chip(rows, synth.truth_path)
    assert len(truth) == 2  # forest cleared, new water
    rows = rows[rows["cosine_sim"].notna()]
    after = rows[rows["date"] > rows["baseline_date"]]
    days = after["date"].dt.date
    actual = [chip in truth and day >= truth[chip] for chip, day in zip(after["chip_id"], days, strict=True)]
    predicted = list(after["cosine_sim"] < cfg.change_threshold_high)
    tp = sum(a and p for a, p in zip(actual, predicted, strict=True))
    fp = sum(p and not a for a, p in zip(actual, predicted, strict=True))
    fn = sum(a and not p for a, p in zip(actual, predicted, strict=True))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    print(f"\nchip-date change detection (spectral, threshold {cfg.change_threshold_high}): "
          f"{len(actual)} chip-dates, {sum(actual)} changed; precision {precision:.3f}, recall {recall:.3f}")
    assert sum(actual) >= 4
    assert precision >= 0.9 and recall >= 0.9
    # the change-intensity layer marks exactly the planted chips High
    layer = gpd.read_file(cfg.layout.change_intensity(synth.grid)).set_index("chip_id")
    assert set(layer.index[layer["change_intensity"] == "High"]) == set(truth)
    for chip, start in truth.items():
        assert pd.Timestamp(layer.at[chip, "largest_drop_date"]).date() >= start
    # the per-patch map of a planted chip says most of it changed after the change date
    last = rows[(rows["chip_id"].isin(list(truth))) & (rows["date"] == rows["date"].max())]
    assert (last["patch_changed_share"] > 0.9).all()


def _water_share(synth: Any, scene_id: str, x_dim: int, y_dim: int) -> float:
    water = next(c["id"] for c in synth.classes if c["name"] == WATER_CLASS)
    with rasterio.open(synth.landcover_paths[scene_id]) as ds:
        lc = ds.read(1, window=Window(x_dim * CHIP, y_dim * CHIP, CHIP, CHIP))
    return float((lc == water).mean())


@pytest.mark.slow
def test_water_chip_finds_water_first(pipeline_run):
    cfg, synth = pipeline_run
    db = cfg.layout.lance_db
    table = vectordb.open_table(db).to_pandas()
    table["water"] = [_water_share(synth, s, x, y) for s, x, y in
                      zip(table["scene_id"], table["x_dim"], table["y_dim"], strict=True)]
    water = table[table["water"] >= 0.5]
    assert len(water) >= 2
    q = water.sort_values("date").iloc[-1]
    hits = vectordb.search(db, chip_id=q["chip_id"], date=q["date"], k=len(table),
                           exclude_query_chip=False)
    labels = hits.merge(table[["chip_id", "date", "water"]], on=["chip_id", "date"])["water"] >= 0.5
    n = int(labels.sum())
    assert n == len(water) and labels.iloc[:n].all()  # every water chip-date ranks above any other
    assert hits["score"].iloc[n - 1] - hits["score"].iloc[n] > 0.05


@pytest.mark.slow
def test_rerun_leaves_row_counts(pipeline_run):
    cfg, synth = pipeline_run
    before_rows = len(_consolidated(cfg, synth.grid))
    before_db = vectordb.open_table(cfg.layout.lance_db).count_rows()
    rerun = run_steps(cfg, "analyze", "consolidate")
    assert rerun.ok, rerun.summary()
    assert all(r.count("done") == 0 for r in rerun.reports)  # nothing changed: every unit is skipped
    forced = run_steps(cfg.model_copy(update={"force": True}), "consolidate")
    assert forced.ok and forced.reports[0].count("skipped") == 0
    assert len(_consolidated(cfg, synth.grid)) == before_rows
    assert vectordb.open_table(cfg.layout.lance_db).count_rows() == before_db
    assert np.isfinite(_consolidated(cfg, synth.grid)["patch_emb_pca_1"].dropna()).all()
