"""Few-shot search on synthetic land covers: single-chip cosine search vs "more like these, not like
those" rules, by precision@k on the same embeddings.

One synthetic scene per seed (`geofm synth`, default landscape, 5.12 km, two clear summer dates), steps
1-4 with the weights-free `spectral` encoder, 32 px chips (256 chips). Truth: each chip's share of each
land cover on the scored date (the archive's land-cover raster). For each cover with enough chips,
`--draws` draws of 3 positives (chips at least half that cover) and 3 negatives, chosen two ways:
- random: chips with less than 10 % of the cover;
- hard: the 3 best-ranked wrong chips of the cosine search from the first positive (what a user
  clicking "not this" on the first results gives).
Relevant = chips at least half that cover, examples excluded; k = 10. Rules:
- cosine-1: single-chip cosine search, mean over the 3 positives searched alone (the baseline);
- cosine-mean: cosine to the positives' mean (no negatives);
- centroid, logreg, svm: `geofm.fewshot.fit_scorer` with the background of the date's other chips
  (what `geofm search` does);
- svm-unshrunk: svm with every feature scaled by its own spread (`scale_shrink` 0; the default
  shrinks each variance halfway to the mean variance);
- logreg-alone, svm-alone: the same classifiers fitted on the 6 examples only (no background).
Scores come from the vector DB's rows of the date (`geofm.vectordb.rows_on`), as `geofm search` reads them.

    .venv/bin/python benchmarks/bench_fewshot.py [--seeds 3 4] [--draws 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from _machine import machine
from _synth_run import embedded_aoi
from geofm import fewshot, vectordb
from geofm.synth import truth

DATES = [dt.date(2023, 6, 10), dt.date(2023, 8, 20)]
CHIP = 32
K = 10
METHODS = ("cosine-1", "cosine-mean", "centroid", "logreg", "svm", "svm-unshrunk", "logreg-alone", "svm-alone")


def ranked(scorer: fewshot.Scorer, vectors: np.ndarray, ids: np.ndarray, exclude: set[str]) -> list[str]:
    order = np.argsort(-scorer.score(vectors), kind="stable")
    return [ids[i] for i in order if ids[i] not in exclude]


def evaluate(ids: np.ndarray, vectors: np.ndarray, shares: dict[str, float], rng: np.random.Generator,
             draws: int) -> list[dict]:
    index = {c: i for i, c in enumerate(ids)}
    share = np.array([shares[c] for c in ids])
    relevant_all = set(ids[share >= 0.5])
    others = ids[share < 0.1]
    out = []
    for _ in range(draws):
        pos = list(rng.choice(sorted(relevant_all), 3, replace=False))
        relevant = relevant_all - set(pos)
        k = min(K, len(relevant))
        first = ranked(fewshot.fit_scorer(vectors[[index[pos[0]]]]), vectors, ids, set(pos))
        negs = {"random": list(rng.choice(others, 3, replace=False)),
                "hard": [c for c in first if c not in relevant_all][:3]}
        for kind, neg in negs.items():
            exclude = set(pos) | set(neg)
            rel = relevant - set(neg)
            p, n = vectors[[index[c] for c in pos]], vectors[[index[c] for c in neg]]
            pool = vectors[[i for i, c in enumerate(ids) if c not in exclude]]
            bg = pool[fewshot.background_sample(len(pool))]

            def prec(scorer: fewshot.Scorer) -> float:
                return fewshot.precision_at_k(ranked(scorer, vectors, ids, exclude), rel, k)  # noqa: B023

            res = {"negatives": kind}
            res["cosine-1"] = np.mean([prec(fewshot.fit_scorer(vectors[[index[c]]])) for c in pos])
            res["cosine-mean"] = prec(fewshot.fit_scorer(fewshot.unit_rows(p).mean(axis=0, keepdims=True)))
            for m in ("centroid", "logreg", "svm"):
                res[m] = prec(fewshot.fit_scorer(p, n, m, bg))
            res["svm-unshrunk"] = prec(fewshot.fit_scorer(p, n, "svm", bg, scale_shrink=0.0))
            for m in ("logreg", "svm"):
                res[f"{m}-alone"] = prec(fewshot.fit_scorer(p, n, m))
            out.append(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--work", type=Path, default=None, help="Keep the runs here (reused when present).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="geofm-bench-fewshot-"))
    rows = []
    runs = [(seed, *embedded_aoi(work / f"seed{seed}", seed, scenario="default", dates=DATES, chip_size=CHIP,
                                 steps=("preprocess", "embed", "analyze", "consolidate")))
            for seed in args.seeds]  # every pipeline run first: no process forks after LanceDB is loaded
    for seed, cfg, synth in runs:
        day = DATES[-1]
        df, vectors = vectordb.rows_on(cfg.layout.lance_db, day)
        ids = df["chip_id"].to_numpy()
        rng = np.random.default_rng(seed)
        for c in synth.classes[1:]:
            shares = truth.class_shares(synth.landcover_paths[synth.scene_ids[-1]], c["id"], CHIP)
            n = sum(shares.get(i, 0) >= 0.5 for i in ids)
            if n < 3 + K:
                print(f"seed {seed}: {c['name']}: {n} chips of at least half that cover; skipped")
                continue
            for r in evaluate(ids, vectors, shares, rng, args.draws):
                rows.append({"seed": seed, "cover": c["name"], "chips": n, **r})
    res = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"\n{dt.date.today()} {machine()}; precision@{K}, mean over draws")
    for kind, g in res.groupby("negatives", sort=False):
        table = g.groupby(["seed", "cover", "chips"], sort=False)[list(METHODS)].mean()
        print(f"\nnegatives: {kind}\n{table.to_string(float_format='%.3f')}")
        mean = g[list(METHODS)].mean()
        print("all: " + "  ".join(f"{m} {mean[m]:.3f}" for m in METHODS))
        print("vs single-chip cosine: " + "  ".join(f"{m} {mean[m] / mean['cosine-1']:.2f}x" for m in METHODS[1:]))


if __name__ == "__main__":
    main()
