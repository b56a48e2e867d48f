"""The explorer's tile renderer (geofm.server.tiles) on real COGs: red/green/blue tiles use the chip
thumbnails' stretch, TCI tiles match rio-tiler's at high zoom, every zoom down to 0 renders from an
overview level (the nodata=0 TCI used to take about a minute at zoom 0), and a source without overviews
is refused when a tile would need too many of its pixels."""

from __future__ import annotations

import io
import json

import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rio_tiler.io import Reader

from geofm.errors import TileError
from geofm.layout import Layout
from geofm.server import tiles
from geofm.server.sources import SourcePolicy
from geofm.thumbnails import to_uint8

TMS = morecantile.tms.get("WebMercatorQuad")


def _img(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def _pixel_of(tile: morecantile.Tile, lon: float, lat: float) -> tuple[int, int]:
    b = TMS.xy_bounds(tile)
    x, y = TMS.xy(lon, lat)
    return int((b.top - y) / (b.top - b.bottom) * 256), int((x - b.left) / (b.right - b.left) * 256)


def _item(root, aoi: str, scene_id: str) -> tuple[str, dict]:
    url = Layout(str(root), aoi).scene_metadata(scene_id)
    return url, json.loads(open(url).read())


def test_rgb_tiles_use_the_thumbnail_stretch(explorer_output):
    """A forest pixel of the hand-made scene: red/green/blue DN 300/1200/300 through to_uint8."""
    hand = explorer_output.hand
    url, item = _item(hand.root, hand.aoi, hand.scene_ids[0])
    lon, lat = hand.chip_centres["3_3"]
    t = TMS.tile(lon, lat, 15)
    img = _img(tiles.cog_tile(SourcePolicy([str(hand.root)]), url, item, t.x, t.y, t.z))
    row, col = _pixel_of(t, lon, lat)
    expected = to_uint8(np.array([300.0, 1200.0, 300.0]))
    assert list(img[row, col]) == [*expected.tolist(), 255]


def test_visual_tiles_match_rio_tiler_at_high_zoom(explorer_output):
    url, item = _item(explorer_output.root, explorer_output.aoi, explorer_output.scene_ids[0])
    policy = SourcePolicy([str(explorer_output.root), explorer_output.archive])
    lon, lat = explorer_output.chip_centres[explorer_output.change_chip]
    for z in (14, 15, 16):
        t = TMS.tile(lon, lat, z)
        ours = _img(tiles.cog_tile(policy, url, item, t.x, t.y, t.z))
        with Reader(policy.resolve(item["assets"]["visual"]["href"], url)) as src:
            ref = src.tile(t.x, t.y, t.z, tilesize=256, indexes=(1, 2, 3))
        ref_rgb, ref_valid = np.moveaxis(ref.array.data, 0, -1), ~np.ma.getmaskarray(ref.array).any(axis=0)
        both = ref_valid & (ours[..., 3] == 255)
        assert both.mean() > 0.2 and (ours[..., 3] == 255).sum() >= 0.98 * ref_valid.sum()
        same = np.all(ours[..., :3] == ref_rgb, axis=-1)[both].mean()
        assert same > 0.95, (z, same)


def test_every_zoom_renders_from_an_overview(explorer_output):
    """Zoom 0 to 13 straight through the renderer (no min-zoom gate): each returns a tile whose opaque
    part is no larger than the data's share of it; the old rio-tiler path took minutes down here."""
    url, item = _item(explorer_output.root, explorer_output.aoi, explorer_output.scene_ids[0])
    policy = SourcePolicy([str(explorer_output.root), explorer_output.archive])
    lon, lat = explorer_output.chip_centres[explorer_output.change_chip]
    opaque = []
    for z in range(0, 14):
        t = TMS.tile(lon, lat, z)
        png = tiles.cog_tile(policy, url, item, t.x, t.y, t.z)
        assert png is not None, z
        opaque.append(int((_img(png)[..., 3] == 255).sum()))
    assert opaque[0] <= 1 and opaque[-1] > 1000
    assert all(b >= a for a, b in zip(opaque, opaque[1:], strict=False)), opaque  # more data as we zoom in


def test_source_without_overviews_is_refused_when_too_coarse(tmp_path):
    """3000 x 3000 px, no overviews: a tile that holds all of it would read 9 Mpx per band."""
    path = tmp_path / "flat.tif"
    profile = dict(driver="GTiff", width=3000, height=3000, count=1, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 5100000, 10, 10), nodata=0, tiled=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 3000, 3000), 1000, np.uint16))
    with rasterio.open(path) as src:
        lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", [515000], [5085000])
    far = TMS.xy_bounds(TMS.tile(lon[0], lat[0], 8))
    with pytest.raises(TileError, match="too coarse"):
        tiles.read_tile(str(path), (1,), far)
    near = TMS.xy_bounds(TMS.tile(lon[0], lat[0], 14))
    data, valid = tiles.read_tile(str(path), (1,), near)
    assert valid.all() and (data[0] == 1000).all()


def test_useful_minzoom_grows_as_the_data_shrinks():
    tile_km = [110.0, 10.24, 2.56]
    zooms = [tiles.useful_minzoom((15.0, 46.0, 15.0 + km / 77.0, 46.0 + km / 111.0)) for km in tile_km]
    assert zooms == sorted(zooms) and zooms[0] < zooms[-1] and 3 <= zooms[0] <= 6
