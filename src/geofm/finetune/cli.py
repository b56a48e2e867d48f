"""``geofm finetune``: train, evaluate and predict with a segmentation model on the Clay encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from geofm.config import parse_set_options, validation_message
from geofm.errors import ConfigError, NotFoundError
from geofm.finetune.config import SegmentationConfig

finetune_app = typer.Typer(
    help="Fine-tune the Clay encoder for semantic segmentation; evaluate; write class-map COGs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out_console = Console()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Segmentation YAML (see examples/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a parameter: key=value.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="Trained checkpoint (.ckpt).")]


def load_segmentation_config(path: Path, sets: list[str] | None) -> SegmentationConfig:
    """YAML file plus ``--set key=value`` overrides (the pipeline's ``--set`` parser); bad values raise
    :class:`~geofm.errors.ConfigError` naming the file and the parameter."""
    overrides = parse_set_options(sets, SegmentationConfig)
    try:
        return SegmentationConfig.from_yaml(path, **overrides)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None


def print_metrics(title: str, metrics: dict[str, Any]) -> None:
    """Headline metrics and per-class IoU as a table on stdout."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("miou", "majority_baseline_miou", "weighted_iou", "f1", "weighted_f1", "accuracy", "pixels"):
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    for name, v in metrics.get("per_class_iou", {}).items():
        table.add_row(f"iou {name}", f"{v:.4f}")
    out_console.print(table)


@finetune_app.command()
def train(config: ConfigOpt, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Train: spatial split, best-val-mIoU checkpoint, early stopping, logs, metrics JSON + confusion PNG."""
    from geofm.finetune.train import train as run_train

    cfg = load_segmentation_config(config, set_)
    result = run_train(cfg, quiet=quiet)
    for split, metrics in result.metrics.items():
        print_metrics(f"{split} (best checkpoint)", metrics)
    out_console.print(f"best checkpoint: {result.best_checkpoint}")


@finetune_app.command()
def evaluate(
    config: ConfigOpt,
    checkpoint: CheckpointOpt,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="Also write the metrics JSON here.")] = None,
) -> None:
    """Evaluate a checkpoint on a held-out split of the config's data; prints and writes JSON."""
    from geofm.finetune.train import evaluate as run_evaluate

    cfg = load_segmentation_config(config, set_)
    metrics = run_evaluate(cfg, checkpoint, split)
    print_metrics(f"{split}: {checkpoint}", metrics)
    if out:
        out.write_text(json.dumps(metrics, indent=2))


@finetune_app.command()
def predict(
    checkpoint: CheckpointOpt,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="Raster(s), folder or glob; one grid.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Class-map COG to write.")],
    probabilities: Annotated[str | None, typer.Option("--probabilities", help="Probability COG.")] = None,
    scene: Annotated[str | None, typer.Option("--scene", help="Keep inputs whose name starts so.")] = None,
    tile: Annotated[int | None, typer.Option("--tile", help="Tile side; default: chip size.")] = None,
    overlap: Annotated[int | None, typer.Option("--overlap", help="Tile overlap; default: half.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
) -> None:
    """Class map (COG, colour-mapped, source CRS) of chips or a whole scene, tiles blended with overlap."""
    from geofm.finetune.data import expand_images
    from geofm.finetune.module import load_module
    from geofm.finetune.predict import predict_rasters

    paths = expand_images(inputs)
    if scene:
        paths = [p for p in paths if Path(p).name.startswith(scene)]
        if not paths:
            raise NotFoundError(f"no input starts with scene {scene!r}")
    module = load_module(checkpoint, map_location=device).to(device)
    pred = predict_rasters(module, paths, out, probabilities, tile, overlap, batch_size)
    counts = {
        module.cfg.class_names[i]: int((pred.classes == i).sum()) for i in range(module.cfg.num_classes)
    }
    out_console.print(
        f"wrote {out} ({pred.classes.shape[1]}x{pred.classes.shape[0]} px, {pred.crs}): "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    )
