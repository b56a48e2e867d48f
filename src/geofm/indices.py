"""Spectral indices in one place: which bands each normalised difference takes, and how each is drawn.

Every index here is ``(a - b) / (a + b)`` of two Sentinel-2 bands (asset keys of :mod:`geofm.sentinel2`),
computed on harmonised DN (the reflectance scale cancels). The ``spectral`` encoder takes the formulas
from :data:`INDICES` (their order is part of its embedding layout), and the explorer draws them with the
fixed display range and colour ramp of each, so one value has one colour on every chip and date.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.errors import InputError
from geofm.sentinel2 import band
from geofm.thumbnails import png_rgba

# Colour ramps: (position 0..1 along the display range, "#rrggbb").
VEGETATION_RAMP: tuple[tuple[float, str], ...] = (
    (0.0, "#a50026"), (0.25, "#f46d43"), (0.45, "#fee08b"), (0.65, "#a6d96a"), (0.85, "#1a9850"),
    (1.0, "#004529"))
WATER_RAMP: tuple[tuple[float, str], ...] = (
    (0.0, "#8c510a"), (0.35, "#dfc27d"), (0.5, "#f5f5f5"), (0.65, "#80cdc1"), (0.85, "#2166ac"),
    (1.0, "#053061"))
BUILT_RAMP: tuple[tuple[float, str], ...] = (
    (0.0, "#1a9850"), (0.4, "#d9ef8b"), (0.5, "#f7f7f7"), (0.75, "#c2a5cf"), (1.0, "#40004b"))


@dataclass(frozen=True)
class SpectralIndex:
    """``(a - b) / (a + b)`` of bands ``a`` and ``b``, drawn from ``vmin`` to ``vmax`` along ``ramp``."""

    name: str  # lower-case key (URLs, embedding layout)
    label: str
    title: str
    a: str
    b: str
    vmin: float
    vmax: float
    ramp: tuple[tuple[float, str], ...]

    @property
    def bands(self) -> tuple[str, str]:
        return self.a, self.b

    @property
    def formula(self) -> str:
        return f"({self.a} - {self.b}) / ({self.a} + {self.b})"


# The spectral encoder's order (geofm.models.spectral): do not reorder.
INDICES: tuple[SpectralIndex, ...] = (
    SpectralIndex("ndvi", "NDVI", "Normalised difference vegetation index", "nir", "red", -0.2, 0.9,
                  VEGETATION_RAMP),
    SpectralIndex("ndwi", "NDWI", "Normalised difference water index (McFeeters)", "green", "nir", -0.6, 0.6,
                  WATER_RAMP),
    SpectralIndex("mndwi", "MNDWI", "Modified normalised difference water index", "green", "swir16", -0.6,
                  0.6, WATER_RAMP),
    SpectralIndex("ndbi", "NDBI", "Normalised difference built-up index", "swir16", "nir", -0.5, 0.5,
                  BUILT_RAMP),
    SpectralIndex("ndre", "NDRE", "Normalised difference red-edge index", "nir", "rededge1", -0.2, 0.7,
                  VEGETATION_RAMP),
    SpectralIndex("nbr", "NBR", "Normalised burn ratio", "nir", "swir22", -0.5, 0.9, VEGETATION_RAMP),
)
INDICES_BY_NAME: dict[str, SpectralIndex] = {i.name: i for i in INDICES}
NAMES: tuple[str, ...] = tuple(INDICES_BY_NAME)
for _i in INDICES:  # every band named here is a Sentinel-2 band
    band(_i.a), band(_i.b)


def get(name: str) -> SpectralIndex:
    """The index called ``name`` (case-insensitive); unknown names raise :class:`InputError` with the list."""
    found = INDICES_BY_NAME.get(name.lower()) if isinstance(name, str) else None
    if found is None:
        raise InputError(f"unknown spectral index {name!r}; known: {', '.join(NAMES)}")
    return found


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` in the inputs' float type: 0 where ``a + b`` is about 0 (and, as the spectral
    encoder wants, where either input is NaN); callers that draw put NaN back where the data is missing."""
    den = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a - b) / den
    return np.where(np.abs(den) > 1e-6, out, 0.0).astype(np.float32)


def compute(index: SpectralIndex, bands: dict[str, np.ndarray]) -> np.ndarray:
    """The index of band arrays (harmonised DN, NaN = nodata) as float32, NaN where a band is NaN."""
    a, b = bands[index.a].astype(np.float32), bands[index.b].astype(np.float32)
    return np.where(np.isnan(a) | np.isnan(b), np.float32(np.nan), normalized_difference(a, b))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def colourize(index: SpectralIndex, values: np.ndarray) -> np.ndarray:
    """RGBA uint8 [..., 4] of index values along the index's fixed ramp; NaN is transparent."""
    pos = np.clip((values.astype(np.float64) - index.vmin) / (index.vmax - index.vmin), 0.0, 1.0)
    stops = np.array([p for p, _ in index.ramp])
    colours = np.array([_rgb(c) for _, c in index.ramp], dtype=np.float64)
    nan = np.isnan(pos)
    pos = np.where(nan, 0.0, pos)
    rgb = [np.interp(pos, stops, colours[:, k]) for k in range(3)]
    alpha = np.where(nan, 0, 255)
    return np.stack([*(np.round(c) for c in rgb), alpha], axis=-1).astype(np.uint8)


def png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGBA uint8 [H, W, 4] image (the project's fast PNG writer)."""
    return png_rgba(np.ascontiguousarray(rgba))


def index_png(index: SpectralIndex, values: np.ndarray) -> bytes:
    """PNG of a 2-D array of index values drawn with :func:`colourize`."""
    if values.ndim != 2:
        raise InputError(f"index_png needs a 2-D array, got shape {values.shape}")
    return png(colourize(index, values))


def legend_png(index: SpectralIndex, width: int = 256, height: int = 12) -> bytes:
    """The index's ramp from ``vmin`` (left) to ``vmax`` (right) as a PNG strip: the map's legend."""
    row = np.linspace(index.vmin, index.vmax, width)
    return png(np.repeat(colourize(index, row)[None], height, axis=0))


def describe(index: SpectralIndex) -> dict[str, object]:
    """What a legend needs (JSON-ready): name, label, title, bands, formula, display range, ramp stops
    as (index value, colour)."""
    span = index.vmax - index.vmin
    return {"name": index.name, "label": index.label, "title": index.title, "bands": list(index.bands),
            "formula": index.formula, "vmin": index.vmin, "vmax": index.vmax,
            "stops": [[round(index.vmin + p * span, 6), c] for p, c in index.ramp]}
