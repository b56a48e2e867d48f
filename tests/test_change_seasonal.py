"""The seasonal baseline's rules (geofm.change): expectation by nearest day of year and by harmonic fit,
leave-one-out residuals in the baseline period, z-scores with a floor, and the change scale."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest

from geofm import change
from geofm.change import SeasonalModel
from geofm.config import PipelineConfig
from geofm.errors import InputError

D = 8  # embedding size of the toy series


def cycle(d: date) -> float:
    """A crop-like yearly cycle in [0, 1]: bare in winter, green in early summer."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * (d.timetuple().tm_yday - 80) / 365.25)


def embedding(green: float, rng: np.random.Generator, changed: bool = False) -> np.ndarray:
    """Two directions mixed by the green fraction (soil vs canopy), a third for a land-cover change."""
    soil, canopy, water = np.eye(D)[0] + 0.05, np.eye(D)[1] + 0.05, np.eye(D)[2] - 0.3
    v = water if changed else (1 - green) * soil + green * canopy
    return v + rng.normal(0, 0.01, D)


def series(dates: list[date], change_from: date | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([embedding(cycle(d), rng, change_from is not None and d >= change_from) for d in dates])


def two_years(step: int = 30) -> list[date]:
    return [date(2022, 1, 10) + timedelta(days=step * i) for i in range(0, 730 // step)]


def test_nearest_doy_takes_the_baseline_date_nearest_in_day_of_year_across_the_new_year() -> None:
    dates = [date(2022, 1, 5), date(2022, 6, 1), date(2022, 12, 28), date(2023, 1, 2), date(2023, 6, 10)]
    values = np.arange(len(dates), dtype=float)[:, None] * np.ones((1, 3))
    inb = np.array([True, True, True, False, False])
    exp = change.seasonal_expectation(dates, values, inb, "nearest-doy")
    # 2023-01-02 (doy 2): 2022-01-05 is 3 days away in day of year, 2022-12-28 is 5 days away
    assert exp[3, 0] == 0.0
    assert exp[4, 0] == 1.0  # 2023-06-10 -> 2022-06-01
    # baseline rows never see themselves (leave one out): 2022-01-05 -> 2022-12-28 (8 days round the year)
    assert exp[0, 0] == 2.0 and exp[2, 0] == 0.0


def test_harmonic_fit_reproduces_a_yearly_sinusoid_and_predicts_baseline_rows_left_out() -> None:
    dates = two_years()
    doy = change.day_of_year(dates)
    values = (3 + np.cos(2 * np.pi * doy / 365.25) + 0.5 * np.sin(2 * np.pi * doy / 365.25))[:, None]
    inb = np.array([d <= date(2022, 12, 31) for d in dates])
    exp = change.seasonal_expectation(dates, values, inb, "harmonic", order=1)
    np.testing.assert_allclose(exp, values, atol=1e-9)  # exact model: every prediction right, LOO too
    # a constant fit (order lowered to 0 for two baseline rows) predicts each left-out row by the other
    two = np.array([True, True] + [False] * (len(dates) - 2))
    exp0 = change.seasonal_expectation(dates, values, two, "harmonic", order=2)
    assert exp0[0, 0] == pytest.approx(values[1, 0]) and exp0[1, 0] == pytest.approx(values[0, 0])
    np.testing.assert_allclose(exp0[2:, 0], values[:2, 0].mean())


def test_zscore_uses_the_baseline_spread_with_a_floor() -> None:
    res = np.array([0.01, 0.03, 0.02, 0.5, 0.02])
    inb = np.array([True, True, True, False, False])
    mean, std = change.residual_stats(res, inb)
    assert mean == pytest.approx(0.02) and std == pytest.approx(0.01)
    z = change.zscore(res, inb, floor=0.0)
    assert z[3] == pytest.approx(48.0) and z[4] == pytest.approx(0.0)
    z_floor = change.zscore(res, inb, floor=0.04)  # a quiet baseline is judged by the AOI-wide floor
    assert z_floor[3] == pytest.approx(12.0)


@pytest.mark.parametrize("rule", change.SEASONAL_RULES)
def test_seasonal_rule_flags_a_land_cover_change_but_not_the_crop_cycle(rule: str) -> None:
    dates = two_years()
    model0 = SeasonalModel(rule, 1, date(2022, 1, 1), date(2022, 12, 31), 0.0, 0.0)
    steady = series(dates, seed=1)
    changed = series(dates, change_from=date(2023, 5, 1), seed=2)
    spreads = [change.baseline_spreads(dates, v, model0) for v in (steady, changed)]
    chip_floor, _ = change.seasonal_floors(spreads)
    model = SeasonalModel(rule, 1, date(2022, 1, 1), date(2022, 12, 31), chip_floor, 0.0)
    after = np.array([d > model.period_end for d in dates])
    z_steady = change.seasonal_change(dates, steady, model).z
    z_changed = change.seasonal_change(dates, changed, model).z
    hit = np.array([d >= date(2023, 5, 1) for d in dates])
    assert np.nanmax(z_steady[after]) < 4.0
    assert np.nanmin(z_changed[hit]) > 8.0
    # against a fixed winter baseline date the same steady crop looks changed every summer
    first = np.array([change.cosine_similarity(v, steady[0]) for v in steady])
    assert np.nanmin(first[after]) < 0.6


def test_patch_level_z_localises_the_change_inside_a_chip() -> None:
    dates = two_years()
    rng = np.random.default_rng(3)
    values = np.stack([np.stack([embedding(cycle(d), rng, changed=(p < 2 and d >= date(2023, 3, 1)))
                                 for p in range(4)]) for d in dates])  # [n, L=4, D]
    model = SeasonalModel("nearest-doy", 1, date(2022, 1, 1), date(2022, 12, 31), 0.0, 0.01)
    sc = change.seasonal_change(dates, values, model)
    late = [i for i, d in enumerate(dates) if d >= date(2023, 3, 1)]
    assert sc.patch_z is not None and sc.patch_z.shape == (len(dates), 4)
    assert np.all(sc.patch_z[late][:, :2] > 8) and np.all(sc.patch_z[late][:, 2:] < 4)


def test_baseline_period_defaults_to_a_year_from_the_first_date() -> None:
    assert change.baseline_period([date(2022, 3, 1), date(2023, 5, 1)], None, None) == \
        (date(2022, 3, 1), date(2023, 2, 28))
    assert change.baseline_period([], date(2021, 1, 1), date(2021, 6, 30)) == (date(2021, 1, 1), date(2021, 6, 30))
    with pytest.raises(InputError, match="reversed"):
        change.baseline_period([date(2022, 1, 1)], date(2022, 5, 1), date(2022, 4, 1))
    with pytest.raises(InputError, match="seasonal rule"):
        change.seasonal_expectation([date(2022, 1, 1)], np.ones((1, 2)), np.array([True]), "median")


def test_change_scale_judges_similarity_below_and_z_at_or_above_thresholds() -> None:
    sim = change.change_scale(PipelineConfig(baseline="first-clear", change_threshold_medium=0.6,
                                             patch_change_threshold=0.5))
    assert sim.rule == "first-clear" and not sim.seasonal
    # similarity 0.5 is exactly the patch threshold: not changed (below means changed); 0.4 is
    assert list(sim.patch_changed(change.chip_score(np.array([0.5, 0.4, np.nan])))) == [False, True, False]
    z = change.change_scale(PipelineConfig(baseline="seasonal", change_z_medium=4.0, patch_z_threshold=3.0))
    assert z.rule == "seasonal/nearest-doy" and z.seasonal
    assert list(z.chip_changed(np.array([4.0, 3.99, np.nan]))) == [True, False, False]
    assert change.change_scale(PipelineConfig(), "seasonal/harmonic").patch == 4.0  # the rule outputs recorded
    assert change.z_intensity(9.0, 8.0, 4.0) == "High" and change.z_intensity(math.nan, 8.0, 4.0) == "Low"


def test_config_checks_the_seasonal_parameters() -> None:
    with pytest.raises(ValueError, match="baseline period reversed"):
        PipelineConfig(baseline="seasonal", baseline_period_start=date(2023, 1, 1),
                       baseline_period_end=date(2022, 1, 1))
    with pytest.raises(ValueError, match="change_z_high"):
        PipelineConfig(change_z_high=2.0, change_z_medium=4.0)
    with pytest.raises(ValueError):
        PipelineConfig(seasonal_rule="median")
