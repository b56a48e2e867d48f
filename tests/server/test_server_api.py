"""The explorer's JSON API (FastAPI TestClient) on the explorer output fixture: every route, 404s,
bounds on k and thresholds, and path-traversal attempts. Exact values are checked on the hand-made
AOI (``hand``); the pipeline AOI (``explorer``, synthetic scenes through steps 1-4) is checked against
the synthetic ground truth: planted changes, land cover."""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from geofm.server import create_app

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def base(hand) -> str:
    return f"/api/aois/{hand.aoi}/grids/{hand.grid}"


@pytest.fixture(scope="module")
def pbase(explorer_output) -> str:
    return f"/api/aois/{explorer_output.aoi}/grids/{explorer_output.grid}"


def _png(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGBA"))


def test_lists_aois_and_grids(client, explorer_output, hand):
    assert client.get("/api/aois").json() == [{"aoi_name": explorer_output.aoi, "grids": [explorer_output.grid]},
                                              {"aoi_name": hand.aoi, "grids": [hand.grid]}]
    aoi = client.get(f"/api/aois/{explorer_output.aoi}").json()
    assert aoi["grids"] == [explorer_output.grid]
    assert aoi["aoi_geojson"]["type"] == "FeatureCollection"


def test_grid_summary_and_config(client, base, hand):
    s = client.get(base).json()
    assert s["dates"] == hand.dates
    assert s["imagery_dates"] == hand.dates
    assert s["chip_count"] == len(hand.classes)
    assert "cosine_sim" in s["series_fields"] and "patch_emb_pca_1" in s["series_fields"]
    lon, lat = hand.chip_centres["0_0"]
    minx, miny, maxx, maxy = s["bounds"]
    assert minx < lon < maxx and miny < lat < maxy
    cfg = client.get(f"{base}/config").json()
    assert cfg == s["config"] and cfg["demos"][0]["config"]["s2_tile_id"] == hand.grid


def test_geojson_layers(client, base, hand):
    grid = client.get(f"{base}/chip-grid").json()
    assert {f["properties"]["chip_id"] for f in grid["features"]} == set(hand.classes)
    assert len(client.get(f"{base}/chip-grid", params={"extent": "full"}).json()["features"]) == 16
    assert client.get(f"{base}/chip-grid", params={"extent": "world"}).status_code == 422
    change = client.get(f"{base}/change-intensity").json()
    levels = {f["properties"]["chip_id"]: f["properties"]["change_intensity"] for f in change["features"]}
    assert levels[hand.change_chip] == "High"
    assert all(v == "Low" for k, v in levels.items() if k != hand.change_chip)


def test_chip_series_drops_after_the_change(client, base, hand):
    r = client.get(f"{base}/chips/{hand.change_chip}").json()
    assert r["dates"] == hand.dates
    cut = hand.dates.index(hand.change_date)
    sims = r["series"]["cosine_sim"]
    assert min(sims[:cut]) > 0.95 and max(sims[cut:]) < 0.8
    assert r["baseline_date"] == hand.dates[0]
    assert r["change"]["change_intensity"] == "High"
    assert len(r["series"]["patch_emb_pca_1"]) == len(r["dates"])
    g = r["patch_grid"]
    after = np.array(r["patch_maps"][cut]).reshape(g, g)
    assert after[:, : g // 2].max() < 0.5 < after[:, g // 2:].min()  # the cleared left half
    steady = client.get(f"{base}/chips/0_0").json()
    assert min(steady["series"]["cosine_sim"]) > 0.95


def test_thumbnail_colours(client, base, hand):
    water = _png(client.get(f"{base}/chips/0_0/thumbnail", params={"date": hand.dates[0]}))
    assert water[..., 2].mean() > water[..., 0].mean()  # blue over red
    late = _png(client.get(f"{base}/chips/{hand.change_chip}/thumbnail",
                           params={"date": hand.dates[-1]}))
    w = late.shape[1]
    assert late[:, : w // 2, 0].mean() > 200 and late[:, w // 2:, 1].mean() > late[:, w // 2:, 0].mean()


def test_search_hits_share_the_class(client, base, hand):
    r = client.get(f"{base}/search", params={"chip_id": "2_2", "k": 5}).json()
    assert r["date"] == hand.dates[-1]
    hits = r["results"]
    assert len(hits) == 5
    assert all(hand.classes[h["chip_id"]] == "forest" for h in hits)
    assert all(h["date"] == hand.dates[-1] and h["chip_id"] != "2_2" for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9
    img = _png(client.get(hits[0]["thumbnail_url"]))
    assert img[..., 1].mean() > img[..., 0].mean()  # forest thumbnail is green


def test_search_threshold_and_dates(client, base, hand):
    params = {"chip_id": "0_0", "date": hand.dates[0], "k": 100}
    everything = client.get(f"{base}/search", params=params).json()["results"]
    assert len(everything) == 15  # every other chip on that date
    water = client.get(f"{base}/search", params={**params, "min_score": 0.9}).json()["results"]
    assert {hand.classes[h["chip_id"]] for h in water} == {"water"} and len(water) == 7
    ranged = client.get(f"{base}/search", params={**params, "start": hand.dates[1],
                                                  "end": hand.dates[2]}).json()["results"]
    assert len(ranged) == 30 and {h["date"] for h in ranged} == set(hand.dates[1:3])


@pytest.mark.parametrize("params", [
    {"chip_id": "0_0", "k": 0}, {"chip_id": "0_0", "k": 101}, {"chip_id": "0_0", "min_score": 1.5},
    {"chip_id": "0_0", "min_score": -2}, {"chip_id": "0_0", "date": "yesterday"}, {"chip_id": "../x"},
    {"chip_id": "0_0", "start": "2024-05-01", "end": "2024-01-01"}, {},
])
def test_search_bounds(client, base, params):
    assert client.get(f"{base}/search", params=params).status_code == 422


def test_search_unknown_chip_or_date(client, base):
    r = client.get(f"{base}/search", params={"chip_id": "9_9"})
    assert r.status_code == 404 and "9_9" in r.json()["detail"]
    r = client.get(f"{base}/search", params={"chip_id": "0_0", "date": "2023-01-01"})
    assert r.status_code == 404 and "2023-01-01" in r.json()["detail"]


def test_tile_from_cogs_shows_the_change(client, base, hand):
    lon, lat = hand.chip_centres[hand.change_chip]
    t = TMS.tile(lon, lat, 15)
    url = f"{base}/tiles/{t.z}/{t.x}/{t.y}.png"
    before = client.get(url, params={"date": hand.dates[0]})
    assert before.headers["x-tile-source"] == "cog"
    after = client.get(url, params={"date": hand.dates[-1]})

    def pixel(resp, lon_: float, lat_: float) -> np.ndarray:
        b = TMS.xy_bounds(t)
        x, y = TMS.xy(lon_, lat_)
        col = int((x - b.left) / (b.right - b.left) * 256)
        row = int((b.top - y) / (b.top - b.bottom) * 256)
        return _png(resp)[row, col]

    # a point in the left (cleared) half of the chip: green forest before, bright bare soil after
    left = (lon - 0.0015, lat)
    p0, p1 = pixel(before, *left), pixel(after, *left)
    assert p0[1] > p0[0] and p0[3] == 255
    assert p1[0] > 200 and p1[0] > p1[1]
    far = TMS.tile(lon + 5, lat, 15)  # outside the scene: transparent
    empty = _png(client.get(f"{base}/tiles/{far.z}/{far.x}/{far.y}.png", params={"date": hand.dates[0]}))
    assert empty[..., 3].max() == 0


def test_tile_falls_back_to_thumbnails(hand, tmp_path):
    """Unreadable COGs (offline hrefs): the tile is drawn from the thumbnails."""
    import json
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(hand.root, root, ignore=shutil.ignore_patterns("cogs"))
    from geofm.layout import Layout

    lay = Layout(str(root), hand.aoi)
    for sid in hand.scene_ids:
        item = json.loads(open(lay.scene_metadata(sid)).read())
        for a in item["assets"].values():
            a["href"] = "/nonexistent/" + a["href"].rsplit("/", 1)[-1]
        open(lay.scene_metadata(sid), "w").write(json.dumps(item))
    c = TestClient(create_app(str(root)), base_url="http://localhost")
    lon, lat = hand.chip_centres["0_0"]
    t = TMS.tile(lon, lat, 14)
    r = c.get(f"/api/aois/{hand.aoi}/grids/{hand.grid}/tiles/{t.z}/{t.x}/{t.y}.png",
              params={"date": hand.dates[0]})
    assert r.headers["x-tile-source"] == "thumbnails"
    img = _png(r)
    b = TMS.xy_bounds(t)
    x, y = TMS.xy(lon, lat)
    px = img[int((b.top - y) / (b.top - b.bottom) * 256), int((x - b.left) / (b.right - b.left) * 256)]
    assert px[3] == 255 and px[2] > px[0]  # water thumbnail: blue


@pytest.mark.parametrize("path,status", [
    ("/api/aois/nope", 404),
    ("/api/aois/nope/grids/20LPP", 404),
    ("/api/aois/{aoi}/grids/31UFU", 404),
    ("/api/aois/{aoi}/grids/notagrid", 422),
    ("/api/aois/{aoi}/grids/{grid}/chips/9_9", 404),
    ("/api/aois/{aoi}/grids/{grid}/chips/abc", 422),
    ("/api/aois/{aoi}/grids/{grid}/chips/0_0/thumbnail?date=2023-01-01", 404),
    ("/api/aois/{aoi}/grids/{grid}/chips/9_9/thumbnail?date=2024-01-05", 404),
    ("/api/aois/{aoi}/grids/{grid}/chips/0_0/thumbnail", 422),
    ("/api/aois/{aoi}/grids/{grid}/tiles/14/1/1.png?date=2023-01-01", 404),
    ("/api/aois/{aoi}/grids/{grid}/tiles/3/9/1.png?date=2024-01-05", 422),
    ("/api/aois/{aoi}/grids/{grid}/tiles/30/1/1.png?date=2024-01-05", 422),
])
def test_unknown_inputs(client, hand, path, status):
    r = client.get(path.format(aoi=hand.aoi, grid=hand.grid))
    assert r.status_code == status, r.text
    if status == 404:
        assert r.json()["detail"]


@pytest.mark.parametrize("path", [
    "/api/aois/..%2F..%2Fetc/grids/20LPP",
    "/api/aois/{aoi}/grids/{grid}/chips/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail?date=2024-01-05",
    "/api/aois/{aoi}/grids/{grid}/chips/0_0%2F..%2F..%2Fconfig/thumbnail?date=2024-01-05",
    "/api/aois/{aoi}/grids/{grid}/chips/0_0/thumbnail?date=../../../etc/passwd",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
])
def test_traversal_attempts_get_nothing(client, hand, path):
    r = client.get(path.format(aoi=hand.aoi, grid=hand.grid))
    assert r.status_code in (404, 422)
    assert b"root:" not in r.content


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/aois/{aoi}/grids/{grid}/search" in paths
    assert "/api/aois/{aoi}/grids/{grid}/tiles/{z}/{x}/{y}.png" in paths


# ---- the pipeline AOI, against the synthetic ground truth -------------------------------------------
def test_pipeline_summary(client, pbase, explorer_output):
    s = client.get(pbase).json()
    assert s["dates"] == explorer_output.dates
    assert s["imagery_dates"] == explorer_output.scene_dates  # cloudy dates too: they have imagery
    assert s["chip_count"] == len(explorer_output.chip_centres)
    assert s["config"] is not None


def test_pipeline_planted_change(client, pbase, explorer_output):
    chip, when = explorer_output.change_chip, explorer_output.change_date
    levels = {f["properties"]["chip_id"]: f["properties"]["change_intensity"]
              for f in client.get(f"{pbase}/change-intensity").json()["features"]}
    assert levels[chip] == "High"
    r = client.get(f"{pbase}/chips/{chip}").json()
    pairs = list(zip(r["dates"], r["series"]["cosine_sim"], r["series"]["patch_changed_share"], strict=True))
    before = [p for p in pairs if p[0] < when]
    after = [p for p in pairs if p[0] >= when]
    assert before and after
    assert min(p[1] for p in before) > 0.9 and max(p[1] for p in after) < 0.5
    assert max(p[2] for p in before) == 0 and min(p[2] for p in after) > 0.9


def test_pipeline_patch_map_localises_a_grazing_change(client, pbase, explorer_output):
    """The planted change grazes one side of the edge chip: only that side's patches changed."""
    r = client.get(f"{pbase}/chips/{explorer_output.edge_chip}").json()
    g = r["patch_grid"]
    last = np.array(r["patch_maps"][-1], dtype=float).reshape(g, g)
    cols = last.mean(axis=0)
    assert cols.min() < 0.8 < np.median(cols)
    assert np.argmin(cols) in (0, g - 1)  # an edge column, not the middle


def test_pipeline_search_ranks_by_land_cover(client, pbase, explorer_output):
    """Search scores follow land cover (baseline date, before any change): over all query chips the
    score ranks correlate with how alike the chips' land-cover shares are, and most top hits are
    among the more alike half."""
    comp = explorer_output.compositions

    def likeness(a: str, b: str) -> float:
        keys = sorted(set(comp[a]) | set(comp[b]))
        u = np.array([comp[a].get(k, 0) for k in keys])
        v = np.array([comp[b].get(k, 0) for k in keys])
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    day = explorer_output.dates[0]
    corrs, firsts = [], []
    for query in comp:
        r = client.get(f"{pbase}/search", params={"chip_id": query, "date": day, "k": 100, "min_score": -1})
        if r.status_code == 404:  # chip not analysed on that date
            continue
        hits = r.json()["results"]
        scores = np.array([h["score"] for h in hits])
        like = np.array([likeness(query, h["chip_id"]) for h in hits])
        ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        corrs.append(np.corrcoef(ranks(scores), ranks(like))[0, 1])
        firsts.append(like[0] >= np.median(like))
    assert len(corrs) >= 5
    assert np.mean(corrs) > 0.3 and np.mean(firsts) >= 0.7


def test_pipeline_tile_from_the_scene_cogs(client, pbase, explorer_output):
    lon, lat = explorer_output.chip_centres[explorer_output.change_chip]
    t = TMS.tile(lon, lat, 14)
    url = f"{pbase}/tiles/{t.z}/{t.x}/{t.y}.png"
    b = TMS.xy_bounds(t)
    x, y = TMS.xy(lon, lat)
    row, col = int((b.top - y) / (b.top - b.bottom) * 256), int((x - b.left) / (b.right - b.left) * 256)
    before = client.get(url, params={"date": explorer_output.dates[0]})
    assert before.headers["x-tile-source"] == "cog"
    after = client.get(url, params={"date": explorer_output.dates[-1]})
    p0, p1 = _png(before)[row, col].astype(int), _png(after)[row, col].astype(int)
    assert p0[3] == 255 and p0[1] > p0[2]  # forest: green over blue
    assert p1[0] - p0[0] > 30  # cleared to bare soil: much redder
