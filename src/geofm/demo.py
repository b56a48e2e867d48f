"""`geofm demo`: synthesize a small AOI with planted change, run the whole pipeline, report what it found."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import geopandas as gpd
import pandas as pd

from geofm import storage
from geofm.config import PipelineConfig
from geofm.pipeline import STEP_NAMES, RunRecord, run_pipeline
from geofm.report import Progress

DEMO_AOI = "demo"
DEMO_GRID = "33TWL"
DEMO_DATES = [date(2023, m, d) for m, d in ((3, 5), (4, 9), (5, 14), (6, 18), (7, 23), (8, 27), (10, 1))]
DEMO_EXTENT_M = 10240.0


def pick_model(requested: str) -> str:
    """``auto``: Clay when its weights are in the model cache, else the weights-free ``spectral``."""
    from geofm.models.registry import default_model

    return default_model() if requested == "auto" else requested


def _changed_chips(cfg: PipelineConfig, grid: str) -> gpd.GeoDataFrame:
    url = cfg.layout.change_intensity(grid)
    with storage.local_file_for_read(url, ".geojson") as path:
        return gpd.read_file(path)


def _truth_chips(truth_path: str, chips: gpd.GeoDataFrame) -> dict[str, str]:
    """chip_id -> planted change kind, for chips that overlap a planted change by a quarter or more."""
    utm = chips.estimate_utm_crs()
    chips = chips.to_crs(utm)
    truth = gpd.read_file(truth_path).to_crs(utm)
    out: dict[str, str] = {}
    for _, t in truth.iterrows():
        share = chips.geometry.intersection(t.geometry).area / chips.geometry.area
        for chip_id in chips.loc[share >= 0.25, "chip_id"]:
            out[str(chip_id)] = str(t["kind"])
    return out


@dataclass
class DemoResult:
    """What the demo made and found (the CLI prints it)."""

    out: str
    model: str
    record: RunRecord
    where: list[tuple[str, str]] = field(default_factory=list)  # artifact, location
    chips: gpd.GeoDataFrame | None = None  # change intensity per chip, most changed first
    truth: dict[str, str] = field(default_factory=dict)  # chip_id -> planted change kind
    scenes: int = 0
    query_chip: str = ""
    query_date: str = ""
    hits: pd.DataFrame | None = None


def run_demo(out: str, model: str = "auto", progress: Progress | None = None) -> DemoResult:
    """Synthesize the demo AOI into ``out``, run every processing step, and look at what came out."""
    from geofm.synth import synthesize
    from geofm.vectordb import search

    chosen = pick_model(model)
    synth = synthesize(out, aoi_name=DEMO_AOI, grid=DEMO_GRID, dates=DEMO_DATES, extent_m=DEMO_EXTENT_M,
                       seed=0, into_layout=True)
    cfg = PipelineConfig(aoi_name=DEMO_AOI, aoi=str(synth.aoi_path), output_root=out, model=chosen,
                         chip_size=256, batch_size=16)
    record = run_pipeline(cfg, [s for s in STEP_NAMES if s != "discover"], progress=progress)
    result = DemoResult(out, chosen, record)
    if not record.ok:
        return result
    grid, lay = DEMO_GRID, cfg.layout
    result.where = [
        ("synthetic scenes (COGs, STAC items)", str(synth.items_path).rsplit("/", 1)[0]),
        ("planted-change truth", str(synth.truth_path)),
        ("scene items + AOI (input layout)", lay.input_dir),
        ("chip metadata (GeoParquet)", lay.meta_dir),
        ("chips (NetCDF) / thumbnails (PNG)", f"{lay.output_dir}/raw-chips, {lay.output_dir}/rgb-imgs"),
        (f"embeddings ({chosen})", lay.embeddings_dir(chosen)),
        ("change over time, per chip", lay.processed_embeddings_dir(grid)),
        ("consolidated output, grids, config", lay.consolidated_dir(grid)),
        ("vector database (LanceDB)", lay.lance_db),
        ("run records", lay.runs_dir),
    ]
    chips = _changed_chips(cfg, grid).sort_values("min_sim").reset_index(drop=True)
    result.chips = chips
    result.truth = _truth_chips(str(synth.truth_path), chips)
    result.scenes = len(lay.scene_ids())
    steady = chips.iloc[-1]
    result.query_chip, result.query_date = str(steady["chip_id"]), str(steady["latest_date"])[:10]
    result.hits = search(lay.lance_db, chip_id=result.query_chip, date=result.query_date, k=5,
                         date_range=(result.query_date, result.query_date))
    return result
