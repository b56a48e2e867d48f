"""The local executor: units in a process pool on this machine (inline with one worker).

Model tasks (the embedding step) run in one worker per GPU, each pinned to its device before CUDA
starts in it, or in this process on CPU (a pool would load the model N times over the same cores).
A worker whose process dies fails only its unit: the units that were in flight with it are run again
one by one in fresh workers, and the one that kills its worker again is recorded as crashed. Workers
end when the driver dies (``kill -9`` of ``geofm run`` leaves no orphan finishing units).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from geofm.config import PipelineConfig
from geofm.executors.base import Executor, OnResult, UnitTask, crashed

_PR_SET_PDEATHSIG = 1
_ORPHAN_POLL_S = 0.5


def local_model_devices(cfg: PipelineConfig) -> list[str]:
    """CUDA device ids for local model workers: every visible GPU when ``device`` is ``auto`` or
    ``cuda`` and there are several, else [] (one worker, on the configured device)."""
    if cfg.device not in ("auto", "cuda"):
        return []
    import torch

    n = torch.cuda.device_count()  # does not initialise CUDA, so forking workers stays safe
    return [str(i) for i in range(n)] if n > 1 else []


def _die_with_parent() -> None:
    """Make this worker end when the driver ends: the kernel's parent-death signal where there is one,
    and a watchdog thread that notices being re-parented (the signal follows the thread that forked)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="geofm-orphan-watch", daemon=True).start()


def _worker_init(task: UnitTask, free_devices: Any | None) -> None:
    _die_with_parent()
    if free_devices is not None:  # one GPU per model worker, pinned before CUDA starts here
        os.environ["CUDA_VISIBLE_DEVICES"] = free_devices.get(timeout=60)
    task.setup()


class LocalExecutor(Executor):
    """Process pool (``cfg.workers``, default: the CPU count) or inline for one worker."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def workers_for(self, task: UnitTask, n_units: int) -> tuple[int, list[str]]:
        """(workers, GPU ids to pin them to) for ``n_units`` units of ``task``."""
        devices: list[str] = []
        if task.model_worker:
            devices = local_model_devices(self.cfg)
            n = self.cfg.workers or max(1, len(devices))
        else:
            n = self.cfg.workers or max(1, os.cpu_count() or 1)
        return max(1, min(n, n_units)), devices

    def map(self, task: UnitTask, units: Sequence[str], on_result: OnResult) -> None:
        if not units:
            return
        n, devices = self.workers_for(task, len(units))
        task = task.sharing(n)
        if n <= 1 and not devices:
            task.setup()
            for unit in units:
                on_result(task(unit))
            return
        self._pool(task, list(units), n, devices, on_result)

    def _new_pool(self, task: UnitTask, n: int, devices: list[str]) -> ProcessPoolExecutor:
        free = None
        if devices:
            free = multiprocessing.get_context().Queue()
            for d in (devices * n)[:n]:
                free.put(d)
        return ProcessPoolExecutor(max_workers=n, initializer=_worker_init, initargs=(task, free))

    def _pool(self, task: UnitTask, units: list[str], n: int, devices: list[str], on_result: OnResult
              ) -> None:
        todo = deque(units)
        while todo:
            suspects: list[str] = []
            pool = self._new_pool(task, n, devices)
            in_flight: dict[Future[Any], str] = {}
            try:
                while (todo or in_flight) and not suspects:
                    while todo and len(in_flight) < n:  # no queue beyond the workers: a crash hits few
                        unit = todo.popleft()
                        in_flight[pool.submit(task, unit)] = unit
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        unit = in_flight.pop(fut)
                        try:
                            on_result(fut.result())
                        except BrokenProcessPool:
                            suspects.append(unit)
                suspects += in_flight.values()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            for unit in suspects:  # one at a time, each in a fresh worker: only the culprit fails
                on_result(self._isolated(task, unit, devices[:1]))

    def _isolated(self, task: UnitTask, unit: str, devices: list[str]) -> Any:
        with self._new_pool(task, 1, devices) as pool:
            try:
                return pool.submit(task, unit).result()
            except BrokenProcessPool:
                return crashed(unit, "its worker process died (killed, or out of memory)")
