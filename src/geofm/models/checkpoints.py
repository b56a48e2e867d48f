"""Clay weights: read official Lightning checkpoints, check them, convert them once to encoder-only
safetensors in the model cache, and fetch them from Hugging Face when the network allows.

The model cache is ``$GEOFM_MODEL_CACHE`` (default ``~/.cache/geofm/models``) and holds
``<model>.safetensors`` files: plain tensors, loaded without unpickling anything.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from geofm.errors import BackendError, ModelError
from geofm.models.spec import HF_REPO

ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # Lightning module (self.model = ClayMAE), bare ClayMAE


def model_cache_dir() -> Path:
    """Folder of converted weights: ``$GEOFM_MODEL_CACHE`` or ``~/.cache/geofm/models``."""
    return Path(os.environ.get("GEOFM_MODEL_CACHE") or Path.home() / ".cache" / "geofm" / "models")


def cached_weights_path(model_name: str) -> Path:
    return model_cache_dir() / f"{model_name}.safetensors"


class _Placeholder:
    """Stands in for any non-torch class in a checkpoint's pickle (hyper-parameters, callbacks...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Resolves torch/collections globals, replaces every other class by a placeholder, so a Lightning
    checkpoint with arbitrary hyper-parameter objects loads without running foreign code."""

    _ALLOWED = ("torch", "collections", "_codecs", "numpy")

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in self._ALLOWED:
            return super().find_class(module, name)
        return _Placeholder


class _TensorsOnlyPickle:
    Unpickler = _TensorsOnlyUnpickler
    load = pickle.load
    __name__ = "geofm_tensors_only_pickle"


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a checkpoint file (``.safetensors`` or a torch/Lightning pickle), flat by key."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raw = torch.load(p, map_location="cpu", weights_only=False, mmap=True,
                         pickle_module=_TensorsOnlyPickle)
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{p}: not a readable PyTorch checkpoint ({exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ModelError(f"{p}: expected a state dict or a Lightning checkpoint, got {type(raw).__name__}")
    return {k: v for k, v in raw.items() if isinstance(v, Tensor)}


def encoder_state_dict(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's tensors with the official prefix stripped; decoder/proj/teacher keys dropped.

    Accepts a Lightning checkpoint (``model.encoder.*``), a bare ClayMAE (``encoder.*``) or an
    encoder-only state dict (no prefix, e.g. our safetensors files).
    """
    for prefix in ENCODER_PREFIXES:
        found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if found:
            return found
    return dict(tensors)


def check_state_dict(state: dict[str, Tensor], model: nn.Module, model_name: str, source: str) -> None:
    """Raise :class:`~geofm.errors.ModelError` naming ``source`` when keys or shapes differ from
    ``model``'s."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs {model_name} {expected[k]}"
        for k in expected if k in state and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:2])})")
    dim = state.get("cls_token")
    hint = f" The file's encoder has dim {dim.shape[-1]}." if dim is not None else ""
    raise ModelError(f"checkpoint {source} does not fit {model_name}: {'; '.join(parts)}.{hint}")


def load_into(model: nn.Module, state: dict[str, Tensor], model_name: str, source: str) -> None:
    """Check then load ``state`` strictly (as float32) into ``model`` (which may live on ``meta``)."""
    check_state_dict(state, model, model_name, source)
    on_meta = any(p.is_meta for p in model.parameters())
    # fresh, aligned copies: views into a file buffer can take other (slightly different) SIMD paths
    fresh = {k: v.to(torch.float32, copy=True) for k, v in state.items()}
    model.load_state_dict(fresh, strict=True, assign=on_meta)


def save_encoder(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write encoder-only weights as safetensors, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}, str(tmp), metadata)
    os.replace(tmp, path)


def download_checkpoint(hf_filename: str) -> Path:
    """Fetch an official checkpoint from the Hugging Face repo (cached by huggingface_hub); a mirror or
    test server is taken from ``HF_ENDPOINT``, read at call time."""
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return Path(hf_hub_download(repo_id=HF_REPO, filename=hf_filename, endpoint=endpoint))
    except Exception as exc:  # offline, HTTP errors, gated repo: the cause, named
        where = endpoint or "https://huggingface.co"
        raise BackendError(f"download of hf://{HF_REPO}/{hf_filename} from {where} failed: "
                           f"{type(exc).__name__}: {str(exc)[:300]}") from exc


def import_checkpoint(spec: Any, checkpoint: str | Path | None = None) -> Path:
    """Convert a checkpoint (a local file, or the official one from Hugging Face when ``None``) to
    encoder-only safetensors in the model cache, after checking it fits ``spec``; returns the new file."""
    from geofm.models.spec import build_clay

    if checkpoint is None:
        if not spec.hf_filename:
            raise ModelError(f"{spec.name} has no official checkpoint; pass --checkpoint PATH")
        checkpoint = download_checkpoint(spec.hf_filename)
    source = Path(checkpoint)
    state = encoder_state_dict(read_checkpoint(source))
    check_state_dict(state, build_clay(spec, "meta"), spec.name, str(source))
    out = cached_weights_path(spec.name)
    save_encoder(state, out, {"model": spec.name, "source": str(source), "format": "clay-encoder"})
    return out


def ensure_cached(spec: Any) -> Path:
    """The cached weights of ``spec``; fetched from Hugging Face and imported when missing and online.
    Offline with no weights: a :class:`~geofm.errors.ModelError` saying how to get them."""
    cached = cached_weights_path(spec.name)
    file_name = Path(str(spec.hf_filename)).name
    if cached.is_file():
        return cached
    try:
        return import_checkpoint(spec)
    except Exception as exc:  # offline, HF error, gated repo...: one clear message with the ways out
        raise ModelError(
            f"no weights for {spec.name}: {cached} does not exist and the download from "
            f"hf://{HF_REPO}/{spec.hf_filename} failed ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Get them with `geofm models import {spec.name} --checkpoint /path/to/{file_name}` "
            f"(or `geofm models import {spec.name}` where Hugging Face is reachable), "
            "or use the weights-free model: --model spectral"
        ) from exc
