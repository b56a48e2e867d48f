"""The explorer's before/after split map, spectral-index layers and shareable view state (issue 14, item 5),
in headless Chromium against a real uvicorn server.

The hand-made AOI (4 x 4 chips: water for x_dim < 2, forest, the left half of chip 2_1 cleared from the
fourth date on) has chip NetCDFs with known bands (``fixtures/explorer_chips.py``), so what the maps
draw is checked pixel by pixel: the two sides of the split map show two dates (the clearing appears only
on the later one) and stay on one view when either side is dragged or zoomed; NDVI, NBR and NDWI layers
draw each chip in its index colour (vegetation greener than water); the view (AOI, mode, layer, dates,
chip, k, few-shot positives/negatives, map position) is in the URL, comes back on reload, opens the same
in another browser, and back/forward step through it. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse

import pytest

from fixtures.explorer_browser import (
    click_lonlat,
    idle,
    new_page,
    open_explorer,
    pixel_at,
    screen_xy,
    shot,
    uvicorn_explorer,
)
from fixtures.explorer_chips import colour, expected
from geofm import indices
from geofm.server import ExplorerOptions

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TOLERANCE = 10  # per channel: the map blends in the chip grid's 1 % white fill and resamples linearly


@pytest.fixture(scope="module")
def url(indexed_output) -> Iterator[str]:
    with uvicorn_explorer(indexed_output.root, ExplorerOptions(archives=(indexed_output.archive,))) as u:
        yield u


@pytest.fixture
def hand(indexed_output):
    return indexed_output.hand


def close(rgb, rgba) -> bool:
    return all(abs(int(a) - int(b)) <= TOLERANCE for a, b in zip(rgb[:3], rgba[:3], strict=True))


def left_quarter(hand, chip: str) -> tuple[float, float]:
    """A place a quarter chip in from the chip's left edge (inside the clearing of chip 2_1)."""
    (lon0, lat0), (lon1, _) = hand.chip_centres[chip], hand.chip_centres["3_1"]
    return lon0 - (lon1 - lon0) / 4, lat0


def open_split(page, url: str, **params) -> None:
    open_explorer(page, f"{url}?{urlencode({'aoi': 'hand', 'grid': '20LPP', 'mode': 'compare', **params})}")
    page.wait_for_selector("[data-testid=map-after][data-ready=true]")
    idle(page)
    idle(page, "afterMap")


def views(page) -> list:
    return page.evaluate("""() => [window.geofmExplorer.map, window.geofmExplorer.afterMap].map(
        (m) => [m.getCenter().lng, m.getCenter().lat, m.getZoom()])""")


def settle(page) -> None:
    page.wait_for_function("() => !window.geofmExplorer.map.isMoving() && !window.geofmExplorer.afterMap.isMoving()")
    idle(page)
    idle(page, "afterMap")


def test_split_map_shows_two_dates_that_move_together(page, url, hand):
    d0, d3 = hand.dates[0], hand.change_date
    open_split(page, url, layer="ndvi", before=d0, after=d3)
    assert page.get_attribute("[data-testid=map]", "data-imagery-date") == d0
    assert page.get_attribute("[data-testid=map-after]", "data-imagery-date") == d3
    assert page.get_attribute("[data-testid=map]", "data-imagery-layer") == "ndvi"
    assert page.get_attribute("[data-testid=map-after]", "data-imagery-layer") == "ndvi"
    assert page.input_value("[data-testid=compare-before]") == d0
    assert page.input_value("[data-testid=compare-after]") == d3
    assert page.locator("[data-testid=map-after]").is_visible()
    ndvi = indices.get("ndvi")
    forest, water, cleared = (colour(ndvi, expected(ndvi, c)) for c in ("forest", "water", "cleared"))
    # the clearing shows on the after side only; unchanged chips look the same on both
    place = left_quarter(hand, "2_1")
    assert close(pixel_at(page, *place), forest) and close(pixel_at(page, *place, "afterMap"), cleared)
    for chip, cover in (("0_0", water), ("3_0", forest), ("1_2", water), ("2_2", forest)):
        for side in ("map", "afterMap"):
            assert close(pixel_at(page, *hand.chip_centres[chip], side), cover), (chip, side)
    green, blue = pixel_at(page, *hand.chip_centres["3_0"]), pixel_at(page, *hand.chip_centres["0_0"])
    assert green[1] - green[0] > 60 and blue[0] - blue[1] > 60  # NDVI: vegetation green, water red-brown
    shot(page, "explorer-split-map")

    # drag the right map: the left one follows
    start = views(page)
    x, y = screen_xy(page, *hand.chip_centres["2_2"], "afterMap")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 90, y + 50, steps=8)
    page.mouse.up()
    settle(page)
    left, right = views(page)
    assert left == pytest.approx(right, abs=1e-9)
    assert abs(left[0] - start[0][0]) > 1e-4 and abs(left[1] - start[0][1]) > 1e-4  # it did move
    # zoom the left map with the wheel: the right one follows
    x, y = screen_xy(page, *hand.chip_centres["2_2"], "map")
    page.mouse.move(x, y)
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"() => window.geofmExplorer.map.getZoom() > {left[2] + 0.2}")
    settle(page)
    left2, right2 = views(page)
    assert left2 == pytest.approx(right2, abs=1e-9) and left2[2] > left[2] + 0.2
    # the same place under the same pixel on both sides
    for chip, cover in (("2_2", forest), ("1_2", water)):
        xy = [screen_xy(page, *hand.chip_centres[chip], side) for side in ("map", "afterMap")]
        width = page.evaluate("() => window.geofmExplorer.map.getCanvas().getBoundingClientRect().width")
        assert xy[1][0] - xy[0][0] == pytest.approx(width + 2, abs=1.5) and xy[0][1] == pytest.approx(xy[1][1])
        assert close(pixel_at(page, *hand.chip_centres[chip], "afterMap"), cover), chip
    # the moved view is in the URL (replacing the entry, not adding one)
    view = [float(v) for v in parse_qs(urlparse(page.url).query)["view"][0].split(",")]
    assert view[:2] == pytest.approx(left2[:2], abs=1e-4) and view[2] == pytest.approx(left2[2], abs=0.01)
    assert page.errors == []
    shot(page, "explorer-split-map-moved")


def test_index_layers_render_with_their_legend(page, url, hand):
    open_explorer(page, f"{url}?aoi=hand&grid=20LPP")
    assert page.locator("[data-testid=index-legend]").is_hidden()
    options = page.locator("[data-testid=layer-select] option").all_inner_texts()
    assert options[:1] == ["true colour"] and {"NDVI", "NBR", "NDWI"} <= set(options)
    seen = {}
    for name in ("ndvi", "nbr", "ndwi"):
        page.select_option("[data-testid=layer-select]", name)
        page.wait_for_selector(f"[data-testid=map][data-imagery-layer={name}]")
        idle(page)
        tiles = page.evaluate("() => window.geofmExplorer.map.getSource('imagery').tiles[0]")
        assert f"/indices/{name}/tiles/" in tiles
        legend = page.locator("[data-testid=index-legend]")
        assert legend.is_visible() and legend.get_attribute("data-index") == name
        page.wait_for_function("() => document.querySelector('[data-testid=legend-ramp]').naturalWidth === 256")
        assert indices.get(name).label in page.inner_text("#legend-label")
        idx = indices.get(name)
        for chip, cover in (("0_0", "water"), ("3_0", "forest")):
            seen[name, cover] = pixel_at(page, *hand.chip_centres[chip])
            assert close(seen[name, cover], colour(idx, expected(idx, cover))), (name, chip)
        assert f"layer={name}" in page.url
        shot(page, f"explorer-layer-{name}")
    assert seen["ndwi", "water"][2] > seen["ndwi", "water"][0] + 60  # NDWI: water blue
    assert seen["nbr", "forest"][1] > seen["nbr", "forest"][0] + 40  # NBR: unburnt forest green
    page.select_option("[data-testid=layer-select]", "true-colour")
    page.wait_for_selector("[data-testid=map][data-imagery-layer=true-colour]")
    idle(page)
    assert page.locator("[data-testid=index-legend]").is_hidden()
    r, g, b = pixel_at(page, *hand.chip_centres["3_0"])
    assert g > r + 40 and g > b + 40  # the forest's true colour
    assert page.errors == []


def _image_pixels(page, testid: str, points: list[tuple[int, int]]) -> list[list[int]]:
    page.wait_for_function(f"() => document.querySelector('[data-testid={testid}]').naturalWidth > 0")
    return page.evaluate("""([testid, points]) => {
        const img = document.querySelector(`[data-testid=${testid}]`);
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        return points.map(([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data));
    }""", [testid, points])


def test_a_clicked_chip_is_shown_at_both_dates(page, url, hand):
    d0, d3 = hand.dates[0], hand.change_date
    open_split(page, url, layer="nbr", before=d0, after=d3)
    click_lonlat(page, *hand.chip_centres["2_1"], "afterMap")
    page.wait_for_selector(f"[data-testid=compare-after-img][data-date='{d3}']")
    nbr = indices.get("nbr")
    forest, cleared = colour(nbr, expected(nbr, "forest")), colour(nbr, expected(nbr, "cleared"))
    left_px, right_px = (8, 32), (56, 32)
    assert [tuple(p) for p in _image_pixels(page, "compare-before-img", [left_px, right_px])] == [forest, forest]
    assert [tuple(p) for p in _image_pixels(page, "compare-after-img", [left_px, right_px])] == [cleared, forest]
    assert parse_qs(urlparse(page.url).query)["chip"] == ["2_1"]
    selected = page.evaluate("() => window.geofmExplorer.afterMap.getSource('selected')._data.features"
                             ".map((f) => f.properties.chip_id)")
    assert selected == ["2_1"]
    assert page.errors == []
    shot(page, "explorer-split-map-chip")


def _shown(page) -> dict:
    """What the page shows, read from the page itself (not from the URL)."""
    return page.evaluate("""() => {
        const q = (s) => document.querySelector(s);
        const m = window.geofmExplorer.map, st = window.geofmExplorer.state;
        const active = [...document.querySelectorAll('#tabs .tab.active')].map((b) => b.id);
        const after = window.geofmExplorer.afterMap, split = st.mode === 'compare';
        return {
            aoi: q('[data-testid=aoi-select]').value, mode: active, layer: q('[data-testid=layer-select]').value,
            comparePanel: !q('[data-testid=compare-panel]').hidden,
            before: split ? q('[data-testid=compare-before]').value : null,
            after: split ? q('[data-testid=compare-after]').value : null,
            leftDate: q('[data-testid=map]').dataset.imageryDate,
            rightDate: after && split ? q('[data-testid=map-after]').dataset.imageryDate : null,
            chip: st.chip, selected: m.getSource('selected')._data.features.map((f) => f.properties.chip_id),
            k: st.k, pos: st.pos, neg: st.neg,
            center: [m.getCenter().lng, m.getCenter().lat], zoom: m.getZoom(),
        };
    }""")


def _same_view(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in ("center", "zoom")} == \
        {k: v for k, v in b.items() if k not in ("center", "zoom")}
    assert a["center"] == pytest.approx(b["center"], abs=1e-4) and a["zoom"] == pytest.approx(b["zoom"], abs=0.01)


def test_view_state_is_in_the_url_stepped_back_restored_on_reload_and_shared(page, browser, url, hand):
    d1, d4 = hand.dates[1], hand.dates[4]
    open_explorer(page, f"{url}?aoi=hand&grid=20LPP")
    first = _shown(page)
    assert first["mode"] == ["tab-similarity"] and first["layer"] == "true-colour" and first["chip"] is None
    # five steps: the split map, NBR, two dates, a chip
    page.click("[data-testid=tab-compare]")
    page.wait_for_selector("[data-testid=map-after][data-ready=true]")
    page.select_option("[data-testid=layer-select]", "nbr")
    page.select_option("[data-testid=compare-before]", d1)
    page.select_option("[data-testid=compare-after]", d4)
    click_lonlat(page, *hand.chip_centres["2_1"])
    page.wait_for_selector(f"[data-testid=compare-after-img][data-date='{d4}']")
    settle(page)
    params = parse_qs(urlparse(page.url).query)
    assert {k: params[k] for k in ("aoi", "grid", "mode", "layer", "before", "after", "chip")} == {
        "aoi": ["hand"], "grid": ["20LPP"], "mode": ["compare"], "layer": ["nbr"], "before": [d1], "after": [d4],
        "chip": ["2_1"]}
    shown = _shown(page)
    assert shown["mode"] == ["tab-compare"] and shown["comparePanel"] and shown["selected"] == ["2_1"]
    assert (shown["leftDate"], shown["rightDate"]) == (d1, d4)

    # back steps through the views to the first one, forward returns
    def step(go) -> dict:  # one history step within the page (popstate), restored from the URL
        n = page.evaluate("() => { window.stepMark = true; return window.geofmExplorer.app.restored; }")
        go()
        page.wait_for_function(f"() => window.stepMark && window.geofmExplorer.app.restored > {n}")
        return _shown(page)

    last = hand.dates[-1]
    back = [step(page.go_back) for _ in range(5)]
    assert [b["chip"] for b in back] == [None] * 5
    assert [(b["before"], b["after"]) for b in back[:3]] == [(d1, d4), (d1, last), (hand.dates[0], last)]
    assert [b["layer"] for b in back] == ["nbr", "nbr", "nbr", "true-colour", "true-colour"]
    assert [b["mode"] for b in back] == [["tab-compare"]] * 4 + [["tab-similarity"]]
    _same_view(back[-1], first)
    forward = [step(page.go_forward) for _ in range(5)]
    page.wait_for_selector(f"[data-testid=compare-after-img][data-date='{d4}']")
    _same_view(forward[-1], shown)

    # a reload shows the same view
    page.reload()
    page.wait_for_selector("[data-testid=map][data-ready=true]")
    page.wait_for_selector("[data-testid=map-after][data-ready=true]")
    settle(page)
    _same_view(_shown(page), shown)

    # the URL with few-shot examples and k, opened in another browser context: the same view, lists restored
    query = [(k, v) for k, v in parse_qsl(urlparse(page.url).query) if k != "k"]
    query += [("pos", f"2_1@{d1}"), ("pos", f"3_1@{d1}"), ("neg", f"0_0@{d1}"), ("k", "9")]
    shared = f"{url}?{urlencode(query)}"
    other = new_page(browser)
    try:
        open_explorer(other, shared)
        other.wait_for_selector("[data-testid=map-after][data-ready=true]")
        settle(other)
        seen = _shown(other)
        assert seen["pos"] == [{"chip": "2_1", "date": d1}, {"chip": "3_1", "date": d1}]
        assert seen["neg"] == [{"chip": "0_0", "date": d1}] and seen["k"] == 9
        _same_view({**seen, "pos": [], "neg": [], "k": shown["k"]}, shown)
        kept = parse_qs(urlparse(other.url).query)
        assert kept["pos"] == [f"2_1@{d1}", f"3_1@{d1}"] and kept["neg"] == [f"0_0@{d1}"] and kept["k"] == ["9"]
        assert other.errors == [] and other.csp_violations == []
    finally:
        other.context.close()
    assert page.errors == []


def test_bad_url_values_are_named_and_ignored(page, url, hand):
    page.goto(f"{url}?aoi=hand&grid=20LPP&mode=compare&k=999&pos=nope&before=2024-02-30&layer=evi")
    page.wait_for_selector("[data-testid=map][data-ready=true]")
    error = page.wait_for_selector("[data-testid=error]:not([hidden])").inner_text()
    assert "not understood, ignored: k, before, pos" in error and "unknown layer evi" in error
    shown = _shown(page)
    assert shown["mode"] == ["tab-compare"] and shown["k"] == 5 and shown["pos"] == []
    assert shown["layer"] == "true-colour"  # an unknown layer falls back to true colour
    assert shown["before"] == hand.dates[0] and shown["after"] == hand.dates[-1]
    params = parse_qs(urlparse(page.url).query)
    assert params["k"] == ["5"] and "pos" not in params and params["layer"] == ["true-colour"]
