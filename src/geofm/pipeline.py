"""The whole pipeline as one run: discover, preprocess, embed, analyze, consolidate.

The pipeline holds the step objects (:mod:`geofm.steps`) in order and runs each through an executor
(:mod:`geofm.executors`): ``check`` for every chosen step before any work, then per step ``prepare``,
the units (each resumable through :mod:`geofm.markers`), ``finish``. It stops after a step whose every
unit failed, and writes a run record under ``output/<aoi>/runs/`` (parameters, versions, per-step
counts, timings and failures). It returns reports and prints nothing: progress goes to a
:class:`~geofm.report.Progress` the caller passes.
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from geofm import markers, storage
from geofm.config import PipelineConfig
from geofm.errors import ConfigError, GeofmError, InputError, NotFoundError
from geofm.executors import Executor, UnitTask, executor_for
from geofm.report import NoProgress, Progress, StepReport
from geofm.steps.analyze import Analyze
from geofm.steps.base import Step
from geofm.steps.consolidate import Consolidate
from geofm.steps.discover import Discover
from geofm.steps.embed import Embed
from geofm.steps.preprocess import Preprocess, planned_chips

log = logging.getLogger(__name__)
STEPS: tuple[Step, ...] = (Discover(), Preprocess(), Embed(), Analyze(), Consolidate())
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def steps_named(names: Sequence[str] | None = None) -> list[Step]:
    """The steps of ``names`` (all when None) in pipeline order; unknown names raise naming them."""
    if names is None:
        return list(STEPS)
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown:
        raise ConfigError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEP_NAMES)}")
    return [s for s in STEPS if s.name in names]


def chosen_steps(steps: str | Sequence[str] | None, skip_discover: bool = False) -> list[Step]:
    """The steps a run asked for: a comma-separated string or names (all when None), less discover with
    ``skip_discover``; unknown names raise naming them."""
    names = ([s.strip() for s in steps.split(",") if s.strip()] if isinstance(steps, str)
             else list(steps) if steps is not None else list(STEP_NAMES))
    return steps_named([n for n in names if not (skip_discover and n == "discover")])


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour shapes the outputs."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("geofm", "numpy", "torch", "rasterio", "xarray", "lancedb", "ray", "pystac-client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:  # pragma: no cover - rasterio is a dependency
        pass
    return out


@dataclass
class RunRecord:
    """What a run did: written as JSON to ``layout.run_record(run_id)``."""

    run_id: str
    config: dict[str, Any]
    steps: list[str]
    started: str
    versions: dict[str, str] = field(default_factory=versions)
    reports: list[StepReport] = field(default_factory=list)
    finished: str | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "started": self.started, "finished": self.finished,
            "seconds": self.seconds, "ok": self.ok, "error": self.error, "steps": self.steps,
            "config": self.config, "versions": self.versions,
            "reports": [r.to_dict() for r in self.reports],
        }

    def summary(self) -> str:
        lines = [f"run {self.run_id}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f} s"]
        lines += [r.summary() for r in self.reports]
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)


def check_inputs(cfg: PipelineConfig, steps: Sequence[Step], executor: Executor | None = None) -> None:
    """Check what can be checked before any work; raise an InputError naming the input."""
    names = {s.name for s in steps}
    if cfg.aoi:
        from geofm.aoi import load_aoi

        load_aoi(cfg.aoi)
    for step in steps:
        step.check(cfg)
    if "preprocess" in names and "discover" not in names and not cfg.layout.scene_ids():
        raise NotFoundError(f"no scenes in {cfg.layout.scenes_dir}: run discover first (or `geofm synth`)")
    storage.ensure_writable(cfg.layout.output_dir)
    if executor is not None:
        executor.check()  # e.g. a wrong Ray address fails here, naming it, before any work


def plan(cfg: PipelineConfig, steps: Sequence[Step]) -> dict[str, Any]:
    """What a run would do: scenes and units of work per step, from what is on disk now."""
    out: dict[str, Any] = {"output": cfg.layout.output_dir, "steps": {}}
    scenes = cfg.layout.scene_ids()
    out["scenes"] = scenes
    if any(s.name == "preprocess" for s in steps):
        chips: dict[str, int | str] = {}
        for sid in scenes:
            try:
                chips[sid] = planned_chips(cfg, sid)
            except Exception as exc:  # the run will report this scene's failure; the plan says why
                chips[sid] = f"unreadable: {exc}"
        out["chips_per_scene"] = chips
        out["chips"] = sum(n for n in chips.values() if isinstance(n, int))
    for step in steps:
        if isinstance(step, Discover):
            out["steps"][step.name] = f"search {cfg.stac_url} collection {cfg.collection}"
            continue
        try:
            out["steps"][step.name] = f"{len(step.units(cfg))} units of work"
        except Exception as exc:  # later steps' units exist only after earlier steps ran
            out["steps"][step.name] = f"units known after the previous step ({type(exc).__name__})"
    return out


def run_step(step: Step, cfg: PipelineConfig, executor: Executor | None = None,
             progress: Progress | None = None) -> StepReport:
    """One step: ``prepare``, its units through ``executor`` (local by default), ``finish``.

    Results are in unit order; what ``prepare`` and ``finish`` did is reported like units."""
    progress = progress or NoProgress()
    own = executor is None
    executor = executor or executor_for(cfg)
    start = time.perf_counter()
    report = StepReport(step.name)
    try:
        report.results += step.prepare(cfg)
        if not report.failed:
            units = step.units(cfg)
            pruned = markers.prune(cfg.layout, step.name, {*units, *step.own_units})
            if pruned:
                log.info("%s: removed the outputs of %d units that no longer exist: %s", step.name,
                         len(pruned), ", ".join(pruned[:5]) + (" ..." if len(pruned) > 5 else ""))
            progress.start(step.name, len(units))
            done = []

            def on_result(r: Any) -> None:
                done.append(r)
                progress.advance(r)

            executor.map(UnitTask(step, cfg), units, on_result)
            order = {u: i for i, u in enumerate(units)}
            report.results += sorted(done, key=lambda r: order.get(r.unit, len(order)))
            report.results += step.finish(cfg, report)
    finally:
        if own:
            executor.close()
    report.seconds = time.perf_counter() - start
    progress.end(report)
    return report


def refused(report: StepReport) -> GeofmError | None:
    """The input error of a step whose every unit failed on its input (e.g. no scenes found), which
    refuses the run as an input error would before any work; None otherwise."""
    if not report.all_failed or any(r.error_kind not in ("input", "not-found") for r in report.results):
        return None
    first = report.results[0]
    message = (first.error or "").split(": ", 1)[-1]
    return InputError(message) if first.error_kind == "input" else NotFoundError(message)


def run_pipeline(cfg: PipelineConfig, steps: Sequence[str] | None = None, progress: Progress | None = None,
                 run_id: str | None = None) -> RunRecord:
    """Check every chosen step, run them in order, stop after a step whose every unit failed, and write
    the run record. Input errors found before any work (and a first step refused on its inputs)
    raise and write nothing."""
    chosen = steps_named(steps)
    now = datetime.now(UTC)  # ids sort in start order, to the millisecond
    run_id = run_id or f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:6]}"
    record = RunRecord(run_id, cfg.model_dump(mode="json"), [s.name for s in chosen],
                       datetime.now(UTC).isoformat())
    start = time.perf_counter()
    write_record = True
    try:
        with executor_for(cfg) as executor:
            check_inputs(cfg, chosen, executor)
            for step in chosen:
                report = run_step(step, cfg, executor, progress)
                error = refused(report)
                if error is not None and not record.reports:
                    raise error  # nothing was done: the run is refused, as before any work
                record.reports.append(report)
                if report.all_failed:
                    record.error = f"every unit of {step.name} failed; later steps not run"
                    break
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        # refused before any step did work (bad input, no scenes, no cluster): nothing is written
        write_record = not (isinstance(exc, GeofmError) and not record.reports)
        raise
    finally:
        record.seconds = time.perf_counter() - start
        record.finished = datetime.now(UTC).isoformat()
        if write_record:
            storage.write_json(cfg.layout.run_record(run_id), record.to_dict())
    return record
