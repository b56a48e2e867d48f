"""Global PCA: fitted once on a seeded subsample of all chips and dates, saved, applied everywhere.

The reference system fitted PCA per compute instance, so values from different instances were not
comparable. Here one model (mean + components) is fitted before the per-chip work and every unit of
work projects with it, so a chip's values never depend on how the chips were partitioned.

The fit is plain numpy: an eigen-decomposition of the smaller of the Gram matrix (n x n) and the
covariance matrix (F x F), with the sign of each component fixed (largest loading positive), so the
same sample always gives the same model. Memory: the sample matrix, ``n x F`` float32 (for Clay
patch embeddings F = L x D = 1024 x 768: 2000 rows are 6.3 GB; lower ``pca_sample_size`` on small
machines).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from geofm import storage
from geofm.digest import digest_bytes
from geofm.errors import InputError, NotFoundError

_FLOAT64_MAX_VALUES = 250_000_000


@dataclass(frozen=True)
class PCAModel:
    """A fitted PCA: ``transform(X) = (X - mean) @ components.T``."""

    mean: np.ndarray  # [F] float64
    components: np.ndarray  # [n_components, F] float64
    explained_variance_ratio: np.ndarray  # [n_components]
    kind: str  # the embedding kind it was fitted on: "patch" or "cls"
    sample_size: int  # rows actually used
    seed: int

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project rows ``x`` [N, F] (or one row [F]) to [N, n_components] float64."""
        x = np.asarray(x, dtype=np.float64)
        one = x.ndim == 1
        x = x.reshape(1, -1) if one else x.reshape(x.shape[0], -1)
        if x.shape[1] != self.n_features:
            raise InputError(f"PCA was fitted on {self.n_features} features, got rows of {x.shape[1]}")
        out = (x - self.mean) @ self.components.T
        return out[0] if one else out

    @property
    def model_id(self) -> str:
        """A short digest of the model's numbers: equal ids mean identical projections."""
        return digest_bytes(self.mean.tobytes(), self.components.tobytes())


def fit_pca(x: np.ndarray, n_components: int, kind: str = "patch", seed: int = 0,
            overwrite: bool = False) -> PCAModel:
    """Fit PCA on rows ``x`` [n, F]; needs at least 2 rows and n_components <= min(n - 1, F).

    ``overwrite`` lets a large float32 sample be centred in place (no second copy in memory)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"PCA needs a 2-D sample [rows, features], got shape {x.shape}")
    n, f = x.shape
    if n < 2:
        raise InputError(f"PCA needs at least 2 sample rows, got {n}")
    if not np.all(np.isfinite(x)):
        raise InputError("PCA sample contains NaN or infinite values")
    if n_components > min(n - 1, f):
        raise InputError(f"n_components {n_components} exceeds what {n} rows of {f} features support "
                         f"({min(n - 1, f)}); lower n_components or raise pca_sample_size")
    mean = x.mean(axis=0, dtype=np.float64)
    # float64 while the centred sample fits in 2 GB, float32 beyond (Clay patch embeddings)
    work = np.float64 if n * f <= _FLOAT64_MAX_VALUES else np.float32
    if overwrite and x.dtype == work:
        xc = x
        xc -= mean.astype(work)
    else:
        xc = x.astype(work, copy=True)
        xc -= mean.astype(work)
    if n <= f:  # Gram route: eigenvectors U of Xc Xc^T give components Xc^T U / s
        gram = (xc @ xc.T).astype(np.float64)
        vals, vecs = np.linalg.eigh(gram)
        order = np.argsort(vals)[::-1][:n_components]
        vals, vecs = vals[order], vecs[:, order]
        comps = (xc.T.astype(np.float64) @ vecs).T / np.sqrt(np.maximum(vals, 1e-300))[:, None]
        total = float(np.trace(gram))
    else:  # covariance route
        cov = (xc.T @ xc).astype(np.float64)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:n_components]
        vals, comps = vals[order], vecs[:, order].T
        total = float(np.trace(cov))
    comps /= np.linalg.norm(comps, axis=1, keepdims=True)
    # sign convention: the largest-magnitude loading of each component is positive
    idx = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(len(idx)), idx])[:, None]
    ratio = vals / total if total > 0 else np.zeros_like(vals)
    return PCAModel(mean, comps, ratio, kind, n, seed)


def save_pca(model: PCAModel, url: str) -> None:
    """Write the model as ``.npz`` (no pickle): mean, components, explained_variance_ratio, kind, ..."""
    buf = io.BytesIO()
    np.savez(buf, mean=model.mean, components=model.components,
             explained_variance_ratio=model.explained_variance_ratio, kind=np.str_(model.kind),
             sample_size=np.int64(model.sample_size), seed=np.int64(model.seed))
    storage.write_bytes(url, buf.getvalue())


def load_pca(url: str) -> PCAModel:
    """Read a model written by :func:`save_pca`; a missing or broken file raises naming the URL."""
    if not storage.exists(url):
        raise NotFoundError(f"PCA model not found: {url} (step 3 fits it before its units of work)")
    try:
        with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
            return PCAModel(z["mean"], z["components"], z["explained_variance_ratio"], str(z["kind"]),
                            int(z["sample_size"]), int(z["seed"]))
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"{url}: not a PCA model file ({exc})") from exc
