"""``spectral``: a weights-free encoder of per-patch band statistics and spectral indices.

Why: meaningful embeddings with no model download, for the demo, tests and machines without weights.
It separates land covers by their spectral shape (water: NDWI > 0, NDVI < 0; forest: NDVI high;
bare soil / built-up: NDBI > 0, bright SWIR), so similarity search and change detection work with it.

Per 8x8 patch (``PATCH_FEATURES``, 32 values, in this order):
  0-9    band means normalised with Clay's statistics ((DN - mean) / std), bands in ``SPECTRAL_BANDS`` order
  10-15  indices of the patch-mean reflectance: NDVI, NDWI, MNDWI, NDBI, NDRE, NBR
  16-25  within-patch standard deviation of each normalised band (texture)
  26-31  within-patch standard deviation of each index, computed per pixel
Class embedding (32 values): mean over valid patches of features 0-15, then their std over valid patches.
Nodata (NaN) pixels are ignored; a patch with no valid pixel gets zeros and is left out of the class pooling.
"""

from __future__ import annotations

import warnings
from datetime import datetime

import numpy as np

from geofm.sentinel2 import BANDS

SPECTRAL_BANDS: tuple[str, ...] = tuple(b.name for b in BANDS if b.clay_mean is not None)
PATCH_SIZE = 8
# (name, a, b): index = (a - b) / (a + b) on reflectance
INDICES: tuple[tuple[str, str, str], ...] = (
    ("ndvi", "nir", "red"),
    ("ndwi", "green", "nir"),
    ("mndwi", "green", "swir16"),
    ("ndbi", "swir16", "nir"),
    ("ndre", "nir", "rededge1"),
    ("nbr", "nir", "swir22"),
)
N_BANDS = len(SPECTRAL_BANDS)
N_INDICES = len(INDICES)
EMBEDDING_DIM = 2 * (N_BANDS + N_INDICES)  # 32
_MEAN = np.array([b.clay_mean for b in BANDS if b.clay_mean is not None], dtype=np.float32)
_STD = np.array([b.clay_std for b in BANDS if b.clay_mean is not None], dtype=np.float32)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    den = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a - b) / den
    return np.where(np.abs(den) > 1e-6, out, 0.0).astype(np.float32)


def _patches(x: np.ndarray, p: int) -> np.ndarray:
    """[B, C, H, W] -> [B, L, C, p*p] with L row-major over the patch grid."""
    b, c, h, w = x.shape
    gy, gx = h // p, w // p
    return x.reshape(b, c, gy, p, gx, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, gy * gx, c, p * p)


def spectral_features(pixels: np.ndarray, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class [B, 32] and patch [B, L, 32] embeddings of harmonised-DN pixels [B, C, H, W] (NaN = nodata)."""
    if pixels.ndim != 4:
        raise ValueError(f"spectral: pixels must be [B, C, H, W], got shape {pixels.shape}")
    missing = [b for b in SPECTRAL_BANDS if b not in bands]
    if missing:
        raise ValueError(f"spectral needs bands {list(SPECTRAL_BANDS)}; missing {missing}")
    h, w = pixels.shape[-2:]
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise ValueError(f"spectral: chip side must be a multiple of {PATCH_SIZE}, got {h}x{w}")
    x = pixels[:, [bands.index(b) for b in SPECTRAL_BANDS]].astype(np.float32)
    x = np.where(np.isfinite(x), x, np.nan)
    z = (x - _MEAN[None, :, None, None]) / _STD[None, :, None, None]
    refl = {name: x[:, i] for i, name in enumerate(SPECTRAL_BANDS)}
    idx_pix = np.stack([_ratio(refl[a], refl[b]) for _, a, b in INDICES], axis=1)
    idx_pix = np.where(np.isnan(x).any(axis=1, keepdims=True), np.nan, idx_pix)

    zp, xp, ip = _patches(z, PATCH_SIZE), _patches(x, PATCH_SIZE), _patches(idx_pix, PATCH_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN patches
        band_mean = np.nanmean(zp, axis=-1)
        band_std = np.nanstd(zp, axis=-1)
        refl_mean = np.nanmean(xp, axis=-1)  # [B, L, C]
        idx_std = np.nanstd(ip, axis=-1)
    rm = {name: refl_mean[..., i] for i, name in enumerate(SPECTRAL_BANDS)}
    idx_mean = np.stack([_ratio(rm[a], rm[b]) for _, a, b in INDICES], axis=-1)
    patch = np.concatenate([band_mean, idx_mean, band_std, idx_std], axis=-1)
    valid = np.isfinite(band_mean).all(axis=-1)  # [B, L]
    patch = np.nan_to_num(patch, nan=0.0).astype(np.float32)

    head = patch[..., : N_BANDS + N_INDICES]
    cls = np.zeros((patch.shape[0], EMBEDDING_DIM), dtype=np.float32)
    for i in range(patch.shape[0]):
        v = head[i][valid[i]]
        if len(v):
            cls[i] = np.concatenate([v.mean(axis=0), v.std(axis=0)])
    return cls, patch


class SpectralEmbedder:
    """The ``spectral`` model behind the common embedder interface (time/place/gsd are not used)."""

    def __init__(self, spec: object) -> None:
        self.spec = spec
        self.weights = "none (weights-free)"

    def embed(
        self, pixels: np.ndarray, bands: list[str], datetimes: list[datetime],
        lats: np.ndarray | list[float], lons: np.ndarray | list[float], gsd: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        return spectral_features(np.asarray(pixels), list(bands))
