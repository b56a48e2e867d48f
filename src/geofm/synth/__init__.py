"""Realistic synthetic Sentinel-2 L2A scenes, served like Earth Search v1 (``geofm synth``).

:func:`synthesize` writes, for one MGRS tile and a list of dates, per-band COGs at native 10/20/60 m,
SCL and TCI, Earth-Search-shaped STAC items, an AOI inside the scene, a land-cover raster and the
ground truth of planted changes. Tests and the demo run the whole pipeline on it with no network.
"""

from __future__ import annotations

from datetime import date, timedelta

from geofm.errors import InputError
from geofm.sentinel2 import TILE_EXTENT_M
from geofm.synth.mgrs import tile_origin
from geofm.synth.scene import SynthResult, synthesize

__all__ = ["TILE_EXTENT_M", "SynthResult", "default_dates", "synthesize", "tile_origin", "years_end"]


def default_dates(
    start: date = date(2023, 1, 1), end: date = date(2023, 12, 31), every: int = 30
) -> list[date]:
    """Dates from ``start`` to ``end`` every ``every`` days (what the CLI's defaults give)."""
    if every < 1:
        raise InputError(f"--every must be at least 1 day, not {every}")
    if end < start:
        raise InputError(f"dates reversed: start {start} is after end {end}")
    out, d = [], start
    while d <= end:
        out.append(d)
        d += timedelta(days=every)
    return out


def years_end(start: date, years: int) -> date:
    """The last day of ``years`` whole years from ``start`` (``geofm synth --years``)."""
    if years < 1:
        raise InputError(f"--years must be at least 1, not {years}")
    try:
        return start.replace(year=start.year + years) - timedelta(days=1)
    except ValueError:  # 29 February
        return date(start.year + years, 2, 28)
