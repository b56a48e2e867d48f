"""The explorer's few-shot panel and change alerts in headless Chromium against a real uvicorn server.

On the hand-made AOI (water for x_dim < 2, forest elsewhere) a user clicks chips and marks two water
chips "like this" and a forest chip "not like this": every hit is water, the score layer drawn on the
map ranks every water chip above every forest chip, the examples are in the URL and come back on
reload, and the exported GeoJSON holds the scored chips. On the pipeline AOI (synthetic scenes with a
planted clearing) the patch heat map is drawn over the hits, and the change alerts show a confirmed
polygon at the clearing, first seen on its first date, and download as a GeoPackage, and the change
raster of a date downloads as a GeoTIFF.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlparse

import geopandas as gpd
import pytest
import rasterio

from fixtures.explorer_browser import click_lonlat, idle, open_explorer, screen_xy, shot, uvicorn_explorer
from geofm.server import ExplorerOptions

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def url(explorer_output) -> Iterator[str]:
    with uvicorn_explorer(explorer_output.root, ExplorerOptions(archives=(explorer_output.archive,))) as u:
        yield u


def _mark(page, centre: tuple[float, float], role: str) -> None:
    click_lonlat(page, *centre)
    page.wait_for_selector("[data-testid=add-positive]:not([disabled])")
    before = int(page.get_attribute("[data-testid=examples]", "data-count") or 0)
    page.click(f"[data-testid=add-{role}]")
    page.wait_for_selector(f"[data-testid=examples][data-count='{before + 1}']")


def _scored(page) -> list[str]:
    page.wait_for_selector("[data-testid=fewshot-results][data-state=done]")
    return [e.get_attribute("data-chip-id") for e in page.locator("[data-testid=fewshot-result]").all()]


def _score_levels(page) -> dict[str, float]:
    idle(page)
    feats = page.evaluate("""() => window.geofmExplorer.map.queryRenderedFeatures({layers: ['fewshot-score']})
        .map((f) => [f.properties.chip_id, f.properties.level])""")
    return {c: v for c, v in feats}


def test_fewshot_marks_scores_exports_and_restores(page, url, explorer_output, tmp_path):
    hand = explorer_output.hand
    day = hand.dates[0]
    open_explorer(page, f"{url}?{urlencode({'aoi': hand.aoi, 'grid': hand.grid, 'mode': 'fewshot', 'qdate': day, 'k': 6})}")
    assert page.locator("[data-testid=fewshot-panel]").is_visible()
    _mark(page, hand.chip_centres["0_0"], "positive")
    assert _scored(page)  # one positive: cosine search
    assert page.get_attribute("[data-testid=fewshot-results]", "data-method") == "cosine"
    _mark(page, hand.chip_centres["1_3"], "positive")
    _mark(page, hand.chip_centres["3_3"], "negative")
    page.wait_for_selector("[data-testid=fewshot-results][data-method=svm][data-state=done]")
    hits = _scored(page)
    assert len(hits) == 6 and all(hand.classes[c] == "water" for c in hits), hits
    assert not {"0_0", "1_3", "3_3"} & set(hits)
    # the score layer is drawn on the map: every water chip above every forest chip
    levels = _score_levels(page)
    assert len(levels) == 13, levels
    water = [v for c, v in levels.items() if hand.classes[c] == "water"]
    forest = [v for c, v in levels.items() if hand.classes[c] == "forest"]
    assert min(water) > max(forest)
    q = parse_qs(urlparse(page.url).query)
    assert q["pos"] == [f"0_0@{day}", f"1_3@{day}"] and q["neg"] == [f"3_3@{day}"] and q["mode"] == ["fewshot"]
    shot(page, "explorer-fewshot")
    # export the score layer
    with page.expect_download() as got:
        page.click("[data-testid=export-score]")
    path = tmp_path / got.value.suggested_filename
    got.value.save_as(path)
    assert path.name == f"{hand.aoi}_{hand.grid}_fewshot_{day}.geojson"
    exported = json.loads(path.read_text())
    ranked = sorted(exported["features"], key=lambda f: f["properties"]["rank"])
    assert len(ranked) == 13 and [f["properties"]["chip_id"] for f in ranked[:6]] == hits
    # a reload shows the same examples and scores the same
    page.reload()
    page.wait_for_selector("[data-testid=map][data-ready=true]")
    page.wait_for_selector("[data-testid=examples][data-count='3']")
    assert _scored(page) == hits
    # removing the negative rescored without it, and the URL follows
    page.locator("[data-testid=example][data-role=negative] [data-testid=remove-example]").click()
    page.wait_for_selector("[data-testid=examples][data-count='2']")
    page.wait_for_function("() => !new URL(location.href).searchParams.has('neg')")
    assert all(hand.classes[c] == "water" for c in _scored(page))
    assert page.locator("[data-testid=error]").is_hidden() and page.errors == []


def test_fewshot_heat_map_over_the_hits(page, url, explorer_output):
    out = explorer_output
    params = {"aoi": out.aoi, "grid": out.grid, "mode": "fewshot", "qdate": out.change_date, "k": 15,
              "pos": f"{out.change_chip}@{out.change_date}", "neg": f"{out.change_chip}@{out.dates[0]}"}
    open_explorer(page, f"{url}?{urlencode(params)}")
    _scored(page)
    assert page.get_attribute("[data-testid=fewshot-results]", "data-method") == "svm"  # the pair crosses dates
    page.check("[data-testid=fewshot-heat]")
    page.wait_for_function(
        f"() => (document.querySelector('[data-testid=map]').dataset.fewshotHeat || '').split(',').includes('{out.edge_chip}')")
    idle(page)
    cells = page.evaluate("""() => window.geofmExplorer.map.queryRenderedFeatures({layers: ['fewshot-heat']})
        .map((f) => f.properties.chip_id)""")
    assert out.edge_chip in cells
    shot(page, "explorer-fewshot-heat")
    assert page.locator("[data-testid=error]").is_hidden() and page.errors == []


def test_change_alerts_on_the_map_and_download(page, url, explorer_output, tmp_path):
    out = explorer_output
    open_explorer(page, f"{url}?{urlencode({'aoi': out.aoi, 'grid': out.grid, 'mode': 'change'})}")
    page.check("[data-testid=toggle-alerts]")
    page.wait_for_selector("[data-testid=alerts-count][data-count]")
    assert int(page.get_attribute("[data-testid=alerts-count]", "data-count")) >= 1
    idle(page)
    x, y = screen_xy(page, *out.chip_centres[out.change_chip])
    at = page.evaluate("""([x, y]) => window.geofmExplorer.map.queryRenderedFeatures([x, y], {layers: ['alerts-fill']})
        .map((f) => f.properties)""", [x - page.locator("[data-testid=map] canvas").bounding_box()["x"],
                                       y - page.locator("[data-testid=map] canvas").bounding_box()["y"]])
    assert len(at) == 1 and at[0]["first_detected"] == out.change_date and at[0]["confirmed"] is True
    shot(page, "explorer-alerts")
    page.select_option("[data-testid=alerts-format]", "gpkg")
    with page.expect_download() as got:
        page.click("[data-testid=alerts-download]")
    path = tmp_path / got.value.suggested_filename
    got.value.save_as(path)
    assert path.name == f"{out.aoi}_change_alerts.gpkg"
    frame = gpd.read_file(path)
    assert len(frame) == int(page.get_attribute("[data-testid=alerts-count]", "data-count"))
    # the per-patch change raster of the clearing's first date
    page.select_option("[data-testid=raster-date]", out.change_date)
    with page.expect_download() as got:
        page.click("[data-testid=raster-download]")
    path = tmp_path / got.value.suggested_filename
    got.value.save_as(path)
    with rasterio.open(path) as ds:
        assert ds.tags()["date"] == out.change_date and ds.count == 1 and ds.dtypes[0] == "float32"
    assert page.locator("[data-testid=error]").is_hidden() and page.errors == []
