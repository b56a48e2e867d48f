"""The whole pipeline as one run: discover, preprocess, embed, analyze, consolidate.

Each step runs its units of work through ``geofm.executors`` (local pool or Ray), which skips units
whose completion markers match the parameters; the run ends with a summary and a run record under
``output/<aoi>/runs/`` (parameters, versions, per-step counts, timings and failures).
"""

from __future__ import annotations

import importlib
import platform
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from geofm import storage
from geofm.config import PipelineConfig
from geofm.report import StepReport, UnitResult

STEPS: tuple[str, ...] = ("discover", "preprocess", "embed", "analyze", "consolidate")
PROCESSING_STEPS: tuple[str, ...] = STEPS[1:]


def step_module(step: str) -> Any:
    """The module implementing a processing step (``units``, ``process_unit``, ``run``)."""
    if step not in PROCESSING_STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    return importlib.import_module(f"geofm.steps.{step}")


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


def check_inputs(cfg: PipelineConfig, steps: list[str]) -> None:
    """Check what can be checked before any work; raise ValueError/FileNotFoundError naming the input."""
    from geofm.aoi import load_aoi
    from geofm.models.registry import check_weights, get_model_spec

    if "discover" in steps:
        if not cfg.aoi:
            raise ValueError("discover needs an AOI: give --aoi FILE (a GeoJSON polygon)")
        if not (cfg.start_date and cfg.end_date):
            raise ValueError("discover needs a date range: give --start and --end")
    if cfg.aoi:
        load_aoi(cfg.aoi)
    if "embed" in steps:
        spec = get_model_spec(cfg.model)
        if cfg.chip_size % spec.patch_size:
            raise ValueError(f"chip_size {cfg.chip_size} is not a multiple of {cfg.model}'s patch size "
                             f"{spec.patch_size}")
        check_weights(cfg.model, cfg.checkpoint)  # no weights: say so before hours of chipping
    if "preprocess" in steps and "discover" not in steps:
        if not cfg.layout.scene_ids():
            raise ValueError(f"no scenes in {cfg.layout.scenes_dir}: run discover first (or `geofm synth`)")
    storage.ensure_writable(cfg.layout.output_dir)
    if cfg.executor == "ray":
        from geofm.ray_executor import connect

        connect(cfg)  # a wrong address fails here, naming it, before any work


def plan(cfg: PipelineConfig, steps: list[str]) -> dict[str, Any]:
    """What a run would do: scenes and units of work per step, from what is on disk now."""
    out: dict[str, Any] = {"output": cfg.layout.output_dir, "steps": {}}
    scenes = cfg.layout.scene_ids()
    out["scenes"] = scenes
    if "preprocess" in steps:
        from geofm.steps.preprocess import planned_chips

        chips: dict[str, int | str] = {}
        for sid in scenes:
            try:
                chips[sid] = planned_chips(cfg, sid)
            except Exception as exc:  # the run will report this scene's failure; the plan says why
                chips[sid] = f"unreadable: {exc}"
        out["chips_per_scene"] = chips
        out["chips"] = sum(n for n in chips.values() if isinstance(n, int))
    for step in steps:
        if step == "discover":
            out["steps"][step] = f"search {cfg.stac_url} collection {cfg.collection}"
            continue
        try:
            units = step_module(step).units(cfg)
            out["steps"][step] = f"{len(units)} units of work"
        except Exception as exc:  # later steps' units exist only after earlier steps ran
            out["steps"][step] = f"units known after the previous step ({type(exc).__name__})"
    return out


def run_step(cfg: PipelineConfig, step: str, quiet: bool = False) -> StepReport:
    """Run one step; discovery is a single unit, the others go through their module's ``run``."""
    if step == "discover":
        from geofm.stac import discover

        start = time.perf_counter()
        report = StepReport("discover")
        try:
            items = discover(cfg)
            report.results.append(UnitResult("search", "done", info={"scenes": len(items)}))
        except ValueError:  # input errors (bad AOI, no scenes found) come before any work: raised
            raise
        except Exception as exc:  # recorded: the run stops after a failed discovery
            report.results.append(UnitResult("search", "failed", error=f"{type(exc).__name__}: {exc}"))
        report.seconds = time.perf_counter() - start
        return report
    return step_module(step).run(cfg, quiet=quiet)


def run_pipeline(
    cfg: PipelineConfig, steps: list[str] | None = None, quiet: bool = False, run_id: str | None = None
) -> RunRecord:
    """Run the steps in order, stop after a step whose every unit failed, and write the run record."""
    steps = list(steps or STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]
    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    record = RunRecord(run_id, cfg.model_dump(mode="json"), steps, datetime.now(UTC).isoformat())
    start = time.perf_counter()
    input_error = False
    try:
        for step in steps:
            report = run_step(cfg, step, quiet=quiet)
            record.reports.append(report)
            if report.results and report.count("failed") == len(report.results):
                record.error = f"every unit of {step} failed; later steps not run"
                break
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        # an input error before any step did work (e.g. no scenes found) writes nothing, not even a record
        input_error = isinstance(exc, ValueError) and not record.reports
        raise
    finally:
        if cfg.executor == "ray":
            from geofm.ray_executor import shutdown

            shutdown()
        record.seconds = time.perf_counter() - start
        record.finished = datetime.now(UTC).isoformat()
        if not input_error:
            storage.write_json(cfg.layout.run_record(run_id), record.to_dict())
    return record
