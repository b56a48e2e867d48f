"""The explorer in headless Chromium (Playwright): the map loads with the chip grid, a click on the
chip with the planted change draws a similarity chart that drops after the change date, and a
similarity search shows k thumbnails. Screenshots of each view go to ``test-artifacts/``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fixtures.explorer_browser import click_lonlat as _click_lonlat
from fixtures.explorer_browser import idle as _idle
from fixtures.explorer_browser import open_explorer as _open
from fixtures.explorer_browser import shot as _shot
from fixtures.explorer_browser import uvicorn_explorer
from geofm.server import ExplorerOptions

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def explorer_url(explorer_output) -> Iterator[str]:
    """uvicorn serving the explorer on 127.0.0.1 in a thread, stopped after the module."""
    with uvicorn_explorer(explorer_output.root, ExplorerOptions(archives=(explorer_output.archive,))) as url:
        yield url


def test_map_loads_with_chip_grid(page, explorer_url, explorer_output):
    _open(page, explorer_url)
    assert page.locator("[data-testid=map] canvas.maplibregl-canvas").count() == 1
    options = page.locator("[data-testid=aoi-select] option").all_inner_texts()
    assert options == [f"{explorer_output.aoi}/{explorer_output.grid}", f"{explorer_output.hand.aoi}/{explorer_output.hand.grid}"]
    n_grid = len(json.loads(page.evaluate(
        f"() => fetch('api/aois/{explorer_output.aoi}/grids/{explorer_output.grid}/chip-grid')"
        ".then((r) => r.text())"))["features"])
    assert page.get_attribute("[data-testid=map]", "data-grid-features") == str(n_grid)
    rendered = page.evaluate("""() => {
        const m = window.geofmExplorer.map;
        const ids = new Set(m.queryRenderedFeatures({layers: ['grid-fill']}).map((f) => f.properties.chip_id));
        return {grid: !!m.getLayer('grid-line'), imagery: !!m.getLayer('imagery'), chips: ids.size};
    }""")
    assert rendered == {"grid": True, "imagery": True, "chips": n_grid}
    assert page.get_attribute("[data-testid=map]", "data-imagery-date") == explorer_output.dates[-1]
    assert page.locator("[data-testid=error]").is_hidden()
    assert page.errors == []
    _shot(page, "explorer-map")


def test_change_chart_drops_after_planted_change(page, explorer_url, explorer_output):
    _open(page, explorer_url + "?mode=change")
    # the chip with planted change, as the change-intensity layer marks it
    fc = json.loads(page.evaluate(
        f"() => fetch('api/aois/{explorer_output.aoi}/grids/{explorer_output.grid}/change-intensity')"
        ".then((r) => r.text())"))
    high = [f["properties"]["chip_id"] for f in fc["features"] if f["properties"]["change_intensity"] == "High"]
    assert explorer_output.change_chip in high
    _click_lonlat(page, *explorer_output.chip_centres[explorer_output.change_chip])
    svg = page.wait_for_selector("[data-testid=chart-svg]")
    values = json.loads(svg.get_attribute("data-values"))
    dates = json.loads(svg.get_attribute("data-dates"))
    before = [v for d, v in zip(dates, values, strict=True) if d < explorer_output.change_date]
    after = [v for d, v in zip(dates, values, strict=True) if d >= explorer_output.change_date]
    assert before and after
    assert min(before) - max(after) > 0.1, (dates, values)
    assert page.locator("[data-testid=severity]").get_attribute("data-level") == "High"
    assert page.locator("[data-testid=legend]").is_visible()
    assert page.locator("[data-testid=trend-line]").count() == 1
    # a click on the first date after the change shows that date's thumbnail and patch map
    page.locator(f"[data-testid=chart-point][data-date='{explorer_output.change_date}']").click()
    page.wait_for_selector(f"[data-testid=date-view][data-date='{explorer_output.change_date}']")
    page.wait_for_function("() => document.querySelector('[data-testid=date-thumbnail]').naturalWidth > 0")
    assert page.get_attribute("[data-testid=map]", "data-patch-map") == \
        f"{explorer_output.change_chip}@{explorer_output.change_date}"
    assert page.get_attribute("[data-testid=map]", "data-imagery-date") == explorer_output.change_date
    _idle(page)
    cells = page.evaluate("""() => window.geofmExplorer.map.queryRenderedFeatures({layers: ['patch-map']})
        .map((f) => [f.properties.patch, f.properties.sim])""")
    sims = {int(k): v for k, v in cells}
    g = round(len(sims) ** 0.5)
    assert g * g == len(sims) and g > 1
    assert sum(v < 0.8 for v in sims.values()) > 0.9 * len(sims)  # the whole chip changed
    # before/after shows two loaded thumbnails, first and last dates by default
    page.wait_for_function("() => ['before-img', 'after-img'].every((id) => document.getElementById(id).naturalWidth > 0)")
    assert page.input_value("[data-testid=before-date]") == explorer_output.dates[0]
    assert page.input_value("[data-testid=after-date]") == explorer_output.dates[-1]
    _idle(page)
    assert page.errors == []
    _shot(page, "explorer-change")


def test_similarity_search_shows_k_thumbnails(page, explorer_url, explorer_output):
    _open(page, explorer_url)
    query = explorer_output.edge_chip
    _click_lonlat(page, *explorer_output.chip_centres[query])
    page.wait_for_selector("[data-testid=results][data-state=done]")
    assert page.locator("[data-testid=result-item]").count() == 5
    # raise k to 7 with the slider: the results follow
    page.evaluate("""() => { const s = document.querySelector('[data-testid=k-slider]');
        s.value = '7'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }""")
    page.wait_for_selector("[data-testid=results][data-count='7']")
    items = page.locator("[data-testid=result-item]")
    assert items.count() == 7
    chips = [items.nth(i).get_attribute("data-chip-id") for i in range(7)]
    assert query not in chips
    scores = [float(items.nth(i).get_attribute("data-score")) for i in range(7)]
    assert scores == sorted(scores, reverse=True)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=result-item] img')]"
                           ".every((img) => img.complete && img.naturalWidth > 0)")
    assert page.locator("[data-testid=selected-thumbnail]").is_visible()
    outlined = page.evaluate("() => window.geofmExplorer.map.getSource('results')._data.features.length")
    assert outlined == 7
    _idle(page)
    assert page.errors == []
    _shot(page, "explorer-similarity")


def test_api_errors_are_shown(page, explorer_url):
    page.goto(explorer_url + "?aoi=nowhere")
    err = page.wait_for_selector("[data-testid=error]:not([hidden])")
    assert "nowhere" in err.inner_text() and "404" in err.inner_text()
    _shot(page, "explorer-error")


def test_imagery_has_a_min_zoom_and_the_page_runs_under_its_csp(page, explorer_url, explorer_output):
    """The imagery source carries the server's useful min zoom, so zooming out asks for no tiles below
    it; the page (MapLibre workers, styles, thumbnails) runs under the CSP header it is served with."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/tiles/" in r.url else None)
    resp = page.goto(explorer_url)
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    page.wait_for_selector("[data-testid=map][data-ready=true]")
    _idle(page)
    summary = json.loads(page.evaluate(
        f"() => fetch('api/aois/{explorer_output.aoi}/grids/{explorer_output.grid}').then((r) => r.text())"))
    minzoom = summary["imagery_minzoom"]
    assert minzoom > 3
    assert page.evaluate("() => window.geofmExplorer.map.getSource('imagery').minzoom") == minzoom
    requested.clear()
    page.evaluate(f"() => window.geofmExplorer.map.jumpTo({{zoom: {minzoom - 3}}})")
    _idle(page)
    zooms = [int(u.split("/tiles/")[1].split("/")[0]) for u in requested]
    assert all(z >= minzoom for z in zooms), zooms
    assert page.errors == []
