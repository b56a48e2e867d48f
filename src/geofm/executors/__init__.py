"""Where units of work run: a local process pool (default) or a Ray cluster, behind one interface
(:class:`~geofm.executors.base.Executor`)."""

from __future__ import annotations

from geofm.config import PipelineConfig
from geofm.executors.base import Executor, UnitTask
from geofm.executors.local import LocalExecutor


def executor_for(cfg: PipelineConfig) -> Executor:
    """The executor ``cfg.executor`` names (Ray is imported only when asked for)."""
    if cfg.executor == "ray":
        from geofm.executors.ray import RayExecutor

        return RayExecutor(cfg)
    return LocalExecutor(cfg)


__all__ = ["Executor", "LocalExecutor", "UnitTask", "executor_for"]
