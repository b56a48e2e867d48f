"""The explorer under hostile input and load (issue 12), as users run it: ``geofm serve`` in its own
process on 127.0.0.1, asked with raw HTTP requests.

- low-zoom tiles are answered at once (empty below the grid's useful zoom) and the API keeps answering
  while tiles are rendered;
- an AOI asked for before it exists is served once it is made; a removed AOI or file is a 404, a broken
  one never takes the listing down;
- asset hrefs planted in stored items (a path outside the roots, a symlink out, FIFOs, a URL and a
  ``/vsicurl/`` path to a local listener) are never opened, with or without --allow-remote-assets;
- long, dot and control-character names answer 4xx, never 500, with no traceback in the server log;
- foreign Host headers are refused; security headers are set; no reply shows a server path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from fixtures.explorer_output import GRID, GSD, X0, Y0
from fixtures.explorer_server import ConnectionRecorder, explorer_server, no_reader
from geofm.layout import Layout
from geofm.sentinel2 import make_scene_id, utm_epsg

pytestmark = pytest.mark.slow
TMS = morecantile.tms.get("WebMercatorQuad")
MAGENTA = (255, 0, 255)


def _png(reply) -> np.ndarray:
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(reply.body)).convert("RGBA"))


def _pixel(img: np.ndarray, tile: morecantile.Tile, lon: float, lat: float) -> np.ndarray:
    b = TMS.xy_bounds(tile)
    x, y = TMS.xy(lon, lat)
    return img[int((b.top - y) / (b.top - b.bottom) * 256), int((x - b.left) / (b.right - b.left) * 256)]


def _magenta_cog(path: Path) -> None:
    """An 8-bit 'TCI' over the hand AOI's place, all magenta: if a tile ever shows it, it was opened."""
    side = 256
    data = np.empty((3, side, side), np.uint8)
    for b, v in enumerate(MAGENTA):
        data[b] = v
    profile = dict(driver="COG", width=side, height=side, count=3, dtype="uint8", crs=f"EPSG:{utm_epsg(GRID)}",
                   transform=from_origin(X0, Y0, GSD, GSD), nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def planted(explorer_output, tmp_path_factory):
    """A copy of the explorer output whose hand-made AOI has hostile asset hrefs planted in its items:
    date 0 untouched (the control), then an outside path, a URL and a /vsicurl/ path to a local
    listener, a symlink out of the root, FIFOs outside and inside the root, a file:// URL of another
    host and a GDAL driver prefix."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "out"
    shutil.copytree(explorer_output.root, root, symlinks=True)
    outside = base / "outside"
    outside.mkdir()
    _magenta_cog(outside / "magenta.tif")
    os.mkfifo(outside / "fifo.tif")
    os.mkfifo(root / "fifo-inside.tif")
    hand = explorer_output.hand
    lay = Layout(str(root), hand.aoi)
    for sid in hand.scene_ids:  # the copied items name the original's COGs: point them at the copy's
        item = Path(lay.scene_metadata(sid))
        item.write_text(item.read_text().replace(str(explorer_output.root), str(root)))
    (Path(lay.scenes_dir) / "link.tif").symlink_to(outside / "magenta.tif")
    recorder = ConnectionRecorder()
    url = f"http://127.0.0.1:{recorder.port}"
    hrefs = {
        1: [str(outside / "magenta.tif"), f"file://{outside / 'magenta.tif'}"],
        2: [f"{url}/scene.tif", f"http://localhost:{recorder.port}/scene.tif"],
        3: [f"/vsicurl/{url}/vsi.tif", f"/VSICURL/{url}/upper.tif"],
        4: ["link.tif", f"../../../../../../{outside.name}/magenta.tif"],
        5: [str(outside / "fifo.tif"), str(root / "fifo-inside.tif"), "file://127.0.0.1/etc/passwd",
            f"vrt://{outside / 'magenta.tif'}"],
    }
    for i, day in enumerate(hand.dates):
        for seq, href in enumerate(hrefs.get(i, [])):
            sid = make_scene_id("S2A", GRID, date.fromisoformat(day), sequence=seq)  # seq 0 replaces the item
            item = json.loads(Path(lay.scene_metadata(hand.scene_ids[i])).read_text())
            item["id"] = sid
            item["assets"] = {"visual": {"href": href, "type": "image/tiff"}}
            Path(lay.scene_metadata(sid)).write_text(json.dumps(item))
    yield {"root": root, "outside": outside, "recorder": recorder, "hand": hand, "hrefs": hrefs}
    recorder.close()


@pytest.fixture(scope="module")
def server(planted, explorer_output):
    with explorer_server(planted["root"], "--archive", explorer_output.archive, "--allow-host", "proxy.example",
                         "--render-slots", "2") as s:
        yield s


def test_cli_prints_the_address(server):
    assert f"geofm explorer on http://127.0.0.1:{server.port}/" in server.log


# ---- bounded cost -------------------------------------------------------------------------------------
def test_low_zoom_tiles_answered_at_once_and_the_api_stays_responsive(server, explorer_output):
    """Tiles at every zoom of the pipeline AOI (its scenes carry an 8-bit TCI with nodata=0, the slow
    case: before this, zoom 0 took about a minute of a core) fired together with API calls."""
    aoi, grid = explorer_output.aoi, explorer_output.grid
    base = f"/api/aois/{aoi}/grids/{grid}"
    summary = json.loads(server.get(base).body)
    minzoom = summary["imagery_minzoom"]
    assert 6 < minzoom < 14
    minx, miny, maxx, maxy = summary["bounds"]
    lon, lat = (minx + maxx) / 2, (miny + maxy) / 2
    day = explorer_output.scene_dates[0]
    tiles = {z: TMS.tile(lon, lat, z) for z in range(0, minzoom + 4)}
    api = [("/api/aois", 200), (base, 200), (f"{base}/chips/{explorer_output.change_chip}", 200),
           (f"{base}/search?chip_id={explorer_output.change_chip}&date={explorer_output.dates[0]}", 200),
           (f"{base}/chip-grid", 200)]
    jobs = [("tile", z, f"{base}/tiles/{t.z}/{t.x}/{t.y}.png?date={day}") for z, t in tiles.items()] * 2
    jobs += [("api", want, path) for path, want in api] * 3
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda job: (job, server.get(job[2])), jobs))
    for (kind, z_or_status, _), reply in replies:
        if kind == "api":
            assert reply.status == z_or_status, reply.text
            continue
        if reply.status == 503:  # all render slots busy: a clear, retryable answer
            assert reply.headers["retry-after"] == "1"
            continue
        img = _png(reply)
        if z_or_status < minzoom:
            assert reply.headers["x-tile-source"] == "below-minzoom" and img[..., 3].max() == 0
        else:
            assert reply.headers["x-tile-source"] == "cog"
            assert _pixel(img, tiles[z_or_status], lon, lat)[3] == 255  # the scene is drawn
    assert sum(r.status == 200 for (k, _, _), r in replies if k == "tile") >= len(tiles)


def test_fifty_parallel_searches_are_all_right(server, planted):
    """What held before and must keep holding: 50 searches at once, each with hits of its chip's class."""
    hand = planted["hand"]
    base = f"/api/aois/{hand.aoi}/grids/{hand.grid}/search"
    chips = sorted(hand.classes)
    queries = [(chips[i % len(chips)], hand.dates[i % len(hand.dates)]) for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda q: server.get(f"{base}?chip_id={q[0]}&date={q[1]}&k=5"), queries))
    for (chip, day), reply in zip(queries, replies, strict=True):
        assert reply.status == 200, reply.text
        hits = json.loads(reply.body)["results"]
        assert len(hits) == 5 and all(h["date"] == day and h["chip_id"] != chip for h in hits)
        if chip != hand.change_chip:
            assert {hand.classes[h["chip_id"]] for h in hits} == {hand.classes[chip]}, (chip, day)


# ---- catalog --------------------------------------------------------------------------------------------
def test_aoi_asked_for_then_made_then_listed_then_removed(server, planted):
    root, hand = planted["root"], planted["hand"]
    new = "late"
    assert server.get(f"/api/aois/{new}").status == 404
    assert server.get(f"/api/aois/{new}/grids/{hand.grid}").status == 404
    assert new not in [a["aoi_name"] for a in json.loads(server.get("/api/aois").body)]
    for part in ("output", "processing"):  # step 4 of AOI "late" has now run
        shutil.copytree(root / part / hand.aoi, root / part / new, symlinks=True)
    listed = {a["aoi_name"]: a["grids"] for a in json.loads(server.get("/api/aois").body)}
    assert listed[new] == [hand.grid] and listed[hand.aoi] == [hand.grid]
    summary = json.loads(server.get(f"/api/aois/{new}/grids/{hand.grid}").body)
    assert summary["dates"] == hand.dates
    series = server.get(f"/api/aois/{new}/grids/{hand.grid}/chips/{hand.change_chip}")
    assert series.status == 200 and json.loads(series.body)["dates"] == hand.dates
    shutil.rmtree(root / "output" / new)
    assert new not in [a["aoi_name"] for a in json.loads(server.get("/api/aois").body)]
    for path in (f"/api/aois/{new}", f"/api/aois/{new}/grids/{hand.grid}",
                 f"/api/aois/{new}/grids/{hand.grid}/chips/0_0",
                 f"/api/aois/{new}/grids/{hand.grid}/tiles/15/1/1.png?date={hand.dates[0]}"):
        reply = server.get(path)
        assert reply.status == 404, (path, reply.status, reply.text)
        assert new in json.loads(reply.body)["detail"]


def test_vanished_and_broken_files(server, planted):
    root, hand = planted["root"], planted["hand"]
    base = f"/api/aois/{hand.aoi}/grids/{hand.grid}"
    thumb = f"{base}/chips/1_1/thumbnail?date={hand.dates[2]}"
    assert server.get(thumb).status == 200
    lay = Layout(str(root), hand.aoi)
    Path(lay.rgb_thumbnail(hand.scene_ids[2], 64, 1, 1)).unlink()
    assert server.get(thumb).status == 404
    assert server.get(f"{base}/chips/1_1/thumbnail?date={hand.dates[3]}").status == 200
    # AOIs that cannot be read never take the listing down
    (root / "output" / "notadir" / "consolidated-output").parent.mkdir(parents=True)
    (root / "output" / "notadir" / "consolidated-output").write_text("a file where a folder belongs")
    shutil.copytree(root / "output" / hand.aoi, root / "output" / "bad\x07name", symlinks=True)
    shutil.copytree(root / "output" / hand.aoi, root / "output" / "corrupt", symlinks=True)
    Path(Layout(str(root), "corrupt").consolidated_output(hand.grid)).write_bytes(b"PAR1 not parquet")
    shutil.rmtree(Layout(str(root), "corrupt").lance_db)
    listing = server.get("/api/aois")
    assert listing.status == 200
    names = [a["aoi_name"] for a in json.loads(listing.body)]
    assert hand.aoi in names and "notadir" not in names and "bad\x07name" not in names
    broken = server.get(f"/api/aois/corrupt/grids/{hand.grid}")
    assert broken.status == 503 and "cannot be read" in json.loads(broken.body)["detail"]
    nodb = server.get(f"/api/aois/corrupt/grids/{hand.grid}/search?chip_id=0_0")
    assert nodb.status in (404, 503)
    shutil.rmtree(root / "output" / "corrupt")
    shutil.rmtree(root / "output" / "bad\x07name")


# ---- sources --------------------------------------------------------------------------------------------
def _planted_tiles(server, hand) -> dict[int, list]:
    """Tile of the water chip 0_0 on each date: (source, fallback note, pixel)."""
    lon, lat = hand.chip_centres["0_0"]
    t = TMS.tile(lon, lat, 15)
    out = {}
    for i, day in enumerate(hand.dates):
        reply = server.get(f"/api/aois/{hand.aoi}/grids/{hand.grid}/tiles/{t.z}/{t.x}/{t.y}.png?date={day}")
        out[i] = [reply.headers["x-tile-source"], reply.headers.get("x-tile-fallback", ""),
                  _pixel(_png(reply), t, lon, lat)]
    return out


def test_planted_paths_and_urls_are_never_opened(server, planted, explorer_output):
    hand, recorder = planted["hand"], planted["recorder"]
    seen = _planted_tiles(server, hand)
    assert seen[0][0] == "cog"  # the control: this date's items are fine
    for i in planted["hrefs"]:
        source, note, px = seen[i]
        assert source == "thumbnails", (i, source)
        assert px[3] == 255 and px[2] > px[0] + 20  # the water thumbnail, never the planted magenta
        assert note and str(planted["outside"]) not in note
    assert "--allow-remote-assets" in seen[2][1]
    # even with remote assets allowed, loopback and /vsi paths stay shut
    with explorer_server(planted["root"], "--archive", explorer_output.archive, "--allow-remote-assets") as s2:
        remote = _planted_tiles(s2, hand)
    for i in planted["hrefs"]:
        assert remote[i][0] == "thumbnails", (i, remote[i][0])
    assert "loopback" in remote[2][1]
    assert recorder.connections == []
    assert no_reader(planted["outside"] / "fifo.tif") and no_reader(planted["root"] / "fifo-inside.tif")


# ---- names, hosts, headers ---------------------------------------------------------------------------
BAD_NAMES = ["a" * 256, "a" * 1000, "%C3%A9" * 128, "..", ".", "%2e%2e", "%2E%2E", "..%2F..", "%2e%2e%2f%2e%2e",
             "a%00b", "a%01b", "a%5Cb", "%5C..", "..%5C.."]
ROUTES = ["/api/aois/{}", "/api/aois/{}/grids/20LPP", "/api/aois/{}/grids/20LPP/config",
          "/api/aois/{}/grids/20LPP/chips/0_0", "/api/aois/{}/grids/20LPP/chips/0_0/thumbnail?date=2024-01-05",
          "/api/aois/{}/grids/20LPP/search?chip_id=0_0", "/api/aois/{}/grids/20LPP/tiles/15/1/1.png?date=2024-01-05",
          "/api/aois/{}/grids/20LPP/chip-grid"]


def test_long_dot_and_control_names_answer_4xx(server):
    statuses = {}
    for name in BAD_NAMES:
        for route in ROUTES:
            reply = server.get(route.format(name))
            statuses[route.format(name)[:80]] = reply.status
            assert 400 <= reply.status < 500, (route.format(name)[:80], reply.status, reply.text[:200])
    assert statuses["/api/aois/" + "a" * 70] == 422  # too long: named as such
    assert server.get("/api/aois/..").status == 422 and server.get("/api/aois/%2e%2e/grids/20LPP").status == 422
    assert "at most 255" in json.loads(server.get("/api/aois/" + "a" * 256).body)["detail"]
    assert "Traceback" not in server.log


def test_foreign_host_is_refused(server):
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.nip.io", "localhost.evil.example", ""):
        reply = server.get("/api/aois", host=host)
        assert reply.status == 400 and b"aoi_name" not in reply.body, host
        assert server.get("/", host=host).status == 400
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}",
                 "proxy.example", f"PROXY.example:{server.port}"):
        assert server.get("/api/aois", host=host).status == 200, host


def test_security_headers(server):
    for path, status in (("/", 200), ("/api/aois", 200), ("/api/aois/nope", 404), ("/api/aois/..", 422),
                         ("/openapi.json", 200), ("/docs", 200)):
        reply = server.get(path)
        assert reply.status == status, path
        h = reply.headers
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in h["content-security-policy"], path
        assert h["referrer-policy"] == "no-referrer", path
    assert "script-src 'self';" in server.get("/").headers["content-security-policy"]
    assert server.get("/evil", host="evil.example").headers["x-content-type-options"] == "nosniff"


def test_no_reply_shows_a_server_path_and_nothing_crashed(server, planted, explorer_output):
    """Over every request of this module: no root or archive path in any reply, no 500, no traceback."""
    assert server.get("/openapi.json").status == 200
    server.assert_no_leaks({str(planted["root"]), str(planted["root"].resolve()), str(explorer_output.archive),
                            str(planted["outside"])})
