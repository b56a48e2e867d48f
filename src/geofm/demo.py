"""`geofm demo`: synthesize a small AOI with planted change, run the whole pipeline, print what it found."""

from __future__ import annotations

from datetime import date

import geopandas as gpd
from rich.console import Console
from rich.table import Table

from geofm import storage
from geofm.config import PipelineConfig
from geofm.pipeline import PROCESSING_STEPS, run_pipeline

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


def run_demo(out: str, model: str = "auto", quiet: bool = False, console: Console | None = None) -> int:
    """Run the demo end to end into ``out``; returns the exit code (0 when every step succeeded)."""
    from geofm.synth import synthesize

    console = console or Console()
    chosen = pick_model(model)
    console.print(f"[bold]geofm demo[/bold]: synthesizing {len(DEMO_DATES)} dates of tile {DEMO_GRID} "
                  f"({DEMO_EXTENT_M / 1000:.1f} km square) into {out}")
    synth = synthesize(out, aoi_name=DEMO_AOI, grid=DEMO_GRID, dates=DEMO_DATES, extent_m=DEMO_EXTENT_M,
                       seed=0, into_layout=True)
    cfg = PipelineConfig(aoi_name=DEMO_AOI, aoi=str(synth.aoi_path), output_root=out, model=chosen,
                         chip_size=256, batch_size=16)
    console.print(f"model: [bold]{chosen}[/bold]"
                  + (" (weights-free; put Clay weights in the model cache to use Clay)"
                     if chosen == "spectral" else ""))
    record = run_pipeline(cfg, list(PROCESSING_STEPS), quiet=quiet)
    console.print(record.summary())
    if not record.ok:
        return 1

    grid = DEMO_GRID
    lay = cfg.layout
    where = Table(title="what the demo made, and where")
    where.add_column("artifact")
    where.add_column("location", overflow="fold")
    for name, url in (
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
    ):
        where.add_row(name, url)
    console.print(where)
    chips = _changed_chips(cfg, grid)
    truth = _truth_chips(str(synth.truth_path), chips)
    table = Table(title="chips that changed most (lowest similarity to the baseline)")
    for col in ("chip_id", "lowest similarity", "on", "change_intensity", "planted truth"):
        table.add_column(col)
    for _, row in chips.sort_values("min_sim").head(8).iterrows():
        table.add_row(str(row["chip_id"]), f"{row['min_sim']:.3f}", str(row["min_sim_date"])[:10],
                      str(row["change_intensity"]), truth.get(str(row["chip_id"]), "-"))
    console.print(table)

    scenes = len(cfg.layout.scene_ids())
    console.print(f"{scenes} scenes, {len(chips)} chips analysed, {len(DEMO_DATES)} dates; planted changes "
                  f"in {len(truth)} chips")
    steady = chips.sort_values("min_sim").iloc[-1]
    query_chip, latest = str(steady["chip_id"]), str(steady["latest_date"])[:10]
    from geofm.vectordb import search

    hits = search(cfg.layout.lance_db, chip_id=query_chip, date=latest, k=5, date_range=(latest, latest))
    console.print(f"similarity search from the steadiest chip, {query_chip}, on {latest}:")
    console.print(hits[["chip_id", "date", "score"]].to_string(index=False))
    console.print(f"\nOpen the explorer: [bold].venv/bin/geofm serve --out {out}[/bold] "
                  "then browse http://127.0.0.1:8000")
    return 0
