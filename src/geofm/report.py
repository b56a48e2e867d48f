"""Outcomes of units of work and of whole steps, shared by steps, executors and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["done", "skipped", "failed"]


@dataclass
class UnitResult:
    """What became of one unit of work (a scene, a chip id, a grid)."""

    unit: str
    status: Status
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


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
