"""Change results out of the tool: alert polygons and an AOI-wide per-patch change raster.

Both read step 4's consolidated GeoParquet (one per MGRS grid) and judge per-patch change scores on a
:class:`~geofm.change.ChangeScale`: the baseline rule the rows record (``baseline_rule``: ``1 - cosine``
against a baseline date, or the seasonal z-score) with the given config's thresholds, so with the run's
config they agree with the change-intensity layer and the vector DB's ``changed`` flag.

- The patch grid of an MGRS grid: every analysed chip split into its ``patch_grid`` x ``patch_grid``
  patches, on the chips' tile-anchored UTM grid (north-up, one pixel per patch).
- Alerts: a patch is changed on a date after its chip's baseline when its score passes the patch
  threshold. It is alerted when it stays changed on ``alert_min_dates`` of its observations in a row
  (confirmed; a passing cloud or a one-date glitch is not) or on every observation up to its last
  (unconfirmed: too recent to tell); its first detection is the first date of that run (dates on
  which its chip has no row, e.g. too cloudy, neither break nor extend a run). Alerted patches that
  share an edge are dissolved into one polygon with the earliest first detection, the largest and mean
  magnitude (the patches' largest scores from their first detection on), whether any of its patches
  is confirmed, the chip holding most of its patches, every chip it touches, and the baseline rule.
  Polygons are in EPSG:4326.
- Change raster: one float32 band of per-patch scores on one date (NaN where a chip has no row that
  day or the date is not after its baseline), a COG (DEFLATE, floating-point predictor, overviews).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import rasterio.shutil
import shapely
from affine import Affine
from scipy import ndimage

from geofm import change, geoparquet, storage
from geofm.chips import WGS84
from geofm.config import PipelineConfig
from geofm.errors import InputError, NotFoundError
from geofm.layout import Layout
from geofm.steps.consolidate import grid_units, tile_chip_grid

ALERT_COLUMNS = ("alert_id", "mgrs_grid", "first_detected", "confirmed", "magnitude", "mean_magnitude",
                 "score_kind", "n_patches", "area_m2", "chip_id", "chip_ids", "baseline_rule")
_NONE = np.iinfo(np.int32).max  # "no detection" in the first-detection raster (date ordinals)


@dataclass(frozen=True)
class PatchGrid:
    """One pixel per patch over the bounding box of a grid's analysed chips (UTM, north-up)."""

    mgrs_grid: str
    crs: str
    transform: Affine
    side: int  # patches per chip side
    x0: int  # x_dim of the first chip column
    y0: int  # y_dim of the first chip row
    shape: tuple[int, int]  # (rows, cols) of patches

    def window(self, x_dim: int, y_dim: int) -> tuple[slice, slice]:
        """Rows and columns of one chip's patches."""
        r, c = (y_dim - self.y0) * self.side, (x_dim - self.x0) * self.side
        return slice(r, r + self.side), slice(c, c + self.side)

    @property
    def pixel_area_m2(self) -> float:
        return abs(self.transform.a * self.transform.e)


# what alerts and rasters read of the consolidated output (the per-patch maps are most of its bytes)
READ_COLUMNS = ("chip_id", "x_dim", "y_dim", "date", "baseline_date", "baseline_rule", "patch_grid",
                "patch_sim_map", "patch_z_map", "utm_minx", "utm_maxy", "chip_size", "gsd", "crs")


def read_grid_rows(lay: Layout, grid: str) -> pd.DataFrame:
    """A grid's consolidated rows (step 4 output), the columns alerts need; missing output raises
    naming the file."""
    url = lay.consolidated_output(grid)
    if not storage.exists(url):
        raise NotFoundError(f"no consolidated output for grid {grid} at {url}: run consolidate first")
    return geoparquet.read(url, columns=list(READ_COLUMNS))


def patch_grid(rows: pd.DataFrame, grid: str) -> PatchGrid:
    """The patch grid of a grid's rows (they need per-patch maps: ``embedding_kind: patch``)."""
    sides = rows["patch_grid"].dropna().unique() if "patch_grid" in rows.columns else []
    if len(sides) != 1:
        raise InputError(f"grid {grid}: no per-patch change maps (analyze with embedding_kind: patch)")
    side = int(sides[0])
    tile = tile_chip_grid(rows)
    chip_m = tile.chip_size * tile.transform.a
    x0, y0 = int(rows["x_dim"].min()), int(rows["y_dim"].min())
    nx, ny = int(rows["x_dim"].max()) - x0 + 1, int(rows["y_dim"].max()) - y0 + 1
    px = chip_m / side
    transform = Affine(px, 0, tile.transform.c + x0 * chip_m, 0, -px, tile.transform.f - y0 * chip_m)
    return PatchGrid(grid, tile.crs, transform, side, x0, y0, (ny * side, nx * side))


THRESHOLDS = ("change_threshold_high", "change_threshold_medium", "patch_change_threshold", "change_z_high",
              "change_z_medium", "patch_z_threshold")


def recorded_config(root: str, aoi_name: str) -> PipelineConfig:
    """A config with the change thresholds the AOI's last step 4 recorded (its ``config_<aoi>.json``), for
    readers that have an output root but not the run's config (the explorer): alerts and rasters then
    agree with the change-intensity layer."""
    cfg = PipelineConfig(output_root=root, aoi_name=aoi_name)
    for grid in grid_units(cfg):
        url = cfg.layout.frontend_config(grid)
        if storage.exists(url):
            recorded = storage.read_json(url)["demos"][0]["config"]
            return cfg.model_copy(update={k: recorded[k] for k in THRESHOLDS if recorded.get(k) is not None})
    return cfg


def grid_scale(rows: pd.DataFrame, cfg: PipelineConfig) -> change.ChangeScale:
    """The scale of a grid's rows: the rule they record, the config's thresholds."""
    rules = rows["baseline_rule"].dropna().unique() if "baseline_rule" in rows.columns else []
    return change.change_scale(cfg, str(rules[0]) if len(rules) == 1 else None)


def _grids(cfg: PipelineConfig, grids: list[str] | None) -> list[str]:
    """The grids asked for, else every grid with processed embeddings (none raises)."""
    out = grids or grid_units(cfg)
    if not out:
        raise NotFoundError(f"no analysed grids under {cfg.layout.processed_embeddings_root}: run the "
                            "pipeline first")
    return out


def _monitored(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows dated after their chip's baseline (the only ones change is judged on)."""
    return rows[change.monitored(rows)]


def _day(value: Any) -> date:
    return pd.Timestamp(value).date()


# ---- change raster -------------------------------------------------------------------------------
def change_layer(rows: pd.DataFrame, grid: str, day: date, scale: change.ChangeScale
                 ) -> tuple[PatchGrid, np.ndarray]:
    """Per-patch change scores of a grid on ``day`` (float32, NaN where unknown); a date the grid
    does not have raises naming the dates it has."""
    pg = patch_grid(rows, grid)
    days = pd.to_datetime(rows["date"], utc=True).dt.date
    if not (days == day).any():
        known = [d.isoformat() for d in sorted(set(days))]
        more = " ..." if len(known) > 40 else ""
        raise NotFoundError(f"grid {grid} has no date {day}; its dates: {', '.join(known[:40])}{more}")
    out = np.full(pg.shape, np.nan, np.float32)
    for _, row in _monitored(rows[(days == day).to_numpy()]).iterrows():
        scores = change.patch_scores(row, scale)
        if scores is not None:
            out[pg.window(int(row["x_dim"]), int(row["y_dim"]))] = scores.reshape(pg.side, pg.side)
    return pg, out


def _blocksize(shape: tuple[int, int]) -> int:
    """COG tile size: at most 512, small enough that the raster gets at least one overview level."""
    size = 16
    while size < 512 and size * 4 <= max(shape):
        size *= 2
    return size


def write_change_raster(url: str, pg: PatchGrid, values: np.ndarray, tags: dict[str, str]) -> None:
    """``values`` on the patch grid as a float32 COG (DEFLATE, floating-point predictor, overviews)."""
    with storage.local_file_for_write(url, ".tif") as dst:
        src = dst.with_suffix(".src.tif")
        try:
            with rasterio.open(src, "w", driver="GTiff", height=pg.shape[0], width=pg.shape[1], count=1,
                               dtype="float32", crs=pg.crs, transform=pg.transform, nodata=np.nan) as ds:
                ds.write(values.astype(np.float32), 1)
                ds.set_band_description(1, "change_score")
                ds.update_tags(**tags)
            rasterio.shutil.copy(src, dst, driver="COG", compress="DEFLATE", predictor=3,
                                 blocksize=_blocksize(pg.shape), overview_resampling="average")
        finally:
            src.unlink(missing_ok=True)


def export_change_raster(cfg: PipelineConfig, day: date, grids: list[str] | None = None,
                         dest: str | None = None) -> list[str]:
    """Write the per-patch change raster of ``day`` for each grid (default: every consolidated grid)
    to ``layout.change_raster`` (or ``dest``, for one grid); returns the URLs written."""
    lay = cfg.layout
    grids = _grids(cfg, grids)
    if dest and len(grids) > 1:
        raise InputError(f"--dest names one file but the AOI has {len(grids)} grids ({', '.join(grids)}); "
                         "choose one with --grid")
    urls = []
    for grid in grids:
        rows = read_grid_rows(lay, grid)
        scale = grid_scale(rows, cfg)
        pg, values = change_layer(rows, grid, day, scale)
        url = dest or lay.change_raster(grid, day.isoformat())
        write_change_raster(url, pg, values, {
            "date": day.isoformat(), "mgrs_grid": grid, "aoi_name": cfg.aoi_name,
            "baseline_rule": scale.rule, "score": score_kind(scale),
            "patch_threshold": str(scale.patch)})
        urls.append(url)
    return urls


def score_kind(scale: change.ChangeScale) -> str:
    """What the numbers mean: ``z`` (seasonal) or ``1-cosine``."""
    return "z" if scale.seasonal else "1-cosine"


def peak_layer(rows: pd.DataFrame, grid: str, scale: change.ChangeScale) -> tuple[PatchGrid, np.ndarray]:
    """Per patch of a grid, its largest change score on the dates after its chip's baseline (float32,
    NaN where none): the threshold-free picture of where change was strongest."""
    pg = patch_grid(rows, grid)
    out = np.full(pg.shape, np.nan, np.float32)
    for _, row in _monitored(rows).iterrows():
        scores = change.patch_scores(row, scale)
        if scores is not None:
            win = pg.window(int(row["x_dim"]), int(row["y_dim"]))
            out[win] = np.fmax(out[win], scores.reshape(pg.side, pg.side))
    return pg, out


# ---- alerts --------------------------------------------------------------------------------------
def first_detections(rows: pd.DataFrame, grid: str, scale: change.ChangeScale, min_dates: int = 2
                     ) -> tuple[PatchGrid, np.ndarray, np.ndarray, np.ndarray]:
    """Per patch of a grid: the ordinal of its first detection (module doc; ``_NONE`` when never), its
    largest score from then on (NaN when never) and whether it is confirmed (changed on ``min_dates``
    observations in a row)."""
    pg = patch_grid(rows, grid)
    first = np.full(pg.shape, _NONE, np.int32)
    peak = np.full(pg.shape, np.nan, np.float32)
    confirmed = np.zeros(pg.shape, bool)
    mon = _monitored(rows)
    for (x, y), g in mon.groupby(["x_dim", "y_dim"], sort=False):
        g = g.sort_values("date", kind="stable")
        win = pg.window(int(x), int(y))
        f, p, c = first[win], peak[win], confirmed[win]
        run = np.zeros((pg.side, pg.side), np.int32)  # changed observations in a row, up to now
        start = np.full((pg.side, pg.side), _NONE, np.int32)  # where the current run began
        run_peak = np.full((pg.side, pg.side), np.nan, np.float32)
        for _, row in g.iterrows():
            scores = change.patch_scores(row, scale)
            if scores is None:
                continue
            s = scores.reshape(pg.side, pg.side)
            changed = scale.patch_changed(s)
            start = np.where(changed & (run == 0), _day(row["date"]).toordinal(), start)
            run = np.where(changed, run + 1, 0)
            with np.errstate(invalid="ignore"):
                run_peak = np.where(changed, np.fmax(run_peak, s), np.nan)
                new = (run >= min_dates) & ~c
                f[new], p[new], c[new] = start[new], run_peak[new], True
                later = c & ~new
                p[later] = np.fmax(p[later], s[later])
        recent = (run > 0) & ~c  # changed through the last observation, not yet confirmed
        f[recent], p[recent] = start[recent], run_peak[recent]
    return pg, first, peak, confirmed


def grid_alerts(rows: pd.DataFrame, grid: str, scale: change.ChangeScale, min_dates: int = 2
                ) -> gpd.GeoDataFrame:
    """The alert polygons of one grid (EPSG:4326; columns ``ALERT_COLUMNS``)."""
    pg, first, peak, confirmed = first_detections(rows, grid, scale, min_dates)
    mask = first != _NONE
    labels, n = ndimage.label(mask)  # edge-sharing patches (4-connectivity)
    if n == 0:
        return empty_alerts()
    chip_col = np.broadcast_to((np.arange(pg.shape[1]) // pg.side + pg.x0)[None, :], pg.shape)
    chip_row = np.broadcast_to((np.arange(pg.shape[0]) // pg.side + pg.y0)[:, None], pg.shape)
    shapes: dict[int, list[Any]] = {}
    for geom, value in rasterio.features.shapes(labels.astype(np.int32), mask=mask, connectivity=4,
                                                transform=pg.transform):
        shapes.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    recs = []
    for k in range(1, n + 1):
        sel = labels == k
        chips = pd.Series([f"{x}_{y}" for x, y in zip(chip_col[sel], chip_row[sel], strict=True)])
        counts = chips.value_counts()
        top = sorted(counts[counts == counts.max()].index)[0]
        recs.append({
            "alert_id": f"{grid}-{k}", "mgrs_grid": grid,
            "first_detected": date.fromordinal(int(first[sel].min())).isoformat(),
            "confirmed": bool(confirmed[sel].any()),
            "magnitude": float(np.nanmax(peak[sel])), "mean_magnitude": float(np.nanmean(peak[sel])),
            "score_kind": score_kind(scale), "n_patches": int(sel.sum()),
            "area_m2": float(sel.sum() * pg.pixel_area_m2), "chip_id": top,
            "chip_ids": ",".join(sorted(counts.index, key=_chip_order)), "baseline_rule": scale.rule,
            "geometry": shapely.union_all(shapes[k]),
        })
    return gpd.GeoDataFrame(recs, geometry="geometry", crs=pg.crs).to_crs(WGS84)


def _chip_order(chip_id: str) -> tuple[int, int]:
    x, y = chip_id.split("_")
    return int(y), int(x)


def empty_alerts() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: pd.Series(dtype="object") for c in ALERT_COLUMNS},
                            geometry=gpd.GeoSeries([], crs=WGS84), crs=WGS84)


def change_alerts(cfg: PipelineConfig, grids: list[str] | None = None) -> gpd.GeoDataFrame:
    """Alert polygons of the AOI (every consolidated grid, or ``grids``), earliest first."""
    lay = cfg.layout
    grids = _grids(cfg, grids)
    frames = []
    for grid in grids:
        rows = read_grid_rows(lay, grid)
        frames.append(grid_alerts(rows, grid, grid_scale(rows, cfg), cfg.alert_min_dates))
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_alerts()
    out = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=WGS84)
    return out.sort_values(["first_detected", "alert_id"], kind="stable").reset_index(drop=True)


def check_format(fmt: str) -> str:
    if fmt not in Layout.ALERT_FORMATS:
        raise InputError(f"alert format must be one of {', '.join(Layout.ALERT_FORMATS)}, not {fmt!r}")
    return fmt


def write_alerts(frame: gpd.GeoDataFrame, url: str, fmt: str) -> None:
    """Write alert polygons as GeoJSON, GeoPackage (layer ``change_alerts``) or GeoParquet."""
    check_format(fmt)
    if fmt == "geojson":
        storage.write_text(url, frame.to_json(drop_id=True))
    elif fmt == "gpkg":
        with storage.local_file_for_write(url, ".gpkg") as path:
            frame.to_file(path, driver="GPKG", layer="change_alerts")
    else:
        geoparquet.write(url, frame)


def export_alerts(cfg: PipelineConfig, fmt: str = "geojson", dest: str | None = None,
                  grids: list[str] | None = None) -> tuple[str, gpd.GeoDataFrame]:
    """Compute the AOI's alerts and write them to ``dest`` (default ``layout.change_alerts(fmt)``)."""
    url = dest or cfg.layout.change_alerts(check_format(fmt))
    frame = change_alerts(cfg, grids)
    write_alerts(frame, url, fmt)
    return url, frame
