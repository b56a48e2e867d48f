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
  GET /aois/{aoi}/grids/{grid}/search?chip_id=&date=&k=&min_score=&start=&end=
  GET /aois/{aoi}/grids/{grid}/tiles/{z}/{x}/{y}.png?date=    true-colour tile
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from geofm import storage
from geofm.server import tiles
from geofm.server.catalog import Catalog, NotFound
from geofm.server.search import SearchError, similar_chips

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 100
CHIP_ID = r"^\d+_\d+$"
GRID_ID = r"^\d{1,2}[C-X][A-Z]{2}$"
NAME = r"^[A-Za-z0-9_.\-]+$"

Aoi = Annotated[str, PathParam(pattern=NAME, description="AOI name")]
Grid = Annotated[str, PathParam(pattern=GRID_ID, description="MGRS grid, e.g. 20LPP")]
Chip = Annotated[str, PathParam(pattern=CHIP_ID, description="chip id <x_dim>_<y_dim>")]


def create_app(root: str) -> FastAPI:
    """The explorer app over the output root ``root`` (local folder or ``s3://bucket/prefix``)."""
    catalog = Catalog(root)
    app = FastAPI(title="geofm explorer", version="0.1.0",
                  description=f"Similarity search and change detection over `{root}`.")
    app.state.catalog = catalog

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(SearchError)
    async def search_error(_: Request, exc: SearchError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.get("/api/aois", summary="AOIs with consolidated output, and their MGRS grids")
    def list_aois() -> list[dict[str, Any]]:
        return [{"aoi_name": a, "grids": catalog.grids(a)} for a in catalog.aoi_names()]

    @app.get("/api/aois/{aoi}", summary="An AOI: its geometry and grids")
    def get_aoi(aoi: Aoi) -> dict[str, Any]:
        return {"aoi_name": aoi, "grids": catalog.grids(aoi), "aoi_geojson": catalog.aoi_geojson(aoi)}

    @app.get("/api/aois/{aoi}/grids/{grid}", summary="Dates, bounds, chip count, series fields and config")
    def get_grid(aoi: Aoi, grid: Grid) -> dict[str, Any]:
        return catalog.summary(aoi, grid)

    @app.get("/api/aois/{aoi}/grids/{grid}/config", summary="The step-4 front-end config JSON")
    def get_config(aoi: Aoi, grid: Grid) -> dict[str, Any]:
        cfg = catalog.config(aoi, grid)
        if cfg is None:
            raise NotFound(f"no front-end config for AOI {aoi!r} grid {grid!r}")
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
        url = catalog.thumbnail_url(aoi, grid, chip_id, day)
        return Response(storage.read_bytes(url), media_type="image/png",
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
    ) -> dict[str, Any]:
        series = catalog.series(aoi, grid, chip_id)
        day = day or date.fromisoformat(series["dates"][-1])
        if start and end and start > end:
            raise HTTPException(422, f"start {start} is after end {end}")
        hits = similar_chips(catalog.layout(aoi).lance_db, chip_id, day, k=k, min_score=min_score,
                             start=start, end=end, grid=grid)
        base = f"/api/aois/{aoi}/grids/{grid}/chips"
        for h in hits:
            h["thumbnail_url"] = f"{base}/{h['chip_id']}/thumbnail?date={h['date']}"
        return {"chip_id": chip_id, "date": day.isoformat(), "k": k, "min_score": min_score,
                "start": start, "end": end, "results": hits}

    @app.get("/api/aois/{aoi}/grids/{grid}/tiles/{z}/{x}/{y}.png", summary="True-colour tile of a scene date",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def tile(
        aoi: Aoi, grid: Grid,
        z: Annotated[int, PathParam(ge=0, le=24)], x: Annotated[int, PathParam(ge=0)],
        y: Annotated[int, PathParam(ge=0)], day: Annotated[date, Query(alias="date")],
    ) -> Response:
        if x >= 2**z or y >= 2**z:
            raise HTTPException(422, f"tile {z}/{x}/{y} does not exist")
        png, source = await run_in_threadpool(_render_tile, catalog, aoi, grid, day, x, y, z)
        return Response(png, media_type="image/png", headers={"X-Tile-Source": source,
                                                                 "Cache-Control": "max-age=3600"})

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    else:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def no_ui() -> str:
            return ("<h1>geofm explorer</h1><p>The front end is not built: run <code>make ui</code>. "
                    "The API is at <a href='/docs'>/docs</a>.</p>")

    return app


def _render_tile(
    catalog: Catalog, aoi: str, grid: str, day: date, x: int, y: int, z: int
) -> tuple[bytes, str]:
    """Tile from the scene COGs; thumbnails when no COG is readable; transparent outside the data."""
    items = catalog.scene_items(aoi, grid, day)
    unreadable = False
    for item_url, item in items:
        try:
            png = tiles.cog_tile(item_url, item, x, y, z)
        except tiles.TileUnavailable:
            unreadable = True
            continue
        if png is not None:
            return png, "cog"
    if unreadable:
        return tiles.thumbnail_tile(catalog.thumbnails_on(aoi, grid, day), x, y, z), "thumbnails"
    return tiles.empty_png(), "empty"


def serve(out: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the explorer over the output root ``out`` until interrupted; prints the address."""
    import uvicorn

    app = create_app(out)
    print(f"geofm explorer on http://{host}:{port}/ (API docs: http://{host}:{port}/docs) for {out}",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
