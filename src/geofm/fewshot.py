"""Few-shot search: "more like these, not like those", over the chips of one date, and where inside a
hit the match sits.

The rule, stated once:

- Examples are chips at dates (``CHIP@DATE``, optionally ``GRID/CHIP@DATE``); their class embeddings
  come from the vector DB.
- One positive and no negative: cosine similarity to it (what ``geofm search --chip`` does).
- Otherwise a small classifier: the positives against the negatives and a background of up to
  ``BACKGROUND_MAX`` chips drawn (seeded) from the chips being scored, unlabelled, as most chips are
  not what is looked for. Embeddings are scaled to unit length, then standardised by the background's
  mean and spread (each value's variance shrunk halfway to the mean variance, ``SCALE_SHRINK``: divided
  by its own spread alone, values that barely vary, noise, weigh as much as those that tell covers
  apart, and a clean two-cover AOI was ranked as by chance); class weights are balanced and an
  explicit negative weighs ``NEGATIVE_WEIGHT`` background chips. Default: a linear SVM (``METHODS``:
  also logistic regression, whose score is a probability, and a centroid difference), chosen by
  precision@k on synthetic land covers (``benchmarks/bench_fewshot.py``, BENCHMARKS.md): a classifier
  fitted on the examples alone ranks chips by how far they lie along the positive-negative direction
  (dark water above the dark forest it was asked for), the background keeps it near the positives.
- Every chip of the date (default: the latest date of the positives) that passes the filters is
  scored; the examples themselves are left out of the ranking.
- Patch level: the same rule fitted on patch embeddings (every patch of the positive chips against
  those of the negatives and of a background of ``PATCH_BACKGROUND_CHIPS`` scored chips) scores each
  patch of a hit: a [grid, grid] heat map of where the match sits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import shapely

from geofm import geoparquet, storage, vectordb
from geofm.change import patch_grid_side
from geofm.errors import InputError, NotFoundError
from geofm.layout import Layout
from geofm.steps.analyze import load_embedding

METHODS = ("svm", "logreg", "centroid")
DEFAULT_METHOD = "svm"
COSINE = "cosine"
BACKGROUND_MAX = 2000  # background chips per fit (a bounded cost whatever the AOI)
NEGATIVE_WEIGHT = 5.0  # an explicit "not this" counts as this many background chips
SCALE_SHRINK = 0.5  # each feature's variance is shrunk this far towards the mean variance before scaling
PATCH_BACKGROUND_CHIPS = 16  # chips whose patches form the patch-level background
MAX_EXAMPLES = 200  # examples per query (each is a vector DB look-up)
_EXAMPLE = re.compile(r"^(?:(?P<grid>[0-9A-Za-z]+)/)?(?P<chip>-?\d+_-?\d+)@(?P<date>\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Example:
    """A chip at a date, optionally in one MGRS grid (when its chip id exists in several)."""

    chip_id: str
    date: date
    grid: str | None = None

    def __str__(self) -> str:
        return f"{self.grid + '/' if self.grid else ''}{self.chip_id}@{self.date.isoformat()}"


def parse_example(text: str) -> Example:
    """``"12_25@2023-06-01"`` or ``"33TWL/12_25@2023-06-01"`` -> :class:`Example`; anything else
    raises naming it."""
    m = _EXAMPLE.match(text.strip())
    if not m:
        raise InputError(f"example {text!r}: expected CHIP@YYYY-MM-DD (e.g. 12_25@2023-06-01), "
                         "optionally GRID/CHIP@YYYY-MM-DD")
    try:
        day = date.fromisoformat(m["date"])
    except ValueError:
        raise InputError(f"example {text!r}: {m['date']!r} is not a date") from None
    return Example(m["chip"], day, m["grid"].upper() if m["grid"] else None)


# ---- scorers -------------------------------------------------------------------------------------
def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): the geometry of cosine similarity."""
    x = np.asarray(x, np.float64)
    x = x.reshape(-1, x.shape[-1])
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass
class Scorer:
    """A fitted rule: ``score(x)`` for rows ``x`` [N, D], larger = more like the positives."""

    method: str
    centre: np.ndarray  # [D] subtracted from unit rows before scaling (0 for cosine)
    scale: np.ndarray  # [D] divides them (1 for cosine)
    directions: np.ndarray  # [1, D] cosine, [2, D] centroid (positive, negative)
    model: Any = None  # the scikit-learn estimator (logreg, svm)

    def features(self, x: np.ndarray) -> np.ndarray:
        return (unit_rows(x) - self.centre) / self.scale

    def score(self, x: np.ndarray) -> np.ndarray:
        f = self.features(x)
        if self.model is None:
            u = unit_rows(f)
            s = u @ self.directions[0]
            return s - u @ self.directions[1] if len(self.directions) > 1 else s
        if self.method == "logreg":
            return self.model.predict_proba(f)[:, 1]
        return self.model.decision_function(f)


def _direction(x: np.ndarray) -> np.ndarray:
    return unit_rows(unit_rows(x).mean(axis=0, keepdims=True))[0]


def _rows(x: np.ndarray | None, dim: int) -> np.ndarray:
    return np.zeros((0, dim)) if x is None else np.asarray(x, np.float64).reshape(-1, dim)


def fit_scorer(positives: np.ndarray, negatives: np.ndarray | None = None, method: str = DEFAULT_METHOD,
               background: np.ndarray | None = None, scale_shrink: float = SCALE_SHRINK) -> Scorer:
    """Fit the rule of the module doc on example embeddings ``positives`` [P, D], ``negatives`` [N, D]
    and unlabelled ``background`` rows [B, D] (one positive and nothing else: cosine to it)."""
    pos = np.asarray(positives, np.float64)
    if pos.size == 0:
        raise InputError("few-shot search needs at least one positive example")
    dim = pos.shape[-1]
    pos, neg, bg = _rows(pos, dim), _rows(negatives, dim), _rows(background, dim)
    if len(pos) == 1 and not len(neg):
        return Scorer(COSINE, np.zeros(dim), np.ones(dim), _direction(pos)[None])
    if method not in METHODS:
        raise InputError(f"unknown few-shot method {method!r}; use one of {', '.join(METHODS)}")
    if not len(neg) and not len(bg):
        raise InputError("several positives need negatives or a background of chips to be told apart")
    ref = unit_rows(bg if len(bg) > 1 else np.concatenate([pos, neg, bg]))
    var = ref.var(axis=0)
    centre, scale = ref.mean(axis=0), np.sqrt((1 - scale_shrink) * var + scale_shrink * var.mean()) + 1e-6
    z = lambda x: (unit_rows(x) - centre) / scale  # noqa: E731
    others = np.concatenate([z(neg), z(bg)])
    if method == "centroid":
        return Scorer(method, centre, scale, np.stack([_direction(z(pos)), _direction(others)]))
    x = np.concatenate([z(pos), others])
    y = np.r_[np.ones(len(pos)), np.zeros(len(others))]
    weight = np.r_[np.ones(len(pos)), np.full(len(neg), NEGATIVE_WEIGHT), np.ones(len(bg))]
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(class_weight="balanced", C=1.0, max_iter=2000)
    else:
        from sklearn.svm import LinearSVC

        model = LinearSVC(class_weight="balanced", C=1.0, max_iter=20_000)
    return Scorer(method, centre, scale, np.zeros((0, dim)), model.fit(x, y, sample_weight=weight))


def background_sample(n: int, seed: int = 0, size: int = BACKGROUND_MAX) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` of ``n`` rows, drawn with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


# ---- scoring the chips of a date -----------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """What a search asks: the examples, the date whose chips are scored (default: the latest date of
    the positives), how many hits, the method, and which chips may be hits: MGRS ``grids``, a WGS84
    ``bbox``, and within change (``changed_since``/``min_change``, see
    :func:`geofm.vectordb.changed_chips`)."""

    positives: tuple[Example, ...]
    negatives: tuple[Example, ...] = ()
    day: date | None = None
    k: int = 10
    method: str = DEFAULT_METHOD
    min_score: float | None = None
    grids: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    changed_since: date | None = None
    min_change: float | None = None

    @classmethod
    def of(cls, positives: Sequence[Example | str], negatives: Sequence[Example | str] = (),
           grids: Sequence[str] | None = None, bbox: Sequence[float] | str | None = None,
           **options: Any) -> Query:
        """A query from examples as :class:`Example` or ``"CHIP@DATE"`` text; bad input raises naming it."""
        query = cls(tuple(_examples(positives)), tuple(_examples(negatives)),
                    grids=tuple(grids) if grids else None,
                    bbox=vectordb.parse_bbox(bbox) if bbox is not None else None, **options)
        if not query.positives:
            raise InputError("a search needs at least one positive example (CHIP@YYYY-MM-DD)")
        if query.k < 1:
            raise InputError(f"k must be at least 1, got {query.k}")
        if len(query.positives) + len(query.negatives) > MAX_EXAMPLES:
            raise InputError(f"{len(query.positives) + len(query.negatives)} examples; at most "
                             f"{MAX_EXAMPLES} per query")
        return query

    @property
    def single(self) -> bool:
        """One positive and no negative: cosine search."""
        return len(self.positives) == 1 and not self.negatives

    @property
    def scored_day(self) -> date:
        return self.day or max(e.date for e in self.positives)


@dataclass
class FewShotResult:
    """Every chip of ``date`` scored (``scored``, best first) and the ``k`` best after ``min_score``
    (``hits``); ``examples`` are the examples' vector DB rows with their ``role`` (positive/negative)."""

    method: str
    date: date
    scored: pd.DataFrame
    hits: pd.DataFrame
    scorer: Scorer
    query: Query
    examples: pd.DataFrame


def _examples(items: Sequence[Example | str]) -> list[Example]:
    return [e if isinstance(e, Example) else parse_example(e) for e in items]


def example_rows(db_uri: str, query: Query, table: str = vectordb.DEFAULT_TABLE
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """The vector DB rows of the query's examples with their ``role``, and their class embeddings
    [E, D]; unknown ones raise naming the chip and the dates it has."""
    tbl = vectordb.open_table(db_uri, table)
    rows, vecs = [], []
    for ex in query.positives + query.negatives:
        vec, row = vectordb.query_vector(tbl, ex.chip_id, ex.date, [ex.grid] if ex.grid else query.grids)
        rows.append(row)
        vecs.append(vec)
    frame = pd.DataFrame(rows)
    frame.insert(0, "role", ["positive"] * len(query.positives) + ["negative"] * len(query.negatives))
    dim = tbl.schema.field("vector").type.list_size
    return frame, np.asarray(vecs, np.float32).reshape(len(vecs), dim)


def classify(db_uri: str, query: Query, exclude_examples: bool = True, seed: int = 0,
             table: str = vectordb.DEFAULT_TABLE) -> FewShotResult:
    """Score every chip of the query's date that passes its filters by the module's rule; ``hits``
    are the ``k`` best with ``score >= min_score``. The background is drawn with ``seed`` from the
    date's chips under the grid and bbox filters (not the change filters)."""
    ex_rows, ex_vecs = example_rows(db_uri, query, table)
    day = query.scored_day
    rows, vectors = vectordb.rows_on(db_uri, day, query.grids, query.bbox, table)
    if rows.empty:
        known = sorted({e.date.isoformat() for e in query.positives + query.negatives})
        raise NotFoundError(f"no chip of the vector DB on {day} passes the filters; dates of the examples: "
                            + ", ".join(known))
    keys = set(zip(ex_rows["mgrs_grid"], ex_rows["chip_id"], strict=True))
    pairs = list(zip(rows["mgrs_grid"], rows["chip_id"], strict=True))
    pool = np.flatnonzero([p not in keys for p in pairs]) if exclude_examples else np.arange(len(rows))
    background = vectors[pool[background_sample(len(pool), seed)]]
    n_pos = len(query.positives)
    scorer = fit_scorer(ex_vecs[:n_pos], ex_vecs[n_pos:], query.method, background)
    rows = rows.iloc[pool].copy()
    rows.insert(2, "score", scorer.score(vectors[pool]))
    if query.changed_since is not None or query.min_change is not None:
        changed = vectordb.changed_chips(vectordb.open_table(db_uri, table), query.changed_since,
                                         query.min_change)
        wanted = {(g, c) for g, chips in changed.items() for c in chips}
        rows = rows[[p in wanted for p in zip(rows["mgrs_grid"], rows["chip_id"], strict=True)]]
    scored = rows.sort_values(["score", "mgrs_grid", "chip_id"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    hits = scored if query.min_score is None else scored[scored["score"] >= query.min_score]
    return FewShotResult(scorer.method, day, scored, hits.head(query.k).reset_index(drop=True), scorer, query,
                         ex_rows)


def search(db_uri: str, query: Query, date_range: tuple[Any, Any] | None = None,
           table: str = vectordb.DEFAULT_TABLE) -> FewShotResult:
    """``geofm search``: a single positive is the cosine search of :func:`geofm.vectordb.search` (hits
    from every date in ``date_range``, or only the query's ``day`` when given; ``scored`` = ``hits``);
    otherwise :func:`classify` (``date_range`` does not apply)."""
    if not query.single:
        if date_range is not None:
            raise InputError("a date range applies to single-chip search; few-shot scores one date")
        return classify(db_uri, query, table=table)
    ex = query.positives[0]
    ex_rows, ex_vecs = example_rows(db_uri, query, table)
    hits = vectordb.search(db_uri, chip_id=ex.chip_id, date=ex.date, k=query.k, min_score=query.min_score,
                           date_range=date_range or ((query.day, query.day) if query.day else None),
                           grids=[ex.grid] if ex.grid else query.grids, bbox=query.bbox, table=table,
                           changed_since=query.changed_since, min_change=query.min_change)
    return FewShotResult(COSINE, query.day or ex.date, hits, hits, fit_scorer(ex_vecs), query, ex_rows)


def score_layer(frame: pd.DataFrame) -> dict[str, Any]:
    """Scored chips as a GeoJSON FeatureCollection (chip polygons, EPSG:4326) with ``chip_id``,
    ``mgrs_grid``, ``date``, ``score`` and ``rank`` (1 = best)."""
    feats = []
    for rank, row in enumerate(frame.to_dict("records"), start=1):
        geom = vectordb.row_geometry(row) or shapely.box(row["minx"], row["miny"], row["maxx"], row["maxy"])
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": {
            "chip_id": row["chip_id"], "mgrs_grid": row["mgrs_grid"], "date": str(row["date"])[:10],
            "score": float(row["score"]), "rank": rank}})
    return {"type": "FeatureCollection", "features": feats}


def precision_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the first ``k`` of ``ranked`` that are in ``relevant``."""
    top = list(ranked)[:k]
    return float(np.mean([r in relevant for r in top])) if top else math.nan


# ---- patch level ---------------------------------------------------------------------------------
def patch_embedding(lay: Layout, grid: str, x_dim: int, y_dim: int, day: date) -> np.ndarray:
    """A chip's patch embeddings [L, D] on ``day``, found through its processed-embeddings file; a
    file outside the output root is refused."""
    url = lay.processed_embeddings(grid, x_dim, y_dim)
    if not storage.exists(url):
        raise NotFoundError(f"chip {x_dim}_{y_dim} of grid {grid} has no processed embeddings ({url})")
    rows = geoparquet.read(url, columns=["date", "s3_location_patch_emb"])
    if "s3_location_patch_emb" not in rows.columns:
        raise NotFoundError(f"{url}: no patch embeddings (embed with patch_embeddings on)")
    match = rows[pd.to_datetime(rows["date"], utc=True).dt.date == day]
    if match.empty or not isinstance(match["s3_location_patch_emb"].iloc[0], str):
        raise NotFoundError(f"chip {x_dim}_{y_dim} of grid {grid} has no patch embedding on {day}")
    emb_url = lay.resolve(match["s3_location_patch_emb"].iloc[0])
    if not emb_url.startswith(lay.output_dir.rstrip("/") + "/"):
        raise NotFoundError(f"patch embedding {emb_url} lies outside the output {lay.output_dir}")
    arr = load_embedding(emb_url)
    if arr.ndim != 2:
        raise NotFoundError(f"{emb_url}: not a [patches, dim] array (shape {arr.shape})")
    return arr


def _usable(arr: np.ndarray) -> np.ndarray:
    """Rows of patch embeddings that carry data: finite and not all zero."""
    return np.all(np.isfinite(arr), axis=1) & np.any(arr != 0, axis=1)


def _patches(lay: Layout, row: dict[str, Any]) -> np.ndarray:
    """The usable patch embeddings (finite, not all zero) of a vector DB row's chip and date."""
    arr = patch_embedding(lay, str(row["mgrs_grid"]), int(row["x_dim"]), int(row["y_dim"]),
                          pd.Timestamp(row["date"]).date())
    return arr[_usable(arr)]


def fit_patch_scorer(lay: Layout, examples: pd.DataFrame, method: str = DEFAULT_METHOD,
                     background: pd.DataFrame | None = None) -> Scorer:
    """The rule fitted on patch embeddings (module doc): those of ``examples`` (rows with ``role``
    positive/negative, ``mgrs_grid``, ``x_dim``, ``y_dim``, ``date``: :attr:`FewShotResult.examples`)
    and, unlabelled, those of the ``background`` rows' chips."""
    pos = [_patches(lay, r) for r in examples.to_dict("records") if r["role"] == "positive"]
    neg = [_patches(lay, r) for r in examples.to_dict("records") if r["role"] != "positive"]
    bg = [_patches(lay, r) for r in (background.to_dict("records") if background is not None else [])]
    dim = next(a.shape[1] for a in pos + neg + bg) if pos else 1
    stack = lambda parts: np.concatenate(parts) if parts else np.zeros((0, dim))  # noqa: E731
    return fit_scorer(stack(pos), stack(neg), method if method in METHODS else DEFAULT_METHOD, stack(bg))


def patch_heatmaps(lay: Layout, result: FewShotResult, seed: int = 0) -> list[np.ndarray]:
    """The heat map (:func:`patch_heatmap`) of every hit of ``result``, by the rule fitted on the
    patches of its examples and of ``PATCH_BACKGROUND_CHIPS`` of its scored chips (drawn with ``seed``)."""
    if result.hits.empty:
        return []
    pool = result.scored
    background = pool.iloc[background_sample(len(pool), seed, PATCH_BACKGROUND_CHIPS)]
    scorer = fit_patch_scorer(lay, result.examples, result.method, background)
    return [patch_heatmap(lay, scorer, str(r["mgrs_grid"]), int(r["x_dim"]), int(r["y_dim"]),
                          pd.Timestamp(r["date"]).date()) for r in result.hits.to_dict("records")]


def patch_heatmap(lay: Layout, scorer: Scorer, grid: str, x_dim: int, y_dim: int, day: date) -> np.ndarray:
    """Where inside a chip the match sits: ``scorer`` applied to each patch embedding of the chip on
    ``day``, as a [grid, grid] array (row-major, north up; NaN for patches without data)."""
    arr = patch_embedding(lay, grid, x_dim, y_dim, day)
    side = patch_grid_side(arr.shape[0])
    ok = _usable(arr)
    out = np.full(arr.shape[0], np.nan)
    if ok.any():
        out[ok] = scorer.score(arr[ok])
    return out.reshape(side, side)


def best_patch(heat: np.ndarray) -> list[int] | None:
    """[row, col] of the highest-scoring patch of a heat map (None when it has no score)."""
    if not np.isfinite(heat).any():
        return None
    return [int(v) for v in np.unravel_index(int(np.nanargmax(heat)), heat.shape)]
