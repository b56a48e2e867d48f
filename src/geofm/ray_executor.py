"""Run units of work on a Ray cluster: one task per unit for CPU steps, or long-lived actors that keep
a model loaded across units (the embedding step), with GPUs given to actors when the cluster has any.

The same unit function and the same retry/record semantics as the local executor: each unit runs
through :func:`geofm.executors.run_unit`, which never raises, so a failing unit is recorded with its
error and the others go on. A worker process that dies is retried by Ray (``cfg.retries`` times), then
recorded as failed.

Code reaches the workers as the installed ``geofm`` package (editable in the venv here, installed on
each node of a real cluster); unit functions travel by reference (cloudpickle). The only
``runtime_env`` set is ``env_vars``: the driver's AWS_* (S3 endpoint and credentials), GDAL/CPL, HF_* and
GEOFM_* variables, because workers started by ``ray start`` inherit the environment of that command,
not the driver's, and must read and write the same bucket as the driver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from geofm.config import PipelineConfig
from geofm.report import UnitResult

FORWARDED_ENV_PREFIXES = ("AWS_", "GDAL_", "CPL_", "HF_", "GEOFM_")

UnitFn = Callable[[PipelineConfig, str], "dict[str, Any] | None"]
Record = Callable[[UnitResult], None]


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
        raise ConnectionError(
            f"cannot connect to Ray cluster at {address!r} (ray_address): nothing answers there ({exc})"
        ) from exc


def connect(cfg: PipelineConfig, quiet: bool = True) -> None:
    """Connect to ``cfg.ray_address`` (or start a private local Ray when None); no-op when connected.

    Raises ``ConnectionError`` naming the address when the cluster cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": forwarded_env()},
        "log_to_driver": bool(os.environ.get("GEOFM_DEBUG")),
        "configure_logging": not quiet,
    }
    if cfg.ray_address:
        check_reachable(cfg.ray_address)
        kwargs["address"] = cfg.ray_address
    else:  # "local": never attach to somebody else's cluster found on this machine
        kwargs.update(address="local", include_dashboard=False, num_cpus=cfg.workers or os.cpu_count() or 1)
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = cfg.ray_address or "a new local Ray instance"
        raise ConnectionError(f"cannot connect to Ray cluster at {where!r} (ray_address): {exc}") from exc


def shutdown() -> None:
    """Disconnect from Ray (stops the private local instance when one was started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _crashed(unit: str, exc: BaseException) -> UnitResult:
    return UnitResult(unit, "failed", error=f"worker crashed: {type(exc).__name__}: {exc}")


def run_tasks(
    fn: UnitFn, cfg: PipelineConfig, units: Sequence[str], record: Record, workers: int | None = None
) -> None:
    """One Ray task per unit (1 CPU each), at most ``workers`` (default: 2 x cluster CPUs) in flight."""
    import ray

    from geofm.executors import run_unit

    task = ray.remote(run_unit).options(num_cpus=1, max_retries=cfg.retries, retry_exceptions=False)
    fn_ref, cfg_ref = ray.put(fn), ray.put(cfg)
    limit = workers or 2 * cluster_cpus()
    todo = list(units)[::-1]
    pending: dict[Any, str] = {}
    while todo or pending:
        while todo and len(pending) < limit:
            unit = todo.pop()
            pending[task.remote(fn_ref, cfg_ref, unit, cfg.retries)] = unit
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit = pending.pop(ref)
            try:
                record(ray.get(ref))
            except Exception as exc:  # the worker died (after Ray's retries)
                record(_crashed(unit, exc))


class UnitActor:
    """A long-lived worker that holds ``fn`` (and whatever model it caches) and runs one unit per call."""

    def __init__(
        self, fn: UnitFn, cfg: PipelineConfig, setup: Callable[[PipelineConfig], Any] | None
    ) -> None:
        self.fn, self.cfg = fn, cfg
        if setup is not None:
            setup(cfg)

    def run(self, unit: str, retries: int) -> UnitResult:
        from geofm.executors import run_unit

        return run_unit(self.fn, self.cfg, unit, retries)


def actor_count(cfg: PipelineConfig, n_units: int, workers: int | None) -> tuple[int, int]:
    """(number of actors, GPUs per actor): one actor per GPU when the cluster has GPUs, else per CPU."""
    gpus = cluster_gpus()
    n = workers or (gpus if gpus else cluster_cpus())
    return max(1, min(n, n_units)), 1 if gpus else 0


def run_actors(
    fn: UnitFn,
    cfg: PipelineConfig,
    units: Sequence[str],
    record: Record,
    workers: int | None = None,
    setup: Callable[[PipelineConfig], Any] | None = None,
) -> None:
    """Dispatch units to N actors, each fed two units at a time so it never waits for the driver."""
    import ray

    n_actors, gpus = actor_count(cfg, len(units), workers)
    actor_cls = ray.remote(UnitActor).options(
        num_cpus=1, num_gpus=gpus, max_restarts=cfg.retries, max_task_retries=cfg.retries)
    actors = [actor_cls.remote(fn, cfg, setup) for _ in range(n_actors)]
    todo = list(units)[::-1]
    pending: dict[Any, tuple[Any, str]] = {}
    load: dict[int, int] = {i: 0 for i in range(n_actors)}
    dead: set[int] = set()
    try:
        while todo or pending:
            for i, actor in enumerate(actors):
                while todo and load[i] < 2 and i not in dead:
                    unit = todo.pop()
                    pending[actor.run.remote(unit, cfg.retries)] = (i, unit)
                    load[i] += 1
            if not pending:  # every actor is gone: what is left cannot run
                for unit in todo[::-1]:
                    record(UnitResult(unit, "failed", error="no live model actor left"))
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, unit = pending.pop(ref)
                load[i] -= 1
                try:
                    record(ray.get(ref))
                except Exception as exc:  # the actor died for good (after its restarts)
                    dead.add(i)
                    record(_crashed(unit, exc))
    finally:
        for actor in actors:
            ray.kill(actor)
