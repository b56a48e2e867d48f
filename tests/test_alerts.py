"""Change alerts and change rasters (geofm.alerts) on hand-made embeddings (fixtures.hand_embeddings):
the left half of chip 41_30 is cleared from the fourth date, nothing else changes."""

from __future__ import annotations

from datetime import date, timedelta

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import box

from fixtures.hand_embeddings import CHANGE_CHIP, CHANGE_INDEX, CHIP, DATES, GRID, GSD, ORIGIN, PATCH, X0, Y0
from geofm import alerts, change
from geofm.errors import NotFoundError
from geofm.pipeline import run_pipeline

SIDE = CHIP // PATCH  # patches per chip side
PATCH_M = PATCH * GSD


def _run(cfg):
    record = run_pipeline(cfg, ["analyze", "consolidate"])
    assert record.ok, record.summary()
    return cfg


def _cleared_half_utm() -> box:
    """The planted change in UTM: the left half of chip 41_30."""
    x0 = ORIGIN[0] + (X0 + 1) * CHIP * GSD
    y1 = ORIGIN[1] - Y0 * CHIP * GSD
    return box(x0, y1 - CHIP * GSD, x0 + CHIP * GSD / 2, y1)


@pytest.mark.parametrize("baseline", ["first-clear", "seasonal"])
def test_one_alert_polygon_over_the_cleared_half(hand_embeddings, baseline: str) -> None:
    cfg = _run(hand_embeddings.cfg(baseline=baseline, baseline_period_end=DATES[2]))
    frame = alerts.change_alerts(alerts.recorded_config(cfg.output_root, cfg.aoi_name))
    frame = frame.sort_values("n_patches", ascending=False)
    alert, others = frame.iloc[0], frame.iloc[1:]
    if baseline == "first-clear":
        assert others.empty, frame.drop(columns="geometry")
    else:  # three baseline dates give each patch two residuals: a stray noisy patch may pass z 4
        assert (others["n_patches"] == 1).all() and (others["magnitude"] < alert["magnitude"] / 10).all()
    assert alert["chip_id"] == CHANGE_CHIP and alert["chip_ids"] == CHANGE_CHIP
    assert alert["first_detected"] == DATES[CHANGE_INDEX].isoformat()
    assert alert["n_patches"] == SIDE * SIDE // 2 and alert["area_m2"] == pytest.approx(32 * PATCH_M**2)
    rule = "seasonal/nearest-doy" if baseline == "seasonal" else "first-clear"
    assert alert["baseline_rule"] == rule and alert["score_kind"] == ("z" if baseline == "seasonal" else "1-cosine")
    threshold = cfg.patch_z_threshold if baseline == "seasonal" else 1 - cfg.patch_change_threshold
    assert alert["magnitude"] >= alert["mean_magnitude"] > threshold
    utm = gpd.GeoSeries([alert.geometry], crs=4326).to_crs(32633).iloc[0]
    planted = _cleared_half_utm()
    assert utm.symmetric_difference(planted).area / planted.area < 1e-3


def test_thresholds_come_from_the_config_and_change_the_alerts(hand_embeddings) -> None:
    cfg = _run(hand_embeddings.cfg(patch_change_threshold=0.9))
    recorded = alerts.recorded_config(cfg.output_root, cfg.aoi_name)
    assert recorded.patch_change_threshold == 0.9  # what step 4 recorded, not the default
    strict = recorded.model_copy(update={"patch_change_threshold": -1.0})  # nothing is ever that dissimilar
    assert alerts.change_alerts(strict).empty
    assert alerts.export_alerts(strict, "geojson")[1].empty  # an empty file is still written
    assert gpd.read_file(strict.layout.change_alerts("geojson")).empty


def test_change_raster_values_and_cog(hand_embeddings) -> None:
    cfg = _run(hand_embeddings.cfg())
    (url,) = alerts.export_change_raster(cfg, DATES[4])
    assert url == cfg.layout.change_raster(GRID, DATES[4].isoformat())
    with rasterio.open(url) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.res == (PATCH_M, PATCH_M) and ds.shape == (2 * SIDE, 3 * SIDE)
        assert (ds.transform.c, ds.transform.f) == (ORIGIN[0] + X0 * CHIP * GSD, ORIGIN[1] - Y0 * CHIP * GSD)
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3" and ds.tags()["score"] == "1-cosine"
        v = ds.read(1)
    changed = v[:SIDE, SIDE:2 * SIDE]  # chip 41_30: row 0, column 1 of the 3 x 2 block
    threshold = 1 - cfg.patch_change_threshold
    assert (changed[:, : SIDE // 2] > threshold).all() and (changed[:, SIDE // 2:] < threshold).all()
    assert np.isnan(v[:SIDE, 2 * SIDE:]).all()  # chip 42_30 is 50 % cloudy that day: no row
    others = np.concatenate([v[:SIDE, :SIDE].ravel(), v[SIDE:].ravel()])
    assert np.nanmax(others) < threshold
    with pytest.raises(NotFoundError, match=DATES[0].isoformat()):
        alerts.export_change_raster(cfg, DATES[0].replace(day=1))
    before = alerts.change_layer(alerts.read_grid_rows(cfg.layout, GRID), GRID, DATES[0],
                                 alerts.grid_scale(alerts.read_grid_rows(cfg.layout, GRID), cfg))[1]
    assert np.isnan(before).all()  # the baseline date itself is not monitored


def _one_chip_rows(sims: list[list[float]]) -> pd.DataFrame:
    """A chip of 2 x 2 patches: a baseline date, then one date per entry of ``sims`` (patch similarities)."""
    days = [date(2024, 1, 5) + timedelta(days=30 * i) for i in range(len(sims) + 1)]
    base = {"chip_id": "0_0", "x_dim": 0, "y_dim": 0, "baseline_date": pd.Timestamp(days[0]),
            "baseline_rule": "first-clear", "patch_grid": 2, "patch_z_map": None, "utm_minx": 500000.0,
            "utm_maxy": 4000000.0, "chip_size": 64, "gsd": 10.0, "crs": "EPSG:32633"}
    return pd.DataFrame([{**base, "date": pd.Timestamp(d), "patch_sim_map": s}
                         for d, s in zip(days, [[1.0] * 4, *sims], strict=True)])


def test_an_alert_needs_a_change_that_stays() -> None:
    """Patch 0 (top left) changes once (a passing cloud), patch 1 (top right) from the second date on,
    patch 2 (bottom left) on the last date only: with 2 dates in a row, patch 1 is a confirmed alert,
    patch 2 an unconfirmed one, patch 0 none; with 1, patch 0 is alerted too and joins them."""
    rows = _one_chip_rows([[0.1, 1.0, 1.0, 1.0], [1.0, 0.2, 1.0, 1.0], [1.0, 0.3, 1.0, 1.0],
                           [1.0, 0.1, 0.2, 1.0]])
    scale = change.ChangeScale("first-clear", 0.7, 0.4, 0.5)
    _, first, peak, confirmed = alerts.first_detections(rows, GRID, scale, min_dates=2)
    days = sorted(pd.to_datetime(rows["date"]).dt.date)
    assert first[0, 0] == alerts._NONE and first[0, 1] == days[2].toordinal()
    assert confirmed[0, 1] and not confirmed[1, 0] and first[1, 0] == days[4].toordinal()
    assert peak[0, 1] == pytest.approx(0.9) and peak[1, 0] == pytest.approx(0.8)
    assert first[1, 1] == alerts._NONE
    frame = alerts.grid_alerts(rows, GRID, scale, min_dates=2).sort_values("first_detected")
    assert frame["first_detected"].tolist() == [days[2].isoformat(), days[4].isoformat()]
    assert frame["confirmed"].tolist() == [True, False]
    once = alerts.grid_alerts(rows, GRID, scale, min_dates=1)
    assert len(once) == 1 and once["first_detected"].iloc[0] == days[1].isoformat()  # 0 touches 1 and 2
