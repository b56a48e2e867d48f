"""Similarity search for the explorer, answered from the AOI's LanceDB table through
:func:`geofm.vectordb.search`.

The query vector is the chosen chip's class embedding on the chosen date; hits are other chips of
the grid, scored ``1 - cosine distance``, limited to the query date (the reference UI's behaviour)
or to a date range, and to a minimum score.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from geofm import storage, vectordb
from geofm.errors import NotFoundError
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
) -> list[dict[str, Any]]:
    """Top-``k`` chips most similar to ``chip_id`` on ``day``, best first, with ``score >= min_score``.

    Hits lie on ``day`` unless ``start``/``end`` give a range (either end may be open); the query
    chip itself is left out. No vector DB, unknown chip or date raise :class:`NotFoundError` (whose
    message names the chip and date, never the database's path)."""
    if not storage.exists(db_uri):
        raise NotFoundError("this AOI has no vector DB (step 4 has not loaded it)")
    date_range = (start, end) if (start or end) else (day, day)
    try:
        df = vectordb.search(db_uri, chip_id=chip_id, date=day, k=k, min_score=min_score,
                             date_range=date_range, grids=[grid] if grid else None)
    except vectordb.VectorDBError as exc:
        raise NotFoundError(str(exc).replace(db_uri, "the AOI's vector DB")) from exc
    out = []
    for row in df.to_dict("records"):
        hit = {"score": float(row["score"])}
        hit.update({c: clean(row[c]) for c in RESULT_COLUMNS if c in row})
        hit["date"] = iso_date(row["date"])
        geometry = vectordb.row_geometry(row)  # stored as WKB (older tables: WKT)
        hit["geometry_wkt"] = geometry.wkt if geometry is not None else None
        out.append(hit)
    return out
