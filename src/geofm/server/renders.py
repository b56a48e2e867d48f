"""A bounded pool for tile renders: the explorer's expensive requests never pile up or outlive their client.

At most ``slots`` renders run at once, each in a worker thread of the pool's own (so the JSON API's
threads stay free). A request waits at most ``queue_timeout`` seconds for a slot and ``timeout`` seconds
for its render, then gets :class:`RenderBusy` (HTTP 503). A request whose client has gone is not
started; a running render is told to stop through its ``threading.Event`` (the renderer checks it
between reads) and its slot is freed when its thread returns, so abandoned work still counts against
the limit.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from geofm.errors import TileError

T = TypeVar("T")
POLL_S = 0.02
DEFAULT_SLOTS = max(1, min(4, os.cpu_count() or 1))


class RenderBusy(TileError):
    """No render slot within the queue timeout, or the render ran past its timeout (HTTP 503)."""


class ClientGone(Exception):
    """The client disconnected before its render finished; nothing is sent back."""


class RenderPool:
    """``slots`` concurrent renders, waits bounded by ``queue_timeout`` and ``timeout`` seconds.

    ``stats`` counts renders ``started``, ``done``, ``busy`` (no slot in time), ``timed_out``,
    ``abandoned`` (client gone before the start) and ``cancelled`` (client gone while rendering)."""

    def __init__(
        self, slots: int = DEFAULT_SLOTS, queue_timeout: float = 10.0, timeout: float = 30.0
    ) -> None:
        if slots < 1:
            raise ValueError(f"render slots must be at least 1, got {slots}")
        self.slots, self.queue_timeout, self.timeout = slots, queue_timeout, timeout
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="geofm-tile")
        self._lock = threading.Lock()
        self._running = 0
        self.stats: Counter[str] = Counter()

    @property
    def running(self) -> int:
        """Renders holding a slot now (abandoned ones included until their thread returns)."""
        return self._running

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _try_acquire(self) -> bool:
        with self._lock:
            if self._running < self.slots:
                self._running += 1
                return True
            return False

    def _release(self, *_: object) -> None:
        with self._lock:
            self._running -= 1

    async def run(self, render: Callable[[threading.Event], T], gone: Callable[[], Awaitable[bool]]) -> T:
        """``render(cancel_event)`` in a slot; ``gone()`` tells whether the client has disconnected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        while not self._try_acquire():  # polling keeps the pool free of any one event loop
            if await gone():
                self._count("abandoned")
                raise ClientGone
            if loop.time() > deadline:
                self._count("busy")
                raise RenderBusy(f"all {self.slots} tile render slots busy for {self.queue_timeout:g} s; "
                                 "retry")
            await asyncio.sleep(POLL_S)
        cancel = threading.Event()
        try:
            if await gone():
                self._count("abandoned")
                raise ClientGone
            future = self._executor.submit(render, cancel)
        except BaseException:
            self._release()
            raise
        self._count("started")
        future.add_done_callback(self._release)
        waiting = asyncio.wrap_future(future)
        deadline = loop.time() + self.timeout
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=POLL_S * 5)
            if done:
                self._count("done")
                return waiting.result()
            if await gone():
                self._abandon(cancel, waiting)
                self._count("cancelled")
                raise ClientGone
            if loop.time() > deadline:
                self._abandon(cancel, waiting)
                self._count("timed_out")
                raise RenderBusy(f"tile render took longer than {self.timeout:g} s")

    @staticmethod
    def _abandon(cancel: threading.Event, waiting: asyncio.Future) -> None:
        """Tell the render to stop; its result (or error) is dropped, its slot freed when it returns."""
        cancel.set()
        waiting.cancel()

    def close(self) -> None:
        """Stop taking renders; running ones finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
