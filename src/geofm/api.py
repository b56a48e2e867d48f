"""The Python API for the common tasks: run the pipeline, then open and look at what it made.

``geofm.run(...)`` takes the parameters of ``geofm run`` and returns the run's
:class:`~geofm.pipeline.RunRecord`; ``geofm.open(output_root, aoi_name)`` returns :class:`Results`, a
read-only view of one AOI's outputs: the chips' table, a chip's datacube (xarray) and time series,
similarity search, the change-intensity layer and the URLs of the explorer for them. Every deliberate
error is a :class:`~geofm.errors.GeofmError` (an unknown AOI, grid or chip is a
:class:`~geofm.errors.NotFoundError` naming it). Heavy modules are imported inside the functions, so
``import geofm`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import date as Date
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from geofm.errors import ConfigError, NotFoundError, RunFailedError

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import xarray as xr

    from geofm.layout import Layout
    from geofm.pipeline import RunRecord
    from geofm.report import Progress, StepReport, UnitResult

__all__ = ["ExplorerUrls", "Results", "open", "run"]

_CHIP_FILE_COLUMNS = ("chip_id", "date", "origin_tile", "s3_location_netcdf")  # a chip-date's NetCDF


# ---- run -----------------------------------------------------------------------------------------
class _CallbackProgress:
    """A :class:`~geofm.report.Progress` calling ``fn(step, done, total)`` on each step's start and unit."""

    def __init__(self, fn: Callable[[str, int, int], Any]) -> None:
        self.fn, self.step, self.done, self.total = fn, "", 0, 0

    def start(self, step: str, total: int) -> None:
        self.step, self.done, self.total = step, 0, total
        self.fn(step, 0, total)

    def advance(self, result: UnitResult) -> None:
        self.done += 1
        self.fn(self.step, self.done, self.total)

    def end(self, report: StepReport) -> None:
        return None


def _progress(progress: Any) -> Progress | None:
    """None/False: silent; True: the CLI's progress bars; a callable ``(step, done, total)``; or any
    :class:`~geofm.report.Progress`."""
    if progress is None or progress is False:
        return None
    if progress is True:
        from geofm.cli import BarProgress

        return BarProgress()
    if all(hasattr(progress, m) for m in ("start", "advance", "end")):
        return progress
    if callable(progress):
        return _CallbackProgress(progress)
    raise ConfigError(f"progress must be True, a callable (step, done, total) or a Progress, not "
                      f"{type(progress).__name__}")


def run(
    aoi: str | os.PathLike[str] | None = None,
    aoi_name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    start: str | Date | None = None,
    end: str | Date | None = None,
    steps: str | Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    *,
    skip_discover: bool = False,
    progress: Any = None,
    check: bool = True,
    **params: Any,
) -> RunRecord:
    """Run the pipeline as ``geofm run`` does, and return its run record.

    ``aoi`` (GeoJSON file), ``aoi_name``, ``out`` (folder or ``s3://bucket/prefix``), ``start``/``end``
    (``YYYY-MM-DD`` or dates), ``steps`` (names, a list or comma-separated; default all),
    ``config`` (a YAML file of parameters) and any :class:`~geofm.config.PipelineConfig` field as a
    keyword (``model="spectral"``, ``chip_size=64``, ``force=True``...); keywords win over the file.
    ``skip_discover`` uses the scenes already in the input layout. ``progress``: None (silent),
    True (progress bars), a callable ``(step, done, total)`` or a :class:`~geofm.report.Progress`.

    Bad input raises an :class:`~geofm.errors.InputError` before any work. With ``check`` (default) a
    run in which units failed raises :class:`RunFailedError` (carrying the record) once the others are
    done; without it the record is returned and ``record.ok`` says so.
    """
    from geofm import pipeline
    from geofm.config import PipelineConfig, load_config

    unknown = sorted(set(params) - set(PipelineConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          "`geofm config` (or geofm.config.PipelineConfig) lists them")
    given = {"aoi": aoi, "aoi_name": aoi_name, "output_root": out, "start_date": start, "end_date": end,
             **params}
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in given.items()}
    cfg = load_config(os.fspath(config) if config is not None else None, **given)
    chosen = [s.name for s in pipeline.chosen_steps(steps, skip_discover)]
    record = pipeline.run_pipeline(cfg, chosen, progress=_progress(progress))
    if check and not record.ok:
        raise RunFailedError(record.summary(), record)
    return record


# ---- results -------------------------------------------------------------------------------------
def open(output_root: str | os.PathLike[str], aoi_name: str) -> Results:
    """The outputs of AOI ``aoi_name`` under ``output_root`` (a folder or ``s3://bucket/prefix``);
    a root without that AOI raises :class:`~geofm.errors.NotFoundError` naming the AOIs it has."""
    from geofm import storage
    from geofm.config import check_name
    from geofm.layout import Layout

    root = os.fspath(output_root)
    root = root.rstrip("/") if "://" in root else os.path.abspath(root)
    lay = Layout(root, check_name(aoi_name, "aoi_name"))
    if not storage.exists(lay.output_dir):
        known = storage.list_folders(Layout.outputs_dir(root)) if storage.exists(root) else []
        raise NotFoundError(f"no AOI {aoi_name!r} under {Layout.outputs_dir(root)} "
                            f"(AOIs there: {', '.join(known) or 'none'})")
    return Results(lay)


class Results:
    """A read-only view of one AOI's pipeline outputs (see :func:`open`).

    Tables are read when asked for and kept while their file is unchanged. ``grid`` arguments name an
    MGRS grid; left out, an AOI with one grid uses it (chip tables then cover every grid). Paths in the
    tables (``s3_location_*``) are resolved to URLs (:meth:`geofm.layout.Layout.resolve`)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._cache: dict[tuple[str, ...], tuple[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<geofm results: AOI {self.aoi_name!r} under {self.root!r}>"

    @property
    def root(self) -> str:
        return self.layout.root

    @property
    def aoi_name(self) -> str:
        return self.layout.aoi_name

    @property
    def grids(self) -> list[str]:
        """MGRS grids with consolidated output (step 4), sorted."""
        from geofm import storage

        lay = self.layout
        return [g for g in storage.list_folders(lay.consolidated_root)
                if storage.exists(lay.consolidated_output(g))]

    def _grid(self, grid: str | None) -> str:
        """``grid`` if consolidated, the AOI's only grid when None; else NotFoundError naming it."""
        grids = self.grids
        if not grids:
            raise NotFoundError(f"AOI {self.aoi_name!r} has no consolidated output under "
                                f"{self.layout.consolidated_root}: run the pipeline (consolidate) first")
        if grid is None:
            if len(grids) > 1:
                raise NotFoundError(f"AOI {self.aoi_name!r} has several grids ({', '.join(grids)}): "
                                    "pass grid=...")
            return grids[0]
        wanted = str(grid).upper().removeprefix("MGRS-")
        if wanted not in grids:
            raise NotFoundError(f"unknown grid {grid!r} for AOI {self.aoi_name!r} "
                                f"(grids: {', '.join(grids)})")
        return wanted

    def _cached(self, key: tuple[str, ...], url: str, load: Callable[[], Any]) -> Any:
        """``load()`` once while the file at ``url`` is unchanged (a rerun of a step rewrites it)."""
        from geofm import storage

        stamp = storage.version(url)
        hit = self._cache.get(key)
        if hit is None or hit[0] != stamp:
            self._cache[key] = hit = (stamp, load())
        return hit[1]

    def _resolved(self, frame: pd.DataFrame) -> pd.DataFrame:
        for col in set(self.layout.PATH_COLUMNS) & set(frame.columns):
            frame[col] = [self.layout.resolve(v) if isinstance(v, str) and v else v for v in frame[col]]
        return frame

    # ---- tables ------------------------------------------------------------------------------
    def _table(self, grid: str) -> gpd.GeoDataFrame:
        import pandas as pd

        from geofm import geoparquet

        url = self.layout.consolidated_output(grid)

        def load() -> gpd.GeoDataFrame:
            df = self._resolved(geoparquet.read(url))
            df["date"] = pd.to_datetime(df["date"])
            return df.sort_values(["chip_id", "date"], kind="stable").reset_index(drop=True)

        return self._cached(("table", grid), url, load)

    def chips(self, grid: str | None = None) -> gpd.GeoDataFrame:
        """The consolidated output (one row per analysed chip and date; columns in docs/formats.md),
        sorted by chip and date, paths resolved. Without ``grid``, every grid of the AOI."""
        import geopandas as gpd
        import pandas as pd

        grids = [self._grid(grid)] if grid is not None or len(self.grids) <= 1 else self.grids
        frames = [self._table(g) for g in grids]
        if len(frames) == 1:
            return frames[0].copy()
        return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)

    def _chip_grid(self, chip_id: str, grid: str | None) -> str:
        """The grid holding ``chip_id`` (the given one, or the only one that has it)."""
        if grid is not None or len(self.grids) <= 1:
            g = self._grid(grid)
            if not (self._table(g)["chip_id"] == chip_id).any():
                raise NotFoundError(f"unknown chip {chip_id!r} in AOI {self.aoi_name!r} grid {g!r} "
                                    f"(chip ids are <x_dim>_<y_dim>)")
            return g
        having = [g for g in self.grids if (self._table(g)["chip_id"] == chip_id).any()]
        if len(having) != 1:
            raise NotFoundError(f"chip {chip_id!r} is in {len(having)} grids of AOI {self.aoi_name!r} "
                                f"({', '.join(having) or 'none'}): pass grid=...")
        return having[0]

    def series(self, chip_id: str, grid: str | None = None) -> pd.DataFrame:
        """A chip's time series, one row per analysed date (index ``date``): similarity to the baseline
        (``cosine_sim``), the per-patch summaries, cloud and missing shares, the PCA components and
        ``is_baseline``; ``attrs`` hold chip, grid and baseline date."""
        import pandas as pd

        from geofm.columns import series_fields

        g = self._chip_grid(chip_id, grid)
        rows = self._table(g)
        rows = rows[rows["chip_id"] == chip_id]
        cols = series_fields(rows.columns)
        out = pd.DataFrame(rows[cols].to_numpy(float), columns=cols, index=pd.DatetimeIndex(rows["date"],
                                                                                           name="date"))
        baseline = rows["baseline_date"].dropna() if "baseline_date" in rows.columns else pd.Series([])
        base = pd.Timestamp(baseline.iloc[0]) if len(baseline) else None
        out["is_baseline"] = out.index == base if base is not None else False
        out.attrs.update({"chip_id": chip_id, "grid": g, "aoi_name": self.aoi_name, "baseline_date": base})
        return out

    def _chip_files(self, chip_id: str, grid: str) -> pd.DataFrame:
        """Every date step 1 cut the chip (from the chip meta, analysed or not): date, scene, NetCDF."""
        import pandas as pd

        from geofm import geoparquet
        from geofm.sentinel2 import scenes_of_grid

        lay = self.layout
        frames = []
        for scene_id in scenes_of_grid(lay.meta_scene_ids(), grid):
            meta = geoparquet.read(lay.meta(scene_id), list(_CHIP_FILE_COLUMNS))
            frames.append(meta[meta["chip_id"] == chip_id])
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if rows.empty:  # no meta (a copied consolidated output): its own rows
            rows = self._table(grid)
            rows = rows.loc[rows["chip_id"] == chip_id, list(_CHIP_FILE_COLUMNS)]
        rows = self._resolved(rows.copy())
        rows["date"] = pd.to_datetime(rows["date"])
        return rows.sort_values(["date", "origin_tile"], kind="stable").reset_index(drop=True)

    def datacube(self, chip_id: str, grid: str | None = None, bands: Sequence[str] | None = None,
                 analysed_only: bool = False) -> xr.Dataset:
        """A chip's datacube: every date step 1 cut it (only the analysed dates with ``analysed_only``),
        read from its NetCDF files and stacked on ``time`` (one float32 variable per band with NaN for
        no data, ``scl``, CF grid mapping; ``scene_id`` along ``time``). ``bands`` picks variables."""
        import xarray as xr

        from geofm import storage

        g = self._chip_grid(chip_id, grid)
        files = self._chip_files(chip_id, g)
        if analysed_only:
            files = files[files["date"].isin(set(self.series(chip_id, g).index))]
        cubes = []
        for url, scene_id in zip(files["s3_location_netcdf"], files["origin_tile"], strict=True):
            try:
                data = storage.read_bytes(url)
            except FileNotFoundError:
                raise NotFoundError(f"chip {chip_id!r} of {scene_id}: NetCDF file missing: {url}") from None
            with xr.open_dataset(_bytes_io(data), engine="h5netcdf", decode_coords="all") as ds:
                if bands is not None:
                    missing = [b for b in bands if b not in ds.data_vars]
                    if missing:
                        raise NotFoundError(f"{url}: no band(s) {missing} (has {sorted(ds.data_vars)})")
                    ds = ds[list(bands)]
                cubes.append(ds.load().expand_dims("time").assign_coords(scene_id=("time", [scene_id])))
        cube = xr.concat(cubes, dim="time", combine_attrs="drop_conflicts")
        cube.attrs.update({"chip_id": chip_id, "mgrs_grid": g, "aoi_name": self.aoi_name})
        return cube

    def change_intensity(self, grid: str | None = None) -> gpd.GeoDataFrame:
        """The change-intensity layer (one polygon per analysed chip: lowest and latest similarity after
        the baseline, the largest drop, ``change_intensity`` High/Medium/Low), most changed first."""
        import geopandas as gpd
        import pandas as pd

        from geofm import storage

        frames = []
        for g in [self._grid(grid)] if grid is not None or len(self.grids) <= 1 else self.grids:
            url = self.layout.change_intensity(g)
            if not storage.exists(url):
                raise NotFoundError(f"no change-intensity layer for AOI {self.aoi_name!r} grid {g!r} ({url})")

            def load(url: str = url) -> gpd.GeoDataFrame:
                return gpd.read_file(_bytes_io(storage.read_bytes(url)))

            frames.append(self._cached(("change", g), url, load))
        out = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
        out = out.sort_values(["min_sim", "chip_id"], na_position="last", kind="stable")
        return out.reset_index(drop=True)

    def search(
        self,
        chip_id: str | None = None,
        date: str | Date | None = None,
        *,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        grid: str | None = None,
        same_date: bool = False,
        **options: Any,
    ) -> gpd.GeoDataFrame:
        """The ``k`` chip-dates most like ``chip_id`` on ``date`` (default: its latest analysed date), or
        like ``vector``, best first, from the AOI's LanceDB table (:func:`geofm.vectordb.search`: cosine
        ``score``; ``options`` such as ``min_score``, ``date_range``, ``bbox``, ``exact`` pass through).
        ``same_date`` keeps hits of the query date only (the explorer's default). Hits carry the chip
        polygon as geometry and resolved paths (``s3_location_png_thumbnail``: the thumbnail's URL)."""
        import geopandas as gpd

        from geofm import storage, vectordb

        if vector is None and chip_id is None:
            raise ConfigError("search needs chip_id (and optionally date) or vector")
        grids = [self._grid(grid)] if grid is not None else None
        if chip_id is not None and vector is None:
            g = self._chip_grid(chip_id, grid)
            grids = [g]
            if date is None:
                date = self.series(chip_id, g).index.max().date()
        if same_date:
            if date is None:
                raise ConfigError("same_date needs a query date")
            options["date_range"] = (date, date)
        db = self.layout.lance_db
        if not storage.exists(db):
            raise NotFoundError(f"no vector DB for AOI {self.aoi_name!r} at {db}: run consolidate first")
        hits = vectordb.search(db, chip_id=chip_id, date=date, vector=vector, k=k,
                               grids=options.pop("grids", grids), **options)
        geometry = [vectordb.row_geometry(r) for r in hits.to_dict("records")]
        hits = self._resolved(hits.drop(columns=[c for c in ("geometry", "geometry_wkt") if c in hits]))
        return gpd.GeoDataFrame(hits, geometry=geometry, crs="EPSG:4326")

    # ---- the explorer ------------------------------------------------------------------------
    def explorer(self, base_url: str = "http://127.0.0.1:8000") -> ExplorerUrls:
        """URLs of the explorer (``geofm serve --out <root>``) at ``base_url`` for this AOI's grids and
        chips: the map and the JSON API."""
        return ExplorerUrls(self, base_url)


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class ExplorerUrls:
    """The explorer's URLs for one AOI, given where it is served (``geofm serve``): :meth:`map` for a
    browser, the others for its JSON API (routes of ``geofm.server.app``). Grids and chips are checked
    against the outputs (unknown ones raise :class:`~geofm.errors.NotFoundError`)."""

    def __init__(self, results: Results, base_url: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url {base_url!r}: expected http(s)://host[:port][/prefix]")
        self.results = results
        self.base_url = base_url.rstrip("/")

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return f"{self.base_url}{path}" + (f"?{urlencode(q)}" if q else "")

    def _grid_path(self, grid: str | None) -> str:
        g = self.results._grid(grid)
        return f"/api/aois/{quote(self.results.aoi_name)}/grids/{g}"

    def map(self, grid: str | None = None, chip_id: str | None = None, mode: str = "search") -> str:
        """The map opened on this AOI and grid, ``chip_id`` selected, in ``search`` or ``change`` mode."""
        if mode not in ("search", "change"):
            raise ConfigError(f"mode {mode!r}: use 'search' or 'change'")
        g = self.results._chip_grid(chip_id, grid) if chip_id else self.results._grid(grid)
        return self._url("/", {"aoi": self.results.aoi_name, "grid": g, "chip": chip_id,
                               "mode": "change" if mode == "change" else None})

    def aoi(self) -> str:
        """The AOI: geometry and grids."""
        return self._url(f"/api/aois/{quote(self.results.aoi_name)}")

    def grid(self, grid: str | None = None) -> str:
        """A grid's dates, bounds, chip count, series fields and config."""
        return self._url(self._grid_path(grid))

    def chip_grid(self, grid: str | None = None, extent: str = "aoi") -> str:
        """The chip grid GeoJSON, of the AOI (``aoi``) or the whole tile (``full``)."""
        if extent not in ("aoi", "full"):
            raise ConfigError(f"extent {extent!r}: use 'aoi' or 'full'")
        return self._url(f"{self._grid_path(grid)}/chip-grid", {"extent": extent})

    def change_intensity(self, grid: str | None = None) -> str:
        """The change-intensity GeoJSON."""
        return self._url(f"{self._grid_path(grid)}/change-intensity")

    def chip(self, chip_id: str, grid: str | None = None) -> str:
        """A chip's time series, per-patch change maps and change summary."""
        g = self.results._chip_grid(chip_id, grid)
        return self._url(f"{self._grid_path(g)}/chips/{chip_id}")

    def thumbnail(self, chip_id: str, date: str | Date, grid: str | None = None) -> str:
        """A chip's PNG thumbnail on a date."""
        g = self.results._chip_grid(chip_id, grid)
        return self._url(f"{self._grid_path(g)}/chips/{chip_id}/thumbnail", {"date": _iso(date)})

    def search(self, chip_id: str, date: str | Date | None = None, k: int = 5, grid: str | None = None,
               **query: Any) -> str:
        """Similarity search from a chip on a date (``min_score``, ``start``, ``end`` as in the API)."""
        g = self.results._chip_grid(chip_id, grid)
        q = {"chip_id": chip_id, "date": _iso(date) if date else None, "k": k,
             **{key: _iso(v) if isinstance(v, Date) else v for key, v in query.items()}}
        return self._url(f"{self._grid_path(g)}/search", q)

    def tiles(self, date: str | Date, grid: str | None = None) -> str:
        """The true-colour XYZ tile template of a date (``{z}/{x}/{y}`` left for the map library)."""
        return f"{self._url(self._grid_path(grid))}/tiles/{{z}}/{{x}}/{{y}}.png?date={_iso(date)}"


def _iso(value: str | Date) -> str:
    """``YYYY-MM-DD`` of a date, datetime, Timestamp or ISO string."""
    return value[:10] if isinstance(value, str) else value.isoformat()[:10]
