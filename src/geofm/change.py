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
from collections.abc import Sequence
from typing import Any

import numpy as np

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
