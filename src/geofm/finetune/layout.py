"""Paths of one fine-tuning run under its output folder."""

from __future__ import annotations

from dataclasses import dataclass

from geofm.layout import join


@dataclass(frozen=True)
class FinetuneLayout:
    """Paths of one fine-tuning run under its output folder (``SegmentationConfig.output_dir``)."""

    root: str

    @property
    def checkpoints_dir(self) -> str:
        return join(self.root, "checkpoints")

    BEST_CHECKPOINT_NAME = "best"  # Lightning adds ``.ckpt``
    LAST_CHECKPOINT_NAME = "last"  # the latest epoch

    @property
    def best_checkpoint(self) -> str:
        return join(self.checkpoints_dir, f"{self.BEST_CHECKPOINT_NAME}.ckpt")

    @property
    def logs_dir(self) -> str:
        """CSV logs (``csv/``) and TensorBoard event files (``tensorboard/``)."""
        return join(self.root, "logs")

    @property
    def config_copy(self) -> str:
        return join(self.root, "config.yaml")

    def metrics(self, split: str) -> str:
        return join(self.root, f"metrics_{split}.json")

    def confusion_matrix_png(self, split: str) -> str:
        return join(self.root, f"confusion_matrix_{split}.png")
