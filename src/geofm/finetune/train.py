"""Train and evaluate a segmentation model (``geofm finetune train`` / ``evaluate``).

Training: spatial split, Lightning Trainer (AdamW + warm-up/cosine, bf16 on GPU, DDP when several GPUs),
best-val-mIoU checkpoint, early stopping, CSV + TensorBoard logs, a fixed seed. After training the best
checkpoint is evaluated on val (and test when there is one) against the majority-class baseline; metrics go
to JSON and the confusion matrix to PNG.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from geofm import storage
from geofm.errors import InputError
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.data import ChipSet, PreparedData, SegmentationDataset, prepare_data
from geofm.finetune.layout import FinetuneLayout
from geofm.finetune.module import (
    SegmentationModule,
    balanced_class_weights,
    load_module,
    majority_baseline,
    metrics_from_confusion,
)
from geofm.models.registry import resolve_device

MONITOR = "val/miou"


@dataclass
class TrainResult:
    """Where the best checkpoint is and what it scored (per split), with the majority-class baseline."""

    best_checkpoint: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs_run: int = 0
    train_chips: int = 0
    module: SegmentationModule | None = None  # in memory after fit: the latest epoch's weights
    # (= ``last_checkpoint``)
    last_checkpoint: str = ""


def accelerator_for(device: str) -> str:
    """Lightning's accelerator for a geofm device string (parsed by the one device parser)."""
    return "gpu" if resolve_device(device).type == "cuda" else "cpu"


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*too few logging steps.*|.*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(
    cfg: SegmentationConfig,
    quiet: bool = False,
    encoder: nn.Module | None = None,
    data: PreparedData | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Fit the model of ``cfg`` on its data and evaluate the best checkpoint; see the module docstring.
    ``encoder`` replaces the registry's (tests), ``data`` skips re-reading chips, ``callbacks`` are added
    to the Trainer's (benchmark timers)."""
    if quiet:
        _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = data or prepare_data(cfg)
    train_set, val_set = data.splits["train"], data.splits["val"]
    if not len(val_set.chips):
        raise InputError("no validation chips: raise val_fraction or add images")
    layout = FinetuneLayout(cfg.output_dir)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    storage.write_text(layout.config_copy, cfg.to_yaml())

    weights = None
    if cfg.class_weighting == "balanced":
        weights = balanced_class_weights(train_set.labels, cfg.num_classes, cfg.ignore_id)
    module = SegmentationModule(
        cfg.model_dump(mode="json"), [b.name for b in data.bands], data.gsd, encoder, class_weights=weights
    )
    accelerator = accelerator_for(cfg.device)
    gpus = torch.cuda.device_count() if accelerator == "gpu" else 0
    devices = cfg.devices if accelerator == "gpu" else 1
    several = accelerator == "gpu" and (gpus if devices == "auto" else int(devices)) > 1
    checkpoint = ModelCheckpoint(
        dirpath=layout.checkpoints_dir,
        filename=FinetuneLayout.BEST_CHECKPOINT_NAME,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only copies whenever the best is saved; this one holds the latest epoch
    latest = ModelCheckpoint(
        dirpath=layout.checkpoints_dir,
        filename=FinetuneLayout.LAST_CHECKPOINT_NAME,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if several else "auto",
        precision="bf16-mixed" if accelerator == "gpu" else "32-true",
        callbacks=[
            checkpoint,
            latest,
            EarlyStopping(MONITOR, mode="max", patience=cfg.early_stopping_patience),
            *callbacks,
        ],
        logger=[
            CSVLogger(layout.logs_dir, name="csv"),
            TensorBoardLogger(layout.logs_dir, name="tensorboard"),
        ],
        deterministic=accelerator == "cpu",
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=not quiet,
        enable_model_summary=not quiet,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        SegmentationDataset(train_set, cfg.augment),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=cfg.num_workers,
    )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        trainer.fit(module, train_loader, _loader(val_set, cfg))
    finally:  # Lightning switches deterministic algorithms on process-wide; give the caller its setting back
        torch.use_deterministic_algorithms(deterministic_before)
    if trainer.global_rank != 0:
        return TrainResult(checkpoint.best_model_path)

    best = checkpoint.best_model_path or layout.best_checkpoint
    best_module = load_module(best, encoder=copy.deepcopy(encoder))
    result = TrainResult(
        best,
        epochs_run=trainer.current_epoch,
        train_chips=len(train_set.chips),
        module=module.eval(),
        last_checkpoint=latest.best_model_path,
    )
    for split in ("val", "test"):
        chips = data.splits[split]
        if not len(chips.chips):
            continue
        metrics = evaluate_chips(best_module, chips, cfg.batch_size)
        baseline = majority_baseline(
            train_set.labels, chips.labels, cfg.num_classes, cfg.ignore_id, cfg.class_names
        )
        metrics["majority_baseline_miou"] = baseline["miou"]
        write_metrics(cfg, split, metrics)
        result.metrics[split], result.baseline[split] = metrics, baseline
    return result


def _loader(chips: ChipSet, cfg: SegmentationConfig) -> DataLoader:
    return DataLoader(SegmentationDataset(chips), batch_size=cfg.batch_size, num_workers=cfg.num_workers)


@torch.no_grad()
def evaluate_chips(module: SegmentationModule, chips: ChipSet, batch_size: int = 8) -> dict[str, Any]:
    """Metrics of ``module`` on loaded chips (ignored pixels left out)."""
    cfg = module.cfg
    module.eval()
    device = next(module.parameters()).device
    cm = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.int64)
    for batch in _loader(chips, cfg.model_copy(update={"batch_size": batch_size, "num_workers": 0})):
        logits = module(batch["pixels"].to(device), batch["time"].to(device), batch["latlon"].to(device))
        pred = module.predict_classes(logits).cpu().ravel()
        truth = batch["label"].ravel()
        keep = truth != cfg.ignore_id
        cm += torch.bincount(
            truth[keep] * cfg.num_classes + pred[keep], minlength=cfg.num_classes**2
        ).reshape(cfg.num_classes, cfg.num_classes)
    return metrics_from_confusion(cm.numpy(), cfg.class_names, cfg.ignore_id)


def evaluate(
    cfg: SegmentationConfig,
    checkpoint: str,
    split: str = "test",
    batch_size: int | None = None,
    encoder: nn.Module | None = None,
    data: PreparedData | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a held-out split of ``cfg``'s data (the same seeded spatial split)."""
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be train, val or test, not {split!r}")
    data = data or prepare_data(cfg)
    chips = data.splits[split]
    if not len(chips.chips):
        raise InputError(f"the {split} split is empty: set test_fraction in the config or use --split val")
    module = load_module(checkpoint, encoder=encoder)
    metrics = evaluate_chips(module, chips, batch_size or cfg.batch_size)
    baseline = majority_baseline(
        data.splits["train"].labels, chips.labels, cfg.num_classes, cfg.ignore_id, cfg.class_names
    )
    metrics["majority_baseline_miou"] = baseline["miou"]
    metrics["checkpoint"] = checkpoint
    write_metrics(cfg, split, metrics)
    return metrics


def write_metrics(cfg: SegmentationConfig, split: str, metrics: dict[str, Any]) -> None:
    """``metrics_<split>.json`` and ``confusion_matrix_<split>.png`` in the run folder."""
    layout = FinetuneLayout(cfg.output_dir)
    storage.write_text(layout.metrics(split), json.dumps(metrics, indent=2))
    with storage.local_file_for_write(layout.confusion_matrix_png(split), suffix=".png") as tmp:
        plot_confusion(
            np.array(metrics["confusion_matrix"]),
            cfg.class_names,
            cfg.ignore_id,
            tmp,
            f"{split}: mIoU {metrics['miou']:.3f}",
        )


def plot_confusion(cm: np.ndarray, names: list[str], ignore_id: int, path: Path, title: str) -> None:
    """Row-normalised confusion matrix (classes seen in truth or prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = [i for i in range(len(cm)) if i != ignore_id and (cm[i].sum() or cm[:, i].sum())]
    sub = cm[np.ix_(keep, keep)].astype(float)
    norm = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(keep), 1 + 0.6 * len(keep)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [names[i] for i in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(keep)), labels)
    for r in range(len(keep)):
        for c in range(len(keep)):
            ax.text(
                c,
                r,
                f"{int(sub[r, c])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[r, c] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
