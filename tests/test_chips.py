"""The chip grid: indices, windows, UTM bounds, WGS84 polygons and AOI selection."""

from __future__ import annotations

import pytest
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box

from geofm.chips import ChipGrid

# A 33TWL-like grid: origin of the tile, 10 m pixels, 300 x 200 px (partial edge chips on both axes).
ORIGIN = (499980.0, 5100000.0)
T = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
TO_WGS84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
TO_UTM = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)


def grid(width: int = 300, height: int = 200, size: int = 64) -> ChipGrid:
    return ChipGrid(T, width, height, "EPSG:32633", size)


def utm_box_wgs84(minx: float, miny: float, maxx: float, maxy: float):  # noqa: ANN201
    """A UTM rectangle as a WGS84 polygon (corners projected, edges densified)."""
    from shapely.ops import transform

    return transform(lambda x, y: TO_WGS84.transform(x, y), box(minx, miny, maxx, maxy).segmentize(50))


def test_partial_edge_chips_are_skipped() -> None:
    g = grid()
    assert (g.n_cols, g.n_rows) == (4, 3)  # 300 // 64, 200 // 64
    chips = list(g.all_chips())
    assert len(chips) == 12
    assert [c.chip_id for c in chips[:5]] == ["0_0", "1_0", "2_0", "3_0", "0_1"]


def test_chip_window_and_bounds_follow_column_and_row_from_top() -> None:
    c = grid().chip(2, 1)  # column 2, row 1 from the top
    assert (c.window.col_off, c.window.row_off, c.window.width, c.window.height) == (128, 64, 64, 64)
    assert c.bounds == (ORIGIN[0] + 1280, ORIGIN[1] - 1280, ORIGIN[0] + 1920, ORIGIN[1] - 640)
    assert c.chip_id == "2_1"


def test_polygon_is_the_projected_utm_box() -> None:
    g = grid()
    c = g.chip(3, 2)
    poly = g.polygon_wgs84(c)
    minx, miny, maxx, maxy = c.bounds
    corners = [TO_WGS84.transform(x, y) for x, y in [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]]
    for (lon, lat), (plon, plat) in zip(corners, list(poly.exterior.coords)[:4], strict=True):
        assert lon == pytest.approx(plon, abs=1e-9) and lat == pytest.approx(plat, abs=1e-9)
    lon, lat = g.centroid_wgs84(c)
    cx, cy = TO_UTM.transform(lon, lat)
    assert cx == pytest.approx((minx + maxx) / 2, abs=1e-3) and cy == pytest.approx((miny + maxy) / 2, abs=1e-3)


def test_aoi_selects_exactly_the_chips_it_meets() -> None:
    g = grid()
    # a UTM rectangle inside chip 1_0 reaching 5 m into chip 2_0 and 5 m into 1_1
    aoi = utm_box_wgs84(ORIGIN[0] + 700, ORIGIN[1] - 645, ORIGIN[0] + 1285, ORIGIN[1] - 100)
    assert sorted(c.chip_id for c in g.chips_meeting(aoi)) == ["1_0", "1_1", "2_0", "2_1"]


def test_aoi_inside_one_chip_and_aoi_off_the_grid() -> None:
    g = grid()
    inner = utm_box_wgs84(ORIGIN[0] + 100, ORIGIN[1] - 500, ORIGIN[0] + 200, ORIGIN[1] - 400)
    assert [c.chip_id for c in g.chips_meeting(inner)] == ["0_0"]
    far = utm_box_wgs84(ORIGIN[0] + 50_000, ORIGIN[1] - 50_000, ORIGIN[0] + 51_000, ORIGIN[1] - 49_000)
    assert g.chips_meeting(far) == []
    # the partial edge column (x 256..300 px) is not part of the grid
    edge = utm_box_wgs84(ORIGIN[0] + 2600, ORIGIN[1] - 500, ORIGIN[0] + 2900, ORIGIN[1] - 400)
    assert g.chips_meeting(edge) == []


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="north-up"):
        ChipGrid(Affine(10, 1, 0, 0, -10, 0), 100, 100, "EPSG:32633", 64)
    with pytest.raises(ValueError, match="chip_size"):
        ChipGrid(T, 100, 100, "EPSG:32633", 0)
    with pytest.raises(ValueError, match="outside"):
        grid().chip(4, 0)
