"""The Ray executor: one task per unit for CPU steps, or long-lived actors that keep a model loaded
across units (the embedding step), with one GPU per actor when the cluster has GPUs.

The same :class:`~geofm.executors.base.UnitTask` as the local executor runs each unit, so resume,
retries and failure records are the same. A worker process that dies is retried by Ray
(``cfg.retries`` times), then recorded as crashed.

Code reaches the workers as the installed ``geofm`` package (editable in the venv here, installed on
each node of a real cluster). The only ``runtime_env`` set is ``env_vars``: the driver's AWS_* (S3
endpoint and credentials), GDAL/CPL, HF_* and GEOFM_* variables, because workers started by
``ray start`` inherit the environment of that command, not the driver's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from geofm.config import PipelineConfig
from geofm.errors import RayError
from geofm.executors.base import Executor, OnResult, UnitTask, crashed
from geofm.report import UnitResult

FORWARDED_ENV_PREFIXES = ("AWS_", "GDAL_", "CPL_", "HF_", "GEOFM_")
ACTOR_QUEUE = 2  # units in flight per actor, so it never waits for the driver


def forwarded_env() -> dict[str, str]:
    """The driver's environment variables that workers need (S3, GDAL, model cache, geofm switches)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when a ``host:port`` (or ``ray://host:port``) address does not answer: Ray itself
    keeps retrying for minutes. ``auto`` and other address forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayError(
            f"cannot connect to Ray cluster at {address!r} (ray_address): nothing answers there ({exc})"
        ) from exc


def _run(task: UnitTask, unit: str) -> UnitResult:
    return task(unit)


class UnitActor:
    """A long-lived worker holding a task (and the model its step loads), running one unit per call."""

    def __init__(self, task: UnitTask) -> None:
        self.task = task
        task.setup()

    def run(self, unit: str) -> UnitResult:
        return self.task(unit)


class RayExecutor(Executor):
    """Units on the Ray cluster at ``cfg.ray_address`` (or a private local Ray when None)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self._started = False

    def check(self) -> None:
        self.connect()

    def connect(self) -> None:
        """Connect once; an unreachable cluster raises :class:`~geofm.errors.RayError` naming it."""
        import ray

        if ray.is_initialized():
            return
        cfg = self.cfg
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": forwarded_env()},
                                  "log_to_driver": bool(os.environ.get("GEOFM_DEBUG")),
                                  "configure_logging": False}
        if cfg.ray_address:
            check_reachable(cfg.ray_address)
            kwargs["address"] = cfg.ray_address
        else:  # "local": never attach to somebody else's cluster found on this machine
            kwargs.update(address="local", include_dashboard=False,
                          num_cpus=cfg.workers or os.cpu_count() or 1)
        try:
            ray.init(**kwargs)
        except Exception as exc:
            where = cfg.ray_address or "a new local Ray instance"
            raise RayError(f"cannot connect to Ray cluster at {where!r} (ray_address): {exc}") from exc
        self._started = True

    def close(self) -> None:
        """Disconnect (stops the private local instance when one was started)."""
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def resources(self) -> tuple[int, int]:
        """(CPUs, GPUs) of the cluster."""
        import ray

        res = ray.cluster_resources()
        return max(1, int(res.get("CPU", 1))), int(res.get("GPU", 0))

    def map(self, task: UnitTask, units: Sequence[str], on_result: OnResult) -> None:
        if not units:
            return
        self.connect()
        if task.model_worker:
            self._actors(task, units, on_result)
        else:
            self._tasks(task, units, on_result)

    def _tasks(self, task: UnitTask, units: Sequence[str], on_result: OnResult) -> None:
        """One Ray task per unit (1 CPU each), at most ``workers`` (default: 2 x cluster CPUs) in flight."""
        import ray

        remote = ray.remote(_run).options(num_cpus=1, max_retries=self.cfg.retries, retry_exceptions=False)
        task_ref = ray.put(task.sharing(os.cpu_count() or 1))  # one CPU per task: one thread of work
        limit = self.cfg.workers or 2 * self.resources()[0]
        todo = list(units)[::-1]
        pending: dict[Any, str] = {}
        while todo or pending:
            while todo and len(pending) < limit:
                unit = todo.pop()
                pending[remote.remote(task_ref, unit)] = unit
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                unit = pending.pop(ref)
                try:
                    on_result(ray.get(ref))
                except Exception as exc:  # the worker died (after Ray's retries)
                    on_result(crashed(unit, f"{type(exc).__name__}: {exc}"))

    def actor_count(self, n_units: int) -> tuple[int, int]:
        """(number of actors, GPUs per actor): one actor per GPU when the cluster has GPUs, else per CPU."""
        cpus, gpus = self.resources()
        n = self.cfg.workers or (gpus if gpus else cpus)
        return max(1, min(n, n_units)), 1 if gpus else 0

    def _actors(self, task: UnitTask, units: Sequence[str], on_result: OnResult) -> None:
        """Dispatch units to N actors, each fed ``ACTOR_QUEUE`` units at a time."""
        import ray

        n_actors, gpus = self.actor_count(len(units))
        retries = self.cfg.retries
        actor_cls = ray.remote(UnitActor).options(num_cpus=1, num_gpus=gpus, max_restarts=retries,
                                                  max_task_retries=retries)
        actors = [actor_cls.remote(task) for _ in range(n_actors)]
        todo = list(units)[::-1]
        pending: dict[Any, tuple[int, str]] = {}
        load = dict.fromkeys(range(n_actors), 0)
        dead: set[int] = set()
        try:
            while todo or pending:
                for i, actor in enumerate(actors):
                    while todo and load[i] < ACTOR_QUEUE and i not in dead:
                        unit = todo.pop()
                        pending[actor.run.remote(unit)] = (i, unit)
                        load[i] += 1
                if not pending:  # every actor is gone: what is left cannot run
                    for unit in todo[::-1]:
                        on_result(crashed(unit, "no live model actor left"))
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i, unit = pending.pop(ref)
                    load[i] -= 1
                    try:
                        on_result(ray.get(ref))
                    except Exception as exc:  # the actor died for good (after its restarts)
                        dead.add(i)
                        on_result(crashed(unit, f"{type(exc).__name__}: {exc}"))
        finally:
            for actor in actors:
                ray.kill(actor)
