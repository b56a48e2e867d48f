"""Executor overhead: the same CPU-bound units inline (baseline), in the local process pool and on a
private local Ray instance (tasks, and model actors). Prints medians of 3 runs and the ratio to inline.

Run: .venv/bin/python benchmarks/bench_executors.py [n_units] [unit_ms]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any, ClassVar

from geofm.config import PipelineConfig
from geofm.executors import Executor, LocalExecutor, UnitTask
from geofm.executors.ray import RayExecutor
from geofm.steps.base import Step, UnitOutput

UNIT_MS = 20.0


class Busy(Step):
    """Units of about ``unit_ms`` of pure-Python work (no sleep: each must hold a CPU)."""

    name: ClassVar[str] = "bench-busy"
    params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, unit_ms: float) -> None:
        self.unit_ms = unit_ms

    def units(self, cfg: PipelineConfig) -> list[str]:
        return []

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return unit

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        end = time.process_time() + self.unit_ms / 1000
        x = 0.0
        while time.process_time() < end:
            x += 1.0
        return UnitOutput([], {"x": x})


class BusyModel(Busy):
    """The same units in long-lived model workers (Ray actors)."""

    model_worker: ClassVar[bool] = True


def _median_seconds(executor: Executor, step: Step, cfg: PipelineConfig, units: list[str]) -> float:
    """Median of 3 runs of ``units`` (``force``: each run does every unit again, markers included)."""
    times = []
    for _ in range(3):
        results: list[Any] = []
        t = time.perf_counter()
        executor.map(UnitTask(step, cfg), units, results.append)
        times.append(time.perf_counter() - t)
        failed = [r for r in results if r.status != "done"]
        assert len(results) == len(units) and not failed, failed[:3]
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    unit_ms = float(sys.argv[2]) if len(sys.argv) > 2 else UNIT_MS
    units = [str(i) for i in range(n)]
    out = tempfile.mkdtemp(prefix="geofm-bench-")
    local = PipelineConfig(output_root=out, workers=2, force=True)
    inline = local.model_copy(update={"workers": 1})
    ray = local.model_copy(update={"executor": "ray"})
    busy, model = Busy(unit_ms), BusyModel(unit_ms)
    rows = {"inline (1 worker)": _median_seconds(LocalExecutor(inline), busy, inline, units),
            "local pool (2 workers)": _median_seconds(LocalExecutor(local), busy, local, units)}
    with RayExecutor(ray) as executor:
        executor.connect()
        _median_seconds(executor, busy, ray, units[:4])  # warm the Ray workers once, not counted
        rows["ray tasks (2 CPUs)"] = _median_seconds(executor, busy, ray, units)
        rows["ray actors (2)"] = _median_seconds(executor, model, ray, units)
    base = rows["inline (1 worker)"]
    print(f"{n} units of {unit_ms:.0f} ms CPU work, median of 3 runs")
    print(f"{'executor':26s} {'seconds':>8s} {'units/s':>8s} {'vs inline':>9s}")
    for name, s in rows.items():
        print(f"{name:26s} {s:8.2f} {n / s:8.1f} {base / s:8.2f}x")


if __name__ == "__main__":
    main()
