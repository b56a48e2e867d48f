"""The explorer's bounded render pool (geofm.server.renders.RenderPool) with real worker threads and a
real event loop: renders whose client has gone are never started, running ones are told to stop, a
slot stays taken until its thread returns, and waits end in RenderBusy (HTTP 503) instead of piling up.
(The HTTP side is in test_explorer_hostile.py; a render that blocks on demand is only possible here.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from geofm.server.renders import ClientGone, RenderBusy, RenderPool

WAIT_S = 30  # guards against a hang, never a performance bound


class Job:
    """A render that blocks until released (or told to stop) and records what happened to it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.saw_cancel = False

    def __call__(self, cancel: threading.Event) -> str:
        self.started.set()
        while not self.release.wait(0.01):
            if cancel.is_set():
                self.saw_cancel = True
                return "stopped"
        return "done"


def _flag() -> tuple[threading.Event, object]:
    gone = threading.Event()

    async def is_gone() -> bool:
        return gone.is_set()

    return gone, is_gone


async def _until(event: threading.Event) -> None:
    for _ in range(WAIT_S * 100):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


async def _slots_free(pool: RenderPool) -> None:
    for _ in range(WAIT_S * 100):
        if pool.running == 0:
            return
        await asyncio.sleep(0.01)


def test_queued_render_of_a_gone_client_never_starts():
    async def main() -> None:
        pool = RenderPool(slots=1, queue_timeout=WAIT_S, timeout=WAIT_S)
        first, second = Job(), Job()
        _, stay = _flag()
        gone, leave = _flag()
        a = asyncio.create_task(pool.run(first, stay))
        await _until(first.started)
        b = asyncio.create_task(pool.run(second, leave))
        await asyncio.sleep(0.1)
        gone.set()  # the second client disconnects while queued
        with pytest.raises(ClientGone):
            await b
        first.release.set()
        assert await a == "done"
        assert not second.started.is_set()
        assert pool.stats["abandoned"] == 1 and pool.stats["started"] == 1 and pool.running == 0
        pool.close()

    asyncio.run(main())


def test_running_render_is_told_to_stop_and_keeps_its_slot_until_it_does():
    async def main() -> None:
        pool = RenderPool(slots=1, queue_timeout=WAIT_S, timeout=WAIT_S)
        job = Job()
        gone, leave = _flag()
        task = asyncio.create_task(pool.run(job, leave))
        await _until(job.started)
        gone.set()
        with pytest.raises(ClientGone):
            await task
        await _slots_free(pool)
        assert job.saw_cancel and pool.running == 0 and pool.stats["cancelled"] == 1
        pool.close()

    asyncio.run(main())


def test_render_past_its_timeout_is_busy_and_told_to_stop():
    async def main() -> None:
        pool = RenderPool(slots=1, queue_timeout=WAIT_S, timeout=0.3)
        slow = Job()
        _, stay = _flag()
        with pytest.raises(RenderBusy, match="longer than"):
            await pool.run(slow, stay)
        await _slots_free(pool)  # the slot is held until the stopped render's thread returns
        assert slow.saw_cancel and pool.running == 0 and pool.stats["timed_out"] == 1
        pool.close()

    asyncio.run(main())


def test_no_slot_within_the_queue_timeout_is_busy():
    async def main() -> None:
        pool = RenderPool(slots=1, queue_timeout=0.2, timeout=WAIT_S)
        blocker = Job()
        _, stay = _flag()
        holder = asyncio.create_task(pool.run(blocker, stay))
        await _until(blocker.started)
        queued = Job()
        with pytest.raises(RenderBusy, match="slots busy"):
            await pool.run(queued, stay)
        blocker.release.set()
        assert await holder == "done"
        assert not queued.started.is_set() and pool.stats["busy"] == 1 and pool.running == 0
        pool.close()

    asyncio.run(main())


def test_slots_bound_concurrency():
    async def main() -> None:
        pool = RenderPool(slots=2, queue_timeout=WAIT_S, timeout=WAIT_S)
        lock = threading.Lock()
        live, peak = [0], [0]

        def render(_: threading.Event) -> int:
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            threading.Event().wait(0.05)
            with lock:
                live[0] -= 1
            return 1

        _, stay = _flag()
        results = await asyncio.gather(*(pool.run(render, stay) for _ in range(10)))
        assert results == [1] * 10 and peak[0] == 2 and pool.stats["done"] == 10
        pool.close()

    asyncio.run(main())
