"""The Executor interface and the unit task every executor runs.

A :class:`UnitTask` carries one step and the config to the workers and runs one unit there: its resume
check and marker (:mod:`geofm.markers`), retries, and a result that never raises, so one failure never
stops the others. An :class:`Executor` maps a task over units (a local process pool, Ray) and hands
every result back to the driver through a callback, in completion order.
"""

from __future__ import annotations

import logging
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType

from geofm import markers
from geofm.config import PipelineConfig
from geofm.errors import InputError, NotFoundError
from geofm.report import UnitResult, error_kind
from geofm.steps.base import Step

log = logging.getLogger(__name__)
OnResult = Callable[[UnitResult], None]


class UnitTask:
    """Runs units of one step (picklable: sent to pool workers and Ray actors)."""

    def __init__(self, step: Step, cfg: PipelineConfig) -> None:
        self.step = step
        self.cfg = cfg

    @property
    def model_worker(self) -> bool:
        return self.step.model_worker

    def sharing(self, units_at_once: int) -> UnitTask:
        """This task for ``units_at_once`` units running at the same time (see ``Step.sharing``)."""
        return UnitTask(self.step, self.step.sharing(self.cfg, units_at_once))

    def setup(self) -> None:
        """Once per worker before its first unit (loads the model of a model step)."""
        self.step.setup_worker(self.cfg)

    def attempt(self, unit: str) -> tuple[str, dict]:
        """One attempt: fingerprint the unit, then skip it or do it (markers.run)."""
        step, cfg = self.step, self.cfg
        fp = markers.fingerprint(step.name, step.param_values(cfg), step.inputs(cfg, unit))
        return markers.run(cfg.layout, step.name, unit, fp, lambda: step.process(cfg, unit),
                           force=cfg.force or not step.cacheable)

    def __call__(self, unit: str) -> UnitResult:
        """Run ``unit`` with ``cfg.retries`` retries; failures come back as a failed result. Input and
        not-found errors are not retried: the same input fails the same way."""
        start = time.perf_counter()
        retries = self.cfg.retries
        for attempt in range(1, retries + 2):
            try:
                status, info = self.attempt(unit)
                return UnitResult(unit, status, attempts=attempt,  # type: ignore[arg-type]
                                  seconds=time.perf_counter() - start, info=info)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a failed unit is recorded, the step goes on
                error, kind = f"{type(exc).__name__}: {exc}", error_kind(exc)
                log.debug("%s %s attempt %d failed:\n%s", self.step.name, unit, attempt,
                          traceback.format_exc())
                if isinstance(exc, InputError | NotFoundError):
                    break
        return UnitResult(unit, "failed", error=error, attempts=attempt, seconds=time.perf_counter() - start,
                          error_kind=kind)


def crashed(unit: str, cause: str) -> UnitResult:
    """The result of a unit whose worker process died under it."""
    return UnitResult(unit, "failed", error=f"worker crashed: {cause}", error_kind="crash")


class Executor(ABC):
    """Runs the units of a step somewhere; every unit's result reaches ``on_result`` in the driver."""

    def check(self) -> None:
        """Fail before any work when the executor cannot run (e.g. an unreachable Ray cluster)."""
        return None

    @abstractmethod
    def map(self, task: UnitTask, units: Sequence[str], on_result: OnResult) -> None:
        """Run ``task`` over ``units``. Model tasks (``task.model_worker``) run in long-lived workers,
        one per device, each set up once; others spread over the available cores."""

    def close(self) -> None:
        """Release workers and connections."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
