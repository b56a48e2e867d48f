"""Step 2: embed every chip of a scene with the configured model (class + patch embeddings as .npy).

One scene is one unit of work; its input is what step 1 wrote for the scene. The scene's chips are
read, prepared (normalised) and batched by reader threads (:class:`geofm.models.loader.ChipLoader`,
``embed_readers``) while the model works on a batch; chips over the nodata/cloud limits are skipped and
recorded. Files and meta columns follow docs/formats.md. The model is loaded once per worker process
(module cache) and the step runs in model workers, one per device, never a pool of processes each holding
a copy. Another model writes its own files (the layout puts the model name in the path) and takes over
the meta columns.
"""

from __future__ import annotations

import functools
import io
import logging
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from geofm import geoparquet, markers, storage
from geofm.config import PipelineConfig
from geofm.errors import ConfigError, ModelError, NotFoundError, SceneError
from geofm.models import spectral
from geofm.models.loader import ChipLoader
from geofm.models.registry import Embedder, ModelSpec, check_weights, get_model_spec, load_embedder
from geofm.sentinel2 import band_tag
from geofm.steps.base import Step, UnitOutput

STATUS_OK, STATUS_MISSING, STATUS_CLOUD, STATUS_FAILED = "ok", "skipped-missing", "skipped-cloud", "failed"
log = logging.getLogger(__name__)

_EMBEDDERS: dict[tuple[str, str, str], Embedder] = {}


# ---- the model, once per process --------------------------------------------------------------
def get_embedder(cfg: PipelineConfig) -> Embedder:
    """The configured model, loaded once per process and kept (keyed by model, checkpoint, device)."""
    key = (cfg.model, str(cfg.checkpoint), cfg.device)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = load_embedder(cfg.model, cfg.checkpoint, cfg.device)
        log.info("embed: model %s loaded (weights: %s)", cfg.model, _EMBEDDERS[key].weights)
    return _EMBEDDERS[key]


def model_bands(cfg: PipelineConfig, spec: ModelSpec) -> list[str]:
    """Bands fed to the model: ``cfg.embed_bands``, else the model's bands that step 1 chipped
    (``s2_bands``), in the model's order. Clay takes any subset (its patch embedding is conditioned on
    the wavelengths); ``spectral`` needs at least blue, green, red and nir."""
    if cfg.embed_bands:
        bands = list(cfg.embed_bands)
        unknown = [b for b in bands if b not in spec.bands]
        if unknown:
            raise ModelError(f"model {spec.name} does not take bands {unknown}; it takes {list(spec.bands)}")
        not_chipped = [b for b in bands if b not in cfg.s2_bands]
        if not_chipped:
            raise ConfigError(f"embed_bands {not_chipped} were not chipped by step 1 "
                             f"(s2_bands {cfg.s2_bands})")
    else:
        bands = [b for b in spec.bands if b in cfg.s2_bands]
        if not bands:
            raise ConfigError(f"none of model {spec.name}'s bands {list(spec.bands)} is in "
                             f"s2_bands {cfg.s2_bands}")
    if spec.kind == "spectral":
        missing = [b for b in spectral.REQUIRED_BANDS if b not in bands]
        if missing:
            raise ConfigError(f"model spectral needs at least bands {list(spectral.REQUIRED_BANDS)}; "
                             f"the bands given lack {missing}")
    return bands


# ---- reading -------------------------------------------------------------------------------------
read_meta = geoparquet.read
write_meta = geoparquet.write  # atomic: one PUT or rename


def npy_bytes(array: np.ndarray) -> bytes:
    """A plain float32 .npy (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def chip_status(row: pd.Series, cfg: PipelineConfig) -> str:
    """``ok`` when the chip is within the limits, else why it is skipped."""
    if float(row["missing_data_perc"]) > cfg.embed_max_missing:
        return STATUS_MISSING
    if float(row["cloud_cover_perc"]) > cfg.embed_max_cloud:
        return STATUS_CLOUD
    return STATUS_OK


def _as_datetime(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC")
    return ts.to_pydatetime()


# ---- one scene --------------------------------------------------------------------------------------
def process_unit(cfg: PipelineConfig, scene_id: str) -> UnitOutput:
    """Embed one scene's chips: .npy files, then the meta with the embedding columns."""
    layout = cfg.layout
    meta_url = layout.meta(scene_id)
    meta = read_meta(meta_url).reset_index(drop=True)
    spec = get_model_spec(cfg.model)
    bands = model_bands(cfg, spec)
    tag = band_tag(bands)
    n = len(meta)
    status = [chip_status(meta.loc[i], cfg) for i in range(n)]
    cls_urls: list[str | None] = [None] * n
    patch_urls: list[str | None] = [None] * n
    todo = [i for i in range(n) if status[i] == STATUS_OK]
    embedder = get_embedder(cfg) if todo else None

    first_error: str | None = None
    if todo:
        assert embedder is not None
        size = int(meta.at[todo[0], "chip_size"])
        urls = [layout.resolve(meta.at[i, "s3_location_netcdf"]) for i in todo]
        loader = ChipLoader(urls, bands, (size, size), cfg.batch_size, readers=cfg.embed_readers,
                            prepare=functools.partial(embedder.prepare, bands=bands),
                            pin_memory=embedder.pin_memory)
        for batch in loader:  # chips read and prepared on reader threads while the model works
            for pos, err in batch.failed:
                i = todo[pos]
                status[i] = STATUS_FAILED
                first_error = first_error or f"chip {meta.at[i, 'chip_id']}: {err}"
                log.warning("embed %s: chip %s unreadable: %s", scene_id, meta.at[i, "chip_id"], err)
            if not batch.index:
                continue
            idx = [todo[pos] for pos in batch.index]
            cls, patch = embedder.embed(
                batch.pixels, bands,
                [_as_datetime(meta.at[i, "datetime"]) for i in idx],
                [float(meta.at[i, "centroid_lat"]) for i in idx],
                [float(meta.at[i, "centroid_lon"]) for i in idx],
                float(meta.at[idx[0], "gsd"]), prepared=True,
            )
            for k, i in enumerate(idx):
                size, x, y = int(meta.at[i, "chip_size"]), int(meta.at[i, "x_dim"]), int(meta.at[i, "y_dim"])
                cls_urls[i] = layout.embedding("cls", cfg.model, scene_id, size, tag, x, y)
                storage.write_bytes(cls_urls[i], npy_bytes(cls[k]))
                if cfg.patch_embeddings:
                    patch_urls[i] = layout.embedding("patch", cfg.model, scene_id, size, tag, x, y)
                    storage.write_bytes(patch_urls[i], npy_bytes(patch[k]))

    if todo and STATUS_OK not in status:  # nothing embedded: the scene failed, say why
        raise SceneError(f"scene {scene_id}: no chip could be embedded ({first_error})")

    dates = pd.to_datetime(meta["date"]) if n else pd.Series([], dtype="datetime64[ns]")
    meta["year"] = dates.dt.year.astype("Int64") if n else pd.Series([], dtype="Int64")
    meta["month"] = dates.dt.month.astype("Int64") if n else pd.Series([], dtype="Int64")
    meta["s3_location_cls_emb"] = pd.Series([u and layout.stored(u) for u in cls_urls], dtype=object)
    meta["s3_location_patch_emb"] = pd.Series([u and layout.stored(u) for u in patch_urls], dtype=object)
    meta["model"] = cfg.model
    meta["embedding_dim"] = spec.embedding_dim
    meta["embedding_status"] = pd.Series(status, dtype=object)
    write_meta(meta_url, meta)
    files = [u for u in (*cls_urls, *patch_urls) if u is not None]
    # a chip that could not be read leaves the scene incomplete: redone on the next run
    return UnitOutput([*files, meta_url], complete=STATUS_FAILED not in status, info={
        "embedded": status.count(STATUS_OK),
        "skipped_missing": status.count(STATUS_MISSING),
        "skipped_cloud": status.count(STATUS_CLOUD),
        "failed_chips": status.count(STATUS_FAILED),
        "model": cfg.model,
    })


class Embed(Step):
    """Step 2 over the scenes step 1 chipped (see the module doc)."""

    name: ClassVar[str] = "embed"
    params: ClassVar[tuple[str, ...]] = ("model", "checkpoint", "embed_bands", "patch_embeddings",
                                         "embed_max_missing", "embed_max_cloud")
    model_worker: ClassVar[bool] = True

    def check(self, cfg: PipelineConfig) -> None:
        spec = get_model_spec(cfg.model)
        model_bands(cfg, spec)
        if cfg.chip_size % spec.patch_size:
            raise ConfigError(f"chip_size {cfg.chip_size} is not a multiple of {cfg.model}'s patch size "
                              f"{spec.patch_size}")
        check_weights(cfg.model, cfg.checkpoint)  # no weights: say so before hours of chipping

    def units(self, cfg: PipelineConfig) -> list[str]:
        """Scene ids that have a chip meta file (written by step 1), sorted."""
        scenes = cfg.layout.meta_scene_ids()
        if not scenes:
            raise NotFoundError(f"no chip meta in {cfg.layout.meta_dir}: run preprocess first")
        return scenes

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return {"preprocess": markers.upstream(cfg.layout, "preprocess", unit)}

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        return process_unit(cfg, unit)

    def setup_worker(self, cfg: PipelineConfig) -> None:
        """Load the model before the first scene (errors surface before any work)."""
        get_embedder(cfg)
