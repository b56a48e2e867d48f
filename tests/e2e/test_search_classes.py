"""Similarity search finds chips of the query's land cover: a 5 km synthetic scene, 32 px chips, the
real steps 1-4 with the weights-free ``spectral`` encoder, truth from synth's land-cover raster."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geofm import vectordb
from geofm.config import PipelineConfig
from geofm.synth import synthesize
from helpers import run_steps, stage_scenes

CHIP = 32
DATES = [date(2023, 6, 10), date(2023, 8, 20)]  # two dates: both clear


def _class_shares(landcover: str, class_id: int) -> dict[str, float]:
    with rasterio.open(landcover) as ds:
        lc = ds.read(1)
    n_rows, n_cols = lc.shape[0] // CHIP, lc.shape[1] // CHIP
    return {f"{x}_{y}": float((lc[y * CHIP:(y + 1) * CHIP, x * CHIP:(x + 1) * CHIP] == class_id).mean())
            for y in range(n_rows) for x in range(n_cols)}


@pytest.mark.slow
def test_search_from_a_water_chip_returns_water_chips(tmp_path: Path) -> None:
    cover = "water"
    root = tmp_path
    synth = synthesize(str(root / "archive"), aoi_name="classes", extent_m=5120.0, dates=DATES, seed=3,
                       into_layout=False)
    cfg = PipelineConfig(aoi_name="classes", output_root=str(root), chip_size=CHIP, whole_tile=True,
                         model="spectral", batch_size=64, workers=1, retries=0)
    stage_scenes(cfg.output_root, cfg.aoi_name, synth, synth.scene_ids)
    record = run_steps(cfg, "preprocess", "embed", "analyze", "consolidate")
    assert record.ok, record.summary()
    day = DATES[-1]
    class_id = next(c["id"] for c in synth.classes if c["name"] == cover)
    shares = _class_shares(synth.landcover_paths[synth.scene_ids[-1]], class_id)
    rows = vectordb.open_table(cfg.layout.lance_db).to_pandas()
    rows = rows[rows["date"].astype(str).str.startswith(str(day))]
    pure = [c for c in rows["chip_id"] if shares[c] >= 0.9]
    same = {c for c in rows["chip_id"] if shares[c] >= 0.5}
    assert len(pure) >= 2 and len(same) >= 8, f"the scene has too little {cover} for this test"
    query = pure[0]
    k = len(same) - 1
    hits = vectordb.search(cfg.layout.lance_db, chip_id=query, date=day, k=k, date_range=(day, day))
    precision = float(np.mean([h in same for h in hits["chip_id"]]))
    print(f"\n{cover}: query chip {query}; {k} nearest chips on {day}: precision {precision:.2f} "
          f"({len(same)} chips of >= 50% {cover} among {len(rows)})")
    assert query not in set(hits["chip_id"])
    assert all(h in same for h in hits["chip_id"][:5])  # the five best are all of the query's cover
    assert precision >= 0.9
