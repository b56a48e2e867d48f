"""Executor overhead: the same CPU-bound units inline (baseline), in the local process pool and on a
private local Ray instance (tasks, and model actors). Prints medians of 3 runs and the ratio to inline.

Run: .venv/bin/python benchmarks/bench_executors.py [n_units] [unit_ms]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from geofm import ray_executor
from geofm.config import PipelineConfig
from geofm.executors import map_units

UNIT_MS = 20.0


def busy_unit(cfg: PipelineConfig, unit: str) -> dict[str, float]:
    """About UNIT_MS of pure-Python work (no sleep: it must hold a CPU)."""
    end = time.process_time() + UNIT_MS / 1000
    x = 0.0
    while time.process_time() < end:
        x += 1.0
    return {"x": x}


def _median_seconds(cfg: PipelineConfig, units: list[str], **kw: object) -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        report = map_units(busy_unit, cfg, units, "bench", quiet=True, **kw)
        times.append(time.perf_counter() - t)
        assert report.ok, report.summary()
    return statistics.median(times)


def main() -> None:
    global UNIT_MS
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    UNIT_MS = float(sys.argv[2]) if len(sys.argv) > 2 else UNIT_MS
    units = [str(i) for i in range(n)]
    out = tempfile.mkdtemp(prefix="geofm-bench-")
    local = PipelineConfig(output_root=out, workers=2)
    ray = local.model_copy(update={"executor": "ray"})
    rows = {"inline (1 worker)": _median_seconds(local, units, workers=1),
            "local pool (2 workers)": _median_seconds(local, units)}
    ray_executor.connect(ray)
    _median_seconds(ray, units[:4])  # warm the Ray workers once, not counted
    rows["ray tasks (2 CPUs)"] = _median_seconds(ray, units)
    rows["ray actors (2)"] = _median_seconds(ray, units, model_actor=True)
    ray_executor.shutdown()
    base = rows["inline (1 worker)"]
    print(f"{n} units of {UNIT_MS:.0f} ms CPU work, median of 3 runs")
    print(f"{'executor':26s} {'seconds':>8s} {'units/s':>8s} {'vs inline':>9s}")
    for name, s in rows.items():
        print(f"{name:26s} {s:8.2f} {n / s:8.1f} {base / s:8.2f}x")


if __name__ == "__main__":
    main()
