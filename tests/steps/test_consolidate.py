"""Step 4 on hand-made embeddings: GeoParquet, chip grids, change intensity, front-end config, LanceDB."""

from __future__ import annotations

import io
import json
import posixpath
from datetime import date

import geopandas as gpd
import pandas as pd
import pytest
from typer.testing import CliRunner

from fixtures.hand_embeddings import (
    CHANGE_CHIP,
    CHANGE_INDEX,
    CHIP,
    DATES,
    GRID,
    GSD,
    D,
    cid,
    write_hand_embeddings,
)
from geofm import change, storage, vectordb
from geofm.cli import app
from geofm.steps import consolidate
from helpers import run_step, run_steps

WATER = {cid(0, 0), cid(0, 1)}


def _gdf(url: str) -> gpd.GeoDataFrame:
    if url.endswith(".parquet"):
        return gpd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    return gpd.read_file(url)


@pytest.fixture
def consolidated(hand_embeddings):
    cfg = hand_embeddings.cfg()
    record = run_steps(cfg, "analyze", "consolidate")
    assert record.ok, record.summary()
    return hand_embeddings, cfg, record.reports[-1]


def test_outputs_read_in_geopandas(consolidated):
    data, cfg, report = consolidated
    lay = data.layout
    rows = _gdf(lay.consolidated_output(GRID))
    assert len(rows) == 33 and rows.crs.to_epsg() == 4326
    assert {"cosine_sim", "patch_emb_pca_1", "patch_sim_map", "baseline_date"} <= set(rows.columns)
    full = _gdf(lay.chip_grid_full_tile(GRID))
    per_side = int(109_800 // (CHIP * GSD))
    assert len(full) == per_side**2 and full.crs.to_epsg() == 4326
    assert list(full.columns[:5]) == ["chip_id", "x_dim", "y_dim", "mgrs_grid", "aoi_name"]
    # the tile grid's chip has the same footprint as the chip cut in step 1
    tile_chip = full.set_index("chip_id").loc[CHANGE_CHIP].geometry
    meta_chip = rows[rows.chip_id == CHANGE_CHIP].geometry.iloc[0]
    assert tile_chip.symmetric_difference(meta_chip).area / meta_chip.area < 1e-9
    aoi = _gdf(lay.chip_grid_aoi(GRID))
    assert set(aoi["chip_id"]) == set(data.chips)
    unit_info = next(r for r in report.results if r.unit == GRID).info
    assert unit_info["tile_chips"] == per_side**2 and unit_info["aoi_chips"] == 6


def test_change_intensity_layer(consolidated):
    data, cfg, _ = consolidated
    layer = _gdf(data.layout.change_intensity(GRID)).set_index("chip_id")
    assert set(layer.index) == set(data.chips)
    hit = layer.loc[CHANGE_CHIP]
    assert hit["min_sim"] < cfg.change_threshold_medium
    expected = "High" if hit["min_sim"] < cfg.change_threshold_high else "Medium"
    assert hit["change_intensity"] == expected
    day = lambda v: pd.Timestamp(v).date()  # noqa: E731  (GeoJSON dates are ISO strings)
    assert day(hit["largest_drop_date"]) == DATES[CHANGE_INDEX]
    assert day(hit["min_sim_date"]) >= DATES[CHANGE_INDEX]
    assert day(hit["latest_date"]) == DATES[-1] and hit["n_dates"] == 6
    others = layer.drop(index=CHANGE_CHIP)
    assert (others["change_intensity"] == "Low").all() and (others["min_sim"] > 0.99).all()
    for col in ("latest_sim", "largest_drop", "baseline_date"):
        assert col in layer.columns


def test_frontend_config(consolidated):
    data, cfg, _ = consolidated
    lay = data.layout
    doc = json.loads(storage.read_text(lay.frontend_config(GRID)))
    assert doc["current_demo_id"] == data.aoi_name
    conf = doc["demos"][0]["config"]
    assert conf == consolidate.frontend_config(cfg, GRID)
    assert (conf["aoi_name"], conf["s2_tile_id"], conf["vectordb_type"]) == (data.aoi_name, GRID, "lancedb")
    assert conf["vectordb_collection_name"] == "vector_db" and conf["embedding_dim"] == D
    assert conf["model"] == "spectral"
    assert conf["similarity_search_date"] == DATES[-1].isoformat() == conf["end_date"]
    assert conf["start_date"] == DATES[0].isoformat()
    assert conf["baseline_start_date"] == DATES[0].isoformat() and conf["baseline_end_date"] == DATES[1].isoformat()
    assert conf["monitoring_start_date"] == DATES[1].isoformat()
    assert conf["change_threshold_high"] == cfg.change_threshold_high
    for key in ("aoi_geojson", "chip_grid_geojson", "chip_grid_aoi_geojson", "chip_grid_change_intensity_geojson",
                "metadata_path", "vectordb_path"):
        assert storage.exists(posixpath.normpath(posixpath.join(lay.output_dir, conf[key]))), key
    assert conf["png_thumbnail_path"] == f"rgb-imgs/l2a/{GRID}"


def test_vector_db_rows_search_and_rerun(consolidated):
    data, cfg, report = consolidated
    lay = data.layout
    tbl = vectordb.open_table(lay.lance_db)
    assert tbl.count_rows() == 32  # 33 processed rows less the one with a NaN embedding
    assert tbl.schema.field("vector").type.list_size == D
    for col in ("chip_id", "x_dim", "y_dim", "date", "scene_id", "mgrs_grid", "aoi_name", "model",
                "geometry", "minx", "miny", "maxx", "maxy", "cloud_cover_perc", "missing_data_perc",
                "s3_location_png_thumbnail", "s3_location_netcdf", "cosine_sim", "patch_emb_pca_1"):
        assert col in tbl.schema.names, col
    assert str(tbl.schema.field("geometry").type) == "binary"  # WKB
    hits = vectordb.search(lay.lance_db, chip_id=cid(0, 0), date=DATES[-1], k=5)
    assert set(hits["chip_id"]) == WATER - {cid(0, 0)}
    assert report.results[-1].unit == "lance-db" and report.results[-1].info["rows"] == 32
    # rerun (skips) and forced rerun leave row counts unchanged: no duplicate rows
    again = run_step(cfg, "consolidate")
    assert again.count("skipped") == 2 and again.count("done") == 0  # the grid and the vector DB
    forced = run_step(cfg.model_copy(update={"force": True}), "consolidate")
    assert forced.count("done") == 2
    assert vectordb.open_table(lay.lance_db).count_rows() == 32
    storage.remove(f"{lay.lance_db}/{vectordb.DEFAULT_TABLE}.lance", recursive=True)  # a lost table: reloaded
    assert run_step(cfg, "consolidate").results[-1].status == "done"
    assert vectordb.open_table(lay.lance_db).count_rows() == 32
    assert len(_gdf(lay.consolidated_output(GRID))) == 33


def test_damaged_vector_db_table_is_reloaded(consolidated):
    """A table that lost rows (its folder still there) is not taken for loaded: the next run reloads it."""
    data, cfg, _ = consolidated
    lay = data.layout
    vectordb.open_table(lay.lance_db).delete(f"chip_id = '{cid(0, 0)}'")
    assert vectordb.open_table(lay.lance_db).count_rows() < 32
    assert run_step(cfg, "consolidate").results[-1].status == "done"
    assert vectordb.open_table(lay.lance_db).count_rows() == 32


def test_change_summary_rules():
    days = [date(2023, m, 1) for m in range(1, 7)]
    sims = [0.9, 1.0, 0.95, float("nan"), 0.5, 0.7]  # baseline on day 2; the NaN date is skipped
    s = change.change_summary(days, sims, days[1], high=0.3, medium=0.6)
    assert (s["min_sim"], s["min_sim_date"], s["latest_sim"], s["latest_date"]) == (0.5, days[4], 0.7, days[5])
    assert s["largest_drop"] == pytest.approx(0.45) and s["largest_drop_date"] == days[4]
    assert s["n_dates"] == 5 and s["change_intensity"] == "Medium"
    assert change.change_summary(days, sims, days[1], high=0.55, medium=0.6)["change_intensity"] == "High"
    assert change.change_summary(days, sims, days[1], high=0.3, medium=0.4)["change_intensity"] == "Low"
    only = change.change_summary(days[:1], [1.0], days[0], 0.3, 0.6)  # nothing after the baseline
    assert only["change_intensity"] == "Low" and only["min_sim_date"] is None


def test_bad_inputs(tmp_path, hand_embeddings):
    cfg = hand_embeddings.cfg()
    result = CliRunner().invoke(app, ["consolidate", "--out", cfg.output_root, "--aoi-name", cfg.aoi_name,
                                      "--quiet"])  # analyze not run
    assert result.exit_code == 2 and "run analyze first" in result.output, result.output
    rows = pd.DataFrame({"chip_id": ["1_1", "2_1"], "x_dim": [1, 2], "y_dim": [1, 1], "chip_size": 64,
                         "gsd": 10.0, "crs": "EPSG:32633", "utm_minx": [640.0, 1290.0],
                         "utm_maxy": [-640.0, -640.0]})
    with pytest.raises(ValueError, match="disagree on the tile origin"):
        consolidate.tile_chip_grid(rows)


def test_steps_3_and_4_on_s3(s3_bucket):
    data = write_hand_embeddings(f"s3://{s3_bucket}/root", n_x=3, n_y=1)
    cfg = data.cfg()
    record = run_steps(cfg, "analyze", "consolidate")
    assert record.ok, record.summary()
    assert len(_gdf(data.layout.consolidated_output(GRID))) == 15  # 18 less 1 not embedded, 2 over limits
    assert vectordb.open_table(data.layout.lance_db).count_rows() == 15
    hits = vectordb.search(data.layout.lance_db, chip_id=cid(0, 0), date=DATES[0], k=3, exclude_query_chip=False)
    assert (hits["chip_id"] == cid(0, 0)).all()
