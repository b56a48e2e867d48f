"""Step 4: per MGRS grid, the consolidated GeoParquet, chip-grid GeoJSONs, the change-intensity layer
and the front-end config; then, in this one process, the LanceDB table of class embeddings.

Unit of work: one grid (a folder of ``processed-embeddings/``); its inputs are the step-3 units of its
chips and the AOI. The chip grid of the whole tile is
rebuilt from the tile geometry: its origin follows from any chip of the meta (``utm_minx - x_dim *
chip_size * gsd``, ``utm_maxy + y_dim * chip_size * gsd``; chips are anchored at the tile origin) and
the tile is 109,800 m square; every whole chip is listed. After the units, :meth:`Consolidate.finish`
writes all of this AOI's rows to LanceDB in one commit (one committer, no concurrent writers)
replacing the AOI's earlier rows, then builds the indices (geofm.vectordb): a resumable unit of its
own, whose inputs are the grids' units.
"""

from __future__ import annotations

import logging
import math
import posixpath
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from geofm import change, geoparquet, markers, storage, vectordb
from geofm.aoi import aoi_identity, load_aoi
from geofm.chips import WGS84, ChipGrid
from geofm.config import PipelineConfig
from geofm.errors import InputError, NotFoundError
from geofm.layout import Layout
from geofm.report import StepReport, UnitResult
from geofm.sentinel2 import TILE_EXTENT_M
from geofm.steps.analyze import load_embedding
from geofm.steps.base import Step, UnitOutput

VECTOR_DB_UNIT = "lance-db"
# the bulk of a consolidated row; not read to load the vector DB
_NOT_IN_VECTOR_DB = ("patch_sim_map", "patch_z_map")
log = logging.getLogger(__name__)


def grid_units(cfg: PipelineConfig) -> list[str]:
    """MGRS grids with processed embeddings (step 3 output)."""
    root = cfg.layout.processed_embeddings_root
    return [g for g in storage.list_folders(root) if cfg.layout.processed_files(g)]


# What the front-end config reads of the rows (the rest of a row, patch maps above all, is not kept).
_CONFIG_COLUMNS = ("date", "baseline_date", "model", "embedding_dim", "baseline_period_start",
                   "baseline_period_end")


# ---- chip grids ----------------------------------------------------------------------------------
def tile_chip_grid(rows: pd.DataFrame) -> ChipGrid:
    """The tile's whole chip grid, from the chips' UTM bounds (anchored at the tile origin)."""
    first = rows.iloc[0]
    size, gsd, crs = int(first["chip_size"]), float(first["gsd"]), str(first["crs"])
    step = size * gsd
    ox = rows["utm_minx"].to_numpy(float) - rows["x_dim"].to_numpy(float) * step
    oy = rows["utm_maxy"].to_numpy(float) + rows["y_dim"].to_numpy(float) * step
    uniform = rows["crs"].nunique() == 1 and rows["chip_size"].nunique() == 1
    if np.ptp(ox) > 1e-3 or np.ptp(oy) > 1e-3 or not uniform:
        raise InputError("chips of one grid disagree on the tile origin, CRS or chip size; "
                         "was the grid preprocessed with different parameters? rerun with --force")
    side = int(round(TILE_EXTENT_M / gsd))
    return ChipGrid(Affine(gsd, 0, float(ox[0]), 0, -gsd, float(oy[0])), side, side, crs, size)


def chips_frame(grid: ChipGrid, chips: list[Any], mgrs: str, aoi_name: str) -> gpd.GeoDataFrame:
    """One WGS84 polygon per chip (its four projected UTM corners, vectorised)."""
    b = np.array([c.bounds for c in chips], dtype=float).reshape(-1, 4)
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], axis=1)
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], axis=1)
    lon, lat = Transformer.from_crs(grid.crs, WGS84, always_xy=True).transform(xs, ys)
    polys = shapely.polygons(np.stack([lon, lat], axis=-1))
    return gpd.GeoDataFrame({
        "chip_id": [c.chip_id for c in chips], "x_dim": [c.x_dim for c in chips],
        "y_dim": [c.y_dim for c in chips], "mgrs_grid": mgrs, "aoi_name": aoi_name,
    }, geometry=polys, crs=WGS84)


# ---- change intensity ----------------------------------------------------------------------------
def change_records(rows: gpd.GeoDataFrame, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Per analysed chip of ``rows``: latest/lowest similarity, largest drop, High/Medium/Low
    (geofm.change) and its polygon; under a seasonal baseline the class comes from the largest z-score
    after the baseline period."""
    seasonal = cfg.baseline == "seasonal"
    if seasonal and "change_z" not in rows.columns:
        raise InputError("baseline 'seasonal' but the processed embeddings have no change_z: rerun analyze")
    out = []
    for chip_id, g in rows.groupby("chip_id", sort=False):
        g = g.sort_values("date")
        dates = [pd.Timestamp(d).date() for d in g["date"]]
        base = g["baseline_date"].dropna()
        baseline = pd.Timestamp(base.iloc[0]).date() if len(base) else dates[0]
        s = change.change_summary(dates, g["cosine_sim"].to_numpy(float), baseline,
                                  cfg.change_threshold_high, cfg.change_threshold_medium)
        if seasonal:
            s.update(change.seasonal_summary(dates, g["change_z"].to_numpy(float), baseline,
                                             cfg.change_z_high, cfg.change_z_medium))
        rule = g["baseline_rule"].iloc[0] if "baseline_rule" in g.columns else cfg.baseline
        rec = {"chip_id": chip_id, "x_dim": int(g["x_dim"].iloc[0]), "y_dim": int(g["y_dim"].iloc[0]),
               "mgrs_grid": g["mgrs_grid"].iloc[0], "baseline_date": baseline.isoformat(),
               "baseline_rule": rule, **s}
        for k in ("latest_date", "min_sim_date", "largest_drop_date", "max_z_date"):
            if k in rec:
                rec[k] = rec[k].isoformat() if rec[k] is not None else None
        for k in ("latest_sim", "min_sim", "max_z"):
            if k in rec:
                rec[k] = None if rec[k] is None or not math.isfinite(rec[k]) else rec[k]
        rec["geometry"] = g.geometry.iloc[0]
        out.append(rec)
    return out


# ---- front-end config ----------------------------------------------------------------------------
def _rel(url: str, base: str) -> str:
    return posixpath.relpath(url.split("://", 1)[-1], base.split("://", 1)[-1])


def frontend_config(cfg: PipelineConfig, grid: str, rows: pd.DataFrame | None = None,
                    embedding_dim: int | None = None) -> dict[str, Any]:
    """What a front end needs for one grid: paths relative to ``output/<aoi>/``, dates, thresholds,
    the vector DB. ``rows`` are the grid's processed rows (read from the consolidated parquet if None)."""
    lay: Layout = cfg.layout
    if rows is None:
        rows = geoparquet.read(lay.consolidated_output(grid))
    base = lay.output_dir
    dates = sorted({pd.Timestamp(d).date() for d in rows["date"]})
    baselines = sorted({pd.Timestamp(d).date() for d in rows["baseline_date"].dropna()})
    first_baseline = baselines[0] if baselines else dates[0]
    monitoring = [d for d in dates if d > first_baseline]
    models = rows["model"].dropna().unique().tolist() if "model" in rows.columns else []
    if embedding_dim is None and "embedding_dim" in rows.columns and rows["embedding_dim"].notna().any():
        embedding_dim = int(rows["embedding_dim"].dropna().iloc[0])
    return {
        "aoi_name": cfg.aoi_name,
        "s2_tile_id": grid,
        "aoi_geojson": _rel(lay.aoi_geojson if storage.exists(lay.aoi_geojson) or not cfg.aoi else cfg.aoi,
                            base),
        "chip_grid_geojson": _rel(lay.chip_grid_full_tile(grid), base),
        "chip_grid_aoi_geojson": _rel(lay.chip_grid_aoi(grid), base),
        "chip_grid_change_intensity_geojson": _rel(lay.change_intensity(grid), base),
        "metadata_path": _rel(lay.consolidated_output(grid), base),
        "png_thumbnail_path": _rel(lay.rgb_thumbnails_dir(grid), base),
        "start_date": dates[0].isoformat(),
        "end_date": dates[-1].isoformat(),
        "dates": [d.isoformat() for d in dates],
        "similarity_search_date": dates[-1].isoformat(),
        "baseline_rule": cfg.baseline,
        "baseline_start_date": first_baseline.isoformat(),
        "baseline_end_date": (baselines[-1] if baselines else first_baseline).isoformat(),
        "monitoring_start_date": monitoring[0].isoformat() if monitoring else None,
        "monitoring_end_date": dates[-1].isoformat(),
        "embedding_kind": cfg.embedding_kind,
        "change_threshold_high": cfg.change_threshold_high,
        "change_threshold_medium": cfg.change_threshold_medium,
        "patch_change_threshold": cfg.patch_change_threshold,
        "change_z_high": cfg.change_z_high,
        "change_z_medium": cfg.change_z_medium,
        "patch_z_threshold": cfg.patch_z_threshold,
        "baseline_period_start": _first_date(rows, "baseline_period_start"),
        "baseline_period_end": _first_date(rows, "baseline_period_end"),
        "vectordb_type": "lancedb",
        "vectordb_path": _rel(lay.lance_db, base),
        "vectordb_collection_name": vectordb.DEFAULT_TABLE,
        "model": models[0] if len(models) == 1 else models or cfg.model,
        "embedding_dim": embedding_dim,
    }


def _first_date(rows: pd.DataFrame, col: str) -> str | None:
    """A column's first date as ISO text (None when the column is absent or empty)."""
    if col not in rows.columns or not rows[col].notna().any():
        return None
    return pd.Timestamp(rows[col].dropna().iloc[0]).date().isoformat()


# ---- one grid ------------------------------------------------------------------------------------
def _outputs(lay: Layout, grid: str) -> list[str]:
    return [lay.consolidated_output(grid), lay.chip_grid_full_tile(grid), lay.chip_grid_aoi(grid),
            lay.change_intensity(grid), lay.frontend_config(grid)]


def _write_geojson(url: str, frame: gpd.GeoDataFrame) -> None:
    storage.write_text(url, frame.to_json(drop_id=True))


def _chip_order(urls: list[str]) -> tuple[list[str], int, pa.Schema, dict[str, Any]]:
    """The grid's processed files (one chip each, every row its polygon) in the consolidated file's order
    (Hilbert order of the chips over the grid's bounds, as :func:`geoparquet.write` orders rows), the
    rows per row group, and the unified column types and geo metadata of the files: read one file at
    a time."""
    nbytes = n_rows = 0
    schemas, polygons, yx = [], [], []
    for url in urls:
        table = geoparquet.read_arrow(url)
        nbytes, n_rows = nbytes + table.nbytes, n_rows + table.num_rows
        schemas.append(table.schema)
        polygons.append(shapely.from_wkb(table.column("geometry")[0].as_py()) if table.num_rows else None)
        yx.append(tuple(table.column(c)[0].as_py() if table.num_rows else -1 for c in ("y_dim", "x_dim")))
    dist = gpd.GeoSeries(polygons, crs=WGS84).hilbert_distance().to_numpy(np.int64)
    order = sorted(range(len(urls)), key=lambda i: (dist[i], yx[i]))
    types, geo = geoparquet.parts_schema(schemas)
    return [urls[i] for i in order], geoparquet.rows_per_group(nbytes, n_rows), types, geo


def process_unit(cfg: PipelineConfig, grid: str) -> UnitOutput:
    """Consolidate one grid: the consolidated GeoParquet, chip grids, change intensity, front-end config.

    Chip by chip (one processed file at a time), so memory does not grow with the grid's chips and
    dates: the consolidated file is written a row group at a time; what the other outputs need is
    kept per chip (its change summary) or per row without the patch maps (dates, baselines, model)."""
    lay = cfg.layout
    urls = lay.processed_files(grid)
    if not urls:
        raise NotFoundError(f"no processed embeddings for grid {grid}: run analyze first")
    ordered, rows_per_group, types, geo = _chip_order(urls)
    crs = CRS.from_user_input(geo["crs"] or WGS84)  # parsed once: the files' chip polygons share it
    tile: ChipGrid | None = None
    intensity: list[dict[str, Any]] = []
    kept, n_rows = [], 0
    with storage.local_file_for_write(lay.consolidated_output(grid), ".parquet") as path, \
            geoparquet.PartsWriter(path, rows_per_group, types, geo) as writer:
        for url in ordered:
            rows = geoparquet.from_arrow(geoparquet.read_arrow(url), crs)
            if rows.empty:
                continue
            rows = rows.sort_values("date", kind="stable").reset_index(drop=True)
            chip_tile = tile_chip_grid(rows)
            if tile is not None and chip_tile != tile:
                raise InputError("chips of one grid disagree on the tile origin, CRS or chip size; "
                                 "was the grid preprocessed with different parameters? rerun with --force")
            tile = chip_tile
            intensity += change_records(rows, cfg)
            kept.append(rows[[c for c in _CONFIG_COLUMNS if c in rows.columns]])
            for col in set(Layout.PATH_COLUMNS) & set(rows.columns):  # older runs' paths follow the rule
                rows[col] = [lay.restore(v) if isinstance(v, str) else v for v in rows[col]]
            writer.write(rows)
            n_rows += len(rows)
        if tile is None:
            raise NotFoundError(f"no processed rows for grid {grid}: run analyze first")
    changes = gpd.GeoDataFrame(intensity, geometry="geometry", crs=WGS84)
    changes = changes.sort_values(["y_dim", "x_dim"], kind="stable").reset_index(drop=True)
    full = chips_frame(tile, list(tile.all_chips()), grid, cfg.aoi_name)
    if storage.exists(cfg.aoi_url):
        aoi_chips = chips_frame(tile, tile.chips_meeting(load_aoi(cfg.aoi_url)), grid, cfg.aoi_name)
    else:  # no AOI file: the analysed chips stand for it
        log.warning("no AOI at %s: chip_grid_aoi lists the analysed chips", cfg.aoi_url)
        aoi_chips = full[full["chip_id"].isin(set(changes["chip_id"]))].reset_index(drop=True)
    _write_geojson(lay.chip_grid_full_tile(grid), full)
    _write_geojson(lay.chip_grid_aoi(grid), aoi_chips)
    _write_geojson(lay.change_intensity(grid), changes)
    config = frontend_config(cfg, grid, pd.concat(kept, ignore_index=True))
    storage.write_json(lay.frontend_config(grid), {
        "current_demo_id": cfg.aoi_name, "demos": [{"demo_id": cfg.aoi_name, "config": config}]})
    counts = changes["change_intensity"].value_counts().to_dict()
    return UnitOutput(_outputs(lay, grid), {
        "rows": n_rows, "chips": len(changes), "tile_chips": len(full), "aoi_chips": len(aoi_chips),
        **{f"intensity_{k}": int(v) for k, v in counts.items()}})


# ---- vector DB -----------------------------------------------------------------------------------
def vector_rows(rows: gpd.GeoDataFrame, lay: Layout, scale: change.ChangeScale | None = None
                ) -> tuple[pd.DataFrame, np.ndarray]:
    """LanceDB columns (docs/formats.md) and class embeddings of the rows that have a clean one; paths
    are stored by ``lay``'s rule, the geometry as WKB (its bounds beside it, for the bbox filter); with
    ``scale``, the change score of rows after their baseline and whether it makes the chip changed
    (what search within change filters on)."""
    ok = rows[~rows["embedding_contains_nan_yn"].astype(bool) & rows["s3_location_cls_emb"].notna()]
    vectors, keep = [], []
    for i, url in zip(ok.index, ok["s3_location_cls_emb"], strict=True):
        v = load_embedding(lay.resolve(url)).astype(np.float32).ravel()
        if np.all(np.isfinite(v)) and np.any(v):
            vectors.append(v)
            keep.append(i)
    sel = ok.loc[keep]
    bounds = sel.geometry.bounds
    out = pd.DataFrame({
        "chip_id": sel["chip_id"].astype(str), "x_dim": sel["x_dim"].astype("int64"),
        "y_dim": sel["y_dim"].astype("int64"), "date": sel["date"],
        "scene_id": sel["origin_tile"].astype(str),
        "mgrs_grid": sel["mgrs_grid"].astype(str), "aoi_name": sel["aoi_name"].astype(str),
        "model": sel["model"].astype(str) if "model" in sel.columns else "",
        "geometry": sel.geometry.to_wkb(), "minx": bounds["minx"], "miny": bounds["miny"],
        "maxx": bounds["maxx"], "maxy": bounds["maxy"],
        "cloud_cover_perc": sel["cloud_cover_perc"].astype(float),
        "missing_data_perc": sel["missing_data_perc"].astype(float),
        "s3_location_png_thumbnail": [lay.restore(str(v)) for v in sel["s3_location_png_thumbnail"]],
        "s3_location_netcdf": [lay.restore(str(v)) for v in sel["s3_location_netcdf"]],
        "cosine_sim": sel["cosine_sim"].astype(float),
    })
    if scale is not None:
        monitored = change.monitored(sel)
        score = sel["change_score"].to_numpy(float) if "change_score" in sel.columns \
            else change.chip_score(sel["cosine_sim"].to_numpy(float))
        score = np.where(monitored, score, np.nan)
        out["change_score"] = score
        out["changed"] = scale.chip_changed(score)
    for col in sorted(c for c in sel.columns if "_emb_pca_" in c):
        out[col] = sel[col].astype(float)
    dim = vectors[0].shape[0] if vectors else 0
    return out.reset_index(drop=True), np.asarray(vectors, np.float32).reshape(len(vectors), dim)


def load_vector_db(cfg: PipelineConfig, grids: list[str]) -> dict[str, Any]:
    """Write every grid's rows of this AOI to ``lance-db/vector_db`` in one commit, then index."""
    lay = cfg.layout
    frames, vecs = [], []
    for grid in grids:
        if not storage.exists(lay.consolidated_output(grid)):
            continue
        df, v = vector_rows(geoparquet.read(lay.consolidated_output(grid), exclude=_NOT_IN_VECTOR_DB), lay,
                            change.change_scale(cfg))
        if len(df):
            frames.append(df)
            vecs.append(v)
    if not frames:
        raise InputError("no row with a class embedding to load into the vector DB")
    dims = {v.shape[1] for v in vecs}
    if len(dims) != 1:
        raise InputError(f"class embeddings of several sizes {sorted(dims)}: mixed models? "
                         "rerun with --force")
    table = vectordb.rows_table(pd.concat(frames, ignore_index=True), np.concatenate(vecs))
    return vectordb.replace_aoi_rows(lay.lance_db, table, cfg.aoi_name, vectordb.DEFAULT_TABLE,
                                     cfg.vector_index_min_rows, cfg.vector_index_type)


class Consolidate(Step):
    """Step 4 over the grids step 3 analysed, then the vector DB (see the module doc)."""

    name: ClassVar[str] = "consolidate"
    params: ClassVar[tuple[str, ...]] = ("aoi_name", "baseline", "embedding_kind", "change_threshold_high",
                                         "change_threshold_medium", "patch_change_threshold",
                                         "change_z_high", "change_z_medium")
    vector_params: ClassVar[tuple[str, ...]] = ("vector_index_min_rows", "vector_index_type")

    own_units: ClassVar[tuple[str, ...]] = (VECTOR_DB_UNIT,)

    def units(self, cfg: PipelineConfig) -> list[str]:
        grids = grid_units(cfg)
        if not grids:
            raise NotFoundError(f"no processed embeddings under {cfg.layout.processed_embeddings_root}: "
                                "run analyze first")
        return grids

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return {"chips": markers.identities(cfg.layout, "analyze", prefix=f"{unit}/"),
                "aoi": aoi_identity(cfg.aoi_url)}

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        return process_unit(cfg, unit)

    def finish(self, cfg: PipelineConfig, report: StepReport) -> list[UnitResult]:
        """Load every consolidated grid into LanceDB: one commit, skipped when the grids' units are those
        it was loaded from."""
        lay = cfg.layout
        grids = [r.unit for r in report.results if r.status != "failed"]
        if not grids:
            return []
        inputs = {g: markers.upstream(lay, self.name, g) for g in grids}
        fp = markers.fingerprint(f"{self.name}/{VECTOR_DB_UNIT}",
                                 {k: getattr(cfg, k) for k in self.vector_params}, inputs)
        table_dir = f"{lay.lance_db}/{vectordb.DEFAULT_TABLE}.lance"

        def load() -> UnitOutput:
            return UnitOutput([table_dir], load_vector_db(cfg, grids))

        def intact(done: markers.Marker) -> bool:  # the table still holds the rows loaded last
            return vectordb.table_rows(lay.lance_db) == done.info.get("rows")

        try:
            status, info = markers.run(lay, self.name, VECTOR_DB_UNIT, fp, load, force=cfg.force,
                                       intact=intact)
        except Exception as exc:  # recorded like a failed unit; the files above stay
            return [UnitResult(VECTOR_DB_UNIT, "failed", error=f"{type(exc).__name__}: {exc}")]
        return [UnitResult(VECTOR_DB_UNIT, status, info=info)]
