"""The LanceDB vector database of chip embeddings: bulk load (one committer), indices, housekeeping and
search.

One row per chip and date (columns in docs/formats.md). Search is cosine: ``score = 1 - distance``.
Works for a local folder or ``s3://`` URI; S3-compatible endpoints come from ``AWS_ENDPOINT_URL``
(see :func:`geofm.storage.lancedb_storage_options`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from shapely.geometry.base import BaseGeometry

from geofm.errors import ConfigError, InputError, NotFoundError, VectorDBError
from geofm.storage import lancedb_storage_options

DEFAULT_TABLE = "vector_db"
SCALAR_INDEX_COLUMNS = ("chip_id", "date", "mgrs_grid")
# ANN index: IVF with 8-bit scalar quantisation by default. Measured here (benchmarks/bench_search.py,
# BENCHMARKS.md) it builds ~10x faster than IVF-PQ on 2 cores with higher recall at the same latency.
VECTOR_INDEX_TYPES = ("IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ")
DEFAULT_INDEX_TYPE = "IVF_SQ"
DEFAULT_INDEX_MIN_ROWS = 100_000  # below this an exact scan is fast enough and needs no training
# ANN search knobs: probe enough IVF partitions and re-rank with exact distances so recall stays high.
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 10
# A filtered query whose filter keeps at most this many rows is answered exactly (brute force over
# the filtered rows, via the scalar indices): faster than the ANN index there, and exact.
EXACT_FILTERED_MAX_ROWS = 50_000
# After each load, versions superseded longer ago than this are deleted with the files only they use.
# A search that opened an older version is done well within it (searches take milliseconds), and
# versions never pile up: after any number of loads the table keeps its latest version plus those
# superseded in its last seconds.
HOUSEKEEPING_GRACE = timedelta(seconds=10)
log = logging.getLogger(__name__)
# Few-shot scoring reads every row of a date (with its vector): more than this asks for a grid/bbox filter.
MAX_SCORED_ROWS = 200_000
# Search within change: at most this many changed chips become a filter (one SQL IN list per grid).
MAX_CHANGED_CHIPS = 50_000


def connect(uri: str) -> Any:
    """Open (or create) the LanceDB database at a local folder or ``s3://`` URI (LanceDB is imported
    here, not at module import: its runtime must not exist in a process that forks workers)."""
    import lancedb

    return lancedb.connect(uri, storage_options=lancedb_storage_options(uri) or None)


def _sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _sql_date(value: date | str) -> str:
    d = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    return f"date '{d.isoformat()}'"


def open_table(db_uri: str, table: str = DEFAULT_TABLE) -> Any:
    """The table, or a clear error naming the database and the tables it does hold."""
    db = connect(db_uri)
    names = list(db.list_tables().tables)
    if table not in names:
        raise NotFoundError(f"no table {table!r} in vector DB {db_uri!r} (tables: {names or 'none'})")
    return db.open_table(table)


def table_rows(db_uri: str, table: str = DEFAULT_TABLE) -> int | None:
    """Rows in the table, or None when there is no such table (or it cannot be read)."""
    try:
        return int(open_table(db_uri, table).count_rows())
    except Exception:  # no database, no table, a broken one: "not there" to the caller
        return None


def ivf_partitions(n_rows: int) -> int:
    """IVF partitions: sqrt(n) / 4 (fewer, larger partitions than the usual sqrt(n), so k-means
    training stays within minutes on a 2-core machine and ``nprobes`` covers more of the data)."""
    return max(1, min(1024, int(math.sqrt(n_rows) / 4)))


def pq_sub_vectors(dim: int) -> int:
    """PQ sub-vectors: the largest divisor of ``dim`` not above dim / 16."""
    target = max(1, dim // 16)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def vector_index_config(kind: str, n_rows: int, dim: int) -> Any:
    """The cosine ANN index of a kind (``IVF_SQ``, ``IVF_PQ`` or ``IVF_HNSW_SQ``) sized for ``n_rows``."""
    from lancedb.index import IvfHnswSq, IvfPq, IvfSq

    parts = ivf_partitions(n_rows)
    if kind == "IVF_SQ":
        return IvfSq(distance_type="cosine", num_partitions=parts)
    if kind == "IVF_PQ":
        return IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=pq_sub_vectors(dim))
    if kind == "IVF_HNSW_SQ":
        return IvfHnswSq(distance_type="cosine", num_partitions=max(1, n_rows // 100_000))
    raise ConfigError(f"unknown vector index type {kind!r}; use one of {', '.join(VECTOR_INDEX_TYPES)}")


def build_indices(tbl: Any, index_min_rows: int, index_type: str = DEFAULT_INDEX_TYPE) -> dict[str, Any]:
    """Scalar (BTree) indices on chip_id/date/mgrs_grid; a cosine ANN index from ``index_min_rows``."""
    from lancedb.index import BTree

    n = tbl.count_rows()
    names = set(tbl.schema.names)
    for col in SCALAR_INDEX_COLUMNS:
        if col in names and n:
            tbl.create_index(col, config=BTree(), replace=True)
    vector_index = None
    if n >= index_min_rows and n >= 256:  # index training needs a few hundred rows
        dim = tbl.schema.field("vector").type.list_size
        tbl.create_index("vector", config=vector_index_config(index_type, n, dim), replace=True)
        vector_index = index_type
    return {"rows": n, "vector_index": vector_index}


def housekeeping(tbl: Any, grace: timedelta | None = None) -> dict[str, int]:
    """Compact the table's files and fold new rows into its indices, then delete every version that was
    superseded more than ``grace`` (default ``HOUSEKEEPING_GRACE``) ago, with the data, deletion and
    index files that only such versions used (superseded indices included). Returns the number of
    versions before and after."""
    grace = HOUSEKEEPING_GRACE if grace is None else grace
    tbl.optimize()
    versions = sorted(tbl.list_versions(), key=lambda v: v["version"])
    now = datetime.now()  # list_versions gives naive local times
    cutoff = None
    for older, newer in zip(versions, versions[1:], strict=False):
        if now - newer["timestamp"] >= grace:  # ``older`` was superseded when ``newer`` was committed
            cutoff = older["timestamp"]
    if cutoff is not None:  # optimize deletes the versions committed before (its now - cleanup_older_than)
        tbl.optimize(cleanup_older_than=max(timedelta(0), now - cutoff - timedelta(milliseconds=1)))
    return {"versions_before": len(versions), "versions_after": len(tbl.list_versions())}


def rows_table(df: pd.DataFrame, vectors: np.ndarray) -> pa.Table:
    """Arrow rows for the table: ``df``'s columns with ``date`` as a date and ``vector`` float32 [N, D]."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(df):
        raise VectorDBError(f"vectors of shape {vectors.shape} do not match {len(df)} rows")
    df = df.reset_index(drop=True).copy()
    if "date" in df.columns:
        df["date"] = pd.to_datetime(df["date"], utc=True).dt.tz_localize(None).dt.date
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = pa.Table.from_pandas(df, preserve_index=False)
    if "date" in table.schema.names:
        table = table.set_column(table.schema.get_field_index("date"), "date",
                                 table.column("date").cast(pa.date32()))
    # pandas 3 strings arrive as large_string, which LanceDB's BTree index refuses: use plain strings.
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema]
    table = table.cast(pa.schema(fields))
    return table.append_column("vector", vec).replace_schema_metadata(None)


def replace_aoi_rows(
    db_uri: str, rows: pa.Table, aoi_name: str, table: str = DEFAULT_TABLE,
    index_min_rows: int = DEFAULT_INDEX_MIN_ROWS, index_type: str = DEFAULT_INDEX_TYPE,
) -> dict[str, Any]:
    """Write ``rows`` (all of one AOI) in one commit, replacing that AOI's earlier rows, then index, then
    clean up (:func:`housekeeping`; its failure is logged, never fatal: the rows are committed by then).

    The table is overwritten when it holds only this AOI (or nothing); otherwise the AOI's rows are
    deleted and the new ones appended, so a rerun never duplicates rows.
    """
    if "vector" not in rows.schema.names:
        raise VectorDBError("rows for the vector DB need a 'vector' column")
    db = connect(db_uri)
    if table not in list(db.list_tables().tables):
        tbl = db.create_table(table, rows)
    else:
        tbl = db.open_table(table)
        others = tbl.count_rows(f"aoi_name != {_sql_str(aoi_name)}") if "aoi_name" in tbl.schema.names \
            else tbl.count_rows()
        if others == 0:
            tbl = db.create_table(table, rows, mode="overwrite")
        else:
            tbl.delete(f"aoi_name = {_sql_str(aoi_name)}")
            try:
                tbl.add(rows)
            except Exception as exc:
                raise VectorDBError(
                    f"cannot add AOI {aoi_name!r} to table {table!r} in {db_uri!r}, which holds other AOIs "
                    f"with another schema (model or embedding size?): {exc}"
                ) from exc
    info = build_indices(tbl, index_min_rows, index_type)
    try:
        housekeeping(tbl)
    except Exception as exc:  # e.g. a store that refuses deletes: the load itself succeeded
        log.warning("vector DB %s: housekeeping failed (%s: %s)", db_uri, type(exc).__name__, exc)
    return info


def row_geometry(row: Mapping[str, Any]) -> BaseGeometry | None:
    """A row's chip polygon (WGS84): WKB ``geometry``, or ``geometry_wkt`` of tables written before the
    change to WKB; None when the row has neither."""
    wkb = row.get("geometry")
    if isinstance(wkb, bytes | bytearray | memoryview):
        return shapely.from_wkb(bytes(wkb))
    wkt = row.get("geometry_wkt")
    return shapely.from_wkt(wkt) if isinstance(wkt, str) else None


def _filters(
    date_: date | str | None,
    date_range: tuple[date | str | None, date | str | None] | None,
    grids: Sequence[str] | None,
    bbox: Sequence[float] | None,
) -> list[str]:
    out: list[str] = []
    if date_ is not None:
        out.append(f"date = {_sql_date(date_)}")
    if date_range is not None:
        start, end = date_range
        if start is not None:
            out.append(f"date >= {_sql_date(start)}")
        if end is not None:
            out.append(f"date <= {_sql_date(end)}")
    if grids:
        out.append(f"mgrs_grid IN ({', '.join(_sql_str(g) for g in grids)})")
    if bbox is not None:
        minx, miny, maxx, maxy = parse_bbox(bbox)
        out.append(f"maxx >= {minx} AND minx <= {maxx} AND maxy >= {miny} AND miny <= {maxy}")
    return out


def parse_bbox(bbox: Sequence[float] | str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` (WGS84 degrees) as a tuple; a malformed box raises naming it."""
    try:
        vals = [float(v) for v in (bbox.split(",") if isinstance(bbox, str) else bbox)]
    except (TypeError, ValueError):
        raise InputError(f"bbox {bbox!r}: expected four numbers minx,miny,maxx,maxy") from None
    if len(vals) != 4:
        raise InputError(f"bbox {bbox!r}: expected four numbers minx,miny,maxx,maxy, got {len(vals)}")
    minx, miny, maxx, maxy = vals
    if minx > maxx or miny > maxy:
        raise InputError(f"bbox {bbox!r}: min exceeds max")
    return minx, miny, maxx, maxy


def query_vector(
    tbl: Any, chip_id: str, date_: date | str, grids: Sequence[str] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The stored class embedding of a chip at a date; unknown chip/date raise naming what exists."""
    where = f"chip_id = {_sql_str(chip_id)} AND date = {_sql_date(date_)}"
    hits = tbl.search().where(where).limit(1000).to_pandas()
    if len(hits) > 1 and grids:  # the same chip id in several grids: the grid filter picks one
        hits = hits[hits["mgrs_grid"].isin(list(grids))]
    if hits.empty:
        dates = tbl.search().where(f"chip_id = {_sql_str(chip_id)}").select(["date"]).limit(10_000) \
            .to_pandas()
        if dates.empty:
            raise NotFoundError(f"chip {chip_id!r} is not in the vector DB")
        known = ", ".join(sorted({str(pd.Timestamp(d).date()) for d in dates["date"]}))
        raise NotFoundError(f"chip {chip_id!r} has no row for date {str(date_)[:10]}; its dates: {known}")
    if len(hits) > 1:
        raise NotFoundError(
            f"chip {chip_id!r} at {str(date_)[:10]} exists in several MGRS grids "
            f"({', '.join(sorted(hits['mgrs_grid']))}); pass grids=[...] (--grid) to choose one"
        )
    row = hits.iloc[0].to_dict()
    return np.asarray(row.pop("vector"), dtype=np.float32), row


def changed_chips(tbl: Any, changed_since: date | str | None = None, min_change: float | None = None
                  ) -> dict[str, list[str]]:
    """MGRS grid -> chip ids that changed: a row dated on or after ``changed_since`` (any date when
    None) whose ``change_score`` is at least ``min_change``, or, without ``min_change``, whose
    ``changed`` flag is set (its chip is at least Medium on that date, by the run's thresholds).
    Scores are on the run's scale (``1 - cosine`` against a baseline date, or the seasonal z-score)
    and exist only for dates after a chip's baseline (docs/formats.md)."""
    names = set(tbl.schema.names)
    if not {"change_score", "changed"} <= names:
        raise NotFoundError("the vector DB has no change columns (change_score, changed): rerun consolidate")
    where = [f"change_score >= {float(min_change)!r}" if min_change is not None else "changed = true"]
    if changed_since is not None:
        where.append(f"date >= {_sql_date(changed_since)}")
    cond = " AND ".join(where)
    n = tbl.count_rows(cond)
    rows = tbl.search().where(cond).select(["mgrs_grid", "chip_id"]).limit(max(n, 1)).to_pandas()
    out: dict[str, list[str]] = {}
    for (grid, chip), _ in rows.groupby(["mgrs_grid", "chip_id"], sort=True):
        out.setdefault(str(grid), []).append(str(chip))
    if sum(len(v) for v in out.values()) > MAX_CHANGED_CHIPS:
        raise InputError(f"more than {MAX_CHANGED_CHIPS} chips changed by that filter; raise min_change, "
                         "move changed_since later or filter by grid or bbox")
    return out


def changed_filter(tbl: Any, changed_since: date | str | None, min_change: float | None) -> str | None:
    """The SQL condition keeping rows of chips that changed (:func:`changed_chips`); None without
    either filter; a filter no chip passes gives a condition no row passes."""
    if changed_since is None and min_change is None:
        return None
    chips = changed_chips(tbl, changed_since, min_change)
    if not chips:
        return "false"
    parts = [f"(mgrs_grid = {_sql_str(g)} AND chip_id IN ({', '.join(_sql_str(c) for c in ids)}))"
             for g, ids in chips.items()]
    return "(" + " OR ".join(parts) + ")"


def rows_on(db_uri: str, date_: date | str, grids: Sequence[str] | None = None,
            bbox: Sequence[float] | str | None = None, table: str = DEFAULT_TABLE,
            max_rows: int = MAX_SCORED_ROWS) -> tuple[pd.DataFrame, np.ndarray]:
    """Every row of one date passing the filters, with its class embedding ([N, D] float32), in
    chip order; more than ``max_rows`` rows raise :class:`~geofm.errors.InputError` (narrow the grid
    or bbox): what few-shot scoring reads."""
    tbl = open_table(db_uri, table)
    sql = " AND ".join(_filters(date_, None, grids, bbox))
    n = tbl.count_rows(sql)
    if n > max_rows:
        raise InputError(f"{n} rows on {str(date_)[:10]} pass the filters; at most {max_rows} are scored "
                         "at once: filter by grid or bbox")
    dim = tbl.schema.field("vector").type.list_size
    if n == 0:
        empty = pd.DataFrame(columns=[f for f in tbl.schema.names if f != "vector"])
        return empty, np.zeros((0, dim), np.float32)
    df = tbl.search().where(sql).limit(n).to_pandas()
    df = df.sort_values(["mgrs_grid", "y_dim", "x_dim"], kind="stable").reset_index(drop=True)
    vectors = np.stack(df.pop("vector").to_numpy()).astype(np.float32)
    return df, vectors


def search(
    db_uri: str,
    chip_id: str | None = None,
    date: date | str | None = None,
    vector: Sequence[float] | np.ndarray | None = None,
    k: int = 10,
    min_score: float | None = None,
    date_range: tuple[Any, Any] | None = None,
    grids: Sequence[str] | None = None,
    bbox: Sequence[float] | str | None = None,
    table: str = DEFAULT_TABLE,
    exclude_query_chip: bool = True,
    exact: bool | None = None,
    nprobes: int = DEFAULT_NPROBES,
    refine_factor: int | None = DEFAULT_REFINE_FACTOR,
    changed_since: date | str | None = None,
    min_change: float | None = None,
) -> pd.DataFrame:
    """The ``k`` rows most similar (cosine) to a chip at a date, or to ``vector``, best first.

    Filters: ``date_range`` (inclusive ``(start, end)``, either may be None), MGRS ``grids`` and a WGS84
    ``bbox`` (rows whose chip box meets it), and within change: only chips that changed on or after
    ``changed_since`` and/or by at least ``min_change`` (:func:`changed_chips`). The query chip's own
    rows are left out unless
    ``exclude_query_chip`` is False. ``exact`` True bypasses the ANN index (brute force); None (auto)
    does so when the filters keep at most ``EXACT_FILTERED_MAX_ROWS`` rows. Columns: chip_id,
    date, score (1 - cosine distance), mgrs_grid, s3_location_png_thumbnail and the other stored
    columns except the vector (paths as stored: ``Layout.resolve`` turns them into URLs; the chip
    polygon as WKB ``geometry``, see :func:`row_geometry`).
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InputError(f"min_score must lie in [-1, 1], got {min_score}")
    tbl = open_table(db_uri, table)
    where = _filters(None, date_range, grids, bbox)
    cond = changed_filter(tbl, changed_since, min_change)
    if cond is not None:
        where.append(cond)
    if vector is None:
        if chip_id is None or date is None:
            raise InputError("search needs chip_id and date, or a vector")
        qvec, qrow = query_vector(tbl, chip_id, date, grids)
        if exclude_query_chip:
            where.append(f"NOT (chip_id = {_sql_str(chip_id)} AND mgrs_grid = {_sql_str(qrow['mgrs_grid'])})")
    else:
        qvec = np.asarray(vector, dtype=np.float32).ravel()
        dim = tbl.schema.field("vector").type.list_size
        if qvec.shape[0] != dim:
            raise InputError(f"query vector has {qvec.shape[0]} values; the table holds {dim}-d vectors")
        if chip_id is not None and exclude_query_chip:
            where.append(f"chip_id != {_sql_str(chip_id)}")
    if not np.all(np.isfinite(qvec)) or not np.any(qvec):
        raise InputError("query vector is zero or not finite; cosine similarity is undefined")
    q = tbl.search(qvec, vector_column_name="vector").distance_type("cosine").limit(k)
    if where:
        q = q.where(" AND ".join(where), prefilter=True)
    if exact is None:
        exact = bool(where) and tbl.count_rows(" AND ".join(where)) <= EXACT_FILTERED_MAX_ROWS
    if exact:
        q = q.bypass_vector_index()
    else:
        q = q.nprobes(nprobes)
        if refine_factor:
            q = q.refine_factor(refine_factor)
    df = q.to_pandas()
    df = df.drop(columns=[c for c in ("vector",) if c in df.columns])
    df.insert(2, "score", 1.0 - df.pop("_distance").astype(float))
    if min_score is not None:
        df = df[df["score"] >= min_score]
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
