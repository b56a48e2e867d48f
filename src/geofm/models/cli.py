"""``geofm models``: list the registered models; import Clay weights into the model cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from geofm.errors import ModelError
from geofm.models import checkpoints
from geofm.models.registry import get_model_spec, list_models

models_app = typer.Typer(help="Embedding models: list them, import Clay weights.", no_args_is_help=True)
_console = Console()


@models_app.command("list")
def list_cmd() -> None:
    """Registered models: embedding size, bands, normalisation and where the weights are."""
    table = Table("model", "dim", "patch", "weights", "description")
    for s in list_models():
        if s.kind == "spectral":
            weights = "none needed"
        elif s.random_only:
            weights = "random only"
        else:
            cached = checkpoints.cached_weights_path(s.name)
            weights = str(cached) if cached.is_file() else f"not imported: geofm models import {s.name}"
        table.add_row(s.name, str(s.embedding_dim), str(s.patch_size), weights, s.description)
    _console.print(table)
    _console.print(f"bands: {', '.join(list_models()[0].bands)}")
    _console.print(f"model cache: {checkpoints.model_cache_dir()}")


@models_app.command("import")
def import_cmd(
    model: Annotated[str, typer.Argument(help="Registered Clay model, e.g. clay-v1.5.")],
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Local .ckpt/.pt/.safetensors; default: Hugging Face."),
    ] = None,
) -> None:
    """Convert a Clay checkpoint once to encoder-only safetensors in the model cache."""
    spec = get_model_spec(model)
    if spec.kind != "clay":
        raise ModelError(f"{model} needs no weights")
    out = checkpoints.import_checkpoint(spec, checkpoint)
    _console.print(f"{model}: encoder weights written to {out}")
