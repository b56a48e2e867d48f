"""Step 3: change over time per chip: global PCA, cosine similarity to a baseline, per-patch maps.

Unit of work: one chip (``"<grid>/<chip_id>"``, from ``unique-chip-ids/<grid>/*.txt``) with all its
dates. Before the units, :meth:`Analyze.prepare` reads every chip meta once, keeps the rows of
finished step-2 scenes that pass the limits (``analyze_rows``, each with the fingerprint of the
step-2 unit that embedded it: the input of every unit) and fits the PCA once on a seeded global
subsample of them (``pca_sample_size`` rows of the chosen embedding kind), so every unit projects
with the same model whatever the partitioning. A chip's inputs are its rows and the PCA's id.
Under ``baseline: seasonal`` it also resolves the baseline period and fits the AOI-wide floor of the
residual spread once (:func:`fit_seasonal`, saved as ``processed-embeddings/seasonal_model.json``),
so every chip's z-scores are judged alike. Rules for baselines and patch maps: geofm.change.
Output: ``processed-embeddings/<grid>/<x>_<y>_processed_embeddings.parquet`` (docs/formats.md).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import geopandas as gpd
import numpy as np
import pandas as pd

from geofm import change, geoparquet, markers, storage
from geofm.change import SeasonalModel
from geofm.columns import EMBEDDING_FILE
from geofm.config import PipelineConfig
from geofm.digest import digest
from geofm.errors import InputError, NotFoundError
from geofm.layout import Layout
from geofm.reduce import PCAModel, fit_pca, load_pca, save_pca
from geofm.report import UnitResult
from geofm.steps.base import Step, UnitOutput

EMBED_ID = "embed_id"  # analyze_rows only: identity of the step-2 unit that embedded the row's scene
PCA_UNIT = "pca"
CHIP_IDS_UNIT = "chip-ids"
SEASONAL_UNIT = "seasonal"
log = logging.getLogger(__name__)


# ---- listing and reading -------------------------------------------------------------------------
def chip_units(cfg: PipelineConfig) -> list[str]:
    """``"<grid>/<chip_id>"`` for every chip id file (``unique-chip-ids/``, written by
    :meth:`Analyze.prepare` from the embedded chips), sorted."""
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
        raise InputError(f"not an analyze unit: {unit!r} (expected '<grid>/<x>_<y>')") from None


def read_all_meta(cfg: PipelineConfig) -> gpd.GeoDataFrame:
    """The chip meta of every scene that step 2 finished, in one frame, with the fingerprint of the
    step-2 unit that wrote it (``embed_id``)."""
    lay = cfg.layout
    embedded = markers.identities(lay, "embed")
    frames = []
    for scene_id in lay.meta_scene_ids():
        if scene_id in embedded:
            frame = geoparquet.read(lay.meta(scene_id))
            frame[EMBED_ID] = embedded[scene_id]
            frames.append(frame)
    if not frames:
        raise NotFoundError(f"no embedded chip meta in {lay.meta_dir}: run preprocess and embed first")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)


def select_rows(meta: gpd.GeoDataFrame, cfg: PipelineConfig) -> gpd.GeoDataFrame:
    """Rows with an embedding of the chosen kind that pass the cloud and missing-data limits,
    sorted by grid, chip and date."""
    col = EMBEDDING_FILE[cfg.embedding_kind]
    if col not in meta.columns:
        raise InputError(f"chip meta has no {col!r} column: run embed first"
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


# ---- global PCA ----------------------------------------------------------------------------------
def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """Seeded choice of ``min(n, size)`` of ``n`` rows, sorted: the same whatever the partitioning."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def pca_inputs(rows: pd.DataFrame, cfg: PipelineConfig) -> str:
    """What the PCA is fitted from: every selected row's embedding file (as the layout stores it) and
    who wrote it."""
    files = [cfg.layout.restore(u) for u in rows[EMBEDDING_FILE[cfg.embedding_kind]]]
    return digest([files, list(rows[EMBED_ID])])


def fit_global_pca(rows: pd.DataFrame, cfg: PipelineConfig) -> PCAModel:
    """Fit the PCA on a seeded subsample of ``rows`` (all chips and dates); NaN embeddings left out."""
    col = EMBEDDING_FILE[cfg.embedding_kind]
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
            raise InputError(f"{rows[col].iloc[i]}: {v.size} values, other embeddings have {sample.shape[1]}")
        sample[n] = v
        n += 1
    if sample is None or n < 2:
        raise InputError(f"only {n} usable embeddings for the PCA; need at least 2")
    n_components = min(cfg.n_components, n - 1)
    if n_components < cfg.n_components:
        log.warning("PCA: %d sample rows support only %d components (asked %d)", n, n_components,
                    cfg.n_components)
    return fit_pca(sample[:n], n_components, cfg.embedding_kind, cfg.seed)


# ---- seasonal baseline ---------------------------------------------------------------------------
def _finite_series(lay: Layout, rows: pd.DataFrame, col: str) -> tuple[list[Any], np.ndarray | None]:
    """A chip's dates and stacked embeddings, rows with NaN left out."""
    dates, values = [], []
    for d, stored in zip(rows["date"], rows[col], strict=True):
        v = load_embedding(lay.resolve(stored))
        if np.all(np.isfinite(v)):
            dates.append(pd.Timestamp(d).date())
            values.append(v)
    return dates, (np.stack(values) if values else None)


def fit_seasonal(rows: pd.DataFrame, cfg: PipelineConfig) -> SeasonalModel:
    """The baseline period (from the config, else from the first date of all rows) and the AOI-wide
    floors: the median baseline residual spread over ``seasonal_floor_chips`` chips drawn with the seed."""
    col = EMBEDDING_FILE[cfg.embedding_kind]
    start, end = change.baseline_period([pd.Timestamp(d).date() for d in rows["date"]],
                                        cfg.baseline_period_start, cfg.baseline_period_end)
    bare = SeasonalModel(cfg.seasonal_rule, cfg.harmonic_order, start, end, 0.0, 0.0)
    groups = rows.groupby(["mgrs_grid", "chip_id"], sort=True).indices
    keys = list(groups)
    spreads = []
    for i in sample_indices(len(keys), cfg.seasonal_floor_chips, cfg.seed):
        dates, values = _finite_series(cfg.layout, rows.iloc[np.sort(groups[keys[i]])], col)
        if values is not None:
            spreads.append(change.baseline_spreads(dates, values, bare))
    chip_floor, patch_floor = change.seasonal_floors(spreads)
    return SeasonalModel(cfg.seasonal_rule, cfg.harmonic_order, start, end, chip_floor, patch_floor,
                         len(spreads))


T = TypeVar("T")
_ROWS_CACHE: dict[str, tuple[str, Any]] = {}
_PCA_CACHE: dict[str, tuple[str, Any]] = {}
_SEASONAL_CACHE: dict[str, tuple[str, Any]] = {}


def _read_once(cache: dict[str, tuple[str, Any]], url: str, load: Callable[[str], T]) -> T:
    """``load(url)``, kept in ``cache`` (one file per cache) while the file's version is unchanged: a
    step-wide input is read once per worker process, not once per unit."""
    version = storage.version(url)
    cached = cache.get(url)
    if cached is None or cached[0] != version:
        cache.clear()
        cache[url] = cached = (version, load(url))
    return cached[1]


def load_seasonal(url: str) -> SeasonalModel:
    """The saved seasonal baseline model (read once per worker process while unchanged)."""
    if not storage.exists(url):
        raise NotFoundError(f"no seasonal baseline model at {url}: run analyze with baseline seasonal")
    return _read_once(_SEASONAL_CACHE, url, lambda u: SeasonalModel.from_dict(storage.read_json(u)))


# ---- one chip ------------------------------------------------------------------------------------
def all_rows(url: str) -> tuple[gpd.GeoDataFrame, dict[tuple[str, str], np.ndarray]]:
    """``analyze_rows`` and an index (grid, chip_id) -> row positions, read once per worker process
    (not once per chip: on S3 that would move the whole file for every unit)."""
    def load(u: str) -> tuple[gpd.GeoDataFrame, dict[tuple[str, str], np.ndarray]]:
        frame = geoparquet.read(u)
        groups = frame.groupby(["mgrs_grid", "chip_id"], sort=False).indices
        return frame, {k: np.asarray(v) for k, v in groups.items()}

    return _read_once(_ROWS_CACHE, url, load)


def global_pca(url: str) -> PCAModel:
    """The saved PCA, read once per worker process while the file is unchanged (it can be 10+ MB)."""
    if not storage.exists(url):
        return load_pca(url)  # raises naming the missing file
    return _read_once(_PCA_CACHE, url, load_pca)


def chip_rows(cfg: PipelineConfig, grid: str, chip_id: str) -> gpd.GeoDataFrame:
    """This chip's rows from ``analyze_rows`` (date-sorted)."""
    frame, index = all_rows(cfg.layout.analyze_rows)
    pos = index.get((grid, chip_id), np.array([], dtype=int))
    return frame.iloc[pos].sort_values("date", kind="stable").reset_index(drop=True)


def chip_inputs(cfg: PipelineConfig, rows: pd.DataFrame, model: PCAModel) -> str:
    """A chip's input identity: its rows as selected (values, files, who embedded them) and the PCA;
    file locations as the layout stores them (relative: a moved output keeps it)."""
    rows = rows.drop(columns="geometry").copy()
    for col in (c for c in rows.columns if c.startswith("s3_location_")):
        rows[col] = rows[col].map(lambda u: cfg.layout.restore(u) if isinstance(u, str) else u)
    return digest([rows.to_json(orient="split", date_format="iso", index=False), model.model_id])


def analyze_chip(rows: pd.DataFrame, embeddings: list[np.ndarray], model: PCAModel,
                 cfg: PipelineConfig, seasonal: SeasonalModel | None = None) -> pd.DataFrame:
    """The step-3 columns for one chip's date-sorted ``rows`` and their loaded embeddings (pure);
    ``seasonal`` is needed under ``baseline: seasonal``."""
    if cfg.baseline == "seasonal" and seasonal is None:
        raise InputError("baseline 'seasonal' needs the seasonal model (baseline period and floors)")
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
    zs = np.full(n, np.nan)
    zmaps: list[list[float] | None] = [None] * n
    zsummaries = [change.patch_z_summary(np.array([]), cfg.patch_z_threshold) for _ in range(n)]
    if ok and seasonal is not None and cfg.baseline == "seasonal":
        baseline_date = pd.Timestamp(seasonal.period_end)
        sc = change.seasonal_change([out["date"].iloc[i].date() for i in ok],
                                    np.stack([embeddings[i] for i in ok]), seasonal)
        sims[ok], zs[ok] = sc.similarity, sc.z
        if kind == "patch":
            assert sc.patch_similarity is not None and sc.patch_z is not None
            side = change.patch_grid_side(sc.patch_similarity.shape[1])
            for j, i in enumerate(ok):
                maps[i] = [float(v) for v in sc.patch_similarity[j]]
                zmaps[i] = [float(v) for v in sc.patch_z[j]]
                summaries[i] = change.patch_summary(sc.patch_similarity[j], cfg.patch_change_threshold)
                zsummaries[i] = change.patch_z_summary(sc.patch_z[j], cfg.patch_z_threshold)
    elif ok:
        b = ok[change.baseline_index(out["cloud_cover_perc"].iloc[ok].tolist(), cfg.baseline,
                                     cfg.baseline_max_cloud)]
        baseline_date = out["date"].iloc[b]
        base = embeddings[b]
        for i in ok:
            sims[i] = change.cosine_similarity(embeddings[i], base)
        if kind == "patch":
            side = change.patch_grid_side(base.shape[0])
            for i in ok:
                m = change.patch_similarity(embeddings[i], base)
                maps[i] = [float(v) for v in m]
                summaries[i] = change.patch_summary(m, cfg.patch_change_threshold)
    if ok:
        pcs[ok] = model.transform(np.stack([embeddings[i].ravel() for i in ok]))
    out["baseline_date"] = baseline_date
    out["cosine_sim"] = sims
    if cfg.baseline == "seasonal" and seasonal is not None:
        out["baseline_rule"] = seasonal.label
        out["baseline_period_start"] = pd.Timestamp(seasonal.period_start)
        out["baseline_period_end"] = pd.Timestamp(seasonal.period_end)
        out["change_z"] = zs
        out["change_score"] = zs
    else:
        out["baseline_rule"] = cfg.baseline
        out["change_score"] = change.chip_score(sims)
    for j in range(model.n_components):
        out[f"{kind}_emb_pca_{j + 1}"] = pcs[:, j]
    if kind == "patch":
        for key in ("patch_sim_mean", "patch_sim_p10", "patch_changed_share"):
            out[key] = [s[key] for s in summaries]
        out["patch_grid"] = side if side is not None else math.nan
        out["patch_sim_map"] = maps
        if cfg.baseline == "seasonal":
            out["patch_z_max"] = [s["patch_z_max"] for s in zsummaries]
            out["patch_changed_share"] = [s["patch_changed_share"] for s in zsummaries]
            out["patch_z_map"] = zmaps
    return out


def process_unit(cfg: PipelineConfig, unit: str) -> UnitOutput:
    """Analyse one chip: its processed-embeddings file (none when no date passes the limits)."""
    grid, x, y = parse_unit(unit)
    lay = cfg.layout
    url = lay.processed_embeddings(grid, x, y)
    model = _pca(cfg)
    rows = chip_rows(cfg, grid, f"{x}_{y}")
    if rows.empty:
        return UnitOutput([], {"rows": 0})
    embeddings = [load_embedding(lay.resolve(u)) for u in rows[EMBEDDING_FILE[cfg.embedding_kind]]]
    seasonal = load_seasonal(lay.seasonal_model) if cfg.baseline == "seasonal" else None
    frame = analyze_chip(rows.drop(columns=EMBED_ID), embeddings, model, cfg, seasonal)
    geoparquet.write(url, frame)
    return UnitOutput([url], {
        "rows": len(frame), "nan_rows": int(frame["embedding_contains_nan_yn"].sum()),
        "min_sim": float(np.nanmin(frame["cosine_sim"])) if frame["cosine_sim"].notna().any() else None})


def _pca(cfg: PipelineConfig) -> PCAModel:
    url = cfg.layout.reducer_model(PCA_UNIT)
    model = global_pca(url)
    if model.kind != cfg.embedding_kind:
        raise InputError(f"PCA model at {url} was fitted on {model.kind!r} embeddings, not "
                         f"{cfg.embedding_kind!r}: rerun analyze")
    return model


class Analyze(Step):
    """Step 3 over the chips step 2 embedded (see the module doc)."""

    name: ClassVar[str] = "analyze"
    params: ClassVar[tuple[str, ...]] = ("embedding_kind", "n_components", "pca_sample_size", "seed",
                                         "baseline", "baseline_max_cloud", "analyze_max_cloud",
                                         "analyze_max_missing", "patch_change_threshold",
                                         "baseline_period_start", "baseline_period_end", "seasonal_rule",
                                         "harmonic_order", "seasonal_floor_chips", "patch_z_threshold")

    own_units: ClassVar[tuple[str, ...]] = (CHIP_IDS_UNIT, PCA_UNIT, SEASONAL_UNIT)

    def prepare(self, cfg: PipelineConfig) -> list[UnitResult]:
        """Before the units, three pieces of work from every embedded chip meta: the chip id files
        (``unique-chip-ids/``, the units) and the global PCA, each a resumable unit of its own, and the
        selected rows (``analyze_rows``, the input of every unit); under a seasonal baseline also the
        seasonal model (a resumable unit too)."""
        lay = cfg.layout
        results: list[UnitResult] = []
        unit = PCA_UNIT  # what a failure is reported as
        try:
            meta = read_all_meta(cfg)
            status, info = self._write_chip_ids(cfg, meta)
            results.append(UnitResult(CHIP_IDS_UNIT, status, info=info))
            rows = select_rows(meta, cfg)
            if rows.empty:
                raise InputError(
                    f"no embedded chip passes the limits (analyze_max_cloud={cfg.analyze_max_cloud}, "
                    f"analyze_max_missing={cfg.analyze_max_missing}, embedding_kind={cfg.embedding_kind})")
            geoparquet.write(lay.analyze_rows, rows)
            url = lay.reducer_model(PCA_UNIT)

            def fit() -> UnitOutput:
                model = fit_global_pca(rows, cfg)
                save_pca(model, url)
                return UnitOutput([url], {
                    "components": model.n_components, "sample_rows": model.sample_size,
                    "explained": np.round(model.explained_variance_ratio, 4).tolist()})

            fp = markers.fingerprint(self.name, self.param_values(cfg), {"rows": pca_inputs(rows, cfg)})
            status, info = markers.run(lay, self.name, PCA_UNIT, fp, fit, force=cfg.force)
            results.append(UnitResult(PCA_UNIT, status, info=info))
            if cfg.baseline == "seasonal":
                unit = SEASONAL_UNIT
                results.append(self._prepare_seasonal(cfg, rows, fp))
        except (InputError, NotFoundError) as exc:
            return [*results, UnitResult(unit, "failed", error=f"{type(exc).__name__}: {exc}",
                                         error_kind="input" if isinstance(exc, InputError) else "not-found")]
        return results

    def _write_chip_ids(self, cfg: PipelineConfig, meta: pd.DataFrame) -> tuple[str, dict[str, Any]]:
        """One file per chip that step 2 embedded on any date (the spec's ``unique-chip-ids``); ids
        of chips no longer made are removed with the unit's stale outputs."""
        lay = cfg.layout
        ok = meta["embedding_status"].fillna("ok") == "ok" if "embedding_status" in meta else True
        chips = meta.loc[ok, ["mgrs_grid", "x_dim", "y_dim", "chip_id"]].drop_duplicates()
        chips = chips.sort_values(["mgrs_grid", "y_dim", "x_dim"]).itertuples(index=False)
        ids = [(str(g), int(x), int(y), str(c)) for g, x, y, c in chips]

        def write() -> UnitOutput:
            urls = []
            for grid, x, y, chip_id in ids:
                urls.append(lay.unique_chip_id(grid, x, y))
                storage.write_text(urls[-1], chip_id)
            return UnitOutput(urls, {"chips": len(ids)})

        fp = markers.fingerprint(f"{self.name}/{CHIP_IDS_UNIT}", {}, [list(i) for i in ids])
        return markers.run(lay, self.name, CHIP_IDS_UNIT, fp, write, force=cfg.force)

    def _prepare_seasonal(self, cfg: PipelineConfig, rows: pd.DataFrame, rows_fp: str) -> UnitResult:
        """The seasonal model (baseline period, AOI-wide floors): resumable like the PCA, from the
        same rows."""
        url = cfg.layout.seasonal_model

        def fit() -> UnitOutput:
            model = fit_seasonal(rows, cfg)
            storage.write_json(url, model.to_dict())
            return UnitOutput([url], model.to_dict())

        fp = markers.fingerprint(f"{self.name}/{SEASONAL_UNIT}", {}, rows_fp)
        status, info = markers.run(cfg.layout, self.name, SEASONAL_UNIT, fp, fit, force=cfg.force)
        return UnitResult(SEASONAL_UNIT, status, info=info)

    def units(self, cfg: PipelineConfig) -> list[str]:
        return chip_units(cfg)

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        grid, x, y = parse_unit(unit)
        ident = chip_inputs(cfg, chip_rows(cfg, grid, f"{x}_{y}"), _pca(cfg))
        if cfg.baseline != "seasonal":
            return ident
        return [ident, load_seasonal(cfg.layout.seasonal_model).to_dict()]

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        return process_unit(cfg, unit)
