"""Pipeline parameters: one pydantic model, named after the spec's parameters, loadable from YAML
and overridable by flags (``--set key=value`` or the dedicated options of each command)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geofm.errors import ConfigError, InvalidNameError
from geofm.layout import Layout
from geofm.sentinel2 import L2A_BANDS, band
from geofm.storage import RemoteReadSettings
from geofm.vectordb import DEFAULT_INDEX_MIN_ROWS, DEFAULT_INDEX_TYPE, VECTOR_INDEX_TYPES

EARTH_SEARCH_V1 = "https://earth-search.aws.element84.com/v1"
_REMOTE = RemoteReadSettings()  # the defaults of the remote_* parameters
# how step 1 stores a chip's NetCDF variables (geofm.steps.preprocess.CHIP_COMPRESSION)
ChipCompression = Literal["deflate", "fast", "none"]
# 'fast': ~10 % larger chips than 'deflate' for ~10 % more step 1 throughput and ~1.6x the embedding
# loader's (BENCHMARKS.md, issue 11, fourth pass)
DEFAULT_CHIP_COMPRESSION: ChipCompression = "fast"
MAX_NAME_BYTES = 255  # a file name's limit on every common file system and an S3 key part's sanity bound


def check_name(value: str, what: str = "AOI name") -> str:
    """``value`` if it is safe as one path part (a folder of the output layout), else
    :class:`~geofm.errors.InvalidNameError`: not empty, no ``/`` or ``\\``, not ``.`` or ``..``, at most
    255 bytes in UTF-8, no control characters. The one rule for every name that becomes a path part."""
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"{what} must not be empty")
    if value in (".", ".."):
        raise InvalidNameError(f"{what} {value!r} is not allowed (it names a folder above)")
    if "/" in value or "\\" in value:
        raise InvalidNameError(f"{what} {value[:60]!r} must not contain '/' or '\\'")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidNameError(f"{what} {value[:60]!r} must not contain control characters")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidNameError(f"{what} is {len(value.encode('utf-8'))} bytes long; at most "
                               f"{MAX_NAME_BYTES} are allowed")
    return value


class PipelineConfig(BaseModel):
    """Every parameter of every step. Field names follow the spec (``aoi_name``, ``chip_size``...)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- what and where --------------------------------------------------------------------
    aoi_name: str = Field("aoi", description="Name of the AOI; a folder name in the output layout.")
    aoi: str | None = Field(None, description="AOI GeoJSON file (Polygon/MultiPolygon, WGS84).")
    output_root: str = Field("geofm-data", description="Local folder or s3://bucket/prefix.")
    start_date: date | None = Field(None, description="First day of the date range (inclusive).")
    end_date: date | None = Field(None, description="Last day of the date range (inclusive).")

    # ---- discovery (step 0) ----------------------------------------------------------------
    stac_url: str = Field(EARTH_SEARCH_V1, description="STAC API root URL.")
    collection: str = Field("sentinel-2-l2a", description="STAC collection.")
    max_cloud_cover: float = Field(20.0, ge=0, le=100, description="Scene eo:cloud_cover limit, percent.")
    grid_id: str | None = Field(None, description="Keep only this MGRS tile (e.g. 20LPP).")
    max_items: int | None = Field(None, ge=1, description="Stop discovery after this many items.")

    # ---- step 1: preprocess ----------------------------------------------------------------
    processing_level: Literal["l2a"] = Field("l2a", description="Sentinel-2 processing level.")
    s2_bands: list[str] = Field(default_factory=lambda: list(L2A_BANDS), description="Bands to chip.")
    chip_size: int = Field(256, gt=0, description="Chip side in pixels of the finest band grid.")
    whole_tile: bool = Field(False, description="Chip the whole tile, not only chips meeting the AOI.")
    chip_threads: int | None = Field(
        None, ge=1, description="Threads chipping one scene; default: CPU count / scenes running at once.")
    chip_compression: ChipCompression = Field(
        DEFAULT_CHIP_COMPRESSION, description="Chip NetCDF storage: 'fast' (default) deflates byte plane by "
        "byte plane and stores the planes deflate would shrink by under 40 % (near-noise mantissa bytes: "
        "~35 % less write time and ~1.6x faster reads than 'deflate', ~10 % larger files); 'deflate' "
        "deflates each variable in one go (the smallest files); 'none' writes no filters (2.1x larger "
        "files). Every reader gets the same values; see README 'Throughput'.")

    # ---- remote reads (band COGs over http(s) and s3; see README "Remote reads") --------------
    remote_retries: int = Field(_REMOTE.retries, ge=0, description="HTTP retries of one request on the "
                                "retry codes and connection errors (GDAL_HTTP_MAX_RETRY).")
    remote_retry_delay: float = Field(_REMOTE.retry_delay, gt=0, description="First retry wait, s; "
                                      "doubled (with jitter) at each retry (GDAL_HTTP_RETRY_DELAY).")
    remote_retry_codes: str = Field(_REMOTE.retry_codes, pattern=r"^(ALL|\d{3}(,\d{3})*)$",
                                    description="HTTP statuses retried (GDAL_HTTP_RETRY_CODES).")
    remote_connect_timeout: float = Field(_REMOTE.connect_timeout, gt=0,
                                          description="Connect timeout, s (GDAL_HTTP_CONNECTTIMEOUT).")
    remote_low_speed_time: int = Field(_REMOTE.low_speed_time, ge=1, description="Abort a transfer slower "
                                       "than remote_low_speed_limit for this many s: a stall.")
    remote_low_speed_limit: int = Field(_REMOTE.low_speed_limit, ge=1,
                                        description="Bytes/s below which a transfer counts as stalled.")
    remote_read_attempts: int = Field(_REMOTE.read_attempts, ge=1, description="Attempts of each band "
                                      "open/read after GDAL's retries (cut-off or stalled bodies); the "
                                      "file's cached state is dropped before each.")
    remote_read_threads: int = Field(_REMOTE.read_threads, ge=1,
                                     description="Band reads in flight per scene for remote COGs.")

    # ---- step 2: embed ---------------------------------------------------------------------
    model: str = Field("clay-v1", description="Registered model name (see `geofm models list`).")
    checkpoint: str | None = Field(None, description="Model checkpoint path or URL; default: model cache.")
    embed_bands: list[str] | None = Field(None, description="Bands fed to the model; default: model's.")
    batch_size: int = Field(32, gt=0, description="Chips per model batch.")
    embed_readers: int | None = Field(None, ge=1, description="Threads reading and normalising chips for "
                                      "the model; default: CPU count.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    patch_embeddings: bool = Field(True, description="Also write per-patch embeddings.")
    embed_max_missing: float = Field(0.0, ge=0, le=1, description="Skip chips with more missing data.")
    embed_max_cloud: float = Field(1.0, ge=0, le=1, description="Skip chips with a larger cloud share.")

    # ---- step 3: analyze -------------------------------------------------------------------
    embedding_kind: Literal["patch", "cls"] = Field("patch", description="Embedding used for change.")
    n_components: int = Field(2, ge=1, description="PCA components.")
    pca_sample_size: int = Field(2000, ge=2, description="Rows in the global PCA subsample.")
    seed: int = Field(0, description="Seed of every random choice (PCA subsample, synth).")
    baseline: Literal["first", "first-clear", "seasonal"] = Field(
        "first-clear", description="Change baseline: a date (first, first-clear) or the same time of year "
        "in a baseline period (seasonal).")
    analyze_max_cloud: float = Field(0.05, ge=0, le=1, description="Cloud share limit for step 3 rows.")
    analyze_max_missing: float = Field(0.0, ge=0, le=1, description="Missing share limit for step 3 rows.")
    baseline_max_cloud: float = Field(
        0.0, ge=0, le=1, description="Baseline 'first-clear': first date with a cloud share at most this.")
    baseline_period_start: date | None = Field(
        None, description="Seasonal: first day of the baseline period (default: the first date).")
    baseline_period_end: date | None = Field(
        None, description="Seasonal: last day of the baseline period (default: 364 days after its start).")
    seasonal_rule: Literal["nearest-doy", "harmonic"] = Field(
        "nearest-doy", description="Seasonal expectation: the baseline date nearest in day of year, or a "
        "harmonic fit per series (BENCHMARKS.md: chosen by measurement).")
    harmonic_order: int = Field(1, ge=0, le=4, description="Seasonal 'harmonic': harmonics per year.")
    seasonal_floor_chips: int = Field(
        100, ge=1, description="Seasonal: chips sampled (seeded) for the AOI-wide floor of the spread.")
    patch_z_threshold: float = Field(4.0, description="Seasonal: per-patch z-score at or above this = "
                                     "changed.")
    # Change thresholds are tuned for the weights-free `spectral` encoder on synthetic scenes (planted
    # changes fall to ~0.1, seasonal change of unchanged chips stays above ~0.45). Clay similarities
    # sit on another scale (higher, narrower): calibrate them per AOI (docs/formats.md, step 4).
    patch_change_threshold: float = Field(0.5, description="Per-patch similarity below this = changed.")
    alert_min_dates: int = Field(2, ge=1, description="Alerts: a patch is alerted once it is changed on this "
                                 "many of its observations in a row (a cloud is not; 1: any single one), "
                                 "or on every one up to the last (an unconfirmed alert).")

    # ---- step 4: consolidate ---------------------------------------------------------------
    change_threshold_high: float = Field(0.30, description="Similarity below this: changed (High).")
    change_threshold_medium: float = Field(0.60, description="Lowest similarity below this: Medium.")
    change_z_high: float = Field(8.0, description="Seasonal: largest z-score at or above this: High.")
    change_z_medium: float = Field(4.0, description="Seasonal: largest z-score at or above this: Medium.")
    vector_index_min_rows: int = Field(DEFAULT_INDEX_MIN_ROWS, ge=1, description="Build an ANN index from "
                                       "this size.")
    vector_index_type: str = Field(
        DEFAULT_INDEX_TYPE, description=f"LanceDB ANN index (cosine), one of "
        f"{', '.join(VECTOR_INDEX_TYPES)}; IVF_SQ builds fastest, see BENCHMARKS.md.")

    # ---- running ---------------------------------------------------------------------------
    executor: Literal["local", "ray"] = Field("local", description="local process pool or Ray.")
    ray_address: str | None = Field(None, description="Ray cluster address (executor ray).")
    workers: int | None = Field(None, ge=1, description="Parallel units of work; default: CPU count.")
    retries: int = Field(1, ge=0, description="Retries of a failed unit of work.")
    force: bool = Field(False, description="Redo units of work whose outputs are complete.")

    @field_validator("s2_bands", "embed_bands")
    @classmethod
    def _known_bands(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("band list is empty")
        return [band(b).name for b in v]

    @field_validator("aoi_name")
    @classmethod
    def _safe_aoi_name(cls, v: str) -> str:
        return check_name(v, "aoi_name")

    @field_validator("vector_index_type")
    @classmethod
    def _known_index(cls, v: str) -> str:
        if v not in VECTOR_INDEX_TYPES:
            raise ValueError(f"unknown vector index type {v!r}; use one of {', '.join(VECTOR_INDEX_TYPES)}")
        return v

    @field_validator("grid_id")
    @classmethod
    def _grid_upper(cls, v: str | None) -> str | None:
        return v.upper().removeprefix("MGRS-") if v else v

    @model_validator(mode="after")
    def _dates_in_order(self) -> PipelineConfig:
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError(
                f"dates reversed: start_date {self.start_date} is after end_date {self.end_date}"
            )
        if self.change_threshold_high > self.change_threshold_medium:
            raise ValueError("change_threshold_high must not exceed change_threshold_medium")
        if self.change_z_high < self.change_z_medium:
            raise ValueError("change_z_high must not be below change_z_medium")
        if self.baseline_period_start and self.baseline_period_end and \
                self.baseline_period_start > self.baseline_period_end:
            raise ValueError(f"baseline period reversed: baseline_period_start {self.baseline_period_start} "
                             f"is after baseline_period_end {self.baseline_period_end}")
        return self

    @property
    def remote_reads(self) -> RemoteReadSettings:
        """The ``remote_*`` parameters, as :func:`geofm.storage.gdal_env` and the scene reader take them."""
        return RemoteReadSettings(
            retries=self.remote_retries, retry_delay=self.remote_retry_delay,
            retry_codes=self.remote_retry_codes, connect_timeout=self.remote_connect_timeout,
            low_speed_time=self.remote_low_speed_time,
            low_speed_limit=self.remote_low_speed_limit, read_attempts=self.remote_read_attempts,
            read_threads=self.remote_read_threads)

    @property
    def layout(self) -> Layout:
        return Layout(self.output_root, self.aoi_name, self.processing_level)

    @property
    def aoi_url(self) -> str:
        """The AOI the steps select chips with: ``aoi`` if given, else the one discovery wrote to the
        input layout (the one rule for where the AOI is)."""
        return self.aoi or self.layout.aoi_geojson

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        """Load a YAML file; ``overrides`` (non-None values) win over the file."""
        return cls.model_validate(read_yaml_mapping(path, overrides))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def read_yaml_mapping(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML file of parameters as a dict, with non-None ``overrides`` applied; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of parameters, got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return data


def parse_set_options(items: list[str] | None, fields: Any = None) -> dict[str, Any]:
    """``["chip_size=128", "s2_bands=[red,green]"]`` -> dict, values parsed as YAML scalars/lists; keys
    must be fields of ``fields`` (a pydantic model class; default :class:`PipelineConfig`)."""
    known = (fields or PipelineConfig).model_fields
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in known:
            raise ConfigError(f"unknown parameter {key!r} in --set; `geofm config` lists them")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    return out


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line per bad field: ``field: what is wrong``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def load_config(config: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Config from an optional YAML file plus overrides (None values ignored); bad values raise
    :class:`~geofm.errors.ConfigError` naming the parameter."""
    try:
        if config is not None:
            return PipelineConfig.from_yaml(config, **overrides)
        return PipelineConfig.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None
