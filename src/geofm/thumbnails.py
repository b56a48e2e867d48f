"""RGB chip thumbnails with one fixed stretch, so every date and scene can be compared by eye.

Unlike a per-chip min-max stretch, a fixed reflectance range keeps a bright (cloudy) date bright and
a dark date dark. Nodata pixels are transparent.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from geofm.errors import InputError
from geofm.sentinel2 import REFLECTANCE_SCALE

# The one stretch: reflectance STRETCH_MIN..STRETCH_MAX maps to 0..1, then a gamma brightens dark land.
STRETCH_MIN = 0.0
STRETCH_MAX = 0.3
GAMMA = 2.0


def to_uint8(dn: np.ndarray) -> np.ndarray:
    """Harmonised DN (NaN = nodata) to 0..255 with the fixed stretch; NaN becomes 0."""
    refl = dn.astype(np.float64) / REFLECTANCE_SCALE
    scaled = np.clip((refl - STRETCH_MIN) / (STRETCH_MAX - STRETCH_MIN), 0.0, 1.0) ** (1.0 / GAMMA)
    return np.where(np.isnan(scaled), 0, np.round(scaled * 255)).astype(np.uint8)


def rgb_png(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> bytes:
    """PNG (RGBA) bytes of three equally shaped DN arrays; alpha 0 where any of them is nodata."""
    if not (red.shape == green.shape == blue.shape) or red.ndim != 2:
        raise InputError(f"rgb_png needs three 2-D arrays of one shape, got {red.shape}, {green.shape}, "
                         f"{blue.shape}")
    nodata = np.isnan(red) | np.isnan(green) | np.isnan(blue)
    rgba = np.dstack([to_uint8(red), to_uint8(green), to_uint8(blue),
                      np.where(nodata, 0, 255).astype(np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=False)
    return buf.getvalue()
