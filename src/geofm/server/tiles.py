"""True-colour web-mercator map tiles of a scene date, each at a bounded cost.

From the scene COGs when they can be read: the item's 8-bit ``visual`` asset (TCI) shown as it is, or
its red/green/blue assets (harmonised DN) with the one stretch of the chip thumbnails
(:func:`geofm.thumbnails.rgb_png`). Which files and URLs may be opened is decided by
:class:`~geofm.server.sources.SourcePolicy`. When no COG can be read (refused or offline hrefs, moved
files, a source too coarse for the tile) the tile is drawn from the chip thumbnails instead.

Why low zooms used to take a minute: rio-tiler's ``Reader.tile`` warps into a VRT over the tile's bounds
at the *dataset's* resolution and reads it decimated to 256 px. With the source's nodata set (the
WarpedVRT gets ``src_nodata``), GDAL serves that read from the VRT's implicit overviews, which exist only
at the source's own overview factors, so it warps (tile size / coarsest overview pixel)^2 pixels, nearly
all outside the data: GDAL logs "Selecting overview 21740 x 21740" for a zoom-5 tile of a 1024 px COG
with overviews 2 and 4. Measured (``benchmarks/bench_explorer.py``): 60 s at zoom 2, 31 s at zoom 4,
while the same file without nodata takes 0.04 s. Here each band is warped straight into the 256 x 256
tile from the overview level (GDAL ``OVERVIEW_LEVEL``) whose pixel is the coarsest not coarser than the
tile's, so a tile costs 65k output pixels plus the source window at that level, capped at
``MAX_SOURCE_PIXELS``: 0.05 s at zoom 2, on par with rio-tiler at the zooms where the data is seen.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Any

import morecantile
import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from geofm import storage
from geofm.errors import TileError
from geofm.sentinel2 import RGB_BANDS, VISUAL_NAME, boa_offset_to_subtract
from geofm.server.sources import SourcePolicy
from geofm.thumbnails import rgb_png

TILE_SIZE = 256
TMS = morecantile.tms.get("WebMercatorQuad")
WEB_MERCATOR = "EPSG:3857"
# Most source pixels (per band, at the chosen overview level) one tile may read: beyond it the tile is
# refused as too coarse for the source (a COG without overviews seen from far away).
MAX_SOURCE_PIXELS = 2048 * 2048
# The imagery is worth drawing from the zoom at which the data spans this many tile pixels.
MIN_DATA_PIXELS = 16
# GDAL settings for every tile read: no sibling-file probing (sidecars could point anywhere) and no
# .aux.xml written next to the data; remote reads give up after a bounded time.
TILE_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_PAM_ENABLED": "NO"}
REMOTE_TIMEOUT_S = 10


class TileCancelled(TileError):
    """The request that wanted this tile has gone; the render stopped early."""


def empty_png(size: int = TILE_SIZE) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def useful_minzoom(bounds: tuple[float, ...] | list[float], pixels: int = MIN_DATA_PIXELS) -> int:
    """Lowest zoom at which data with these lon/lat bounds spans ``pixels`` tile pixels."""
    left, _ = TMS.xy(bounds[0], (bounds[1] + bounds[3]) / 2)
    right, _ = TMS.xy(bounds[2], (bounds[1] + bounds[3]) / 2)
    world = 2 * math.pi * 6378137.0
    width = max(right - left, 1.0)
    return int(min(22, max(0, math.ceil(math.log2(pixels * world / (TILE_SIZE * width))))))


def check_cancel(cancelled: threading.Event | None) -> None:
    """Raise :class:`TileCancelled` once the request's cancel event is set (renders call it between reads)."""
    if cancelled is not None and cancelled.is_set():
        raise TileCancelled("tile render cancelled: the client has gone")


def _gdal_env(source: str) -> dict[str, Any]:
    env: dict[str, Any] = {**storage.gdal_env(source), **TILE_GDAL_OPTIONS}
    if storage.is_remote(source):
        env.setdefault("GDAL_HTTP_TIMEOUT", REMOTE_TIMEOUT_S)
    return env


def read_tile(
    source: str, indexes: tuple[int, ...], bounds: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bands ``indexes`` of a GeoTIFF warped into the web-mercator tile ``bounds`` (left, bottom, right,
    top), with a validity mask; None when the source does not meet the tile. See the module doc."""
    with rasterio.Env(**_gdal_env(source)):
        with rasterio.open(source, driver="GTiff") as src:
            if src.crs is None:
                raise TileError("source has no CRS")
            sb = transform_bounds(src.crs, WEB_MERCATOR, *src.bounds, densify_pts=21)
            iw = min(sb[2], bounds[2]) - max(sb[0], bounds[0])
            ih = min(sb[3], bounds[3]) - max(sb[1], bounds[1])
            if iw <= 0 or ih <= 0:
                return None
            px_w, px_h = src.width / (sb[2] - sb[0]), src.height / (sb[3] - sb[1])  # source px per metre
            need = min(px_w, px_h) * (bounds[2] - bounds[0]) / TILE_SIZE  # source px per tile px
            level, factor = None, 1
            for i, f in enumerate(src.overviews(indexes[0])):
                if f <= need:
                    level, factor = i, f
            if (iw * px_w / factor) * (ih * px_h / factor) > MAX_SOURCE_PIXELS:
                raise TileError(f"source too coarse for zoom: {src.width} x {src.height} px, "
                                f"overviews {src.overviews(indexes[0]) or 'none'}")
            nodata = src.nodata
        level_opt = {} if level is None else {"overview_level": level}
        nodata_opt = {"add_alpha": True} if nodata is None else {"src_nodata": nodata, "nodata": nodata}
        warp = {"crs": WEB_MERCATOR, "transform": from_bounds(*bounds, TILE_SIZE, TILE_SIZE),
                "width": TILE_SIZE, "height": TILE_SIZE, "resampling": Resampling.nearest, **nodata_opt}
        with rasterio.open(source, driver="GTiff", **level_opt) as src, WarpedVRT(src, **warp) as vrt:
            data = vrt.read(indexes)
            valid = np.all(vrt.read_masks(indexes) > 0, axis=0)
    return data, valid


def _href(asset: Any) -> str:
    return str(asset.get("href", "")) if isinstance(asset, dict) else ""


def cog_tile(
    policy: SourcePolicy, item_url: str, item: dict[str, Any], x: int, y: int, z: int,
    cancelled: threading.Event | None = None,
) -> bytes | None:
    """PNG tile of one scene, or None when the tile lies outside the scene.

    Raises :class:`~geofm.errors.TileError` when the scene's COGs cannot or may not be read."""
    assets = item.get("assets") or {}
    bounds = TMS.xy_bounds(morecantile.Tile(x, y, z))
    try:
        if VISUAL_NAME in assets:
            got = read_tile(policy.resolve(_href(assets[VISUAL_NAME]), item_url), (1, 2, 3), bounds)
            if got is None:
                return None
            data, valid = got
            rgba = np.concatenate([data.astype(np.uint8), (valid * 255).astype(np.uint8)[None]])
            return _png(rgba)
        if not all(b in assets for b in RGB_BANDS):
            raise TileError(f"item {item.get('id')!r} has neither a visual asset nor red/green/blue")
        sources = [policy.resolve(_href(assets[b]), item_url) for b in RGB_BANDS]
        bands = []
        for source in sources:
            check_cancel(cancelled)
            got = read_tile(source, (1,), bounds)
            if got is None:
                return None
            bands.append(got)
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise TileError(f"scene {item.get('id')!r}: COGs unreadable ({type(exc).__name__})") from exc
    offset = boa_offset_to_subtract(item.get("properties", {}))
    valid = np.all([v & (d[0] > 0) for d, v in bands], axis=0)
    dn = [np.where(valid, d[0].astype(np.float64) - offset, np.nan) for d, _ in bands]
    return rgb_png(*dn)


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_tile(
    chips: list[tuple[tuple[float, ...], str]], x: int, y: int, z: int,
    cancelled: threading.Event | None = None,
) -> bytes:
    """A tile drawn from chip thumbnails placed on their lon/lat bounds (the offline fallback)."""
    tile = Image.new("RGBA", (TILE_SIZE, TILE_SIZE), (0, 0, 0, 0))
    tb = TMS.xy_bounds(morecantile.Tile(x, y, z))
    sx, sy = TILE_SIZE / (tb.right - tb.left), TILE_SIZE / (tb.top - tb.bottom)
    for (minlon, minlat, maxlon, maxlat), url in chips:
        left, bottom = TMS.xy(minlon, minlat)
        right, top = TMS.xy(maxlon, maxlat)
        if right < tb.left or left > tb.right or top < tb.bottom or bottom > tb.top:
            continue
        px0, py0 = round((left - tb.left) * sx), round((tb.top - top) * sy)
        px1, py1 = round((right - tb.left) * sx), round((tb.top - bottom) * sy)
        if px1 - px0 < 1 or py1 - py0 < 1 or max(px1 - px0, py1 - py0) > 16 * TILE_SIZE:
            continue
        check_cancel(cancelled)
        try:
            thumb = Image.open(io.BytesIO(storage.read_bytes(url))).convert("RGBA")
        except (OSError, FileNotFoundError):
            continue
        _paste_clipped(tile, thumb.resize((px1 - px0, py1 - py0), Image.NEAREST), px0, py0)
    buf = io.BytesIO()
    tile.save(buf, format="PNG")
    return buf.getvalue()


def _paste_clipped(tile: Image.Image, img: Image.Image, px: int, py: int) -> None:
    """Paste ``img`` at (px, py) on ``tile``, clipping what falls outside."""
    cx0, cy0 = max(0, -px), max(0, -py)
    cx1, cy1 = min(img.width, TILE_SIZE - px), min(img.height, TILE_SIZE - py)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    tile.alpha_composite(img.crop((cx0, cy0, cx1, cy1)), (px + cx0, py + cy0))
