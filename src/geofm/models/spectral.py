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
Band subsets: blue, green, red and nir are required; any other band may be absent (data with only RGB+NIR,
like many archives): its features, and those of the indices that need it, are 0 for every patch, so the
dimension and meaning of every position stay fixed.
"""

from __future__ import annotations

import warnings
from datetime import datetime

import numpy as np

from geofm import indices
from geofm.errors import ModelError
from geofm.indices import normalized_difference
from geofm.sentinel2 import BANDS

SPECTRAL_BANDS: tuple[str, ...] = tuple(b.name for b in BANDS if b.clay_mean is not None)
REQUIRED_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
PATCH_SIZE = 8
# (name, a, b): index = (a - b) / (a + b), the formulas of geofm.indices in their order
INDICES: tuple[tuple[str, str, str], ...] = tuple((i.name, i.a, i.b) for i in indices.INDICES)
N_BANDS = len(SPECTRAL_BANDS)
N_INDICES = len(INDICES)
EMBEDDING_DIM = 2 * (N_BANDS + N_INDICES)  # 32
_MEAN = np.array([b.clay_mean for b in BANDS if b.clay_mean is not None], dtype=np.float32)
_STD = np.array([b.clay_std for b in BANDS if b.clay_mean is not None], dtype=np.float32)


def _patches(x: np.ndarray, p: int) -> np.ndarray:
    """[B, C, H, W] -> [B, L, C, p*p] with L row-major over the patch grid."""
    b, c, h, w = x.shape
    gy, gx = h // p, w // p
    return x.reshape(b, c, gy, p, gx, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, gy * gx, c, p * p)


def spectral_features(pixels: np.ndarray, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class [B, 32] and patch [B, L, 32] embeddings of harmonised-DN pixels [B, C, H, W] (NaN = nodata)."""
    if pixels.ndim != 4:
        raise ModelError(f"spectral: pixels must be [B, C, H, W], got shape {pixels.shape}")
    missing = [b for b in REQUIRED_BANDS if b not in bands]
    if missing:
        raise ModelError(f"spectral needs at least bands {list(REQUIRED_BANDS)}; missing {missing}")
    h, w = pixels.shape[-2:]
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise ModelError(f"spectral: chip side must be a multiple of {PATCH_SIZE}, got {h}x{w}")
    pos = [i for i, b in enumerate(SPECTRAL_BANDS) if b in bands]  # positions of the bands we have
    have = [SPECTRAL_BANDS[i] for i in pos]
    x = pixels[:, [bands.index(b) for b in have]].astype(np.float32)
    x = np.where(np.isfinite(x), x, np.nan)
    z = (x - _MEAN[None, pos, None, None]) / _STD[None, pos, None, None]
    refl = {name: x[:, i] for i, name in enumerate(have)}
    usable = [a in refl and b in refl for _, a, b in INDICES]
    zero = np.zeros_like(x[:, 0])
    idx_pix = np.stack([normalized_difference(refl[a], refl[b]) if ok else zero
                        for (_, a, b), ok in zip(INDICES, usable, strict=True)], axis=1)
    idx_pix = np.where(np.isnan(x).any(axis=1, keepdims=True), np.nan, idx_pix)

    zp, xp, ip = _patches(z, PATCH_SIZE), _patches(x, PATCH_SIZE), _patches(idx_pix, PATCH_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN patches
        band_mean_have = np.nanmean(zp, axis=-1)
        band_std_have = np.nanstd(zp, axis=-1)
        refl_mean = np.nanmean(xp, axis=-1)  # [B, L, C present]
        idx_std = np.nanstd(ip, axis=-1)
    band_mean = np.zeros((*band_mean_have.shape[:2], N_BANDS), dtype=np.float32)
    band_std = np.zeros_like(band_mean)
    band_mean[..., pos], band_std[..., pos] = band_mean_have, band_std_have
    rm = {name: refl_mean[..., i] for i, name in enumerate(have)}
    zero_patch = np.zeros(refl_mean.shape[:2], dtype=np.float32)
    idx_mean = np.stack([normalized_difference(rm[a], rm[b]) if ok else zero_patch
                         for (_, a, b), ok in zip(INDICES, usable, strict=True)], axis=-1)
    patch = np.concatenate([band_mean, idx_mean, band_std, idx_std], axis=-1)
    valid = np.isfinite(band_mean_have).all(axis=-1)  # [B, L]
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
        self.pin_memory = False  # runs on the CPU

    def prepare(self, pixels: np.ndarray, bands: list[str]) -> np.ndarray:
        """Nothing to do: the features are computed from the DN themselves."""
        return pixels

    def embed(
        self, pixels: np.ndarray, bands: list[str], datetimes: list[datetime],
        lats: np.ndarray | list[float], lons: np.ndarray | list[float], gsd: float,
        prepared: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        return spectral_features(np.asarray(pixels), list(bands))
