"""Similarity and few-shot search for the explorer, answered from the AOI's LanceDB table.

- :func:`similar_chips` (:func:`geofm.vectordb.search`): the query vector is the chosen chip's class
  embedding on the chosen date; hits are other chips of the grid, scored ``1 - cosine distance``,
  limited to the query date (the reference UI's behaviour) or to a date range, and to a minimum score.
- :func:`classify_chips` (:mod:`geofm.fewshot`): positives and negatives (``CHIP@DATE``) score every
  chip of one date of the grid; the ranked hits, the score layer (GeoJSON) and, when asked, where inside
  each of the first hits the match sits (patch heat maps).

Both take the within-change filters ``changed_since`` / ``min_change`` (:func:`geofm.vectordb.changed_chips`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np

from geofm import fewshot, storage, vectordb
from geofm.errors import NotFoundError
from geofm.layout import Layout
from geofm.server.catalog import clean, iso_date

RESULT_COLUMNS = ("chip_id", "x_dim", "y_dim", "date", "scene_id", "mgrs_grid", "minx", "miny", "maxx",
                  "maxy", "cloud_cover_perc")


def similar_chips(
    db_uri: str,
    chip_id: str,
    day: date,
    k: int = 5,
    min_score: float = 0.0,
    start: date | None = None,
    end: date | None = None,
    grid: str | None = None,
    changed_since: date | None = None,
    min_change: float | None = None,
) -> list[dict[str, Any]]:
    """Top-``k`` chips most similar to ``chip_id`` on ``day``, best first, with ``score >= min_score``.

    Hits lie on ``day`` unless ``start``/``end`` give a range (either end may be open); the query
    chip itself is left out. No vector DB, unknown chip or date raise :class:`NotFoundError` (whose
    message names the chip and date, never the database's path)."""
    _check_db(db_uri)
    date_range = (start, end) if (start or end) else (day, day)
    try:
        df = vectordb.search(db_uri, chip_id=chip_id, date=day, k=k, min_score=min_score,
                             date_range=date_range, grids=[grid] if grid else None,
                             changed_since=changed_since, min_change=min_change)
    except vectordb.VectorDBError as exc:
        raise NotFoundError(str(exc).replace(db_uri, "the AOI's vector DB")) from exc
    return [_hit(row) for row in df.to_dict("records")]


MAX_HEATMAPS = 10  # hits given a patch heat map per request (each reads its patch embeddings)


def classify_chips(
    lay: Layout,
    grid: str,
    positives: Sequence[str],
    negatives: Sequence[str] = (),
    day: date | None = None,
    k: int = 10,
    method: str = fewshot.DEFAULT_METHOD,
    min_score: float | None = None,
    changed_since: date | None = None,
    min_change: float | None = None,
    heatmaps: bool = False,
) -> dict[str, Any]:
    """Few-shot search over the chips of ``grid`` on one date (default: the latest positive's).

    One positive and no negative is the cosine search; otherwise :func:`geofm.fewshot.classify`. Returns
    the method, date, ranked ``results`` (the ``k`` best, as :func:`similar_chips` gives them, plus
    ``rank`` and, with ``heatmaps``, the first ``MAX_HEATMAPS`` hits' ``heatmap`` [grid][grid] (north up,
    None where a patch has no data) and ``best_patch`` [row, col]), and ``layer``: every scored chip's
    polygon with its score and rank (GeoJSON)."""
    _check_db(lay.lance_db)
    query = fewshot.Query.of(positives, negatives, grids=[grid], day=day, k=k, method=method,
                             min_score=min_score, changed_since=changed_since, min_change=min_change)
    query = dataclasses.replace(query, day=query.scored_day)
    try:
        result = fewshot.search(lay.lance_db, query)
    except vectordb.VectorDBError as exc:
        raise NotFoundError(str(exc).replace(lay.lance_db, "the AOI's vector DB")) from exc
    hits = [{**_hit(row), "rank": rank} for rank, row in enumerate(result.hits.to_dict("records"), start=1)]
    heat_note = None
    if heatmaps and hits:
        top = dataclasses.replace(result, hits=result.hits.head(MAX_HEATMAPS))
        try:
            maps = fewshot.patch_heatmaps(lay, top)
        except NotFoundError as exc:  # e.g. embedded without patch embeddings: the chip ranking stands
            heat_note = str(exc)
            maps = []
        for hit, heat in zip(hits, maps, strict=False):
            hit["heatmap"] = [[None if not np.isfinite(v) else float(v) for v in row] for row in heat]
            hit["best_patch"] = fewshot.best_patch(heat)
    return {"method": result.method, "date": result.date.isoformat(), "k": k,
            "positives": [str(e) for e in query.positives], "negatives": [str(e) for e in query.negatives],
            "scored": int(len(result.scored)), "results": hits, "heatmap_note": heat_note,
            "layer": fewshot.score_layer(result.scored)}


def _check_db(db_uri: str) -> None:
    if not storage.exists(db_uri):
        raise NotFoundError("this AOI has no vector DB (step 4 has not loaded it)")


def _hit(row: dict[str, Any]) -> dict[str, Any]:
    hit = {"score": float(row["score"])}
    hit.update({c: clean(row[c]) for c in RESULT_COLUMNS if c in row})
    hit["date"] = iso_date(row["date"])
    geometry = vectordb.row_geometry(row)  # stored as WKB (older tables: WKT)
    hit["geometry_wkt"] = geometry.wkt if geometry is not None else None
    return hit

