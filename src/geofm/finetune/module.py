"""The Lightning module of segmentation fine-tuning: encoder + head, losses (focal, cross-entropy, dice)
that honour the ignore id, AdamW with warm-up + cosine, and metrics from a confusion matrix."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from geofm.errors import InputError, ModelError, NotFoundError
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.heads import Segmentor
from geofm.models import registry
from geofm.sentinel2 import band


# ---- encoder --------------------------------------------------------------------------------------
def build_encoder(model: str, checkpoint: str | None, seed: int = 0, load_weights: bool = True) -> nn.Module:
    """The registered Clay encoder. ``checkpoint`` None/'random' means random weights, which only make sense
    for ``clay-tiny`` tests and demos (a warning says so); ``load_weights=False`` skips loading because a
    fine-tuned checkpoint will overwrite every weight anyway."""
    spec = registry.get_model_spec(model)
    if spec.clay is None:
        raise InputError(f"model {model!r} is not a Clay model; fine-tuning needs one of the clay-* models")
    if not load_weights:
        return registry.build_clay(spec)
    if checkpoint is None and spec.random_only:
        checkpoint = f"random:{seed}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights note is repeated in the run summary instead
        encoder, _ = registry.load_clay_encoder(spec, checkpoint)
    return encoder


# ---- losses ---------------------------------------------------------------------------------------
def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    kind: str,
    ignore_id: int,
    gamma: float = 2.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Mean pixel loss over non-ignored pixels: ``focal``, ``ce`` or ``dice`` (soft, classes but ignore).
    ``class_weights`` [K] weight each pixel by its true class (ce/focal) or each class's dice term."""
    valid = target != ignore_id
    if not valid.any():
        return logits.sum() * 0.0
    if kind in ("ce", "focal"):
        ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_id, reduction="none")
        if kind == "focal":
            pt = torch.exp(-ce)
            ce = (1 - pt) ** gamma * ce
        if class_weights is None:
            return ce[valid].mean()
        w = class_weights.to(ce.device, ce.dtype)[target[valid]]
        return (ce[valid] * w).sum() / w.sum().clamp_min(1e-12)
    if kind == "dice":
        probs = logits.float().softmax(1)
        onehot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float()
        m = valid[:, None].float()
        inter = (probs * onehot * m).sum((0, 2, 3))
        denom = (probs * m).sum((0, 2, 3)) + (onehot * m).sum((0, 2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)
        keep = torch.ones_like(dice, dtype=torch.bool)
        keep[ignore_id] = False
        if class_weights is None:
            return 1 - dice[keep].mean()
        w = class_weights.to(dice.device, dice.dtype)[keep]
        return 1 - (dice[keep] * w).sum() / w.sum().clamp_min(1e-12)
    raise InputError(f"unknown loss {kind!r}: use focal, ce or dice")


# ---- metrics --------------------------------------------------------------------------------------
def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str], ignore_id: int) -> dict[str, Any]:
    """mIoU (mean over classes present in truth or prediction, ignore id excluded), per-class IoU,
    weighted IoU (by true pixel count, the Clay examples' metric), macro/weighted F1, pixel accuracy.
    ``cm[t, p]`` counts pixels of true class t predicted as p (ignored pixels already left out)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    union = support + predicted - tp
    present = (union > 0) & (np.arange(len(cm)) != ignore_id)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    total = support[present].sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "weighted_iou": float((iou * support)[present].sum() / total) if total else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support)[present].sum() / total) if total else 0.0,
        "accuracy": float(tp[present].sum() / total) if total else 0.0,
        "per_class_iou": {class_names[i]: float(iou[i]) for i in range(len(cm)) if present[i]},
        "per_class_f1": {class_names[i]: float(f1[i]) for i in range(len(cm)) if present[i]},
        "support": {class_names[i]: int(support[i]) for i in range(len(cm)) if present[i]},
        "pixels": int(total),
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def majority_baseline(
    train_labels: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int,
    ignore_id: int,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Metrics of predicting the training set's most common class everywhere (the bar to beat)."""
    counts = np.bincount(train_labels[train_labels != ignore_id].ravel(), minlength=num_classes)
    majority = int(counts.argmax())
    truth = eval_labels[eval_labels != ignore_id].ravel()
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (truth, np.full_like(truth, majority)), 1)
    out = metrics_from_confusion(cm, class_names, ignore_id)
    out["majority_class"] = class_names[majority]
    return out


def balanced_class_weights(
    labels: np.ndarray, num_classes: int, ignore_id: int, cap: float = 10.0
) -> list[float]:
    """Inverse class frequency in ``labels``, scaled to mean 1 over the classes present, capped at ``cap``;
    the ignore id and absent classes get 1 (they never weigh a pixel)."""
    counts = np.bincount(labels[labels != ignore_id].ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(num_classes)
    if present.any():
        inv = counts[present].sum() / (present.sum() * counts[present])
        w[present] = np.minimum(inv / inv.mean(), cap)
    return w.tolist()


# ---- the Lightning module -------------------------------------------------------------------------
class SegmentationModule(L.LightningModule):
    """Segmentor + loss + optimiser; hyper-parameters (config, bands, gsd) travel in the checkpoint so
    ``load_from_checkpoint`` rebuilds it alone."""

    def __init__(
        self,
        config: dict[str, Any],
        bands: list[str],
        gsd: float,
        encoder: nn.Module | None = None,
        load_encoder_weights: bool = True,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "load_encoder_weights"])
        self.cfg = SegmentationConfig.model_validate(config)
        cfg = self.cfg
        if encoder is None:
            encoder = build_encoder(cfg.model, cfg.checkpoint, cfg.seed, load_encoder_weights)
        self.net = Segmentor(
            encoder,
            cfg.num_classes,
            cfg.head,
            cfg.feature_blocks,
            cfg.head_channels,
            cfg.freeze_encoder,
            cfg.trainable_blocks,
        )
        self.net.train()  # an encoder loaded for inference comes in eval mode; frozen ones stay so
        self.bands = list(bands)
        self.gsd = float(gsd)
        self.register_buffer("waves", torch.tensor([band(b).wavelength for b in bands]), persistent=False)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_cm = MulticlassConfusionMatrix(cfg.num_classes, ignore_index=cfg.ignore_id)

    def forward(self, pixels: Tensor, time: Tensor | None = None, latlon: Tensor | None = None) -> Tensor:
        """Class logits [B, K, S, S] of normalised pixels; time/latlon zeros unless given."""
        b = pixels.shape[0]
        zeros = pixels.new_zeros(b, 4)
        return self.net(
            pixels,
            zeros if time is None else time,
            zeros if latlon is None else latlon,
            self.gsd,
            self.waves.to(pixels.dtype),
        )

    def predict_classes(self, logits: Tensor) -> Tensor:
        """Argmax over classes, never the ignore id."""
        return self.mask_ignore(logits).argmax(1)

    def mask_ignore(self, logits: Tensor) -> Tensor:
        logits = logits.clone()
        logits[:, self.cfg.ignore_id] = float("-inf")
        return logits

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self(batch["pixels"], batch["time"], batch["latlon"])
        loss = segmentation_loss(
            logits,
            batch["label"],
            self.cfg.loss,
            self.cfg.ignore_id,
            self.cfg.focal_gamma,
            self.class_weights,
        )
        return loss, logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"])
        )
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.val_cm.update(self.predict_classes(logits), batch["label"])
        self.log(
            "val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]), sync_dist=True
        )

    def on_validation_epoch_end(self) -> None:
        m = metrics_from_confusion(
            self.val_cm.compute().cpu().numpy(), self.cfg.class_names, self.cfg.ignore_id
        )
        self.val_cm.reset()
        self.log("val/miou", m["miou"], prog_bar=True)
        self.log("val/weighted_iou", m["weighted_iou"])
        self.log("val/f1", m["f1"])
        self.log("val/accuracy", m["accuracy"])
        for name, value in m["per_class_iou"].items():
            self.log(f"val/iou_{name}", value)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(total // max(cfg.epochs, 1), 1)
        warmup = int(cfg.warmup_epochs * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, cfg.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_cosine(warmup: int, total: int, floor: float):  # -> Callable[[int], float]
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def load_module(
    checkpoint: str, map_location: str = "cpu", encoder: nn.Module | None = None
) -> SegmentationModule:
    """A trained module from its Lightning checkpoint (eval mode); a bad file raises naming it."""
    try:
        module = SegmentationModule.load_from_checkpoint(
            checkpoint, map_location=map_location, load_encoder_weights=False, encoder=encoder
        )
    except FileNotFoundError:
        raise NotFoundError(f"checkpoint not found: {checkpoint}") from None
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"{checkpoint}: not a geofm segmentation checkpoint ({exc})") from exc
    return module.eval()
