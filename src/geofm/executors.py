"""Run units of work: a local process pool (default) or inline; every unit is retried, then recorded,
and one failure never stops the others.

A unit function has the signature ``fn(cfg, unit) -> dict | None``; it raises on failure and returns
``{"skipped": True, ...}`` when its outputs were already complete.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from geofm.config import PipelineConfig
from geofm.report import StepReport, UnitResult

UnitFn = Callable[[PipelineConfig, str], "dict[str, Any] | None"]


def default_workers(cfg: PipelineConfig) -> int:
    return cfg.workers or max(1, os.cpu_count() or 1)


def local_model_devices(cfg: PipelineConfig) -> list[str]:
    """CUDA device ids for local model workers: every visible GPU when ``device`` is ``auto`` or
    ``cuda`` and there are several, else [] (one worker, on the configured device)."""
    if cfg.device not in ("auto", "cuda"):
        return []
    import torch

    n = torch.cuda.device_count()  # does not initialise CUDA, so forking workers stays safe
    return [str(i) for i in range(n)] if n > 1 else []


def _pin_device_then_setup(
    free: Any, actor_setup: Callable[[PipelineConfig], Any] | None, cfg: PipelineConfig
) -> None:
    """Pool-worker initializer: take one GPU id, make it the only visible one, then set the model up."""
    os.environ["CUDA_VISIBLE_DEVICES"] = free.get(timeout=60)
    if actor_setup is not None:
        actor_setup(cfg)


def run_unit(fn: UnitFn, cfg: PipelineConfig, unit: str, retries: int) -> UnitResult:
    """Run one unit with retries; never raises: failures come back as a failed result."""
    start = time.perf_counter()
    error = None
    for attempt in range(1, retries + 2):
        try:
            info = fn(cfg, unit) or {}
            status = "skipped" if info.pop("skipped", False) else "done"
            return UnitResult(unit, status, attempts=attempt, seconds=time.perf_counter() - start, info=info)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed unit is recorded, the step goes on
            error = f"{type(exc).__name__}: {exc}"
            if os.environ.get("GEOFM_DEBUG"):
                traceback.print_exc()
    return UnitResult(unit, "failed", error=error, attempts=retries + 1, seconds=time.perf_counter() - start)


def _progress(step: str, quiet: bool) -> Progress:
    return Progress(
        TextColumn(f"[bold]{step}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


def map_units(
    fn: UnitFn,
    cfg: PipelineConfig,
    units: Sequence[str],
    step: str,
    workers: int | None = None,
    quiet: bool = False,
    *,
    model_actor: bool = False,
    actor_setup: Callable[[PipelineConfig], Any] | None = None,
) -> StepReport:
    """Run ``fn`` over ``units`` with a progress bar: a local process pool (inline when one worker) or,
    with ``cfg.executor == "ray"``, Ray tasks (see ``geofm.ray_executor``).

    Units whose completion marker matches the current parameters are skipped (see ``markers``).

    ``model_actor=True`` is for steps that hold a model (embed): the unit function runs in long-lived
    workers so module-level model caches persist across units. On Ray these are actors (one per GPU, with
    ``num_gpus=1``, when the cluster has GPUs; else one per CPU; ``workers`` overrides the count); locally
    ``workers`` defaults to 1 (inline, one model in this process). ``actor_setup(cfg)``, when given, runs
    once in each worker/actor before its first unit (e.g. to load the model eagerly).
    """
    from geofm.markers import resumable

    fn = resumable(fn, cfg, step)
    devices: list[str] = []
    if model_actor and workers is None and cfg.executor == "local":
        devices = local_model_devices(cfg)
        workers = cfg.workers or max(1, len(devices))
    n_workers = min(workers or default_workers(cfg), max(1, len(units)))
    report = StepReport(step)
    start = time.perf_counter()
    if cfg.executor == "ray" and units:
        from geofm import ray_executor

        ray_executor.connect(cfg, quiet=quiet)
    with _progress(step, quiet) as progress:
        task = progress.add_task(step, total=len(units), failed=0, rate="")

        def record(r: UnitResult) -> None:
            report.results.append(r)
            elapsed = time.perf_counter() - start
            rate = f"{len(report.results) / elapsed:.2f}/s" if elapsed > 0 else ""
            progress.update(task, advance=1, failed=report.count("failed"), rate=rate)

        if cfg.executor == "ray" and units:
            if model_actor:
                ray_executor.run_actors(fn, cfg, units, record, workers, actor_setup)
            else:
                ray_executor.run_tasks(fn, cfg, units, record, workers)
        elif n_workers <= 1:
            if actor_setup is not None and units:
                actor_setup(cfg)
            for u in units:
                record(run_unit(fn, cfg, u, cfg.retries))
        else:
            init_args: dict[str, Any] = {}
            if devices:  # one model worker per GPU: each pins its own before CUDA starts in it
                free = multiprocessing.get_context().Queue()
                for d in devices[:n_workers]:
                    free.put(d)
                init_args = {"initializer": _pin_device_then_setup, "initargs": (free, actor_setup, cfg)}
            elif actor_setup is not None:
                init_args = {"initializer": actor_setup, "initargs": (cfg,)}
            with ProcessPoolExecutor(max_workers=n_workers, **init_args) as pool:
                pending: dict[Future[UnitResult], str] = {
                    pool.submit(run_unit, fn, cfg, u, cfg.retries): u for u in units
                }
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        unit = pending.pop(fut)
                        try:
                            record(fut.result())
                        except Exception as exc:  # the worker process itself died
                            record(UnitResult(unit, "failed", error=f"worker crashed: {exc}"))
    order = {u: i for i, u in enumerate(units)}
    report.results.sort(key=lambda r: order.get(r.unit, len(order)))
    report.seconds = time.perf_counter() - start
    return report
