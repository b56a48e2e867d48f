"""A synthetic AOI run through steps 1-2 once (weights-free ``spectral`` encoder), for the benchmarks
that compare what steps 3-4 and the search make of the same embeddings."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from geofm.config import PipelineConfig
from geofm.pipeline import run_pipeline
from geofm.synth import SynthResult, default_dates, synthesize

CHIP = 64
# Two years, a date every 30 days: the planted changes start at the middle date (2023-01-05), so the
# calendar year 2022 is a clean baseline period.
TWO_YEARS = default_dates(date(2022, 1, 10), date(2023, 12, 31), 30)
BASELINE_END = date(2022, 12, 31)


def embedded_aoi(root: Path, seed: int, scenario: str = "farmland", extent_m: float = 5120.0,
                 dates: list[date] | None = None, chip_size: int = CHIP, aoi_name: str = "bench",
                 steps: tuple[str, ...] = ("preprocess", "embed")) -> tuple[PipelineConfig, SynthResult]:
    """Synthesize the scenes under ``root`` and run ``steps`` (work already done is skipped)."""
    synth = synthesize(str(root), aoi_name=aoi_name, grid="33TWL", dates=dates or TWO_YEARS,
                       extent_m=extent_m, seed=seed, scenario=scenario)
    cfg = PipelineConfig(aoi_name=aoi_name, output_root=str(root), aoi=synth.aoi_path, model="spectral",
                         chip_size=chip_size, whole_tile=True, batch_size=64, retries=0)
    record = run_pipeline(cfg, list(steps))
    if not record.ok:
        raise SystemExit(record.summary())
    return cfg, synth
