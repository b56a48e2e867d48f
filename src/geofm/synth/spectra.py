"""Land-cover classes of the synthetic scenes and their surface-reflectance spectra.

Spectra are typical L2A bottom-of-atmosphere reflectances (0..1) for the 12 bands in ESA order
(B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12, as ``sentinel2.BANDS``): vegetation with a red
edge and high NIR, water dark beyond green, soils rising towards SWIR, clouds bright and flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np

from geofm.errors import InputError
from geofm.sentinel2 import BANDS


@dataclass(frozen=True)
class LandCover:
    """One class of the land-cover raster (0 is nodata/ignore)."""

    id: int
    name: str
    colour: str  # hex RGB, for legends


NODATA_CLASS = LandCover(0, "nodata", "#000000")
FOREST = LandCover(1, "forest", "#1b5e20")
CROPLAND = LandCover(2, "cropland", "#f9a825")
GRASSLAND = LandCover(3, "grassland", "#9ccc65")
WATER = LandCover(4, "water", "#1565c0")
URBAN = LandCover(5, "urban", "#c62828")
BARE = LandCover(6, "bare_soil", "#a1887f")
CLASSES: tuple[LandCover, ...] = (NODATA_CLASS, FOREST, CROPLAND, GRASSLAND, WATER, URBAN, BARE)
# Share of land-cover patches drawn for each class (planted changes come on top).
PATCH_WEIGHTS: dict[int, float] = {1: 0.28, 2: 0.30, 3: 0.16, 4: 0.08, 5: 0.10, 6: 0.08}

_S = {  # B01   B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
    "forest": (0.020, 0.025, 0.045, 0.024, 0.075, 0.210, 0.270, 0.300, 0.310, 0.250, 0.150, 0.070),
    "crop_green": (0.025, 0.030, 0.070, 0.032, 0.110, 0.300, 0.380, 0.420, 0.430, 0.350, 0.200, 0.095),
    "crop_soil": (0.060, 0.070, 0.095, 0.125, 0.150, 0.175, 0.190, 0.205, 0.215, 0.170, 0.290, 0.250),
    "grass": (0.030, 0.040, 0.075, 0.050, 0.120, 0.250, 0.300, 0.330, 0.340, 0.280, 0.220, 0.120),
    "water": (0.060, 0.055, 0.050, 0.030, 0.024, 0.015, 0.012, 0.010, 0.009, 0.006, 0.003, 0.002),
    "urban": (0.090, 0.100, 0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.165, 0.120, 0.200, 0.180),
    "bare": (0.070, 0.080, 0.110, 0.150, 0.180, 0.200, 0.220, 0.240, 0.250, 0.200, 0.320, 0.280),
    "cloud": (0.520, 0.540, 0.540, 0.550, 0.560, 0.570, 0.570, 0.580, 0.580, 0.420, 0.450, 0.350),
    "cirrus": (0.060, 0.060, 0.055, 0.050, 0.050, 0.048, 0.046, 0.045, 0.045, 0.030, 0.030, 0.020),
}


@dataclass(frozen=True)
class Scenario:
    """A landscape recipe: the share of land-cover patches per class, and how much a crop field's
    cycle differs from one year to the next (sowing date shift and peak greenness, per field and year),
    as real fields do with weather and rotation; 0 repeats the same cycle every year."""

    name: str
    patch_weights: dict[int, float]
    sowing_shift_days: float = 0.0  # standard deviation, days
    peak_spread: float = 0.0  # standard deviation of the peak green fraction (1 = full canopy)


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario("default", PATCH_WEIGHTS),
    # half the land in summer crops whose cycle varies from year to year: for seasonal baselines
    "farmland": Scenario("farmland", {1: 0.16, 2: 0.50, 3: 0.12, 4: 0.06, 5: 0.08, 6: 0.08},
                         sowing_shift_days=12.0, peak_spread=0.08),
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; unknown names raise naming the known ones."""
    if name not in SCENARIOS:
        raise InputError(f"unknown synthetic scenario {name!r}; use one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


SPECTRA: dict[str, np.ndarray] = {k: np.asarray(v, dtype=np.float32) for k, v in _S.items()}
assert all(len(v) == len(BANDS) for v in SPECTRA.values())


def crop_green_fraction(day: date, phase_days: float = 0.0, peak: float = 1.0) -> float:
    """Green canopy fraction of a summer crop on ``day``: bare in winter, ``peak`` near late June."""
    doy = day.timetuple().tm_yday
    return float(peak * math.exp(-(((doy - 175.0 - phase_days) / 50.0) ** 2)))


def grass_green_fraction(day: date) -> float:
    """Grass stays green with a mild seasonal cycle (greenest in May, driest in winter)."""
    doy = day.timetuple().tm_yday
    return 0.75 + 0.2 * math.cos(2 * math.pi * (doy - 135) / 365.0)

