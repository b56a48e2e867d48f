"""Completion markers: how a rerun knows which units of work to skip.

A unit's marker is written last, after all its outputs, and records a fingerprint of every parameter
that shapes the step's outputs (its own and those of the steps before it). A unit is skipped when its
marker exists with the same fingerprint; otherwise it is redone from scratch (the step function is
called with ``force=True`` so its own "already there" checks don't keep stale outputs).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from geofm import storage
from geofm.config import PipelineConfig

_DISCOVER = ["aoi", "start_date", "end_date", "stac_url", "collection", "max_cloud_cover", "grid_id",
             "max_items"]
_PREPROCESS = ["aoi", "processing_level", "s2_bands", "chip_size", "whole_tile"]
_EMBED = [*_PREPROCESS, "model", "checkpoint", "embed_bands", "patch_embeddings", "embed_max_missing",
          "embed_max_cloud"]
_ANALYZE = [*_EMBED, "embedding_kind", "n_components", "pca_sample_size", "seed", "baseline",
            "baseline_max_cloud", "analyze_max_cloud", "analyze_max_missing", "patch_change_threshold"]
_CONSOLIDATE = [*_ANALYZE, "change_threshold_high", "change_threshold_medium", "vector_index_min_rows",
                "vector_index_type"]

# Parameters that shape each step's outputs, upstream ones included, so a change invalidates downstream.
STEP_PARAMS: dict[str, list[str]] = {
    "discover": _DISCOVER,
    "preprocess": _PREPROCESS,
    "embed": _EMBED,
    "analyze": _ANALYZE,
    "consolidate": _CONSOLIDATE,
}
# Steps whose units depend on the whole set of scenes (global PCA, per-grid consolidation).
SCENE_SET_STEPS = {"analyze", "consolidate"}


def _aoi_digest(cfg: PipelineConfig) -> str | None:
    url = cfg.aoi or cfg.layout.aoi_geojson
    try:
        return hashlib.sha256(storage.read_bytes(url)).hexdigest()
    except (OSError, FileNotFoundError):
        return None


def fingerprint(cfg: PipelineConfig, step: str) -> dict[str, Any]:
    """The parameter values (and, where it matters, the scene set) a step's outputs depend on."""
    params = {k: getattr(cfg, k) for k in STEP_PARAMS[step]}
    if "aoi" in params:
        params["aoi"] = _aoi_digest(cfg)
    if step in SCENE_SET_STEPS:
        params["scenes"] = cfg.layout.scene_ids()
    return json.loads(json.dumps(params, default=str, sort_keys=True))


def digest(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _unit_name(unit: str) -> str:
    return unit.replace("/", "__")


def is_complete(cfg: PipelineConfig, step: str, unit: str, expected: str) -> bool:
    url = cfg.layout.marker(step, _unit_name(unit))
    if not storage.exists(url):
        return False
    try:
        return storage.read_json(url).get("fingerprint") == expected
    except ValueError:  # a torn or foreign marker counts as absent
        return False


def write_marker(cfg: PipelineConfig, step: str, unit: str, expected: str, info: dict[str, Any]) -> None:
    storage.write_json(cfg.layout.marker(step, _unit_name(unit)), {
        "step": step, "unit": unit, "fingerprint": expected,
        "finished": datetime.now(UTC).isoformat(), "info": info,
    })


def run_marked(
    fn: Callable[[PipelineConfig, str], dict[str, Any] | None],
    step: str,
    expected: str,
    cfg: PipelineConfig,
    unit: str,
) -> dict[str, Any] | None:
    """Skip ``unit`` when its marker matches; else redo it and write the marker after its outputs."""
    if not cfg.force and is_complete(cfg, step, unit, expected):
        return {"skipped": True}
    info = fn(cfg.model_copy(update={"force": True}), unit) or {}
    write_marker(cfg, step, unit, expected, {k: v for k, v in info.items() if k != "skipped"})
    return info


def resumable(
    fn: Callable[[PipelineConfig, str], dict[str, Any] | None], cfg: PipelineConfig, step: str
) -> Callable[[PipelineConfig, str], dict[str, Any] | None]:
    """Wrap a unit function with marker checks (a picklable partial); steps without params pass through."""
    if step not in STEP_PARAMS:
        return fn
    return functools.partial(run_marked, fn, step, digest(fingerprint(cfg, step)))
