"""Outcomes of units of work and of whole steps, shared by steps, executors, the pipeline and the CLI;
and the progress protocol through which a caller (the CLI) watches a step without the library printing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from geofm.errors import GeofmError, InputError, NotFoundError

Status = Literal["done", "skipped", "failed"]
ErrorKind = Literal["input", "not-found", "backend", "crash"]


def error_kind(exc: BaseException) -> ErrorKind:
    """How a unit's exception is classed in its result (input errors can refuse a run: exit 2)."""
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, NotFoundError):
        return "not-found"
    return "backend" if isinstance(exc, GeofmError) else "crash"


@dataclass
class UnitResult:
    """What became of one unit of work (a scene, a chip id, a grid)."""

    unit: str
    status: Status
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    error_kind: ErrorKind | None = None


@dataclass
class StepReport:
    """All unit results of one step, with counts for summaries and run records."""

    step: str
    results: list[UnitResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def all_failed(self) -> bool:
        return bool(self.results) and len(self.failed) == len(self.results)

    def summary(self) -> str:
        s = (f"{self.step}: {self.count('done')} done, {self.count('skipped')} skipped, "
             f"{self.count('failed')} failed")
        for r in self.failed:
            s += f"\n  FAILED {r.unit}: {r.error}"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seconds": self.seconds,
                "counts": {k: self.count(k) for k in ("done", "skipped", "failed")},
                "results": [asdict(r) for r in self.results]}


class Progress(Protocol):
    """Watches a step's units; the CLI draws a progress bar with it, library callers pass nothing."""

    def start(self, step: str, total: int) -> None: ...

    def advance(self, result: UnitResult) -> None: ...

    def end(self, report: StepReport) -> None: ...


class NoProgress:
    """The silent :class:`Progress` of library calls."""

    def start(self, step: str, total: int) -> None:
        pass

    def advance(self, result: UnitResult) -> None:
        pass

    def end(self, report: StepReport) -> None:
        pass
