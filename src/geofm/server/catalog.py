"""Read-only view of a pipeline output root for the explorer: AOIs, grids, GeoJSONs, chip time
series, thumbnails and scene items. Every path comes from :class:`geofm.layout.Layout`; AOI names pass
:func:`geofm.config.check_name` before they become a path part, and other request values only ever
select rows of the metadata, they never become part of a path (no traversal).

Caching: what is read from files is kept in a bounded LRU keyed on the files' versions (size and
modification stamp) at the time of the read, checked on every use, so a rerun of a step is served at
once and nothing stale is ever answered. Listings (which AOIs and grids exist) are never cached, and
neither is a miss: an AOI asked for before its step 4 ran is found as soon as it exists.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import geopandas as gpd
import pandas as pd

from geofm import columns, geoparquet, storage
from geofm.config import check_name
from geofm.errors import GeofmError, NotFoundError, StorageError
from geofm.layout import Layout
from geofm.sentinel2 import parse_scene_id, scenes_of_grid

T = TypeVar("T")
MAX_TABLES = 24  # cached tables and GeoJSONs (the big entries)
MAX_ITEMS = 512  # cached scene item JSONs


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


@dataclass(frozen=True)
class ChipFiles:
    """A chip's files at one date: its thumbnail PNG and NetCDF, and its lon/lat bounds when known."""

    chip_id: str
    bounds: tuple[float, ...] | None  # minlon, minlat, maxlon, maxlat
    thumbnail: str
    netcdf: str


def _version_or_none(url: str) -> str | None:
    try:
        return storage.version(url)
    except FileNotFoundError:
        return None


class VersionedLRU:
    """At most ``size`` values, each stored with the versions of the files it was read from and
    served only while those versions are unchanged; least recently used values go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, ...], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key: tuple[str, ...], stamp: Callable[[], Any], load: Callable[[], T], what: str) -> T:
        """The value for ``key``: cached when ``stamp()`` still matches, else ``load()`` (kept only when
        the stamp did not move while loading, so a half-rewritten output is never kept). A file that
        vanished raises :class:`NotFoundError`, one that cannot be parsed :class:`StorageError`; both
        name ``what``, never a path."""
        try:
            before = stamp()
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None and hit[0] == before:
                    self._entries.move_to_end(key)
                    return hit[1]
            value = load()
            after = stamp()
        except FileNotFoundError:
            raise NotFoundError(f"{what} is gone (the output changed while it was read)") from None
        except GeofmError:
            raise
        except Exception as exc:  # broken or half-written file: the caller may retry
            raise StorageError(f"{what} cannot be read ({type(exc).__name__})") from exc
        with self._lock:
            if after == before:
                self._entries[key] = (before, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.pop(key, None)
        return value


class Catalog:
    """The AOIs and their consolidated outputs under one root (a folder or ``s3://bucket/prefix``)."""

    def __init__(self, root: str, max_tables: int = MAX_TABLES, max_items: int = MAX_ITEMS) -> None:
        self.root = str(root).rstrip("/") or "/"
        self.tables = VersionedLRU(max_tables)
        self.items = VersionedLRU(max_items)

    # ---- AOIs and grids ------------------------------------------------------------------------
    def layout(self, aoi: str) -> Layout:
        """The layout of an AOI; a name that is not a safe path part raises ``InvalidNameError``."""
        return Layout(self.root, check_name(aoi, "AOI name"))

    def aois(self) -> list[tuple[str, list[str]]]:
        """(AOI, consolidated grids) of every AOI with at least one; an AOI folder that cannot be read
        (bad name, unreadable folder) is left out, never fatal to the listing."""
        out = []
        for name in storage.list_folders(Layout.outputs_dir(self.root)):
            try:
                grids = self._grids(name)
            except (GeofmError, OSError, ValueError):
                continue
            if grids:
                out.append((name, grids))
        return out

    def aoi_names(self) -> list[str]:
        """AOIs with at least one consolidated grid."""
        return [name for name, _ in self.aois()]

    def _grids(self, aoi: str) -> list[str]:
        lay = self.layout(aoi)
        grids = storage.list_folders(lay.consolidated_root)
        return [g for g in grids if storage.exists(lay.consolidated_output(g))]

    def grids(self, aoi: str) -> list[str]:
        """The consolidated MGRS grids of an AOI; an unknown AOI raises :class:`NotFoundError`."""
        grids = self._grids(aoi)
        if not grids:
            known = ", ".join(self.aoi_names()) or "none"
            raise NotFoundError(f"unknown AOI {aoi!r} (AOIs with consolidated output: {known})")
        return grids

    def check(self, aoi: str, grid: str) -> Layout:
        """The layout of a known (AOI, grid); unknown ones raise :class:`NotFoundError`. A known grid
        costs one existence check (every request makes it); the listing only words the error."""
        lay = self.layout(aoi)
        if storage.exists(lay.consolidated_output(grid)):
            return lay
        grids = self.grids(aoi)
        raise NotFoundError(f"unknown grid {grid!r} for AOI {aoi!r} (grids: {', '.join(grids)})")

    def _json(self, url: str, what: str, cache: VersionedLRU | None = None) -> Any:
        """A JSON file of the output, cached by version (errors as :meth:`VersionedLRU.get`)."""
        return (cache or self.tables).get(("json", url), lambda: storage.version(url),
                                          lambda: storage.read_json(url), what)

    def config(self, aoi: str, grid: str) -> dict[str, Any] | None:
        """The step-4 front-end config JSON as written, or None when absent."""
        url = self.check(aoi, grid).frontend_config(grid)
        try:
            return self._json(url, f"front-end config of AOI {aoi!r} grid {grid!r}")
        except NotFoundError:
            return None

    def geojson(self, aoi: str, grid: str, kind: str) -> dict[str, Any]:
        """``aoi`` / ``full`` chip grid or ``change`` intensity GeoJSON of a grid."""
        lay = self.check(aoi, grid)
        paths = {"aoi": lay.chip_grid_aoi, "full": lay.chip_grid_full_tile, "change": lay.change_intensity}
        url = paths[kind](grid)
        if not storage.exists(url):
            raise NotFoundError(f"{kind} GeoJSON not found for AOI {aoi!r} grid {grid!r}")
        return self._json(url, f"{kind} GeoJSON of AOI {aoi!r} grid {grid!r}")

    def aoi_geojson(self, aoi: str) -> dict[str, Any] | None:
        self.grids(aoi)
        try:
            return self._json(self.layout(aoi).aoi_geojson, f"AOI GeoJSON of {aoi!r}")
        except NotFoundError:
            return None

    # ---- tables --------------------------------------------------------------------------------
    def table(self, aoi: str, grid: str) -> gpd.GeoDataFrame:
        """The consolidated GeoParquet of a grid, with ``day`` (YYYY-MM-DD) added, sorted by chip and date."""
        url = self.check(aoi, grid).consolidated_output(grid)

        def load() -> gpd.GeoDataFrame:
            df = geoparquet.read(url)
            df["day"] = pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d")
            return df.sort_values(["chip_id", "day"]).reset_index(drop=True)

        return self.tables.get(("table", url), lambda: storage.version(url), load,
                               f"consolidated output of AOI {aoi!r} grid {grid!r}")

    def bounds(self, aoi: str, grid: str) -> tuple[float, float, float, float]:
        """Lon/lat bounds of a grid's chips (the consolidated output's total bounds)."""
        url = self.check(aoi, grid).consolidated_output(grid)
        return self.tables.get(("bounds", url), lambda: storage.version(url),
                               lambda: tuple(float(v) for v in self.table(aoi, grid).total_bounds),
                               f"consolidated output of AOI {aoi!r} grid {grid!r}")

    def chip_dates(self, aoi: str, grid: str) -> pd.DataFrame:
        """Every chip and date that step 1 cut for this grid (from the chip meta), analysed or not."""
        lay = self.check(aoi, grid)

        def meta_files() -> dict[str, str]:
            files = storage.file_versions(lay.meta_dir, Layout.META_SUFFIX)
            out = {}
            for url in files:
                scene_id = url.rsplit("/", 1)[-1].removesuffix(Layout.META_SUFFIX)
                try:
                    if parse_scene_id(scene_id).grid == grid:
                        out[url] = files[url]
                except ValueError:
                    continue
            return out

        def stamp() -> tuple[Any, ...]:
            return tuple(sorted(meta_files().items())), storage.version(lay.consolidated_output(grid))

        def load() -> pd.DataFrame:
            frames = [geoparquet.read(url, list(columns.CHIP_INDEX)) for url in sorted(meta_files())]
            if not frames:  # no meta: what the consolidated output holds
                table = self.table(aoi, grid)
                frames = [table[[c for c in columns.CHIP_INDEX if c in table]]]
            df = pd.concat(frames, ignore_index=True)
            df["day"] = pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d")
            return df.sort_values(["chip_id", "day"]).reset_index(drop=True)

        return self.tables.get(("chip_dates", lay.meta_dir, grid), stamp, load,
                               f"chip metadata of AOI {aoi!r} grid {grid!r}")

    def summary(self, aoi: str, grid: str) -> dict[str, Any]:
        """What the front end needs to open a grid: dates (analysed; with imagery; with chips), bounds,
        chip count, PCA fields, config."""
        df = self.table(aoi, grid)
        lay = self.layout(aoi)
        minx, miny, maxx, maxy = self.bounds(aoi, grid)
        chip_days = sorted(self.chip_dates(aoi, grid)["day"].unique())
        return {
            "aoi_name": aoi, "grid": grid,
            "dates": sorted(df["day"].unique().tolist()),
            "imagery_dates": self.scene_dates(aoi, grid) or chip_days,
            "chip_dates": chip_days,
            "bounds": [minx, miny, maxx, maxy],
            "chip_count": int(df["chip_id"].nunique()),
            "series_fields": self.series_fields(df),
            "has_change_intensity": storage.exists(lay.change_intensity(grid)),
            "config": self.config(aoi, grid),
        }

    @staticmethod
    def series_fields(df: pd.DataFrame) -> list[str]:
        return columns.series_fields(df.columns)

    def series(self, aoi: str, grid: str, chip_id: str) -> dict[str, Any]:
        """A chip's time series: dates, each numeric field, per-patch change maps, change summary."""
        df = self.table(aoi, grid)
        rows = df[df["chip_id"] == chip_id]
        if rows.empty:
            raise NotFoundError(f"unknown chip {chip_id!r} in AOI {aoi!r} grid {grid!r}")
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

    def alerts(self, aoi: str) -> gpd.GeoDataFrame:
        """The AOI's change alerts (:func:`geofm.alerts.change_alerts`, judged by the thresholds its last
        step 4 recorded, so they agree with the change-intensity layer), kept while every grid's
        consolidated output and front-end config are unchanged."""
        from geofm import alerts

        lay = self.layout(aoi)
        grids = self.grids(aoi)

        def stamp() -> tuple[Any, ...]:
            return tuple((storage.version(lay.consolidated_output(g)),
                          _version_or_none(lay.frontend_config(g))) for g in grids)

        def load() -> gpd.GeoDataFrame:
            return alerts.change_alerts(alerts.recorded_config(self.root, aoi), grids)

        return self.tables.get(("alerts", lay.output_dir), stamp, load, f"change alerts of AOI {aoi!r}")

    def change_properties(self, aoi: str, grid: str, chip_id: str) -> dict[str, Any] | None:
        try:
            fc = self.geojson(aoi, grid, "change")
        except NotFoundError:
            return None
        for feat in fc.get("features", []):
            if feat.get("properties", {}).get("chip_id") == chip_id:
                return feat["properties"]
        return None

    # ---- files named by the metadata -----------------------------------------------------------
    def _files(self, aoi: str, row: Any, bounds: tuple[float, ...] | None) -> ChipFiles:
        lay = self.layout(aoi)
        args = (str(row.origin_tile), int(row.chip_size), int(row.x_dim), int(row.y_dim))
        return ChipFiles(str(row.chip_id), bounds, lay.rgb_thumbnail(*args), lay.raw_chip(*args))

    def chip_files(self, aoi: str, grid: str, chip_id: str, day: date) -> ChipFiles:
        """The files of a chip at a date. Paths are rebuilt by :class:`Layout` from the metadata row
        (scene id, chip size, x/y) that the request selects, so nothing from the request reaches a path;
        an unknown chip or date is a :class:`NotFoundError` naming the dates the chip has."""
        df = self.chip_dates(aoi, grid)
        chips = df[df["chip_id"] == chip_id]
        if chips.empty:
            raise NotFoundError(f"unknown chip {chip_id!r} in AOI {aoi!r} grid {grid!r}")
        rows = chips[chips["day"] == day.isoformat()]
        if rows.empty:
            dates = ", ".join(chips["day"].unique())
            raise NotFoundError(f"chip {chip_id!r} has no data on {day} (dates: {dates})")
        return self._files(aoi, next(rows.itertuples(index=False)), None)

    def thumbnail(self, aoi: str, grid: str, chip_id: str, day: date) -> bytes:
        """The PNG thumbnail of a chip at a date (:meth:`chip_files`); a missing file is a 404."""
        try:
            return storage.read_bytes(self.chip_files(aoi, grid, chip_id, day).thumbnail)
        except FileNotFoundError:
            raise NotFoundError(f"no thumbnail of chip {chip_id!r} on {day}") from None

    def chips_on(self, aoi: str, grid: str, day: date) -> list[ChipFiles]:
        """The files and lon/lat bounds of every chip of the grid's consolidated output cut on a date."""
        chips = self.table(aoi, grid).drop_duplicates("chip_id")  # a chip's outline is the same on every date
        bounds = dict(zip(chips["chip_id"], chips.geometry.bounds.itertuples(index=False), strict=True))
        df = self.chip_dates(aoi, grid)
        return [self._files(aoi, row, tuple(bounds[row.chip_id]))
                for row in df[df["day"] == day.isoformat()].itertuples(index=False) if row.chip_id in bounds]

    def thumbnails_on(self, aoi: str, grid: str, day: date) -> list[tuple[tuple[float, ...], str]]:
        """(lon/lat bounds, thumbnail URL) of every chip with a thumbnail on a date (tile fallback)."""
        return [(c.bounds, c.thumbnail) for c in self.chips_on(aoi, grid, day) if c.bounds is not None]

    def scene_dates(self, aoi: str, grid: str) -> list[str]:
        """Dates with a scene item of this grid in the input layout."""
        return sorted({s.date.isoformat() for s in self._scenes(aoi, grid)})

    def _scenes(self, aoi: str, grid: str) -> list[Any]:
        return [parse_scene_id(s) for s in scenes_of_grid(self.check(aoi, grid).scene_ids(), grid)]

    def scene_items(self, aoi: str, grid: str, day: date) -> list[tuple[str, dict[str, Any]]]:
        """(item URL, item JSON) of the scenes of a grid on a date; none raises :class:`NotFoundError`."""
        scenes = [s for s in self._scenes(aoi, grid) if s.date == day]
        if not scenes:
            raise NotFoundError(f"no scene of grid {grid!r} on {day} for AOI {aoi!r}")
        lay = self.layout(aoi)
        return [(lay.scene_metadata(s.scene_id),
                 self._json(lay.scene_metadata(s.scene_id), f"item of scene {s.scene_id}", self.items))
                for s in scenes]
