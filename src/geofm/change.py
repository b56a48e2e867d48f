"""Change over time from embeddings: cosine similarity, baselines, per-patch maps, change intensity.

Pure functions on arrays and lists; the steps (analyze, consolidate) do the I/O.

Rules, stated once:

- Baseline ``first``: the chip's first analysed date (the spec). ``first-clear``: the first date whose
  cloud share is at most ``baseline_max_cloud`` (rows themselves may be cloudier, up to
  ``analyze_max_cloud``); when no date is that clear, the least cloudy date (earliest on ties).
- Per-patch map: cosine similarity of each patch embedding with the same patch at the baseline,
  [grid, grid] row-major; summaries: mean, 10th percentile, share below ``patch_change_threshold``.
- Change intensity of a chip, from the lowest similarity on the dates after its baseline:
  ``High`` below ``change_threshold_high``, ``Medium`` below ``change_threshold_medium``, else ``Low``
  (also ``Low`` when no date follows the baseline).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from geofm.errors import InputError


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened; NaN when either is all zeros."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def patch_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per patch of two [L, D] arrays -> [L] (NaN where a patch is all zeros)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"patch embeddings must be two [L, D] arrays of one shape, got {a.shape}, {b.shape}")
    num = np.einsum("ld,ld->l", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(den > 0, num / den, np.nan), -1.0, 1.0)


def patch_grid_side(n_patches: int) -> int:
    """Side of the square patch grid holding ``n_patches`` (row-major); non-squares raise."""
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise InputError(f"{n_patches} patches do not form a square grid")
    return side


def patch_summary(sim: np.ndarray, threshold: float) -> dict[str, float]:
    """Mean, 10th percentile and share below ``threshold`` of a per-patch similarity map."""
    v = np.asarray(sim, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"patch_sim_mean": math.nan, "patch_sim_p10": math.nan, "patch_changed_share": math.nan}
    return {"patch_sim_mean": float(v.mean()), "patch_sim_p10": float(np.quantile(v, 0.1)),
            "patch_changed_share": float((v < threshold).mean())}


def baseline_index(cloud: Sequence[float], rule: str, baseline_max_cloud: float = 0.0) -> int:
    """Index of the baseline among date-sorted rows with cloud shares ``cloud`` (see module rules)."""
    if len(cloud) == 0:
        raise InputError("no rows to choose a baseline from")
    if rule == "first":
        return 0
    if rule != "first-clear":
        raise InputError(f"unknown baseline rule {rule!r}; use 'first' or 'first-clear'")
    c = np.asarray(cloud, dtype=np.float64)
    clear = np.flatnonzero(c <= baseline_max_cloud)
    return int(clear[0]) if clear.size else int(np.argmin(c))


def intensity(min_sim: float, high: float, medium: float) -> str:
    """``High``/``Medium``/``Low`` from the lowest similarity after the baseline (NaN -> Low)."""
    if min_sim is None or not math.isfinite(min_sim):
        return "Low"
    if min_sim < high:
        return "High"
    if min_sim < medium:
        return "Medium"
    return "Low"


def change_summary(dates: Sequence[Any], sims: Sequence[float], baseline_date: Any,
                   high: float, medium: float) -> dict[str, Any]:
    """Per-chip summary over date-sorted rows: latest and lowest similarity after the baseline, the
    largest drop between consecutive valid dates (from the baseline on) and the intensity class."""
    d = list(dates)
    s = np.asarray(sims, dtype=np.float64)
    valid = [i for i in range(len(d)) if math.isfinite(s[i])]
    after = [i for i in valid if d[i] > baseline_date]
    out: dict[str, Any] = {
        "latest_date": d[valid[-1]] if valid else None,
        "latest_sim": float(s[valid[-1]]) if valid else math.nan,
        "min_sim": math.nan, "min_sim_date": None, "largest_drop": 0.0, "largest_drop_date": None,
        "n_dates": len(valid),
    }
    if after:
        k = min(after, key=lambda i: (s[i], d[i]))
        out["min_sim"], out["min_sim_date"] = float(s[k]), d[k]
    chain = [i for i in valid if d[i] >= baseline_date]
    for prev, cur in zip(chain, chain[1:], strict=False):
        drop = float(s[prev] - s[cur])
        if drop > out["largest_drop"]:
            out["largest_drop"], out["largest_drop_date"] = drop, d[cur]
    out["change_intensity"] = intensity(out["min_sim"], high, medium)
    return out


# ---- seasonal baseline ---------------------------------------------------------------------------
# ``baseline: seasonal`` compares each date with what the same place looked like at the same time of
# year in a baseline period, then standardises the difference so one threshold means the same
# everywhere. Rules, stated once:
#
# - Expected embedding of a row: ``nearest-doy``: the baseline-period row nearest in day of year
#   (circular, 365.25 d; ties: the nearer date, then the earlier); ``harmonic``: a least-squares fit of
#   every embedding value on the baseline rows with ``1, cos(2 pi k doy / 365.25), sin(...)`` for
#   k = 1..order (the order lowered until the fit has more rows than terms; order 0 is the mean).
#   A baseline-period row is predicted from the other baseline rows only (leave one out), so its
#   residual is what an unseen date of an unchanged place would give.
# - Residual: the chord distance ``sqrt(2 (1 - cosine))`` between the row and its expectation scaled
#   to unit length, for the chip (flattened) and per patch. It grows linearly with a small departure
#   (``1 - cosine`` grows with its square, so its spread is skewed and inflates z-scores).
# - z-score: ``(residual - mean) / max(spread, floor)`` with the mean and standard deviation of the
#   chip's (patch's) baseline-period residuals. A patch's few baseline dates give a shaky spread, so
#   it is at least the pooled spread of all the chip's patches (the place's own noise, from many
#   series). Both are at least an AOI-wide floor (:func:`seasonal_floors`: a low quantile,
#   ``FLOOR_QUANTILE``, of those spreads over a seeded sample of chips) that only guards against
#   places whose baseline happened to be implausibly quiet: a typical or noisy place (crops) keeps
#   its own spread, a quiet one (forest) is not judged by the crops' noise.
# - Monitoring: only rows after ``baseline_period_end`` count for change intensity and alerts.
SEASONAL_RULES = ("nearest-doy", "harmonic")
FLOOR_QUANTILE = 0.1
YEAR_DAYS = 365.25


@dataclass(frozen=True)
class SeasonalModel:
    """What every chip of an AOI shares under ``baseline: seasonal``: the rule, the baseline period
    and the AOI-wide floors of the residual spread (chip and patch level)."""

    rule: str
    order: int
    period_start: date
    period_end: date
    chip_floor: float
    patch_floor: float
    sample_chips: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "order": self.order, "period_start": self.period_start.isoformat(),
                "period_end": self.period_end.isoformat(), "chip_floor": self.chip_floor,
                "patch_floor": self.patch_floor, "sample_chips": self.sample_chips}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeasonalModel:
        return cls(str(d["rule"]), int(d["order"]), date.fromisoformat(str(d["period_start"])),
                   date.fromisoformat(str(d["period_end"])), float(d["chip_floor"]),
                   float(d["patch_floor"]), int(d.get("sample_chips", 0)))

    @property
    def label(self) -> str:
        """The rule as recorded with outputs, e.g. ``seasonal/harmonic``."""
        return f"seasonal/{self.rule}"


def check_seasonal_rule(rule: str) -> str:
    if rule not in SEASONAL_RULES:
        raise InputError(f"unknown seasonal rule {rule!r}; use one of {', '.join(SEASONAL_RULES)}")
    return rule


def baseline_period(dates: Sequence[date], start: date | None, end: date | None) -> tuple[date, date]:
    """The baseline period: the given ends, else from the first date for one year (365 days)."""
    if start is None:
        if not dates:
            raise InputError("no dates to place the seasonal baseline period in")
        start = min(dates)
    if end is None:
        end = start + timedelta(days=364)
    if end < start:
        raise InputError(f"baseline period reversed: start {start} is after end {end}")
    return start, end


def day_of_year(dates: Sequence[date]) -> np.ndarray:
    return np.asarray([d.timetuple().tm_yday for d in dates], dtype=np.float64)


def doy_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular distance in days between days of year (broadcast)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % YEAR_DAYS
    return np.minimum(d, YEAR_DAYS - d)


def harmonic_design(dates: Sequence[date], order: int) -> np.ndarray:
    """[n, 1 + 2 order]: 1, cos and sin of k x 2 pi doy / 365.25 for k = 1..order."""
    w = 2 * np.pi * day_of_year(dates) / YEAR_DAYS
    cols = [np.ones_like(w)]
    for k in range(1, order + 1):
        cols += [np.cos(k * w), np.sin(k * w)]
    return np.stack(cols, axis=1)


def nearest_sources(dates: Sequence[date], in_baseline: np.ndarray) -> np.ndarray:
    """For every row, the baseline row nearest to it in day of year, itself excepted (ties: the nearer
    date, then the earlier); -1 where there is none."""
    doy = day_of_year(dates)
    ordinal = np.asarray([d.toordinal() for d in dates], np.float64)
    base = np.flatnonzero(np.asarray(in_baseline, bool))
    out = np.full(len(doy), -1)
    for i in range(len(doy)):
        cand = base[base != i]
        if cand.size:
            key = np.lexsort((ordinal[cand], np.abs(ordinal[cand] - ordinal[i]),
                              doy_distance(doy[cand], doy[i])))
            out[i] = cand[key[0]]
    return out


def spread_rows(dates: Sequence[date], in_baseline: np.ndarray, rule: str) -> np.ndarray:
    """The baseline rows whose residuals estimate a series' spread: all of them, except that under
    ``nearest-doy`` two rows that are each other's nearest share one residual, which counts once."""
    rows = np.asarray(in_baseline, bool).copy()
    if rule == "nearest-doy":
        src = nearest_sources(dates, in_baseline)
        for i in np.flatnonzero(rows):
            if 0 <= src[i] < i and src[src[i]] == i:
                rows[i] = False
    return rows


def seasonal_expectation(dates: Sequence[date], values: np.ndarray, in_baseline: np.ndarray, rule: str,
                         order: int = 2) -> np.ndarray:
    """The expected value of every row of ``values`` [n, ...] (rows date-sorted) from the baseline
    rows (``in_baseline`` mask), by ``rule`` (module rules); NaN rows where no expectation exists."""
    check_seasonal_rule(rule)
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    flat = v.reshape(n, -1)
    base = np.flatnonzero(np.asarray(in_baseline, bool))
    out = np.full_like(flat, np.nan)
    if rule == "nearest-doy":
        src = nearest_sources(dates, in_baseline)
        out[src >= 0] = flat[src[src >= 0]]
        return out.reshape(v.shape)
    if base.size == 0:
        return out.reshape(v.shape)
    k = max(0, min(order, (base.size - 2) // 2))  # more rows than terms, so leave-one-out is defined
    x = harmonic_design(dates, k)
    xb = x[base]
    pinv = np.linalg.pinv(xb)  # [p, nb]
    coef = pinv @ flat[base]
    out[:] = x @ coef
    hat = np.einsum("ij,ji->i", xb, pinv)  # leverages of the baseline rows
    for j, i in enumerate(base):
        if hat[j] < 1 - 1e-9:  # leave-one-out prediction of a least-squares fit, in closed form
            out[i] = flat[i] - (flat[i] - out[i]) / (1 - hat[j])
        else:
            out[i] = np.nan
    return out.reshape(v.shape)


def similarities(values: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Cosine similarity of each row with its expectation: chip level [n] (flattened) and, for patch
    embeddings [n, L, D], per patch [n, L]; NaN where the expectation is missing."""
    v = np.asarray(values, np.float64)
    e = np.asarray(expected, np.float64)
    n = v.shape[0]
    chip = np.full(n, np.nan)
    patch = np.full((n, v.shape[1]), np.nan) if v.ndim == 3 else None
    for i in range(n):
        if not np.all(np.isfinite(e[i])):
            continue
        chip[i] = cosine_similarity(v[i], e[i])
        if patch is not None:
            patch[i] = patch_similarity(v[i], e[i])
    return chip, patch


def chord(similarity: np.ndarray) -> np.ndarray:
    """The residual of a cosine similarity: the distance of the two vectors scaled to unit length."""
    s = np.asarray(similarity, np.float64)
    return np.sqrt(2.0 * np.clip(1.0 - s, 0.0, 2.0))


def residual_stats(res: np.ndarray, in_baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 1; NaN with fewer than 2 values) of the baseline rows'
    residuals, over axis 0 (per chip for [n], per patch for [n, L])."""
    r = np.asarray(res, np.float64)[np.asarray(in_baseline, bool)]
    count = np.sum(np.isfinite(r), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty or all-NaN columns
        mean = np.where(count > 0, np.nanmean(r, axis=0), 0.0)
        std = np.where(count > 1, np.nanstd(r, axis=0, ddof=1), np.nan)
    return np.asarray(mean, np.float64), np.asarray(std, np.float64)


def zscore(res: np.ndarray, in_baseline: np.ndarray, floor: float) -> np.ndarray:
    """z-scores of residuals against the baseline rows' mean and spread, the spread at least ``floor``."""
    mean, std = residual_stats(res, in_baseline)
    scale = np.fmax(np.nan_to_num(std, nan=0.0), floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, (np.asarray(res, np.float64) - mean) / scale, np.nan)


@dataclass(frozen=True)
class Spread:
    """Squared deviations of baseline residuals from their series' mean, summed, and their degrees of
    freedom (values - 1 per series): what a pooled standard deviation is made of."""

    squares: float = 0.0
    dof: int = 0

    @classmethod
    def of(cls, res: np.ndarray, in_baseline: np.ndarray) -> Spread:
        """Of residuals [n] (one series) or [n, L] (L series) over the baseline rows."""
        r = np.asarray(res, np.float64)[np.asarray(in_baseline, bool)]
        r = r.reshape(r.shape[0], -1)
        count = np.sum(np.isfinite(r), axis=0)
        ok = count > 1
        if not ok.any():
            return cls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dev = r[:, ok] - np.nanmean(r[:, ok], axis=0)
        return cls(float(np.nansum(dev**2)), int((count[ok] - 1).sum()))

    @property
    def std(self) -> float:
        return math.sqrt(self.squares / self.dof) if self.dof else 0.0


def baseline_spreads(dates: Sequence[date], values: np.ndarray, model: SeasonalModel
                     ) -> tuple[Spread, Spread]:
    """One chip's baseline residual spread, chip level and over its patches (for the floors)."""
    inb = in_period(dates, model)
    exp = seasonal_expectation(dates, values, inb, model.rule, model.order)
    chip, patch = similarities(values, exp)
    rows = spread_rows(dates, inb, model.rule)
    return Spread.of(chord(chip), rows), (Spread.of(chord(patch), rows) if patch is not None else Spread())


def seasonal_floors(spreads: Sequence[tuple[Spread, Spread]]) -> tuple[float, float]:
    """AOI-wide floors: the ``FLOOR_QUANTILE`` quantile of the sampled chips' baseline spreads, chip
    level and (each chip's patches pooled) patch level; 0 when none is known."""
    def low(values: list[float]) -> float:
        return float(np.quantile(values, FLOOR_QUANTILE)) if values else 0.0

    return (low([c.std for c, _ in spreads if c.dof]), low([p.std for _, p in spreads if p.dof]))


def in_period(dates: Sequence[date], model: SeasonalModel) -> np.ndarray:
    return np.asarray([model.period_start <= d <= model.period_end for d in dates], bool)


@dataclass
class SeasonalChange:
    """One chip's seasonal comparison, per date-sorted row (see the module rules)."""

    similarity: np.ndarray  # [n] cosine with the expectation (NaN: none)
    z: np.ndarray  # [n] chip-level z-score
    patch_similarity: np.ndarray | None  # [n, L]
    patch_z: np.ndarray | None  # [n, L]
    in_baseline: np.ndarray  # [n] bool


def seasonal_change(dates: Sequence[date], values: np.ndarray, model: SeasonalModel) -> SeasonalChange:
    """Compare every row of one chip with its seasonal expectation: similarity and z-scores."""
    inb = in_period(dates, model)
    exp = seasonal_expectation(dates, values, inb, model.rule, model.order)
    chip, patch = similarities(values, exp)
    rows = spread_rows(dates, inb, model.rule)
    patch_z = None
    if patch is not None:  # a patch's few baseline dates are helped by its chip's other patches
        res = chord(patch)
        patch_z = zscore(res, rows, max(model.patch_floor, Spread.of(res, rows).std))
    return SeasonalChange(chip, zscore(chord(chip), rows, model.chip_floor), patch, patch_z, inb)


def z_intensity(max_z: float, high: float, medium: float) -> str:
    """``High``/``Medium``/``Low`` from the largest z-score after the baseline period (NaN -> Low)."""
    if max_z is None or not math.isfinite(max_z):
        return "Low"
    if max_z >= high:
        return "High"
    if max_z >= medium:
        return "Medium"
    return "Low"


def patch_z_summary(z: np.ndarray, threshold: float) -> dict[str, float]:
    """Largest per-patch z-score and the share of patches at or above ``threshold``."""
    v = np.asarray(z, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"patch_z_max": math.nan, "patch_changed_share": math.nan}
    return {"patch_z_max": float(v.max()), "patch_changed_share": float((v >= threshold).mean())}


# ---- one scale for every rule --------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeScale:
    """Thresholds on the change score of a baseline rule, where a larger score is more change:
    ``1 - cosine similarity`` for ``first``/``first-clear`` (changed when the similarity is below its
    threshold), the z-score for ``seasonal`` (changed at or above its threshold). Alerts, the change
    raster, the ``changed`` flag of the vector DB and search within change all judge scores here."""

    rule: str
    high: float
    medium: float
    patch: float

    @property
    def seasonal(self) -> bool:
        return self.rule.startswith("seasonal")

    def above(self, score: np.ndarray | float, threshold: float) -> np.ndarray:
        s = np.asarray(score, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            hit = s >= threshold if self.seasonal else s > threshold
        return hit & np.isfinite(s)

    def chip_changed(self, score: np.ndarray | float) -> np.ndarray:
        """Scores that make a chip at least ``Medium`` on that date."""
        return self.above(score, self.medium)

    def patch_changed(self, score: np.ndarray | float) -> np.ndarray:
        return self.above(score, self.patch)


def change_scale(cfg: Any, rule: str | None = None) -> ChangeScale:
    """The :class:`ChangeScale` of a baseline ``rule`` (default: the config's; outputs record theirs in
    ``baseline_rule``) with the config's thresholds for that kind of rule."""
    rule = rule or (f"seasonal/{cfg.seasonal_rule}" if cfg.baseline == "seasonal" else cfg.baseline)
    if rule.startswith("seasonal"):
        return ChangeScale(rule, cfg.change_z_high, cfg.change_z_medium, cfg.patch_z_threshold)
    return ChangeScale(rule, 1.0 - cfg.change_threshold_high, 1.0 - cfg.change_threshold_medium,
                       1.0 - cfg.patch_change_threshold)


def patch_scores(row: Any, scale: ChangeScale) -> np.ndarray | None:
    """The per-patch change scores of a processed row on ``scale`` (``patch_z_map`` under a seasonal
    baseline, else ``1 - patch_sim_map``), or None when the row has no patch map."""
    value = row.get("patch_z_map" if scale.seasonal else "patch_sim_map")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = np.asarray(value, dtype=np.float64)
    return v if scale.seasonal else 1.0 - v


def monitored(rows: pd.DataFrame) -> np.ndarray:
    """Which rows are dated after their chip's baseline (the only ones change is judged on), as a mask."""
    after = pd.to_datetime(rows["date"], utc=True) > pd.to_datetime(rows["baseline_date"], utc=True)
    return after.to_numpy()


def chip_score(similarity: np.ndarray) -> np.ndarray:
    """The change score of similarity rules: ``1 - cosine similarity``."""
    return 1.0 - np.asarray(similarity, dtype=np.float64)


def seasonal_summary(dates: Sequence[Any], z: Sequence[float], period_end: Any, high: float,
                     medium: float) -> dict[str, Any]:
    """Per-chip summary under a seasonal baseline: the largest z-score after the baseline period, its
    date, and the intensity class from it."""
    d = list(dates)
    v = np.asarray(z, dtype=np.float64)
    after = [i for i in range(len(d)) if d[i] > period_end and math.isfinite(v[i])]
    out: dict[str, Any] = {"max_z": math.nan, "max_z_date": None}
    if after:
        k = max(after, key=lambda i: (v[i], -i))
        out["max_z"], out["max_z_date"] = float(v[k]), d[k]
    out["change_intensity"] = z_intensity(out["max_z"], high, medium)
    return out
