"""Change baselines side by side on the same embeddings: `first-clear` vs the seasonal baseline's two
candidate rules (`nearest-doy`, `harmonic` of order 1 and 2), on two years of synthetic farmland with
planted changes (forest cleared, new water) in the second year.

For each cadence (a date every 30 and every 45 days) and seed: `geofm synth --scenario farmland` (half
the land in crops whose cycle shifts from year to year), steps 1-2 once with the weights-free `spectral`
encoder, then steps 3-4 and the alert export once per rule (baseline period: 2022). Truth comes from the
archive: changed chips (at least 25 % inside a planted change), unchanged crop chips (at least half
cropland, no planted change pixel), the planted polygons, and per patch the share inside them.

Per rule: recall of changed chips (change intensity Medium or High), false alarms on unchanged crop
chips and on all unchanged chips, the threshold-free separation (ROC AUC of each chip's, and each
patch's, largest change score after the baseline: changed vs unchanged), the patch rates at the rule's
patch threshold, the alerts' IoU with the planted polygons and their false-alarm area; for the
seasonal rules a sweep of the patch z threshold.

    .venv/bin/python benchmarks/bench_change_rules.py [--seeds 0 1] [--every 30 45] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from _machine import machine
from _synth_run import BASELINE_END, CHIP, embedded_aoi
from geofm import alerts, storage
from geofm.pipeline import run_pipeline
from geofm.synth import default_dates, truth

SWEEP = (3, 4, 6, 8)  # patch z thresholds swept for the seasonal rules
RULES = {  # label -> config overrides
    "first-clear": {"baseline": "first-clear"},
    "seasonal nearest-doy": {"baseline": "seasonal", "seasonal_rule": "nearest-doy"},
    "seasonal harmonic-1": {"baseline": "seasonal", "seasonal_rule": "harmonic", "harmonic_order": 1},
    "seasonal harmonic-2": {"baseline": "seasonal", "seasonal_rule": "harmonic", "harmonic_order": 2},
}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC: the chance that a changed chip scores above an unchanged one (ties count half)."""
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def evaluate(cfg, synth, label: str) -> dict:
    start = time.perf_counter()
    record = run_pipeline(cfg, ["analyze", "consolidate"])
    if not record.ok:
        raise SystemExit(record.summary())
    layer_url = cfg.layout.change_intensity(synth.grid)
    with storage.local_file_for_read(layer_url, ".geojson") as path:
        layer = gpd.read_file(path)
    frame = alerts.change_alerts(cfg)
    rows = alerts.read_grid_rows(cfg.layout, synth.grid)
    scale = alerts.grid_scale(rows, cfg)
    pg, peak = alerts.peak_layer(rows, synth.grid, scale)
    seconds = time.perf_counter() - start
    # truth per patch: share of its pixels inside a planted change (patches of the analysed chips' box)
    px = CHIP // pg.side
    mask = truth.changed_mask(synth.truth_path, synth.shape)
    r0, c0 = pg.y0 * CHIP, pg.x0 * CHIP
    box = mask[r0:r0 + pg.shape[0] * px, c0:c0 + pg.shape[1] * px]
    share = box.reshape(pg.shape[0], px, pg.shape[1], px).mean(axis=(1, 3))
    changed_share = truth.change_shares(synth.truth_path, synth.shape, CHIP)
    crop = truth.class_shares(synth.landcover_path, 2, CHIP)
    layer["changed"] = layer["chip_id"].map(changed_share) >= 0.25
    layer["unchanged"] = layer["chip_id"].map(changed_share) == 0
    layer["crop"] = layer["unchanged"] & (layer["chip_id"].map(crop) >= 0.5)
    layer["flagged"] = layer["change_intensity"] != "Low"
    score = layer["max_z"].astype(float) if "max_z" in layer.columns and layer["max_z"].notna().any() \
        else 1.0 - layer["min_sim"].astype(float)
    analysed = layer.union_all()
    truth_poly = gpd.read_file(synth.truth_path).union_all().intersection(analysed)
    alert_area = frame.union_all() if len(frame) else None
    utm = layer.estimate_utm_crs()
    unchanged_area = gpd.GeoSeries([analysed.difference(truth_poly)], crs=4326).to_crs(utm).area.iloc[0]
    false_area = 0.0
    if alert_area is not None:
        false_area = gpd.GeoSeries([alert_area.difference(truth_poly)], crs=4326).to_crs(utm).area.iloc[0]
    return {
        "rule": label, "changed": int(layer["changed"].sum()),
        "recall": float(layer.loc[layer["changed"], "flagged"].mean()),
        "crop_chips": int(layer["crop"].sum()), "crop_false": int(layer.loc[layer["crop"], "flagged"].sum()),
        "unchanged": int(layer["unchanged"].sum()),
        "unchanged_false": int(layer.loc[layer["unchanged"], "flagged"].sum()),
        "auc": auc(score[layer["changed"]].to_numpy(), score[layer["unchanged"]].to_numpy()),
        "patch_auc": auc(peak[share == 1], peak[share == 0]),
        "patch_tpr": float(scale.patch_changed(peak[share == 1]).mean()),
        "patch_fpr": float(scale.patch_changed(peak[share == 0]).mean()),
        **({f"fpr@{t}": float((peak[share == 0] >= t).mean()) for t in SWEEP} if scale.seasonal else {}),
        **({f"tpr@{t}": float((peak[share == 1] >= t).mean()) for t in SWEEP} if scale.seasonal else {}),
        "alerts": len(frame), "iou": truth.iou(frame, synth.truth_path, within=analysed),
        "false_area_share": float(false_area / unchanged_area), "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--every", type=int, nargs="+", default=[30, 45],
                    help="Days between dates (one series of runs per cadence).")
    ap.add_argument("--work", type=Path, default=None, help="Keep the runs here (reused when present).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="geofm-bench-change-"))
    rows, runs = [], []
    for every in args.every:  # steps 1-2 of every run first: no worker pool forks after LanceDB is loaded
        dates = default_dates(dt.date(2022, 1, 10), dt.date(2023, 12, 31), every)
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg, synth = embedded_aoi(work / f"every{every}-seed{seed}", seed, dates=dates)
            runs.append((every, seed, cfg, synth))
            print(f"every {every} d, seed {seed}: {len(synth.dates)} dates {synth.dates[0]}..{synth.dates[-1]}, "
                  f"steps 1-2 in {time.perf_counter() - t0:.0f} s", flush=True)
    for every, seed, cfg, synth in runs:
        for label, overrides in RULES.items():
            run_cfg = cfg.model_copy(update={**overrides, "baseline_period_end": BASELINE_END, "workers": 1})
            rows.append({"every": every, "seed": seed, **evaluate(run_cfg, synth, label)})
            print(f"  every {every} d, seed {seed}, {label}: done", flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    sweep = [c for c in df.columns if "@" in c]
    print(f"\n{dt.date.today()} {machine()}\nper run:\n"
          f"{df.drop(columns=['seconds', *sweep]).to_string(index=False, float_format='%.4f')}")
    seasonal = df[df["rule"].str.startswith("seasonal")]
    print("\npatch z threshold sweep (share of planted / unchanged patches whose largest z after the baseline "
          "period reaches it; mean over seeds):\n"
          + seasonal.groupby(["every", "rule"], sort=False)[sweep].mean().to_string(float_format="%.4f"))
    for every, g in df.groupby("every", sort=False):
        total = g.groupby("rule", sort=False).agg(
            changed=("changed", "sum"), recall=("recall", "mean"), crop_chips=("crop_chips", "sum"),
            crop_false=("crop_false", "sum"), unchanged=("unchanged", "sum"),
            unchanged_false=("unchanged_false", "sum"), auc=("auc", "mean"), patch_auc=("patch_auc", "mean"),
            patch_tpr=("patch_tpr", "mean"), patch_fpr=("patch_fpr", "mean"), alerts=("alerts", "sum"),
            iou=("iou", "mean"), false_area_share=("false_area_share", "mean"))
        print(f"\na date every {every} days, all seeds (recall, AUCs, patch rates, IoU, false-area share: mean "
              f"over seeds):\n{total.to_string(float_format='%.4f')}")
        base = total.loc["first-clear"]
        for rule in total.index[1:]:
            r = total.loc[rule]
            print(f"{rule}: false alarms on unchanged crop chips {r.crop_false} vs first-clear "
                  f"{base.crop_false}; recall {r.recall:.2f}; alert IoU {r.iou:.3f} vs {base.iou:.3f}")


if __name__ == "__main__":
    main()
