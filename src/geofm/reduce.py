"""Global PCA: fitted once on a seeded subsample of all chips and dates, saved, applied everywhere.

The reference system fitted PCA per compute instance, so values from different instances were not
comparable. Here one model (mean + components) is fitted before the per-chip work and every unit of
work projects with it, so a chip's values never depend on how the chips were partitioned.

The fit is plain numpy: an eigen-decomposition of the smaller of the Gram matrix (n x n) and the
covariance matrix (F x F), with the sign of each component fixed (largest loading positive), so the
same sample always gives the same model. Memory: the sample matrix, ``n x F`` float32 (for Clay
patch embeddings F = L x D = 1024 x 768: 2000 rows are 6.3 GB; lower ``pca_sample_size`` on small
machines), plus the n x n Gram matrix and a 64 MB float64 block: the centring is done block by block.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from geofm import storage
from geofm.digest import digest_bytes
from geofm.errors import InputError, NotFoundError

_BLOCK_BYTES = 64 * 2**20  # float64 working block of the fit


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


def _column_blocks(n_rows: int, n_features: int) -> list[slice]:
    """Feature slices whose float64 copy of ``n_rows`` rows is at most :data:`_BLOCK_BYTES`."""
    width = max(1, _BLOCK_BYTES // (8 * max(n_rows, 1)))
    return [slice(i, min(i + width, n_features)) for i in range(0, n_features, width)]


def fit_pca(x: np.ndarray, n_components: int, kind: str = "patch", seed: int = 0) -> PCAModel:
    """Fit PCA on rows ``x`` [n, F]; needs at least 2 rows and n_components <= min(n - 1, F).

    Centred in float64 one block of features at a time (:data:`_BLOCK_BYTES`), so the fit needs the
    sample plus an n x n (or F x F) matrix and one block, never a centred copy of the whole sample."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"PCA needs a 2-D sample [rows, features], got shape {x.shape}")
    n, f = x.shape
    if n < 2:
        raise InputError(f"PCA needs at least 2 sample rows, got {n}")
    if n_components > min(n - 1, f):
        raise InputError(f"n_components {n_components} exceeds what {n} rows of {f} features support "
                         f"({min(n - 1, f)}); lower n_components or raise pca_sample_size")
    mean = np.empty(f, np.float64)
    blocks = _column_blocks(n, f)
    for b in blocks:
        if not np.all(np.isfinite(x[:, b])):
            raise InputError("PCA sample contains NaN or infinite values")
        mean[b] = x[:, b].mean(axis=0, dtype=np.float64)

    def centred(b: slice) -> np.ndarray:
        return x[:, b].astype(np.float64) - mean[b]

    if n <= f:  # Gram route: eigenvectors U of Xc Xc^T give components Xc^T U / s
        gram = np.zeros((n, n))
        for b in blocks:
            xb = centred(b)
            gram += xb @ xb.T
        vals, vecs = np.linalg.eigh(gram)
        order = np.argsort(vals)[::-1][:n_components]
        vals, vecs = vals[order], vecs[:, order]
        comps = np.empty((n_components, f))
        for b in blocks:
            comps[:, b] = (centred(b).T @ vecs).T
        comps /= np.sqrt(np.maximum(vals, 1e-300))[:, None]
        total = float(np.trace(gram))
    else:  # covariance route (F < n: the F x F matrix is the small one), rows in blocks
        cov = np.zeros((f, f))
        for r in _column_blocks(f, n):
            xr = x[r].astype(np.float64) - mean
            cov += xr.T @ xr
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
