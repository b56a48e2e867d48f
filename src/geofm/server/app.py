"""The explorer's FastAPI app: a JSON API over one output root plus the built front end.

Routes (all under ``/api``; OpenAPI at ``/docs``):
  GET /aois                                          AOIs and their grids
  GET /aois/{aoi}                                    AOI geometry and grids
  GET /aois/{aoi}/grids/{grid}                       dates, bounds, chip count, series fields, config
  GET /aois/{aoi}/grids/{grid}/config                step-4 front-end config JSON
  GET /aois/{aoi}/grids/{grid}/chip-grid?extent=     chip grid GeoJSON (aoi | full)
  GET /aois/{aoi}/grids/{grid}/change-intensity      change-intensity GeoJSON
  GET /aois/{aoi}/grids/{grid}/chips/{chip}          time series, per-patch change maps, change summary
  GET /aois/{aoi}/grids/{grid}/chips/{chip}/thumbnail?date=   PNG
  GET /aois/{aoi}/grids/{grid}/search?chip_id=&date=&k=&min_score=&start=&end=&changed_since=&min_change=
  POST /aois/{aoi}/grids/{grid}/classify             few-shot search: ranked chips, score layer, heat maps
  GET /aois/{aoi}/alerts                             change alerts (GeoJSON)
  GET /aois/{aoi}/alerts/export?format=              change alerts as a file: geojson | gpkg | parquet
  GET /aois/{aoi}/grids/{grid}/change-raster.tif?date=   per-patch change scores of a date (COG)
  GET /aois/{aoi}/grids/{grid}/tiles/{z}/{x}/{y}.png?date=    true-colour tile
  GET /aois/{aoi}/grids/{grid}/chips/{chip}/indices/{index}.png?date=           index image of a chip
  GET /aois/{aoi}/grids/{grid}/indices/{index}/tiles/{z}/{x}/{y}.png?date=      index tile from the chips
  GET /indices                                       the spectral indices: bands, formula, range, ramp
  GET /indices/{index}/legend.png                    an index's colour ramp (the legend strip)

Hostile input and load: AOI names pass :func:`geofm.config.check_name` (422 otherwise), unknown things
are 404, every deliberate error is a :class:`~geofm.errors.GeofmError` mapped to its HTTP status in one
handler, with the server's roots removed from the message. Tiles below the grid's useful zoom are
answered at once (empty); the others, and the index images, go through a bounded :class:`RenderPool`
(503 when busy) and read only what :class:`SourcePolicy` allows (index images: chip files inside the
output root, see :mod:`geofm.server.index_maps`). :class:`ExplorerGuard` refuses foreign ``Host``
headers and sets the security headers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from geofm import fewshot, indices
from geofm.errors import BackendError, GeofmError, InputError, NotFoundError, TileError
from geofm.layout import Layout
from geofm.server import tiles
from geofm.server.catalog import Catalog
from geofm.server.index_maps import IndexMaps
from geofm.server.renders import DEFAULT_SLOTS, ClientGone, RenderPool
from geofm.server.search import classify_chips, similar_chips
from geofm.server.security import ExplorerGuard, allowed_hosts
from geofm.server.sources import SourcePolicy

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 100
MAX_ZOOM = 24
CHIP_ID = r"^\d+_\d+$"
GRID_ID = r"^\d{1,2}[C-X][A-Z]{2}$"
TILE_CACHE = "max-age=3600"
log = logging.getLogger(__name__)

Aoi = Annotated[str, PathParam(description="AOI name (a folder name of the output: no / or \\, not . or ..)")]
Grid = Annotated[str, PathParam(pattern=GRID_ID, description="MGRS grid, e.g. 20LPP")]
Chip = Annotated[str, PathParam(pattern=CHIP_ID, description="chip id <x_dim>_<y_dim>")]
IndexName = Annotated[str, PathParam(pattern=f"^({'|'.join(indices.NAMES)})$",
                                     description=f"spectral index: {', '.join(indices.NAMES)}")]
TileZ = Annotated[int, PathParam(ge=0, le=MAX_ZOOM)]
TileXY = Annotated[int, PathParam(ge=0)]
ChangedSince = Annotated[date | None, Query(description="only chips changed (Medium or more) on or after it")]
MinChange = Annotated[float | None, Query(description="only chips whose change score reached it after the "
                                                      "baseline")]
MAX_EXAMPLES = 50  # positives (and negatives) per few-shot request
EXAMPLE = r"^\d+_\d+@\d{4}-\d{2}-\d{2}$"


class ClassifyRequest(BaseModel):
    """A few-shot search: chips like the positives and not like the negatives, on one date."""

    positives: list[Annotated[str, Field(pattern=EXAMPLE)]] = Field(
        min_length=1, max_length=MAX_EXAMPLES, description="CHIP@YYYY-MM-DD, at least one")
    negatives: list[Annotated[str, Field(pattern=EXAMPLE)]] = Field(
        default=[], max_length=MAX_EXAMPLES, description="CHIP@YYYY-MM-DD")
    day: date | None = Field(default=None, alias="date",
                             description="the date scored (default: the latest positive's)")
    k: int = Field(default=10, ge=1, le=MAX_K, description="hits returned (the layer has every scored chip)")
    method: Literal[fewshot.METHODS] = fewshot.DEFAULT_METHOD  # type: ignore[valid-type]
    min_score: float | None = Field(default=None, description="hits scoring at least this")
    changed_since: date | None = Field(default=None, description="only chips changed on or after it")
    min_change: float | None = Field(default=None, description="only chips whose change score reached it")
    heatmaps: bool = Field(default=False, description="where inside each of the first hits the match sits")


@dataclass(frozen=True)
class ExplorerOptions:
    """What the explorer may read beyond its output root, who may reach it and how much it renders."""

    archives: tuple[str, ...] = ()  # scene archive roots whose COGs tiles may read (besides the output root)
    allow_remote_assets: bool = False  # read COGs from the public hosts that the scene items name
    bind_host: str = "127.0.0.1"  # the address served: allowed in Host headers
    allow_hosts: tuple[str, ...] = ()  # more names allowed in Host headers
    render_slots: int = DEFAULT_SLOTS  # tile renders at once
    queue_timeout_s: float = 10.0  # longest wait for a render slot
    render_timeout_s: float = 30.0  # longest wait for one render


def http_status(exc: GeofmError) -> int:
    """404 not found, 422 bad input, 503 busy or a backend (store, tile source) failing, else 500."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, BackendError):
        return 503
    return 500


class _Redactor:
    """Removes the server's roots (as given and resolved) from messages sent to clients."""

    def __init__(self, roots: Sequence[str]) -> None:
        forms = {str(r).rstrip("/") for r in roots if r} | {
            str(Path(r).resolve()) for r in roots if r and "://" not in r}
        self.forms = sorted((f for f in forms if len(f) > 1), key=len, reverse=True)

    def __call__(self, message: str) -> str:
        for form in self.forms:
            message = message.replace(form, "<root>")
        return message


def create_app(root: str, options: ExplorerOptions | None = None) -> FastAPI:
    """The explorer app over the output root ``root`` (local folder or ``s3://bucket/prefix``)."""
    opts = options or ExplorerOptions()
    catalog = Catalog(root)
    policy = SourcePolicy([root, *opts.archives], allow_remote=opts.allow_remote_assets)
    pool = RenderPool(opts.render_slots, opts.queue_timeout_s, opts.render_timeout_s)
    index_maps = IndexMaps(catalog)
    redact = _Redactor([root, *opts.archives])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(title="geofm explorer", version="0.1.0", lifespan=lifespan,
                  description="Similarity search and change detection over a geofm pipeline output.")
    app.state.catalog, app.state.renders, app.state.sources = catalog, pool, policy
    app.add_middleware(ExplorerGuard, hosts=allowed_hosts(opts.bind_host, opts.allow_hosts))

    @app.exception_handler(GeofmError)
    async def geofm_error(_: Request, exc: GeofmError) -> JSONResponse:
        status = http_status(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(status_code=status, content={"detail": redact(str(exc))}, headers=headers)

    @app.get("/api/aois", summary="AOIs with consolidated output, and their MGRS grids")
    def list_aois() -> list[dict[str, Any]]:
        return [{"aoi_name": a, "grids": grids} for a, grids in catalog.aois()]

    @app.get("/api/aois/{aoi}", summary="An AOI: its geometry and grids")
    def get_aoi(aoi: Aoi) -> dict[str, Any]:
        return {"aoi_name": aoi, "grids": catalog.grids(aoi), "aoi_geojson": catalog.aoi_geojson(aoi)}

    @app.get("/api/aois/{aoi}/grids/{grid}",
             summary="Dates (analysed, imagery, chips), bounds, chip count, series fields, config, and the "
                     "min zooms of the imagery and index tiles")
    def get_grid(aoi: Aoi, grid: Grid) -> dict[str, Any]:
        summary = catalog.summary(aoi, grid)
        summary["imagery_minzoom"] = tiles.useful_minzoom(summary["bounds"])
        summary["index_minzoom"] = index_maps.minzoom(aoi, grid)
        return summary

    @app.get("/api/aois/{aoi}/grids/{grid}/config", summary="The step-4 front-end config JSON")
    def get_config(aoi: Aoi, grid: Grid) -> dict[str, Any]:
        cfg = catalog.config(aoi, grid)
        if cfg is None:
            raise NotFoundError(f"no front-end config for AOI {aoi!r} grid {grid!r}")
        return cfg

    @app.get("/api/aois/{aoi}/grids/{grid}/chip-grid", summary="Chip grid GeoJSON")
    def chip_grid(aoi: Aoi, grid: Grid, extent: Literal["aoi", "full"] = "aoi") -> dict[str, Any]:
        return catalog.geojson(aoi, grid, extent)

    @app.get("/api/aois/{aoi}/grids/{grid}/change-intensity", summary="Change-intensity GeoJSON")
    def change_intensity(aoi: Aoi, grid: Grid) -> dict[str, Any]:
        return catalog.geojson(aoi, grid, "change")

    @app.get("/api/aois/{aoi}/grids/{grid}/chips/{chip_id}", summary="A chip's time series")
    def chip_series(aoi: Aoi, grid: Grid, chip_id: Chip) -> dict[str, Any]:
        return catalog.series(aoi, grid, chip_id)

    @app.get("/api/aois/{aoi}/grids/{grid}/chips/{chip_id}/thumbnail", summary="PNG thumbnail, chip and date",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumbnail(aoi: Aoi, grid: Grid, chip_id: Chip, day: Annotated[date, Query(alias="date")]) -> Response:
        return Response(catalog.thumbnail(aoi, grid, chip_id, day), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/aois/{aoi}/grids/{grid}/search", summary="Chips most like a chip on a date (LanceDB)")
    def search(
        aoi: Aoi, grid: Grid,
        chip_id: Annotated[str, Query(pattern=CHIP_ID)],
        day: Annotated[date | None, Query(alias="date", description="query date; default: latest")] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
        min_score: Annotated[float, Query(ge=-1.0, le=1.0)] = 0.0,
        start: Annotated[date | None, Query(description="hits from this date (default: query date)")] = None,
        end: Annotated[date | None, Query(description="hits up to this date (default: query date)")] = None,
        changed_since: ChangedSince = None,
        min_change: MinChange = None,
    ) -> dict[str, Any]:
        if start and end and start > end:
            raise InputError(f"start {start} is after end {end}")
        series = catalog.series(aoi, grid, chip_id)
        day = day or date.fromisoformat(series["dates"][-1])
        hits = similar_chips(catalog.layout(aoi).lance_db, chip_id, day, k=k, min_score=min_score,
                             start=start, end=end, grid=grid, changed_since=changed_since,
                             min_change=min_change)
        _thumbnail_urls(aoi, grid, hits)
        return {"chip_id": chip_id, "date": day.isoformat(), "k": k, "min_score": min_score,
                "start": start, "end": end, "changed_since": changed_since, "min_change": min_change,
                "results": hits}

    @app.post("/api/aois/{aoi}/grids/{grid}/classify",
              summary="Few-shot search: chips like the positives, not like the negatives, on one date; "
                      "ranked hits, a GeoJSON score layer of every scored chip, patch heat maps")
    async def classify(request: Request, aoi: Aoi, grid: Grid,
                       body: Annotated[ClassifyRequest, Body()]) -> dict[str, Any]:
        lay = await run_in_threadpool(catalog.check, aoi, grid)
        try:  # a classifier fit and patch reads: bounded like a render (503 when busy)
            out = await pool.run(lambda _: _classify(lay, grid, body), request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)  # type: ignore[return-value]
        _thumbnail_urls(aoi, grid, out["results"])
        if out["heatmap_note"]:
            out["heatmap_note"] = redact(out["heatmap_note"])
        return out

    @app.get("/api/aois/{aoi}/alerts", summary="Change alerts of an AOI: changed patches dissolved into "
                                                "polygons with first-detected date and magnitude (GeoJSON)")
    async def get_alerts(request: Request, aoi: Aoi) -> Response:
        try:
            frame = await _alerts(request, aoi)
        except ClientGone:
            return Response(status_code=499)
        return Response(frame.to_json(drop_id=True), media_type="application/geo+json")

    @app.get("/api/aois/{aoi}/alerts/export", summary="Change alerts as a file to download",
             response_class=Response)
    async def export_alerts(
        request: Request, aoi: Aoi,
        fmt: Annotated[Literal[Layout.ALERT_FORMATS], Query(alias="format")] = "geojson",  # type: ignore[valid-type]
    ) -> Response:
        try:
            frame = await _alerts(request, aoi)
        except ClientGone:
            return Response(status_code=499)
        data = await run_in_threadpool(_alert_file, frame, fmt)
        return Response(data, media_type=ALERT_MEDIA_TYPES[fmt], headers={
            "Content-Disposition": f'attachment; filename="{aoi}_change_alerts.{fmt}"'})

    @app.get("/api/aois/{aoi}/grids/{grid}/change-raster.tif",
             summary="A grid's per-patch change scores on an analysed date as a float32 COG, to download",
             response_class=Response, responses={200: {"content": {"image/tiff": {}}}})
    async def change_raster(request: Request, aoi: Aoi, grid: Grid,
                            day: Annotated[date, Query(alias="date")]) -> Response:
        await run_in_threadpool(catalog.check, aoi, grid)
        try:
            data = await pool.run(lambda _: _change_raster(catalog.root, aoi, grid, day),
                                  request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        return Response(data, media_type="image/tiff; application=geotiff; profile=cloud-optimized", headers={
            "Content-Disposition": f'attachment; filename="{aoi}_{grid}_change_raster_{day}.tif"'})

    async def _alerts(request: Request, aoi: Aoi) -> Any:
        await run_in_threadpool(catalog.grids, aoi)  # unknown AOI: 404 at once
        return await pool.run(lambda _: catalog.alerts(aoi), request.is_disconnected)

    @app.get("/api/aois/{aoi}/grids/{grid}/tiles/{z}/{x}/{y}.png", summary="True-colour tile of a scene date",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def tile(
        request: Request, aoi: Aoi, grid: Grid,
        z: TileZ, x: TileXY, y: TileXY, day: Annotated[date, Query(alias="date")],
    ) -> Response:
        _check_tile(z, x, y)
        items, minzoom = await run_in_threadpool(
            lambda: (catalog.scene_items(aoi, grid, day), tiles.useful_minzoom(catalog.bounds(aoi, grid))))
        if z < minzoom:  # the data would be a few pixels: nothing worth reading
            return _png(tiles.empty_png(), "below-minzoom")
        try:
            png, source, note = await pool.run(
                lambda cancel: _render_tile(catalog, policy, items, aoi, grid, day, x, y, z, cancel),
                request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        return _png(png, source, redact(note))

    @app.get("/api/indices", summary="The spectral indices: bands, formula, display range and colour ramp")
    def list_indices() -> list[dict[str, Any]]:
        return [indices.describe(i) for i in indices.INDICES]

    @app.get("/api/indices/{index}/legend.png", summary="An index's colour ramp, vmin (left) to vmax",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def index_legend(index: IndexName) -> Response:
        return Response(indices.legend_png(indices.get(index)), media_type="image/png",
                        headers={"Cache-Control": TILE_CACHE})

    @app.get("/api/aois/{aoi}/grids/{grid}/chips/{chip_id}/indices/{index}.png",
             summary="A spectral index of a chip at a date, from its NetCDF, with the index's fixed ramp",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def chip_index(
        request: Request, aoi: Aoi, grid: Grid, chip_id: Chip, index: IndexName,
        day: Annotated[date, Query(alias="date")],
    ) -> Response:
        files = await run_in_threadpool(catalog.chip_files, aoi, grid, chip_id, day)
        try:
            png = await pool.run(lambda _: index_maps.chip_png(aoi, grid, files, day, indices.get(index)),
                                 request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        return Response(png, media_type="image/png", headers={"Cache-Control": TILE_CACHE})

    @app.get("/api/aois/{aoi}/grids/{grid}/indices/{index}/tiles/{z}/{x}/{y}.png",
             summary="A spectral index map tile of a date, from the chips (empty below index_minzoom)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def index_tile(
        request: Request, aoi: Aoi, grid: Grid, index: IndexName, z: TileZ, x: TileXY, y: TileXY,
        day: Annotated[date, Query(alias="date")],
    ) -> Response:
        _check_tile(z, x, y)
        minzoom = await run_in_threadpool(index_maps.minzoom, aoi, grid)
        if z < minzoom:  # a chip would be a few pixels: nothing worth reading
            return _png(tiles.empty_png(), "below-minzoom")
        try:
            got = await pool.run(lambda cancel: index_maps.tile(aoi, grid, day, indices.get(index), x, y, z,
                                                                cancel), request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        return _png(got.png, got.source, redact(got.note))

    @app.get("/api/{rest:path}", include_in_schema=False)
    def no_such_route(rest: str) -> None:  # under /api nothing falls through to the front end's files
        raise NotFoundError("no such API route (see /docs)")

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    else:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def no_ui() -> str:
            return ("<h1>geofm explorer</h1><p>The front end is not built: run <code>make ui</code>. "
                    "The API is at <a href='/docs'>/docs</a>.</p>")

    return app


ALERT_MEDIA_TYPES = {"geojson": "application/geo+json", "gpkg": "application/geopackage+sqlite3",
                     "parquet": "application/vnd.apache.parquet"}


def _classify(lay: Layout, grid: str, body: ClassifyRequest) -> dict[str, Any]:
    return classify_chips(lay, grid, body.positives, body.negatives, day=body.day, k=body.k,
                          method=body.method, min_score=body.min_score, changed_since=body.changed_since,
                          min_change=body.min_change, heatmaps=body.heatmaps)


def _thumbnail_urls(aoi: str, grid: str, hits: list[dict[str, Any]]) -> None:
    base = f"/api/aois/{aoi}/grids/{grid}/chips"
    for h in hits:
        h["thumbnail_url"] = f"{base}/{h['chip_id']}/thumbnail?date={h['date']}"


def _file_bytes(name: str, write: Callable[[str], object]) -> bytes:
    """What ``write(path)`` writes to a temporary file ``name``, as bytes (for writers that need a path)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="geofm-export-") as tmp:
        path = str(Path(tmp) / name)
        write(path)
        return Path(path).read_bytes()


def _alert_file(frame: Any, fmt: str) -> bytes:
    """The alerts in a file format (:func:`geofm.alerts.write_alerts`), as bytes."""
    from geofm import alerts

    return _file_bytes(f"change_alerts.{fmt}", lambda path: alerts.write_alerts(frame, path, fmt))


def _change_raster(root: str, aoi: str, grid: str, day: date) -> bytes:
    """The change raster of one grid and date (:func:`geofm.alerts.export_change_raster`, with the
    thresholds the AOI's step 4 recorded), as bytes."""
    from geofm import alerts

    cfg = alerts.recorded_config(root, aoi)
    return _file_bytes("change_raster.tif",
                       lambda path: alerts.export_change_raster(cfg, day, [grid], dest=path))


def _check_tile(z: int, x: int, y: int) -> None:
    if x >= 2**z or y >= 2**z:
        raise InputError(f"tile {z}/{x}/{y} does not exist")


def _png(png: bytes, source: str, note: str = "") -> Response:
    headers = {"X-Tile-Source": source, "Cache-Control": TILE_CACHE}
    if note:
        headers["X-Tile-Fallback"] = note.encode("ascii", "replace").decode()[:200]
    return Response(png, media_type="image/png", headers=headers)


def _render_tile(
    catalog: Catalog, policy: SourcePolicy, items: list[tuple[str, dict[str, Any]]], aoi: str, grid: str,
    day: date, x: int, y: int, z: int, cancel: threading.Event,
) -> tuple[bytes, str, str]:
    """(PNG, source, why not from the COGs): from the scene COGs; from the thumbnails when no COG may
    or can be read; transparent outside the data."""
    note = ""
    for item_url, item in items:
        try:
            png = tiles.cog_tile(policy, item_url, item, x, y, z, cancel)
        except tiles.TileCancelled:
            raise
        except TileError as exc:
            note = str(exc)
            log.info("tile %s/%s/%s of AOI %r on %s from thumbnails: %s", z, x, y, aoi, day, exc)
            continue
        if png is not None:
            return png, "cog", ""
    if note:
        png = tiles.thumbnail_tile(catalog.thumbnails_on(aoi, grid, day), x, y, z, cancel)
        return png, "thumbnails", note
    return tiles.empty_png(), "empty", ""


def serve(
    out: str, host: str = "127.0.0.1", port: int = 8000, options: ExplorerOptions | None = None
) -> None:
    """Run the explorer over the output root ``out`` on ``host:port`` until interrupted (the caller tells
    the user the address); ``options`` without ``bind_host`` get ``host``."""
    import dataclasses

    import uvicorn

    opts = dataclasses.replace(options or ExplorerOptions(), bind_host=host)
    uvicorn.run(create_app(out, opts), host=host, port=port, log_level="warning")
