"""The registered embedding models and how to load one as an ``Embedder``.

An Embedder turns harmonised-DN chips (NaN = nodata) into a class embedding [B, D] and patch
embeddings [B, L, D], float32. Models: ``clay-v1.5`` (ViT-L/8), ``clay-v1`` (ViT-B/8, the spec's model),
``clay-tiny`` (the parity config, random weights only: tests and demos) and ``spectral`` (weights-free).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from geofm.errors import ConfigError, ModelError
from geofm.models import checkpoints, spectral
from geofm.models.clay import ClayEncoder
from geofm.models.spec import ClayConfig, ModelSpec, build_clay, get_model_spec, list_models
from geofm.sentinel2 import band

__all__ = ["ClayConfig", "ModelSpec", "build_clay", "get_model_spec", "list_models"]



class Embedder(Protocol):
    spec: ModelSpec
    weights: str  # where its weights came from, in words ("RANDOM ..." when random)
    pin_memory: bool  # inputs are best handed over in pinned memory (the model runs on CUDA)

    def prepare(self, pixels: np.ndarray, bands: list[str]) -> np.ndarray:
        """The CPU work on harmonised DN [B, C, H, W] before the model (thread-safe; a chip loader's
        readers run it in parallel), in place on float32 ``pixels`` where it can (they are the caller's
        scratch): ``embed(prepare(p.copy()), ..., prepared=True)`` equals ``embed(p, ...)``."""
        ...

    def embed(
        self, pixels: Any, bands: list[str], datetimes: list[datetime],
        lats: Sequence[float] | np.ndarray, lons: Sequence[float] | np.ndarray, gsd: float,
        prepared: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]: ...


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda raises naming the device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device {device!r} not understood; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


_RANDOM = re.compile(r"^(?:random)?(?::?(\d+))?$")


def random_seed(checkpoint: str | int | None) -> int | None:
    """Seed when ``checkpoint`` asks for random weights (``random``, ``random:N``, ``N``), else None."""
    if isinstance(checkpoint, int):
        return checkpoint
    if checkpoint is None or checkpoint == "":
        return None
    m = _RANDOM.match(str(checkpoint))
    return int(m.group(1) or 0) if m else None


def _refuse_random_only(spec: ModelSpec) -> None:
    if spec.random_only and not checkpoints.cached_weights_path(spec.name).is_file():
        raise ModelError(f"{spec.name} has no official weights: pass checkpoint='random' (or a seed) "
                         "or a file")


def load_clay_encoder(spec: ModelSpec, checkpoint: str | int | None = None) -> tuple[ClayEncoder, str]:
    """A Clay encoder with its weights (fp32, cpu, eval) and a description of where they came from."""
    seed = random_seed(checkpoint)
    if seed is not None:
        torch.manual_seed(seed)
        model = build_clay(spec)
        note = f"RANDOM weights (seed {seed}): embeddings are not meaningful"
        warnings.warn(f"{spec.name}: {note}", stacklevel=2)
        return model.eval(), note
    if checkpoint is None:
        _refuse_random_only(spec)
        path = checkpoints.ensure_cached(spec)
    else:
        path = Path(str(checkpoint))
    state = checkpoints.encoder_state_dict(checkpoints.read_checkpoint(path))
    model = build_clay(spec, "meta")
    checkpoints.load_into(model, state, spec.name, str(path))
    return model.eval(), str(path)


def check_weights(name: str, checkpoint: str | int | None = None) -> None:
    """Fail now, with the message loading would give, when ``name`` cannot get weights: a missing
    checkpoint file, a random-only model without ``random``, or Clay weights neither cached nor
    downloadable (a download, when online, is what loading would do anyway, and is kept)."""
    spec = get_model_spec(name)
    if spec.kind != "clay" or random_seed(checkpoint) is not None:
        return
    if checkpoint is not None:
        if not Path(str(checkpoint)).is_file():
            raise ModelError(f"checkpoint for {name} not found: {checkpoint}")
        return
    _refuse_random_only(spec)
    checkpoints.ensure_cached(spec)


def time_latlon(datetimes: Sequence[datetime], lats: Sequence[float], lons: Sequence[float]) -> np.ndarray:
    """Clay's metadata channels [B, 8]: sin/cos of ISO week (2π/52) and hour (2π/24), then of lat, lon."""
    rows = []
    for dt, lat, lon in zip(datetimes, lats, lons, strict=True):
        week = dt.isocalendar().week * 2 * math.pi / 52
        hour = dt.hour * 2 * math.pi / 24
        la, lo = math.radians(float(lat)), math.radians(float(lon))
        rows.append([math.sin(week), math.cos(week), math.sin(hour), math.cos(hour),
                     math.sin(la), math.cos(la), math.sin(lo), math.cos(lo)])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 8)


def normalise(pixels: np.ndarray, bands: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
    """(DN - mean) / std with Clay's statistics; NaN/inf (nodata) become 0, i.e. the band mean. Into
    ``out`` (float32, may be ``pixels`` itself) when given."""
    stats = [band(b) for b in bands]
    lacking = [b.name for b in stats if b.clay_mean is None]
    if lacking:
        raise ModelError(f"Clay has no normalisation statistics for bands {lacking}")
    mean = np.array([b.clay_mean for b in stats], dtype=np.float32)[None, :, None, None]
    std = np.array([b.clay_std for b in stats], dtype=np.float32)[None, :, None, None]
    z = np.subtract(pixels, mean, dtype=np.float32, out=out)  # then in place: no large temporaries
    np.divide(z, std, out=z)
    bad = np.isfinite(z)
    np.logical_not(bad, out=bad)
    np.copyto(z, np.float32(0), where=bad)
    return z


class ClayEmbedder:
    """A Clay encoder on a device; batches in, (cls [B, D], patches [B, L, D]) float32 out."""

    def __init__(self, spec: ModelSpec, encoder: ClayEncoder, device: torch.device, weights: str) -> None:
        self.spec = spec
        self.device = device
        self.weights = weights
        self.encoder = encoder.to(device).eval()
        self.pin_memory = device.type == "cuda"
        self._kernels: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _kernel(self, bands: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated patch-embedding kernel of a band set, computed once (fp32) and cached."""
        if bands not in self._kernels:
            waves = torch.tensor([band(b).wavelength for b in bands], dtype=torch.float32, device=self.device)
            with torch.inference_mode():
                self._kernels[bands] = self.encoder.patch_embedding.kernel(waves)
        return self._kernels[bands]

    def prepare(self, pixels: np.ndarray, bands: list[str]) -> np.ndarray:
        """Clay's normalisation (see :func:`normalise`), in place on float32 pixels."""
        return normalise(pixels, bands, out=pixels if pixels.dtype == np.float32 else None)

    def embed(
        self, pixels: Any, bands: list[str], datetimes: list[datetime],
        lats: Sequence[float] | np.ndarray, lons: Sequence[float] | np.ndarray, gsd: float,
        prepared: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of harmonised DN [B, C, H, W] (numpy), or of ``prepare``'d pixels (numpy or a torch
        tensor, pinned for an asynchronous copy to CUDA) when ``prepared``."""
        if not isinstance(pixels, torch.Tensor):
            pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1] != len(bands):
            raise ModelError(f"pixels must be [B, {len(bands)}, H, W] for bands {bands}, "
                             f"got {tuple(pixels.shape)}")
        key = tuple(band(b).name for b in bands)
        x = torch.as_tensor(pixels if prepared else normalise(pixels, key))
        x = x.to(self.device, non_blocking=x.is_pinned())
        meta = torch.from_numpy(time_latlon(datetimes, lats, lons)).to(self.device)
        kernel = self._kernel(key)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = self.encoder(x, meta[:, :4], meta[:, 4:], float(gsd), waves=torch.empty(0), kernel=kernel)
        out = out.float().cpu().numpy()
        return out[:, 0].copy(), out[:, 1:].copy()


def has_weights(name: str) -> bool:
    """Whether ``name`` can embed meaningfully here without a download (spectral, or imported weights)."""
    spec = get_model_spec(name)
    return spec.kind == "spectral" or checkpoints.cached_weights_path(spec.name).is_file()


def default_model(preferred: Sequence[str] = ("clay-v1.5", "clay-v1")) -> str:
    """The first of ``preferred`` whose weights are in the model cache, else ``spectral`` (for demos)."""
    return next((m for m in preferred if has_weights(m)), "spectral")


def load_embedder(name: str, checkpoint: str | int | None = None, device: str = "auto") -> Embedder:
    """Load a registered model ready to embed; Clay weights from a file, the cache, HF, or random."""
    spec = get_model_spec(name)
    if spec.kind == "spectral":
        return spectral.SpectralEmbedder(spec)
    dev = resolve_device(device)
    encoder, weights = load_clay_encoder(spec, checkpoint)
    return ClayEmbedder(spec, encoder, dev, weights)
