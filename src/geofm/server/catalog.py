"""Read-only view of a pipeline output root for the explorer: AOIs, grids, GeoJSONs, chip time
series, thumbnails and scene items. Every path comes from :class:`geofm.layout.Layout`; request
values only ever select rows of the metadata, they never become part of a path (no traversal)."""

from __future__ import annotations

import contextlib
import math
import re
import threading
from datetime import date
from typing import Any

import geopandas as gpd
import pandas as pd

from geofm import geoparquet, storage
from geofm.layout import Layout
from geofm.sentinel2 import parse_scene_id

# Columns of the consolidated output that a chip's time series carries (those present are sent).
SERIES_FIELDS = ("cosine_sim", "patch_sim_mean", "patch_sim_p10", "patch_changed_share",
                 "cloud_cover_perc", "missing_data_perc")
META_COLUMNS = ["chip_id", "x_dim", "y_dim", "date", "origin_tile", "chip_size", "mgrs_grid",
                "cloud_cover_perc", "missing_data_perc"]


class NotFound(LookupError):
    """An AOI, grid, chip, date or file the output does not have; the message names it."""


def iso_date(value: Any) -> str:
    """``YYYY-MM-DD`` of a date, datetime, pandas Timestamp or ISO string."""
    if isinstance(value, str):
        return value[:10]
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def clean(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf -> None, numpy scalars -> Python."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Catalog:
    """The AOIs and their consolidated outputs under one root (a folder or ``s3://bucket/prefix``).

    Tables are read once and cached while the grid's consolidated output is unchanged: a rerun of
    step 4 rewrites that file last, and the next request reads the new outputs.
    """

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/") or "/"
        self._cache: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, ...], load: Any) -> Any:
        """``load()`` once per key; keys of a grid (aoi, grid, ...) are reloaded when step 4 reran."""
        stamp = ""
        if len(key) >= 3:
            with contextlib.suppress(FileNotFoundError):
                stamp = storage.version(self.layout(key[1]).consolidated_output(key[2]))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = load()
        with self._lock:
            self._cache[key] = (stamp, value)
        return value

    # ---- AOIs and grids ------------------------------------------------------------------------
    def layout(self, aoi: str) -> Layout:
        return Layout(self.root, aoi)

    def aoi_names(self) -> list[str]:
        """AOIs with at least one consolidated grid."""
        return [a for a in storage.list_folders(Layout.outputs_dir(self.root)) if self._grids(a)]

    def _grids(self, aoi: str) -> list[str]:
        lay = self.layout(aoi)
        grids = storage.list_folders(lay.consolidated_root)
        return [g for g in grids if storage.exists(lay.consolidated_output(g))]

    def grids(self, aoi: str) -> list[str]:
        """The consolidated MGRS grids of an AOI; an unknown AOI raises :class:`NotFound`."""
        grids = self._cached(("grids", aoi), lambda: self._grids(aoi))
        if not grids:
            known = ", ".join(self.aoi_names()) or "none"
            raise NotFound(f"unknown AOI {aoi!r} (AOIs with consolidated output: {known})")
        return grids

    def check(self, aoi: str, grid: str) -> Layout:
        """The layout of a known (AOI, grid); unknown ones raise :class:`NotFound`."""
        grids = self.grids(aoi)
        if grid not in grids:
            raise NotFound(f"unknown grid {grid!r} for AOI {aoi!r} (grids: {', '.join(grids)})")
        return self.layout(aoi)

    def config(self, aoi: str, grid: str) -> dict[str, Any] | None:
        """The step-4 front-end config JSON as written, or None when absent."""
        url = self.check(aoi, grid).frontend_config(grid)
        return storage.read_json(url) if storage.exists(url) else None

    def geojson(self, aoi: str, grid: str, kind: str) -> dict[str, Any]:
        """``aoi`` / ``full`` chip grid or ``change`` intensity GeoJSON of a grid."""
        lay = self.check(aoi, grid)
        paths = {"aoi": lay.chip_grid_aoi, "full": lay.chip_grid_full_tile, "change": lay.change_intensity}
        url = paths[kind](grid)
        if not storage.exists(url):
            raise NotFound(f"{kind} GeoJSON not found for AOI {aoi!r} grid {grid!r}")
        return self._cached(("geojson", aoi, grid, kind), lambda: storage.read_json(url))

    def aoi_geojson(self, aoi: str) -> dict[str, Any] | None:
        self.grids(aoi)
        url = self.layout(aoi).aoi_geojson
        return storage.read_json(url) if storage.exists(url) else None

    # ---- tables --------------------------------------------------------------------------------
    def table(self, aoi: str, grid: str) -> gpd.GeoDataFrame:
        """The consolidated GeoParquet of a grid, with ``day`` (YYYY-MM-DD) added, sorted by chip and date."""
        lay = self.check(aoi, grid)

        def load() -> gpd.GeoDataFrame:
            df = geoparquet.read(lay.consolidated_output(grid))
            df["day"] = pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d")
            return df.sort_values(["chip_id", "day"]).reset_index(drop=True)

        return self._cached(("table", aoi, grid), load)

    def chip_dates(self, aoi: str, grid: str) -> pd.DataFrame:
        """Every chip and date that step 1 cut for this grid (from the chip meta), analysed or not."""
        lay = self.check(aoi, grid)

        def load() -> pd.DataFrame:
            frames = []
            for scene_id in lay.meta_scene_ids():
                try:
                    if parse_scene_id(scene_id).grid != grid:
                        continue
                except ValueError:
                    continue
                frames.append(geoparquet.read(lay.meta(scene_id), META_COLUMNS))
            if not frames:  # no meta: what the consolidated output holds
                frames = [self.table(aoi, grid)[[c for c in META_COLUMNS if c in self.table(aoi, grid)]]]
            df = pd.concat(frames, ignore_index=True)
            df["day"] = pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d")
            return df.sort_values(["chip_id", "day"]).reset_index(drop=True)

        return self._cached(("chip_dates", aoi, grid), load)

    def summary(self, aoi: str, grid: str) -> dict[str, Any]:
        """What the front end needs to open a grid: dates, bounds, chip count, PCA fields, config."""
        df = self.table(aoi, grid)
        lay = self.layout(aoi)
        minx, miny, maxx, maxy = (float(v) for v in df.total_bounds)
        return {
            "aoi_name": aoi, "grid": grid,
            "dates": sorted(df["day"].unique().tolist()),
            "imagery_dates": self.scene_dates(aoi, grid)
            or sorted(self.chip_dates(aoi, grid)["day"].unique()),
            "bounds": [minx, miny, maxx, maxy],
            "chip_count": int(df["chip_id"].nunique()),
            "series_fields": self.series_fields(df),
            "has_change_intensity": storage.exists(lay.change_intensity(grid)),
            "config": self.config(aoi, grid),
        }

    @staticmethod
    def series_fields(df: pd.DataFrame) -> list[str]:
        pca = sorted((c for c in df.columns if re.search(r"_pca_\d+$", c)),
                     key=lambda c: (c.rsplit("_", 1)[0], int(c.rsplit("_", 1)[1])))
        return [c for c in SERIES_FIELDS if c in df.columns] + pca

    def series(self, aoi: str, grid: str, chip_id: str) -> dict[str, Any]:
        """A chip's time series: dates, each numeric field, per-patch change maps, change summary."""
        df = self.table(aoi, grid)
        rows = df[df["chip_id"] == chip_id]
        if rows.empty:
            raise NotFound(f"unknown chip {chip_id!r} in AOI {aoi!r} grid {grid!r}")
        fields = self.series_fields(df)
        first = rows.iloc[0]
        out: dict[str, Any] = {
            "chip_id": chip_id, "grid": grid, "aoi_name": aoi,
            "x_dim": clean(first.get("x_dim")), "y_dim": clean(first.get("y_dim")),
            "bounds": [float(v) for v in rows.geometry.iloc[0].bounds],
            "centroid": [clean(first.get("centroid_lon")), clean(first.get("centroid_lat"))],
            "embedding_kind": clean(first.get("embedding_kind")),
            "baseline_date": (iso_date(first["baseline_date"]) if pd.notna(first.get("baseline_date"))
                              else None),
            "dates": rows["day"].tolist(),
            "series": {f: [clean(v) for v in rows[f].tolist()] for f in fields},
            "patch_grid": None, "patch_maps": None,
        }
        if "patch_sim_map" in rows and "patch_grid" in rows and rows["patch_grid"].notna().any():
            out["patch_grid"] = int(rows["patch_grid"].dropna().iloc[0])
            out["patch_maps"] = [
                None if m is None or (isinstance(m, float) and math.isnan(m)) else [clean(v) for v in m]
                for m in rows["patch_sim_map"].tolist()
            ]
        out["change"] = self.change_properties(aoi, grid, chip_id)
        days = self.chip_dates(aoi, grid)
        out["imagery_dates"] = days.loc[days["chip_id"] == chip_id, "day"].drop_duplicates().tolist()
        return out

    def change_properties(self, aoi: str, grid: str, chip_id: str) -> dict[str, Any] | None:
        try:
            fc = self.geojson(aoi, grid, "change")
        except NotFound:
            return None
        for feat in fc.get("features", []):
            if feat.get("properties", {}).get("chip_id") == chip_id:
                return feat["properties"]
        return None

    # ---- files named by the metadata -----------------------------------------------------------
    def thumbnail_url(self, aoi: str, grid: str, chip_id: str, day: date) -> str:
        """The PNG thumbnail of a chip at a date. The path is rebuilt by :class:`Layout` from the
        metadata row (scene id, chip size, x/y) that the request selects, so nothing from the request
        reaches the path; a row whose file is missing is a 404."""
        df = self.chip_dates(aoi, grid)
        chips = df[df["chip_id"] == chip_id]
        if chips.empty:
            raise NotFound(f"unknown chip {chip_id!r} in AOI {aoi!r} grid {grid!r}")
        rows = chips[chips["day"] == day.isoformat()]
        if rows.empty:
            dates = ", ".join(chips["day"].unique())
            raise NotFound(f"chip {chip_id!r} has no data on {day} (dates: {dates})")
        row = rows.iloc[0]
        url = self.layout(aoi).rgb_thumbnail(str(row["origin_tile"]), int(row["chip_size"]),
                                             int(row["x_dim"]), int(row["y_dim"]))
        if not storage.exists(url):
            raise NotFound(f"no thumbnail of chip {chip_id!r} on {day}")
        return url

    def scene_dates(self, aoi: str, grid: str) -> list[str]:
        """Dates with a scene item of this grid in the input layout."""
        return sorted({s.date.isoformat() for s in self._scenes(aoi, grid)})

    def _scenes(self, aoi: str, grid: str) -> list[Any]:
        lay = self.check(aoi, grid)

        def load() -> list[Any]:
            out = []
            for scene_id in lay.scene_ids():
                try:
                    s = parse_scene_id(scene_id)
                except ValueError:
                    continue
                if s.grid == grid:
                    out.append(s)
            return out

        return self._cached(("scenes", aoi, grid), load)

    def scene_items(self, aoi: str, grid: str, day: date) -> list[tuple[str, dict[str, Any]]]:
        """(item URL, item JSON) of the scenes of a grid on a date; none raises :class:`NotFound`."""
        scenes = [s for s in self._scenes(aoi, grid) if s.date == day]
        if not scenes:
            raise NotFound(f"no scene of grid {grid!r} on {day} for AOI {aoi!r}")
        lay = self.layout(aoi)
        return [(lay.scene_metadata(s.scene_id), storage.read_json(lay.scene_metadata(s.scene_id)))
                for s in scenes]

    def thumbnails_on(self, aoi: str, grid: str, day: date) -> list[tuple[tuple[float, ...], str]]:
        """(lon/lat bounds, thumbnail URL) of every chip with a thumbnail on a date (tile fallback)."""
        table = self.table(aoi, grid)
        bounds = dict(zip(table["chip_id"], table.geometry.bounds.itertuples(index=False), strict=False))
        df = self.chip_dates(aoi, grid)
        out = []
        for row in df[df["day"] == day.isoformat()].itertuples(index=False):
            b = bounds.get(row.chip_id)
            if b is None:
                continue
            url = self.layout(aoi).rgb_thumbnail(str(row.origin_tile), int(row.chip_size),
                                                 int(row.x_dim), int(row.y_dim))
            out.append((tuple(b), url))
        return out
