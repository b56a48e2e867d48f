"""What each registered embedding model is and takes: size, bands and wavelengths, patch size,
normalisation and where its weights come from (the table every other module reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geofm.errors import ModelError
from geofm.models import spectral
from geofm.sentinel2 import band

HF_REPO = "made-with-clay/Clay"
CLAY_S2_BANDS: tuple[str, ...] = spectral.SPECTRAL_BANDS  # the 10 bands Clay was trained on, Clay's order
CLAY_NORMALISATION = (
    "per band (DN - mean) / std with Clay's Sentinel-2 L2A statistics; NaN filled with the mean"
)


@dataclass(frozen=True)
class ClayConfig:
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: float = 4.0
    patch_size: int = 8


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and takes: size, bands (+ wavelengths, µm), normalisation and weights."""

    name: str
    kind: str  # "clay" or "spectral"
    embedding_dim: int
    patch_size: int
    bands: tuple[str, ...]
    normalisation: str
    checkpoint: str  # where the weights come from, in words
    description: str
    clay: ClayConfig | None = None
    hf_filename: str | None = None  # file in the Hugging Face repo, when there is an official one
    random_only: bool = False  # no official weights exist (clay-tiny)
    wavelengths: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wavelengths", tuple(band(b).wavelength for b in self.bands))


_MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "clay-v1.5", "clay", 1024, 8, CLAY_S2_BANDS, CLAY_NORMALISATION,
            f"hf://{HF_REPO}/v1.5/clay-v1.5.ckpt (import with `geofm models import clay-v1.5`)",
            "Clay v1.5 encoder, ViT-L/8, 311,442,944 parameters",
            ClayConfig(1024, 24, 16, 64), hf_filename="v1.5/clay-v1.5.ckpt",
        ),
        ModelSpec(
            "clay-v1", "clay", 768, 8, CLAY_S2_BANDS, CLAY_NORMALISATION,
            f"hf://{HF_REPO}/v1/clay-v1-base.ckpt (import with `geofm models import clay-v1`)",
            "Clay v1.0 encoder, ViT-B/8, 92,102,144 parameters (the spec's model)",
            ClayConfig(768, 12, 12, 64), hf_filename="v1/clay-v1-base.ckpt",
        ),
        ModelSpec(
            "clay-tiny", "clay", 72, 8, CLAY_S2_BANDS, CLAY_NORMALISATION,
            "random weights only (checkpoint 'random' or a seed), or a file of this config",
            "Tiny Clay (dim 72, depth 2): the parity config, for tests and demos; RANDOM weights",
            ClayConfig(72, 2, 4, 16), random_only=True,
        ),
        ModelSpec(
            "spectral", "spectral", spectral.EMBEDDING_DIM, spectral.PATCH_SIZE, spectral.SPECTRAL_BANDS,
            "band means as (DN - mean) / std with Clay's statistics; indices on DN; NaN ignored",
            "none (weights-free)",
            "Per-8x8-patch normalised band means, NDVI/NDWI/MNDWI/NDBI/NDRE/NBR and their spreads",
        ),
    )
}


def list_models() -> list[ModelSpec]:
    return list(_MODELS.values())


def get_model_spec(name: str) -> ModelSpec:
    """The registered model ``name``; unknown names raise listing the registered ones."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(_MODELS)}") from None


def build_clay(spec: ModelSpec, device: Any = "cpu") -> Any:
    """A :class:`~geofm.models.clay.ClayEncoder` of ``spec``'s size (random init; ``device='meta'``
    allocates nothing)."""
    import torch

    from geofm.models.clay import ClayEncoder

    if spec.clay is None:
        raise ModelError(f"model {spec.name!r} is not a Clay model")
    c = spec.clay
    with torch.device(device):
        return ClayEncoder(c.dim, c.depth, c.heads, c.dim_head, c.mlp_ratio, c.patch_size)
