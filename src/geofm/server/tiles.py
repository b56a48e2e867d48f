"""True-colour web-mercator map tiles of a scene date.

From the scene COGs with rio-tiler when they can be read: the item's ``visual`` asset (8-bit TCI)
or its red/green/blue assets (harmonised DN stretched 0..3000). When no COG can be read (offline
hrefs, moved files) the tile is drawn from the chip thumbnails instead.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urljoin

import morecantile
import numpy as np
import rasterio
from PIL import Image
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from geofm import storage
from geofm.sentinel2 import RGB_BANDS, VISUAL_NAME, boa_offset_to_subtract

TILE_SIZE = 256
DN_STRETCH = (0.0, 3000.0)  # harmonised DN mapped to 0..255: reflectance 0..0.3
TMS = morecantile.tms.get("WebMercatorQuad")


class TileUnavailable(RuntimeError):
    """No COG of the scene could be read (the caller falls back to thumbnails)."""


def empty_png(size: int = TILE_SIZE) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _href(item_url: str, asset: dict[str, Any]) -> str:
    """Absolute href of an asset; relative hrefs are resolved against the item JSON's URL."""
    href = str(asset["href"])
    if "://" in href or href.startswith("/"):
        return href.removeprefix("file://")
    return urljoin(item_url if "://" in item_url else "file://" + item_url, href).removeprefix("file://")


def _read_tile(href: str, x: int, y: int, z: int, indexes: int | tuple[int, ...] | None) -> ImageData:
    with rasterio.Env(**storage.gdal_env(href)), Reader(href) as src:
        return src.tile(x, y, z, tilesize=TILE_SIZE, indexes=indexes)


def cog_tile(item_url: str, item: dict[str, Any], x: int, y: int, z: int) -> bytes | None:
    """PNG tile of one scene, or None when the tile lies outside the scene.

    Raises :class:`TileUnavailable` when the scene's COGs cannot be read."""
    assets = item.get("assets", {})
    try:
        if VISUAL_NAME in assets:
            img = _read_tile(_href(item_url, assets[VISUAL_NAME]), x, y, z, (1, 2, 3))
            return img.render(img_format="PNG")
        if not all(b in assets for b in RGB_BANDS):
            raise TileUnavailable(f"item {item.get('id')!r} has neither a visual asset nor red/green/blue")
        bands = [_read_tile(_href(item_url, assets[b]), x, y, z, 1) for b in RGB_BANDS]
    except TileOutsideBounds:
        return None
    except (rasterio.errors.RasterioError, OSError, KeyError) as exc:
        raise TileUnavailable(f"scene {item.get('id')!r}: COGs unreadable ({exc})") from exc
    data = np.concatenate([b.array.data[:1] for b in bands]).astype(np.float32)
    valid = np.all([~np.ma.getmaskarray(b.array)[0] for b in bands], axis=0) & np.all(data > 0, axis=0)
    data -= boa_offset_to_subtract(item.get("properties", {}))
    lo, hi = DN_STRETCH
    rgb = np.clip((data - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    rgba = np.concatenate([rgb, (valid * 255).astype(np.uint8)[None]], axis=0)
    return _png(rgba)


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_tile(chips: list[tuple[tuple[float, ...], str]], x: int, y: int, z: int) -> bytes:
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
