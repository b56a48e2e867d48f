"""MGRS tiles of the Sentinel-2 tiling grid: the UTM origin (upper-left corner) of any tile.

Sentinel-2 tiles are 109,800 m squares whose upper-left corner is the north-west corner of the MGRS
100 km square, snapped outward to the 60 m pixel grid: easting rounded down, northing (measured from
the equator, negative in the south) rounded up. Checked against real Earth Search items of 10 tiles
in both hemispheres (tests/test_synth.py), e.g. 33TWL -> (499980, 5100000), 20EPT -> (600000, 3300040).
"""

from __future__ import annotations

import math
import re

from geofm.errors import InputError
from geofm.sentinel2 import utm_epsg

_SQUARE = 100_000.0
_COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # by zone % 3
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"  # 20 letters, repeating every 2,000 km
# Lowest northing (m, false northing included) of each latitude band, as in the MGRS standard tables.
_BAND_MIN_NORTHING = {
    "C": 1_100_000, "D": 2_000_000, "E": 2_800_000, "F": 3_700_000, "G": 4_600_000, "H": 5_500_000,
    "J": 6_400_000, "K": 7_300_000, "L": 8_200_000, "M": 9_100_000, "N": 0, "P": 800_000,
    "Q": 1_700_000, "R": 2_600_000, "S": 3_500_000, "T": 4_400_000, "U": 5_300_000, "V": 6_200_000,
    "W": 7_000_000, "X": 7_900_000,
}
_GRID = re.compile(r"^(?P<zone>\d{1,2})(?P<band>[C-HJ-NP-X])(?P<col>[A-HJ-NP-Z])(?P<row>[A-HJ-NP-V])$")


def parse_grid(grid: str) -> tuple[int, str, str, str]:
    """``33TWL`` -> (33, 'T', 'W', 'L'); a bad tile name raises naming it."""
    m = _GRID.match(grid.upper().removeprefix("MGRS-"))
    if m is None or not 1 <= int(m["zone"]) <= 60:
        raise InputError(f"not an MGRS tile: {grid!r} (expected like 33TWL)")
    return int(m["zone"]), m["band"], m["col"], m["row"]


def square_origin(grid: str) -> tuple[float, float]:
    """UTM (easting, northing) of the south-west corner of the tile's MGRS 100 km square."""
    zone, band, col, row = parse_grid(grid)
    columns = _COLUMN_SETS[zone % 3]
    if col not in columns:
        raise InputError(f"MGRS tile {grid!r}: column letter {col} does not occur in UTM zone {zone}")
    easting = (columns.index(col) + 1) * _SQUARE
    row_offset = 5 if zone % 2 == 0 else 0  # even zones start their row letters at F
    northing = ((_ROW_LETTERS.index(row) - row_offset) % 20) * _SQUARE
    while northing < _BAND_MIN_NORTHING[band]:
        northing += 2_000_000
    return easting, northing


def tile_origin(grid: str) -> tuple[float, float]:
    """UTM (x, y) of the upper-left corner of a Sentinel-2 tile, as in its items' ``proj:transform``."""
    easting, northing = square_origin(grid)
    north_edge = northing + _SQUARE
    false_northing = 10_000_000 if utm_epsg(grid) >= 32700 else 0
    x = math.floor(easting / 60) * 60
    y = math.ceil((north_edge - false_northing) / 60) * 60 + false_northing
    return float(x), float(y)
