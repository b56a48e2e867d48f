"""End-to-end pipeline throughput (km² per hour): the local executor (baseline) against the Ray executor
(a private local Ray that the executor starts itself, ``ray.init(address="local")``), in the same run.

The scenario is `geofm demo`'s (tile 33TWL, 10.24 km synthetic scenes, 7 dates, 256 px chips, the weights-free
``spectral`` model); ``--extent``/``--dates`` make a smaller variant. Each repeat runs steps 1-4 into a fresh
output root on the same synthetic scenes, local and Ray interleaved; Ray's start-up is inside its timing
(it is part of every real run). Prints medians, per-step medians and the Ray/local ratio.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--repeats 2] [--extent 10240] [--dates 7] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import geopandas as gpd

from geofm import storage
from geofm.config import PipelineConfig
from geofm.demo import DEMO_DATES, DEMO_EXTENT_M, DEMO_GRID
from geofm.layout import Layout
from geofm.pipeline import STEP_NAMES, run_pipeline
from geofm.synth import SynthResult, synthesize

AOI = "bench"


def aoi_km2(aoi_path: str, crs: str) -> float:
    return float(gpd.read_file(aoi_path).to_crs(crs).area.sum() / 1e6)


def one_run(synth: SynthResult, executor: str, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    """Steps 1-4 into a fresh root; returns wall seconds and seconds per step."""
    root = tempfile.mkdtemp(prefix=f"geofm-bench-{executor}-")
    try:
        lay = Layout(root, AOI)
        for item in synth.items:
            storage.write_json(lay.scene_metadata(item["id"]), item)
        cfg = PipelineConfig(aoi_name=AOI, aoi=synth.aoi_path, output_root=root,
                             model="spectral", chip_size=args.chip_size, batch_size=16, workers=args.workers,
                             executor=executor)
        start = time.perf_counter()
        record = run_pipeline(cfg, [s for s in STEP_NAMES if s != "discover"])
        seconds = time.perf_counter() - start
        assert record.ok, record.summary()
        return seconds, {r.step: r.seconds for r in record.reports}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extent", type=float, default=DEMO_EXTENT_M, help="scene side, m")
    parser.add_argument("--dates", type=int, default=len(DEMO_DATES), help="first N demo dates")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    archive = tempfile.mkdtemp(prefix="geofm-bench-archive-")
    try:
        t = time.perf_counter()
        synth = synthesize(archive, aoi_name=AOI, grid=DEMO_GRID, dates=DEMO_DATES[: args.dates],
                           extent_m=args.extent, seed=0, into_layout=False)
        print(f"synthesized {len(synth.scene_ids)} scenes of {args.extent / 1000:.2f} km in "
              f"{time.perf_counter() - t:.1f} s")
        area = aoi_km2(synth.aoi_path, synth.crs)
        n_scenes = len(synth.scene_ids)
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {"local": [], "ray": []}
        for i in range(args.repeats):
            for executor in ("local", "ray"):
                seconds, steps = one_run(synth, executor, args)
                runs[executor].append((seconds, steps))
                print(f"  repeat {i + 1} {executor:5s} {seconds:7.1f} s  "
                      + "  ".join(f"{s} {v:.1f}" for s, v in steps.items()))
    finally:
        shutil.rmtree(archive, ignore_errors=True)

    print(f"\nAOI {area:.2f} km² x {n_scenes} dates ({area * n_scenes:.1f} scene-km²), chip {args.chip_size} px, "
          f"spectral, {args.workers} workers, median of {args.repeats}")
    print(f"{'executor':10s} {'seconds':>8s} {'AOI km²/h':>10s} {'scene-km²/h':>12s} {'vs local':>9s}  per step (s)")
    base = statistics.median(s for s, _ in runs["local"])
    for executor, rs in runs.items():
        med = statistics.median(s for s, _ in rs)
        per_step = {step: statistics.median(r[1][step] for r in rs) for step in rs[0][1]}
        print(f"{executor:10s} {med:8.1f} {area * 3600 / med:10.1f} {area * n_scenes * 3600 / med:12.1f} "
              f"{base / med:8.2f}x  " + ", ".join(f"{k} {v:.1f}" for k, v in per_step.items()))


if __name__ == "__main__":
    main()
