"""The explorer's few-shot search, search within change and change alerts (FastAPI TestClient) on the
explorer output fixture. The hand-made AOI (``hand``: water and forest chips, one chip half cleared)
gives exact classes; the pipeline AOI (``explorer``: synthetic scenes through steps 1-4) gives the
planted change that alerts, filters and patch heat maps must find."""

from __future__ import annotations

import io

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Transformer
from rasterio.io import MemoryFile
from shapely.geometry import Point, shape


def _base(out) -> str:
    return f"/api/aois/{out.aoi}/grids/{out.grid}"


def test_classify_ranks_the_positives_class_first(client, hand):
    day = hand.dates[0]
    body = {"positives": [f"0_0@{day}", f"1_3@{day}"], "negatives": [f"3_3@{day}"], "k": 6}
    r = client.post(f"{_base(hand)}/classify", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["method"] == "svm" and out["date"] == day
    hits = out["results"]
    assert [h["rank"] for h in hits] == list(range(1, 7))
    assert all(hand.classes[h["chip_id"]] == "water" for h in hits)
    assert not {"0_0", "1_3", "3_3"} & {h["chip_id"] for h in hits}  # the examples are not hits
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the score layer holds every scored chip of the date (16 less the 3 examples), water above forest
    feats = out["layer"]["features"]
    assert len(feats) == out["scored"] == 13
    scores = {f["properties"]["chip_id"]: f["properties"]["score"] for f in feats}
    water = [s for c, s in scores.items() if hand.classes[c] == "water"]
    forest = [s for c, s in scores.items() if hand.classes[c] == "forest"]
    assert min(water) > max(forest)
    assert hits[0]["thumbnail_url"].endswith(f"/chips/{hits[0]['chip_id']}/thumbnail?date={day}")


def test_classify_one_positive_is_cosine_search(client, hand):
    day = hand.dates[-1]
    out = client.post(f"{_base(hand)}/classify", json={"positives": [f"2_2@{day}"], "k": 5}).json()
    search = client.get(f"{_base(hand)}/search", params={"chip_id": "2_2", "date": day, "k": 5}).json()
    assert out["method"] == "cosine"
    assert [(h["chip_id"], round(h["score"], 6)) for h in out["results"]] == \
        [(h["chip_id"], round(h["score"], 6)) for h in search["results"]]


def test_classify_without_patch_embeddings_says_so(client, hand):
    day = hand.dates[0]
    out = client.post(f"{_base(hand)}/classify", json={
        "positives": [f"0_0@{day}"], "negatives": [f"3_3@{day}"], "heatmaps": True}).json()
    assert out["results"] and "heatmap" not in out["results"][0]
    assert "embeddings" in out["heatmap_note"] and str(hand.root) not in out["heatmap_note"]


@pytest.mark.parametrize("body", [
    {}, {"positives": []}, {"positives": ["0_0"]}, {"positives": ["../x@2024-01-05"]},
    {"positives": ["0_0@2024-01-05"], "k": 0}, {"positives": ["0_0@2024-01-05"], "k": 101},
    {"positives": ["0_0@2024-01-05"], "method": "knn"},
    {"positives": [f"0_{i}@2024-01-05" for i in range(51)]},
])
def test_classify_bad_requests(client, hand, body):
    assert client.post(f"{_base(hand)}/classify", json=body).status_code == 422


def test_classify_unknown_example(client, hand):
    r = client.post(f"{_base(hand)}/classify", json={"positives": ["9_9@2024-01-05"]})
    assert r.status_code == 404 and "9_9" in r.json()["detail"]
    assert str(hand.root) not in r.text


def test_heatmap_finds_the_cleared_side(client, explorer_output):
    """Positives: the chip inside the planted clearing after it; negative: the same chip before. On the
    clearing's first date the chip it only grazes scores highest on the grazed side."""
    out = explorer_output
    after, before = out.change_date, out.dates[0]
    body = {"positives": [f"{out.change_chip}@{after}"], "negatives": [f"{out.change_chip}@{before}"],
            "k": 15, "heatmaps": True}
    r = client.post(f"{_base(out)}/classify", json=body)
    assert r.status_code == 200, r.text
    hits = {h["chip_id"]: h for h in r.json()["results"]}
    assert out.edge_chip in hits and "heatmap" in hits[out.edge_chip], list(hits)
    heat = np.array(hits[out.edge_chip]["heatmap"], dtype=float)
    cols = np.nanmean(heat, axis=0)
    g = heat.shape[1]
    # the planted strip is at most a quarter of the chip wide, along its left or right side
    side, rest = (slice(g - 2, g), slice(0, g // 2)) if cols[-2:].mean() > cols[:2].mean() else \
        (slice(0, 2), slice(g // 2, g))
    assert cols[side].min() > cols[rest].max(), cols
    assert hits[out.edge_chip]["best_patch"][1] in range(g)[side]


def test_search_within_change(client, explorer_output):
    out = explorer_output
    base = _base(out)
    every = client.get(f"{base}/search", params={"chip_id": out.edge_chip, "date": out.dates[-1], "k": 100,
                                                 "min_score": -1}).json()["results"]
    changed = client.get(f"{base}/search", params={"chip_id": out.edge_chip, "date": out.dates[-1], "k": 100,
                                                   "min_score": -1, "changed_since": out.dates[1]}).json()
    ids = {h["chip_id"] for h in changed["results"]}
    assert out.change_chip in ids and ids < {h["chip_id"] for h in every}
    layer = client.get(f"{base}/change-intensity").json()["features"]
    medium_up = {f["properties"]["chip_id"] for f in layer
                 if f["properties"]["change_intensity"] in ("High", "Medium")}
    assert ids <= medium_up
    few = client.post(f"{base}/classify", json={
        "positives": [f"{out.change_chip}@{out.dates[-1]}"], "negatives": [f"{out.edge_chip}@{out.dates[0]}"],
        "k": 100, "changed_since": out.dates[1]}).json()
    assert {h["chip_id"] for h in few["results"]} <= medium_up


def test_alerts_cover_the_planted_change(client, explorer_output):
    out = explorer_output
    r = client.get(f"/api/aois/{out.aoi}/alerts")
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    feats = r.json()["features"]
    assert feats
    centre = Point(*out.chip_centres[out.change_chip])
    hit = [f for f in feats if shape(f["geometry"]).contains(centre)]
    assert len(hit) == 1
    props = hit[0]["properties"]
    # first seen on the clearing's first date (a passing cloud before it is not an alert), confirmed
    assert props["first_detected"] == out.change_date and props["confirmed"] is True
    assert props["magnitude"] > 0
    # the same alerts as a GeoPackage and as GeoParquet
    for fmt in ("gpkg", "parquet"):
        f = client.get(f"/api/aois/{out.aoi}/alerts/export", params={"format": fmt})
        assert f.status_code == 200
        assert f.headers["content-disposition"] == f'attachment; filename="{out.aoi}_change_alerts.{fmt}"'
        frame = gpd.read_parquet(io.BytesIO(f.content)) if fmt == "parquet" else gpd.read_file(io.BytesIO(f.content))
        assert len(frame) == len(feats)
        assert frame.geometry.contains(centre).sum() == 1


def test_alerts_bad_requests(client, explorer_output):
    assert client.get(f"/api/aois/{explorer_output.aoi}/alerts/export", params={"format": "shp"}).status_code == 422
    assert client.get("/api/aois/nowhere/alerts").status_code == 404
    assert client.get("/api/aois/..%2F..%2Fx/alerts").status_code in (404, 422)


def test_change_raster_download(client, explorer_output):
    """The clearing's chip is changed on its first date in the downloaded COG; the other chips are not."""
    out = explorer_output
    r = client.get(f"{_base(out)}/change-raster.tif", params={"date": out.change_date})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == \
        f'attachment; filename="{out.aoi}_{out.grid}_change_raster_{out.change_date}.tif"'
    with MemoryFile(r.content) as mem, mem.open() as ds:
        assert ds.tags()["date"] == out.change_date and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        values = ds.read(1)
        threshold = float(ds.tags()["patch_threshold"])
        x, y = out.chip_centres[out.change_chip]
        row, col = ds.index(*Transformer.from_crs(4326, ds.crs, always_xy=True).transform(x, y))
    assert values[row, col] > threshold
    assert client.get(f"{_base(out)}/change-raster.tif", params={"date": "1999-01-01"}).status_code == 404
    assert client.get(f"{_base(out)}/change-raster.tif").status_code == 422
