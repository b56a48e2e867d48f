"""What a spectral-index map tile and chip image of the explorer cost (issue 14, item 5), against the
true-colour tile of the same place measured in the same run.

Data: ``geofm synth`` scenes (``--extent`` m square, two dates) run through steps 1-4 with the weights-free
``spectral`` model and ``--chip-size`` px chips. Per zoom from the index layer's min zoom (where a chip spans
32 tile px, so a tile meets the most chips) up: the NDVI tile over the data's centre from the chip NetCDFs
(``IndexMaps.tile``), cold (the chip cache emptied before each run) and warm (cached index arrays), and the
true-colour tile of the same scene from its COGs (``tiles.cog_tile``, what the imagery layer serves). Also
one chip's NDVI image, cold and warm. Medians of ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_index_tiles.py [--extent 10240] [--chip-size 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from datetime import date

from _machine import machine
from geofm import indices
from geofm.config import PipelineConfig
from geofm.pipeline import run_pipeline
from geofm.server import tiles
from geofm.server.catalog import Catalog
from geofm.server.index_maps import IndexMaps
from geofm.server.sources import SourcePolicy
from geofm.synth import synthesize

DATES = [date(2023, 5, 15), date(2023, 7, 14)]


def timed(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extent", type=float, default=10240.0, help="AOI side in metres")
    ap.add_argument("--chip-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synth = synthesize(tmp, aoi_name="bench", grid="33TWL", dates=DATES, extent_m=args.extent, seed=0)
        cfg = PipelineConfig(aoi_name="bench", aoi=synth.aoi_path, output_root=tmp, chip_size=args.chip_size,
                             whole_tile=True, model="spectral")
        record = run_pipeline(cfg, ["preprocess", "embed", "analyze", "consolidate"])
        assert record.ok, record.summary()
        catalog = Catalog(tmp)
        maps = IndexMaps(catalog, tmp)
        policy = SourcePolicy([tmp])
        day = DATES[-1]
        ndvi = indices.get("ndvi")
        minx, miny, maxx, maxy = catalog.bounds("bench", synth.grid)
        lon, lat = (minx + maxx) / 2, (miny + maxy) / 2
        (item_url, item), = catalog.scene_items("bench", synth.grid, day)
        minzoom = maps.minzoom("bench", synth.grid)
        n_chips = len(catalog.chips_on("bench", synth.grid, day))
        print(f"# {machine()}, {dt.date.today()}; {args.extent / 1000:g} km, {n_chips} chips of "
              f"{args.chip_size} px, index min zoom {minzoom}; medians of {args.repeat}")
        print("| zoom | chips read | NDVI cold s | NDVI warm s | true colour s | cold / true colour |")
        print("|---:|---:|---:|---:|---:|---:|")
        for z in range(minzoom, minzoom + 4):
            t = tiles.TMS.tile(lon, lat, z)
            w, s, e, n = tiles.TMS.bounds(t)
            met = sum(1 for c in catalog.chips_on("bench", synth.grid, day)
                      if c.bounds[0] < e and c.bounds[2] > w and c.bounds[1] < n and c.bounds[3] > s)
            result = maps.tile("bench", synth.grid, day, ndvi, t.x, t.y, t.z)
            assert result.source == "chips" and not result.note, result
            cold = timed(lambda t=t: maps.tile("bench", synth.grid, day, ndvi, t.x, t.y, t.z), args.repeat,
                         before=lambda: maps.cache.clear())
            warm = timed(lambda t=t: maps.tile("bench", synth.grid, day, ndvi, t.x, t.y, t.z), args.repeat)
            rgb = timed(lambda t=t: tiles.cog_tile(policy, item_url, item, t.x, t.y, t.z), args.repeat)
            print(f"| {z} | {met} | {cold:.4f} | {warm:.4f} | {rgb:.4f} | {cold / rgb:.1f}x |")
        chip = catalog.chips_on("bench", synth.grid, day)[0]
        cold = timed(lambda: maps.chip_png("bench", synth.grid, chip, day, ndvi), args.repeat,
                     before=lambda: maps.cache.clear())
        warm = timed(lambda: maps.chip_png("bench", synth.grid, chip, day, ndvi), args.repeat)
        print(f"\none chip's NDVI image ({args.chip_size} px): cold {cold * 1000:.1f} ms, warm {warm * 1000:.1f} ms")


if __name__ == "__main__":
    main()
