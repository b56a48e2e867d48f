"""Fine-tuning parameters: one pydantic model (``SegmentationConfig``) loadable from YAML.

The class table lives here too, because it is configuration: ids, names, colours and the ignore id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geofm.config import read_yaml_mapping
from geofm.models.spec import get_model_spec
from geofm.sentinel2 import band


class ClassSpec(BaseModel):
    """One class of the label set: its id in the label raster/attribute, a name and a display colour."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=254)
    name: str
    color: str = Field("#808080", description="Display colour, #rrggbb.")

    @field_validator("color")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip()
        if len(v) != 7 or not v.startswith("#"):
            raise ValueError(f"colour {v!r} is not #rrggbb")
        int(v[1:], 16)
        return v.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16)


class SegmentationConfig(BaseModel):
    """Everything a fine-tuning run needs: data, class table, model, optimisation and output folder."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- data ------------------------------------------------------------------------------
    images: list[str] = Field(
        ..., description="Chip/scene rasters (GeoTIFF or step-1 NetCDF), files or globs."
    )
    labels: str = Field(..., description="Label raster (GeoTIFF, any CRS) or polygons (GeoJSON/GeoParquet).")
    label_attribute: str = Field("class", description="Vector labels: column holding class id or name.")
    classes: list[ClassSpec] = Field(
        ..., min_length=2, description="Class table (the ignore class included)."
    )
    ignore_id: int = Field(0, ge=0, le=255, description="Label id that is ignored by loss and metrics.")
    bands: list[str] | None = Field(
        None, description="Band names of the image rasters in order (GeoTIFF); default: band descriptions."
    )
    value_scale: float = Field(
        1.0, gt=0, description="Multiply pixels by this to get DN (10000 for 0..1 TOA)."
    )
    chip_size: int = Field(
        32, ge=8, description="Training chip side in pixels (a multiple of the patch size)."
    )
    gsd: float | None = Field(
        None, gt=0, description="Ground sample distance fed to the model; default: raster."
    )
    metadata: Literal["zeros", "chip"] = Field(
        "zeros", description="time/latlon inputs: zeros (as the Clay examples) or the chip's date and centre."
    )

    # ---- split -----------------------------------------------------------------------------
    split_block_chips: int = Field(1, ge=1, description="Spatial split block side, in chips.")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of blocks held out for validation.")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Share of blocks held out for testing.")

    # ---- model -----------------------------------------------------------------------------
    model: str = Field("clay-tiny", description="Registered encoder name (clay-tiny, clay-v1, clay-v1.5).")
    checkpoint: str | None = Field(
        None, description="Encoder weights; None or 'random' = random init (fine for clay-tiny only)."
    )
    head: Literal["fpn", "pixelshuffle"] = Field(
        "fpn", description="FPN over blocks (v1) or PixelShuffle (v1.5)."
    )
    feature_blocks: list[int] | None = Field(None, description="FPN: 0-based blocks tapped; default spread.")
    head_channels: int = Field(
        256, ge=8, description="PixelShuffle head: hidden conv channels (512 in v1.5)."
    )
    freeze_encoder: bool = Field(True, description="Keep the encoder frozen (the Clay examples do).")
    trainable_blocks: int = Field(0, ge=0, description="With a frozen encoder: train only the last N blocks.")

    # ---- optimisation ----------------------------------------------------------------------
    loss: Literal["focal", "ce", "dice"] = Field(
        "focal", description="Pixel loss; the ignore id is honoured."
    )
    focal_gamma: float = Field(2.0, ge=0)
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight the loss by inverse class frequency of the training labels."
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length before the cosine decay.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine floor as a share of lr.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    augment: bool = Field(True, description="Random flips and 90-degree rotations (image and label alike).")
    early_stopping_patience: int = Field(
        10, ge=1, description="Epochs without val mIoU gain before stopping."
    )
    seed: int = Field(0)
    device: str = Field("auto", description="auto, cpu, cuda.")
    devices: int | str = Field("auto", description="GPUs to use; several -> DDP.")
    num_workers: int = Field(0, ge=0, description="DataLoader workers.")

    # ---- output ----------------------------------------------------------------------------
    output_dir: str = Field("finetune-run", description="Checkpoints, logs, metrics and plots go here.")

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for name in v:
            if name.upper() != "B10":  # L1C cirrus band, not in the L2A table: kept as a name, never fed
                band(name)
        return v

    @model_validator(mode="after")
    def _check(self) -> SegmentationConfig:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids repeat in the class table: {ids}")
        patch = get_model_spec(self.model).patch_size
        if self.chip_size % patch:
            raise ValueError(f"chip_size {self.chip_size} is not a multiple of {self.model}'s patch size "
                             f"{patch}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave blocks for training")
        if not self.images:
            raise ValueError("images: no image rasters given")
        return self

    # ---- class table helpers ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Model output channels: ids index the logits directly, so max id + 1 (ignore id included)."""
        return max(max(c.id for c in self.classes), self.ignore_id) + 1

    @property
    def class_names(self) -> list[str]:
        names = [f"class_{i}" for i in range(self.num_classes)]
        for c in self.classes:
            names[c.id] = c.name
        return names

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour map of the class raster (ignore id transparent black unless listed)."""
        cmap = {i: (0, 0, 0, 0) for i in range(256)}
        for c in self.classes:
            cmap[c.id] = (*c.rgb, 0 if c.id == self.ignore_id else 255)
        return cmap

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SegmentationConfig:
        """Load a YAML file; relative data paths are resolved against the file's folder."""
        p = Path(path)
        data = read_yaml_mapping(p, overrides)
        base = p.resolve().parent
        for key in ("labels", "output_dir"):
            if isinstance(data.get(key), str):
                data[key] = _resolve(data[key], base)
        if isinstance(data.get("images"), list):
            data["images"] = [_resolve(str(i), base) for i in data["images"]]
        if isinstance(data.get("checkpoint"), str) and data["checkpoint"] != "random":
            data["checkpoint"] = _resolve(data["checkpoint"], base)
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _resolve(path: str, base: Path) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str(base / path)
