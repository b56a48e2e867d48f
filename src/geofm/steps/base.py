"""The Step interface: what the pipeline and the executors know of a step, and nothing more.

A step has a name, the parameters that shape its outputs, a list of units of work, and for each unit
the identity of its inputs (what the upstream units wrote) and the work itself. The pipeline calls
``check`` (input errors before any work), ``prepare`` (once, in the driver), runs the units through an
executor (each unit resumable through :mod:`geofm.markers`), then ``finish`` (once, in the driver).
Steps hold no state: the executors send them to worker processes (pickled) with the config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from geofm.config import PipelineConfig
from geofm.report import StepReport, UnitResult


@dataclass
class UnitOutput:
    """What one unit of work wrote (URLs, recorded in its marker and checked on rerun) and a summary;
    ``complete=False`` when part of it failed (e.g. one unreadable chip): the unit is redone next run."""

    outputs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    complete: bool = True


class Step(ABC):
    """One step of the pipeline (see the module doc)."""

    name: ClassVar[str]
    #: the config fields that shape this step's outputs (upstream ones reach it through its inputs)
    params: ClassVar[tuple[str, ...]]
    #: units run in long-lived workers that hold a model (one per device), not in a pool of processes
    model_worker: ClassVar[bool] = False
    #: False for a step whose inputs can change unseen (a STAC search): its units are always redone
    cacheable: ClassVar[bool] = True
    #: marker names of the work ``prepare``/``finish`` do, besides the units (kept when pruning)
    own_units: ClassVar[tuple[str, ...]] = ()

    def check(self, cfg: PipelineConfig) -> None:
        """Raise an :class:`~geofm.errors.InputError` for what can be checked before any work."""
        return None

    def prepare(self, cfg: PipelineConfig) -> list[UnitResult]:
        """Work done once before the units, in the driver (e.g. a global model); results are reported."""
        return []

    @abstractmethod
    def units(self, cfg: PipelineConfig) -> list[str]:
        """The units of work, from what is on disk now, sorted."""

    @abstractmethod
    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        """The identity of what ``unit`` reads (JSON-able): upstream fingerprints or content digests."""

    @abstractmethod
    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        """Do one unit of work from scratch; raise on failure (the executor records it)."""

    def finish(self, cfg: PipelineConfig, report: StepReport) -> list[UnitResult]:
        """Work done once after the units, in the driver (e.g. loading the vector DB)."""
        return []

    def sharing(self, cfg: PipelineConfig, units_at_once: int) -> PipelineConfig:
        """The config a unit runs with when ``units_at_once`` units run at the same time (e.g. threads
        per unit from the cores left to each); the parameters that shape outputs never change here."""
        return cfg

    def setup_worker(self, cfg: PipelineConfig) -> None:
        """Once in each worker process before its first unit (e.g. load the model)."""
        return None

    def param_values(self, cfg: PipelineConfig) -> dict[str, Any]:
        return {k: getattr(cfg, k) for k in self.params}

    def __repr__(self) -> str:
        return f"<step {self.name}>"
