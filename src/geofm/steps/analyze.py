"""Step 3: change over time per chip: global PCA, cosine similarity to a baseline, per-patch maps.

Unit of work: one chip (``"<grid>/<chip_id>"``, from ``unique-chip-ids/<grid>/*.txt``) with all its
dates. Before the units, :func:`prepare` reads every chip meta once, keeps the rows that pass the
limits (``analyze_rows``: the input of every unit) and fits the PCA once on a seeded global
subsample of them (``pca_sample_size`` rows of the chosen embedding kind), so every unit projects
with the same model whatever the partitioning. Rules for baselines and patch maps: geofm.change.
Output: ``processed-embeddings/<grid>/<x>_<y>_processed_embeddings.parquet`` (docs/formats.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geofm import change, geoparquet, storage
from geofm.config import PipelineConfig
from geofm.executors import map_units
from geofm.reduce import PCAModel, fit_pca, load_pca, save_pca
from geofm.report import StepReport, UnitResult

STEP = "analyze"
INPUTS_KEY = "geofm:inputs"  # parquet schema metadata: digest of what a chip's output was made from
EMB_COLUMN = {"patch": "s3_location_patch_emb", "cls": "s3_location_cls_emb"}
log = logging.getLogger(__name__)


# ---- listing and reading -------------------------------------------------------------------------
def units(cfg: PipelineConfig) -> list[str]:
    """``"<grid>/<chip_id>"`` for every chip id file written by step 2, sorted."""
    lay = cfg.layout
    out = []
    for grid in storage.list_folders(lay.unique_chip_ids_root):
        for url in storage.list_files(lay.unique_chip_ids_dir(grid), ".txt"):
            out.append(f"{grid}/{url.rsplit('/', 1)[-1].removesuffix('.txt')}")
    return sorted(out)


def parse_unit(unit: str) -> tuple[str, int, int]:
    """``"33TWL/3_4"`` -> ("33TWL", 3, 4); a malformed unit raises naming it."""
    try:
        grid, chip_id = unit.split("/")
        x, y = chip_id.split("_")
        return grid, int(x), int(y)
    except ValueError:
        raise ValueError(f"not an analyze unit: {unit!r} (expected '<grid>/<x>_<y>')") from None


def read_all_meta(cfg: PipelineConfig) -> gpd.GeoDataFrame:
    """Every scene's chip meta (after step 2) in one frame."""
    urls = cfg.layout.meta_files()
    if not urls:
        raise FileNotFoundError(f"no chip meta in {cfg.layout.meta_dir}: run preprocess and embed first")
    frames = [geoparquet.read(u) for u in urls]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)


def select_rows(meta: gpd.GeoDataFrame, cfg: PipelineConfig) -> gpd.GeoDataFrame:
    """Rows with an embedding of the chosen kind that pass the cloud and missing-data limits,
    sorted by grid, chip and date."""
    col = EMB_COLUMN[cfg.embedding_kind]
    if col not in meta.columns:
        raise ValueError(f"chip meta has no {col!r} column: run embed first"
                         + (" (with patch_embeddings on)" if cfg.embedding_kind == "patch" else ""))
    keep = meta[col].notna() & (meta[col].astype(str) != "")
    if "embedding_status" in meta.columns:
        keep &= meta["embedding_status"].fillna("ok") == "ok"
    keep &= meta["cloud_cover_perc"] <= cfg.analyze_max_cloud
    keep &= meta["missing_data_perc"] <= cfg.analyze_max_missing
    rows = meta[keep].copy()
    rows["date"] = pd.to_datetime(rows["date"])
    return rows.sort_values(["mgrs_grid", "chip_id", "date", "origin_tile"], kind="stable") \
        .reset_index(drop=True)


def load_embedding(url: str) -> np.ndarray:
    """A plain ``.npy`` array (never unpickled)."""
    return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- global PCA ----------------------------------------------------------------------------------
def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """Seeded choice of ``min(n, size)`` of ``n`` rows, sorted: the same whatever the partitioning."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def pca_fingerprint(rows: pd.DataFrame, cfg: PipelineConfig) -> str:
    return _digest({"kind": cfg.embedding_kind, "n": cfg.n_components, "size": cfg.pca_sample_size,
                    "seed": cfg.seed, "paths": list(rows[EMB_COLUMN[cfg.embedding_kind]])})


def fit_global_pca(rows: pd.DataFrame, cfg: PipelineConfig) -> PCAModel:
    """Fit the PCA on a seeded subsample of ``rows`` (all chips and dates); NaN embeddings left out."""
    col = EMB_COLUMN[cfg.embedding_kind]
    idx = sample_indices(len(rows), cfg.pca_sample_size, cfg.seed)
    sample: np.ndarray | None = None  # filled in place: the sample is held once (it can be GBs)
    n = 0
    for i in idx:
        v = load_embedding(cfg.layout.resolve(rows[col].iloc[i])).ravel()
        if not np.all(np.isfinite(v)):
            continue
        if sample is None:
            sample = np.empty((len(idx), v.size), np.float32)
        if v.size != sample.shape[1]:
            raise ValueError(f"{rows[col].iloc[i]}: {v.size} values, other embeddings have {sample.shape[1]}")
        sample[n] = v
        n += 1
    if sample is None or n < 2:
        raise ValueError(f"only {n} usable embeddings for the PCA; need at least 2")
    n_components = min(cfg.n_components, n - 1)
    if n_components < cfg.n_components:
        log.warning("PCA: %d sample rows support only %d components (asked %d)", n, n_components,
                    cfg.n_components)
    return fit_pca(sample[:n], n_components, cfg.embedding_kind, cfg.seed, pca_fingerprint(rows, cfg),
                   overwrite=True)


def prepare(cfg: PipelineConfig) -> PCAModel:
    """Once before the units: write the selected rows and fit (or reuse) the global PCA."""
    lay = cfg.layout
    rows = select_rows(read_all_meta(cfg), cfg)
    if rows.empty:
        raise ValueError(
            f"no embedded chip passes the limits (analyze_max_cloud={cfg.analyze_max_cloud}, "
            f"analyze_max_missing={cfg.analyze_max_missing}, embedding_kind={cfg.embedding_kind})")
    geoparquet.write(lay.analyze_rows, rows)
    fp = pca_fingerprint(rows, cfg)
    url = lay.reducer_model("pca")
    if not cfg.force and storage.exists(url):
        try:
            old = load_pca(url)
            if old.fingerprint == fp:
                return old
        except ValueError:
            pass  # a broken model file is refitted
    model = fit_global_pca(rows, cfg)
    save_pca(model, url)
    return model


# ---- one chip ------------------------------------------------------------------------------------
_ROWS_CACHE: dict[str, tuple[str, gpd.GeoDataFrame, dict[tuple[str, str], np.ndarray]]] = {}


def all_rows(url: str) -> tuple[gpd.GeoDataFrame, dict[tuple[str, str], np.ndarray]]:
    """``analyze_rows`` and an index (grid, chip_id) -> row positions, read once per worker process
    (not once per chip: on S3 that would move the whole file for every unit)."""
    version = storage.version(url)
    cached = _ROWS_CACHE.get(url)
    if cached is None or cached[0] != version:
        frame = geoparquet.read(url)
        groups = frame.groupby(["mgrs_grid", "chip_id"], sort=False).indices
        index = {k: np.asarray(v) for k, v in groups.items()}
        _ROWS_CACHE.clear()
        _ROWS_CACHE[url] = cached = (version, frame, index)
    return cached[1], cached[2]


_PCA_CACHE: dict[str, tuple[str, PCAModel]] = {}


def global_pca(url: str) -> PCAModel:
    """The saved PCA, read once per worker process while the file is unchanged (it can be 10+ MB)."""
    if not storage.exists(url):
        return load_pca(url)  # raises naming the missing file
    version = storage.version(url)
    cached = _PCA_CACHE.get(url)
    if cached is None or cached[0] != version:
        _PCA_CACHE.clear()
        _PCA_CACHE[url] = cached = (version, load_pca(url))
    return cached[1]


def chip_rows(cfg: PipelineConfig, grid: str, chip_id: str) -> gpd.GeoDataFrame:
    """This chip's rows from ``analyze_rows`` (date-sorted)."""
    frame, index = all_rows(cfg.layout.analyze_rows)
    pos = index.get((grid, chip_id), np.array([], dtype=int))
    return frame.iloc[pos].sort_values("date", kind="stable").reset_index(drop=True)


def _inputs_id(cfg: PipelineConfig, model: PCAModel, rows: pd.DataFrame) -> str:
    return _digest({"pca": model.model_id, "kind": cfg.embedding_kind, "baseline": cfg.baseline,
                    "baseline_max_cloud": cfg.baseline_max_cloud, "patch": cfg.patch_change_threshold,
                    "paths": list(rows[EMB_COLUMN[cfg.embedding_kind]]),
                    "cloud": [round(float(c), 6) for c in rows["cloud_cover_perc"]]})


def is_complete(url: str, inputs_id: str) -> bool:
    """The chip's output exists and was made from the same inputs, PCA and parameters."""
    if not storage.exists(url):
        return False
    try:
        return geoparquet.read_metadata(url).get(INPUTS_KEY) == inputs_id
    except Exception:  # a torn or foreign file counts as absent
        return False


def analyze_chip(rows: pd.DataFrame, embeddings: list[np.ndarray], model: PCAModel,
                 cfg: PipelineConfig) -> pd.DataFrame:
    """The step-3 columns for one chip's date-sorted ``rows`` and their loaded embeddings (pure)."""
    kind = cfg.embedding_kind
    out = rows.copy()
    n = len(out)
    has_nan = [not bool(np.all(np.isfinite(e))) for e in embeddings]
    ok = [i for i in range(n) if not has_nan[i]]
    out["embedding_kind"] = kind
    out["embedding_contains_nan_yn"] = has_nan
    sims = np.full(n, np.nan)
    pcs = np.full((n, model.n_components), np.nan)
    maps: list[list[float] | None] = [None] * n
    summaries = [change.patch_summary(np.array([]), cfg.patch_change_threshold) for _ in range(n)]
    side = None
    baseline_date = pd.NaT
    if ok:
        b = ok[change.baseline_index(out["cloud_cover_perc"].iloc[ok].tolist(), cfg.baseline,
                                     cfg.baseline_max_cloud)]
        baseline_date = out["date"].iloc[b]
        base = embeddings[b]
        for i in ok:
            sims[i] = change.cosine_similarity(embeddings[i], base)
        pcs[ok] = model.transform(np.stack([embeddings[i].ravel() for i in ok]))
        if kind == "patch":
            side = change.patch_grid_side(base.shape[0])
            for i in ok:
                m = change.patch_similarity(embeddings[i], base)
                maps[i] = [float(v) for v in m]
                summaries[i] = change.patch_summary(m, cfg.patch_change_threshold)
    out["baseline_date"] = baseline_date
    out["cosine_sim"] = sims
    for j in range(model.n_components):
        out[f"{kind}_emb_pca_{j + 1}"] = pcs[:, j]
    if kind == "patch":
        for key in ("patch_sim_mean", "patch_sim_p10", "patch_changed_share"):
            out[key] = [s[key] for s in summaries]
        out["patch_grid"] = side if side is not None else math.nan
        out["patch_sim_map"] = maps
    return out


def process_unit(cfg: PipelineConfig, unit: str) -> dict[str, Any]:
    """Analyse one chip; ``{"skipped": True}`` when its output is complete (unless ``cfg.force``)."""
    grid, x, y = parse_unit(unit)
    chip_id = f"{x}_{y}"
    lay = cfg.layout
    url = lay.processed_embeddings(grid, x, y)
    model = global_pca(lay.reducer_model("pca"))
    if model.kind != cfg.embedding_kind:
        raise ValueError(f"PCA model at {lay.reducer_model('pca')} was fitted on {model.kind!r} embeddings, "
                         f"not {cfg.embedding_kind!r}: rerun analyze with --force")
    rows = chip_rows(cfg, grid, chip_id)
    if rows.empty:
        storage.remove(url)  # no date passes the limits now: drop an older output
        return {"rows": 0}
    inputs_id = _inputs_id(cfg, model, rows)
    if not cfg.force and is_complete(url, inputs_id):
        return {"skipped": True}
    embeddings = [load_embedding(lay.resolve(u)) for u in rows[EMB_COLUMN[cfg.embedding_kind]]]
    frame = analyze_chip(rows, embeddings, model, cfg)
    geoparquet.write(url, frame, {INPUTS_KEY: inputs_id})  # the inputs digest is for rerun checks
    return {"rows": len(frame), "nan_rows": int(frame["embedding_contains_nan_yn"].sum()),
            "min_sim": float(np.nanmin(frame["cosine_sim"])) if frame["cosine_sim"].notna().any() else None}


def run(cfg: PipelineConfig, quiet: bool = False) -> StepReport:
    """Fit the global PCA, then analyse every chip in parallel; failures are reported per chip."""
    try:
        model = prepare(cfg)
    except (ValueError, FileNotFoundError) as exc:
        report = StepReport(STEP)
        report.results.append(UnitResult("pca", "failed", error=f"{type(exc).__name__}: {exc}"))
        return report
    log.info("PCA: %d components on %d rows of %s embeddings (explained %s)", model.n_components,
             model.sample_size, model.kind, np.round(model.explained_variance_ratio, 3).tolist())
    return map_units(process_unit, cfg, units(cfg), STEP, workers=cfg.workers, quiet=quiet)
