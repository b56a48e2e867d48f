"""Spectral-index images and tiles of the explorer (issue 14, item 5), as users run it: ``geofm serve`` in
its own process on 127.0.0.1, asked with raw HTTP.

The hand-made AOI of the explorer output gets chip NetCDFs with known band values (water, forest, and the
cleared left half of chip 2_1 from the fourth date on), so the colours of chip images and map tiles are
checked against the index values those bands give, pixel by pixel. Also: unknown indices, dates, chips
and tiles answer 4xx naming the input; chips that are symlinks out of the root or FIFOs are never read;
a rewritten chip is served fresh; no reply shows a server path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import morecantile
import numpy as np
import pytest
from PIL import Image

from fixtures.explorer_chips import CHIP, NODATA_CHIP, colour, copy_output, expected, write_chip
from fixtures.explorer_output import GRID
from fixtures.explorer_server import explorer_server, no_reader
from geofm import indices, sentinel2

pytestmark = pytest.mark.slow
TMS = morecantile.tms.get("WebMercatorQuad")


def _png(reply) -> np.ndarray:
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(reply.body)).convert("RGBA"))


@pytest.fixture(scope="module")
def chipped(indexed_output, tmp_path_factory):
    """A copy of the indexed output whose chip 1_0 on the last date is a symlink to a chip outside the
    root, and chip 1_1 on the last date a FIFO."""
    base = tmp_path_factory.mktemp("indices")
    root = base / "out"
    hand = indexed_output.hand
    lay = copy_output(indexed_output.root, root, hand)
    outside = base / "outside"
    outside.mkdir()
    last = hand.scene_ids[-1]
    planted = Path(lay.raw_chip(last, CHIP, 1, 0))
    shutil.move(planted, outside / "bright.nc")  # a valid chip, but outside the root
    planted.symlink_to(outside / "bright.nc")
    fifo = Path(lay.raw_chip(last, CHIP, 1, 1))
    fifo.unlink()
    os.mkfifo(fifo)
    yield {"root": root, "outside": outside, "hand": hand, "layout": lay, "fifo": fifo,
           "sources": [indexed_output.root]}


@pytest.fixture(scope="module")
def server(chipped):
    with explorer_server(chipped["root"], "--render-slots", "2") as s:
        yield s


def _base(hand) -> str:
    return f"/api/aois/{hand.aoi}/grids/{hand.grid}"


def test_index_list_and_legends(server):
    listed = json.loads(server.get("/api/indices").body)
    by_name = {i["name"]: i for i in listed}
    assert {"ndvi", "nbr", "ndwi"} <= set(by_name)
    assert by_name["ndvi"]["bands"] == ["nir", "red"] and by_name["nbr"]["bands"] == ["nir", "swir22"]
    assert by_name["ndwi"]["bands"] == ["green", "nir"]
    assert all(sentinel2.band(b) for i in listed for b in i["bands"])
    for name in ("ndvi", "nbr", "ndwi"):
        idx = indices.get(name)
        entry = by_name[name]
        assert entry["stops"][0][0] == pytest.approx(idx.vmin) and entry["stops"][-1][0] == pytest.approx(idx.vmax)
        strip = _png(server.get(f"/api/indices/{name}/legend.png"))
        assert tuple(strip[0, 0]) == colour(idx, idx.vmin) and tuple(strip[0, -1]) == colour(idx, idx.vmax)
    # the vegetation ramp runs from red-brown to green; the water ramp from brown to blue
    ndvi, ndwi = indices.get("ndvi"), indices.get("ndwi")
    lo, hi = colour(ndvi, -0.2), colour(ndvi, 0.9)
    assert lo[0] > lo[1] and hi[1] > hi[0]
    assert colour(ndwi, 0.6)[2] > colour(ndwi, 0.6)[0] and colour(ndwi, -0.6)[0] > colour(ndwi, -0.6)[2]


@pytest.mark.parametrize("name", ["ndvi", "nbr", "ndwi"])
def test_chip_images_have_the_index_values_of_their_bands(server, chipped, name):
    hand, idx = chipped["hand"], indices.get(name)
    base = _base(hand)
    water = _png(server.get(f"{base}/chips/0_0/indices/{name}.png?date={hand.dates[0]}"))
    assert water.shape == (CHIP, CHIP, 4)
    assert {tuple(p) for p in water.reshape(-1, 4)} == {colour(idx, expected(idx, "water"))}
    forest = _png(server.get(f"{base}/chips/3_0/indices/{name}.png?date={hand.dates[0]}"))
    assert {tuple(p) for p in forest.reshape(-1, 4)} == {colour(idx, expected(idx, "forest"))}
    # the planted clearing: chip 2_1 is all forest before, its left half cleared from the change date on
    before = _png(server.get(f"{base}/chips/2_1/indices/{name}.png?date={hand.dates[0]}"))
    after = _png(server.get(f"{base}/chips/2_1/indices/{name}.png?date={hand.change_date}"))
    assert {tuple(p) for p in before.reshape(-1, 4)} == {colour(idx, expected(idx, "forest"))}
    assert {tuple(p) for p in after[:, :CHIP // 2].reshape(-1, 4)} == {colour(idx, expected(idx, "cleared"))}
    assert {tuple(p) for p in after[:, CHIP // 2:].reshape(-1, 4)} == {colour(idx, expected(idx, "forest"))}
    nodata = _png(server.get(f"{base}/chips/{NODATA_CHIP}/indices/{name}.png?date={hand.dates[0]}"))
    assert (nodata[:8, :8, 3] == 0).all() and (nodata[8:, 8:, 3] == 255).all()


def test_vegetation_is_greener_than_water_and_the_clearing_shows(server, chipped):
    hand, base = chipped["hand"], _base(chipped["hand"])
    ndvi = indices.get("ndvi")
    assert expected(ndvi, "forest") > 0.7 > 0 > expected(ndvi, "water")
    water = _png(server.get(f"{base}/chips/0_0/indices/ndvi.png?date={hand.dates[0]}"))[0, 0]
    forest = _png(server.get(f"{base}/chips/3_0/indices/ndvi.png?date={hand.dates[0]}"))[0, 0]
    assert int(forest[1]) - int(forest[0]) > 60 and int(water[0]) - int(water[1]) > 60


def _tile_pixel(img: np.ndarray, tile: morecantile.Tile, lon: float, lat: float) -> tuple[int, ...]:
    b = TMS.xy_bounds(tile)
    x, y = TMS.xy(lon, lat)
    return tuple(int(v) for v in img[int((b.top - y) / (b.top - b.bottom) * 256),
                                     int((x - b.left) / (b.right - b.left) * 256)])


def test_index_tiles_draw_the_chips_on_the_map(server, chipped):
    hand, base = chipped["hand"], _base(chipped["hand"])
    summary = json.loads(server.get(base).body)
    minzoom = summary["index_minzoom"]
    assert summary["imagery_minzoom"] <= minzoom <= 16
    assert summary["chip_dates"] == hand.dates
    idx = indices.get("ndvi")
    z = minzoom + 1
    day = hand.change_date
    seen = {}
    for chip, cover in (("0_0", "water"), ("3_0", "forest"), ("2_2", "forest")):
        lon, lat = hand.chip_centres[chip]
        t = TMS.tile(lon, lat, z)
        reply = server.get(f"{base}/indices/ndvi/tiles/{t.z}/{t.x}/{t.y}.png?date={day}")
        assert reply.headers["x-tile-source"] == "chips"
        seen[chip] = _tile_pixel(_png(reply), t, lon, lat)
        assert seen[chip] == colour(idx, expected(idx, cover)), chip
    # the clearing: a quarter of the way in from the left edge of chip 2_1 on the change date
    lon0, lat0 = hand.chip_centres["2_1"]
    lon1, _ = hand.chip_centres["3_1"]
    lon = lon0 - (lon1 - lon0) / 4
    t = TMS.tile(lon, lat0, z)
    img = _png(server.get(f"{base}/indices/ndvi/tiles/{t.z}/{t.x}/{t.y}.png?date={day}"))
    assert _tile_pixel(img, t, lon, lat0) == colour(idx, expected(idx, "cleared"))
    img0 = _png(server.get(f"{base}/indices/ndvi/tiles/{t.z}/{t.x}/{t.y}.png?date={hand.dates[0]}"))
    assert _tile_pixel(img0, t, lon, lat0) == colour(idx, expected(idx, "forest"))
    # below the index min zoom: answered at once, empty; far from the data: empty
    lon, lat = hand.chip_centres["0_0"]
    low = TMS.tile(lon, lat, minzoom - 1)
    reply = server.get(f"{base}/indices/ndvi/tiles/{low.z}/{low.x}/{low.y}.png?date={day}")
    assert reply.headers["x-tile-source"] == "below-minzoom" and _png(reply)[..., 3].max() == 0
    far = TMS.tile(lon + 1.0, lat, z)
    reply = server.get(f"{base}/indices/ndvi/tiles/{far.z}/{far.x}/{far.y}.png?date={day}")
    assert reply.headers["x-tile-source"] == "empty" and _png(reply)[..., 3].max() == 0


def test_bad_parameters_answer_4xx_naming_the_input(server, chipped):
    hand, base = chipped["hand"], _base(chipped["hand"])
    d0 = hand.dates[0]
    cases = {
        f"{base}/chips/0_0/indices/evi.png?date={d0}": (422, "ndvi"),
        f"{base}/chips/0_0/indices/NDVI.png?date={d0}": (422, "ndvi"),
        f"{base}/chips/0_0/indices/ndvi.png?date=2024-13-01": (422, "date"),
        f"{base}/chips/0_0/indices/ndvi.png": (422, "date"),
        f"{base}/chips/0-0/indices/ndvi.png?date={d0}": (422, "chip_id"),
        f"{base}/chips/9_9/indices/ndvi.png?date={d0}": (404, "9_9"),
        f"{base}/chips/0_0/indices/ndvi.png?date=2024-02-29": (404, d0),
        f"{base}/chips/0_0/indices/mndwi.png?date={d0}": (404, "swir16"),
        f"/api/aois/nowhere/grids/{GRID}/chips/0_0/indices/ndvi.png?date={d0}": (404, "nowhere"),
        f"/api/aois/../grids/{GRID}/chips/0_0/indices/ndvi.png?date={d0}": (422, "AOI name"),
        f"{base}/indices/ndvi/tiles/3/8/0.png?date={d0}": (422, "does not exist"),
        f"{base}/indices/ndvi/tiles/25/0/0.png?date={d0}": (422, "z"),
        f"{base}/indices/ndvi/tiles/15/-1/0.png?date={d0}": (422, "x"),
        f"{base}/indices/ndvi/tiles/15/0/0.png?date=2024-02-29": (404, "2024-02-29"),
        f"{base}/indices/ndvi/tiles/15/0/0.png": (422, "date"),
        f"{base}/indices/evi/tiles/15/0/0.png?date={d0}": (422, "ndvi"),
        "/api/indices/evi/legend.png": (422, "ndvi"),
    }
    for path, (status, named) in cases.items():
        reply = server.get(path)
        assert reply.status == status, (path, reply.status, reply.text[:300])
        assert named in reply.text, (path, reply.text[:300])


def test_hostile_names_answer_4xx(server, chipped):
    d0 = chipped["hand"].dates[0]
    routes = [f"/api/aois/{{}}/grids/{GRID}/chips/0_0/indices/ndvi.png?date={d0}",
              f"/api/aois/{{}}/grids/{GRID}/indices/ndvi/tiles/15/1/1.png?date={d0}",
              f"/api/aois/hand/grids/{GRID}/chips/{{}}/indices/ndvi.png?date={d0}",
              f"/api/aois/hand/grids/{GRID}/indices/{{}}/tiles/15/1/1.png?date={d0}",
              "/api/indices/{}/legend.png"]
    for name in ("a" * 300, "..", "%2e%2e", "..%2F..", "a%00b", "a%01b", "a%5Cb", "ndvi%2F..", "%C3%A9" * 100):
        for route in routes:
            reply = server.get(route.format(name))
            assert 400 <= reply.status < 500, (route.format(name)[:100], reply.status, reply.text[:200])
    assert "Traceback" not in server.log


def test_chips_out_of_the_root_and_fifos_are_never_read(server, chipped):
    hand, base = chipped["hand"], _base(chipped["hand"])
    last = hand.dates[-1]
    for chip in ("1_0", "1_1"):  # a symlink out of the root, a FIFO
        reply = server.get(f"{base}/chips/{chip}/indices/ndvi.png?date={last}")
        assert reply.status == 404, reply.text
        assert "may be read" in reply.text and str(chipped["outside"]) not in reply.text
    assert no_reader(chipped["fifo"])
    # in a tile, those chips are left transparent and the others drawn
    idx = indices.get("ndvi")
    z = json.loads(server.get(base).body)["index_minzoom"] + 1
    for chip, cover in (("1_0", None), ("1_1", None), ("0_0", "water")):
        lon, lat = hand.chip_centres[chip]
        t = TMS.tile(lon, lat, z)
        reply = server.get(f"{base}/indices/ndvi/tiles/{t.z}/{t.x}/{t.y}.png?date={last}")
        px = _tile_pixel(_png(reply), t, lon, lat)
        if cover is None:
            assert px[3] == 0 and "left out" in reply.headers["x-tile-fallback"], chip
        else:
            assert px == colour(idx, expected(idx, cover))
    assert no_reader(chipped["fifo"])


def test_a_rewritten_chip_is_served_fresh(server, chipped):
    hand, lay, base = chipped["hand"], chipped["layout"], _base(chipped["hand"])
    path = f"{base}/chips/0_2/indices/ndvi.png?date={hand.dates[1]}"
    idx = indices.get("ndvi")
    assert tuple(_png(server.get(path))[5, 5]) == colour(idx, expected(idx, "water"))
    url = write_chip(lay, hand.scene_ids[1], 1, 0, 2, values={"blue": 400, "green": 800, "red": 500,
                                                              "nir": 2500, "swir22": 900})
    os.utime(url, ns=(os.stat(url).st_atime_ns, os.stat(url).st_mtime_ns + 10**9))  # a new version
    assert tuple(_png(server.get(path))[5, 5]) == colour(idx, (2500 - 500) / (2500 + 500))


def test_no_reply_shows_a_server_path(server, chipped, explorer_output):
    server.assert_no_leaks({str(chipped["root"]), str(chipped["root"].resolve()), str(chipped["outside"]),
                            str(explorer_output.root), *map(str, chipped["sources"])})

