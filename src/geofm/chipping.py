"""Chip one scene window by window on several threads: the scene-organised engine of step 1.

The chips to make are grouped into windows of whole chips of the tile's chip grid (up to ``window_px``,
1024 px, a side, anchored at the grid origin like the COGs' blocks), and each window is read once per
band (:meth:`geofm.scene.SceneReader.read_window`) and cut into chips. Windows are read ahead of the
work on them (so remote round trips overlap the CPU work) and worked on by ``threads`` threads at once:
the decoding (GDAL), resampling (numpy), deflate (ISA-L) and PNG deflate release the GIL, so one scene
uses the cores it is given; HDF5 through h5py holds it, but writes only one template per chip structure
(:mod:`geofm.netcdf` stamps the chips from it in well under a millisecond). At most
``threads + read_ahead`` windows are held at once (~60 MB each for 12 bands + SCL): memory stays bounded
by a few windows, never a whole tile.

:func:`chip_threads` shares the machine between scenes running at once (the executor's workers).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from rasterio.windows import Window

from geofm.chips import Chip, ChipGrid
from geofm.scene import SceneReader

R = TypeVar("R")
WINDOW_PX = 1024  # target window side in fine-grid pixels (whole chips): a multiple of common COG blocks


def chip_threads(configured: int | None, scenes_at_once: int) -> int:
    """Threads for one scene: ``configured``, else the CPU count shared by the scenes running at once."""
    if configured:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, scenes_at_once))


@dataclass(frozen=True)
class ChipWindow:
    """Chips read together: their bounding window on the grid (fine pixels)."""

    chips: tuple[Chip, ...]
    window: Window

    def view(self, data: dict[str, np.ndarray], chip: Chip) -> dict[str, np.ndarray]:
        """The chip's part of the window's arrays (views, no copy)."""
        r = int(chip.window.row_off - self.window.row_off)
        c = int(chip.window.col_off - self.window.col_off)
        h, w = int(chip.window.height), int(chip.window.width)
        return {name: a[r:r + h, c:c + w] for name, a in data.items()}


def plan_windows(chips: Sequence[Chip], chip_size: int, window_px: int = WINDOW_PX) -> list[ChipWindow]:
    """The chips grouped by blocks of ``window_px // chip_size`` chips a side (at least 1), anchored at
    the grid origin, each with the bounding window of its own chips; in the order of their first chip."""
    k = max(1, window_px // chip_size)
    groups: dict[tuple[int, int], list[Chip]] = {}
    for chip in chips:
        groups.setdefault((chip.x_dim // k, chip.y_dim // k), []).append(chip)
    out = []
    for members in groups.values():
        col0 = min(int(c.window.col_off) for c in members)
        row0 = min(int(c.window.row_off) for c in members)
        col1 = max(int(c.window.col_off + c.window.width) for c in members)
        row1 = max(int(c.window.row_off + c.window.height) for c in members)
        out.append(ChipWindow(tuple(members), Window(col0, row0, col1 - col0, row1 - row0)))
    return out


GIL_TURN_S = 0.0005  # interpreter switch interval while chip threads run (Python's default: 0.005)


@contextlib.contextmanager
def _short_gil_turns(on: bool) -> Iterator[None]:
    """Shorter GIL turns while several chip threads run. A thread coming back from GIL-free work (a
    deflate, a decode) waits for the GIL until the holder's turn ends; HDF5 through h5py holds it for
    milliseconds of small calls, so with the default 5 ms turn the threads mostly take turns instead of
    overlapping. Restored afterwards (it is the interpreter's setting)."""
    if not on:
        yield
        return
    with _TURNS_LOCK:  # scenes chipped at once in one process: the first sets, the last restores
        if not _TURNS:
            _TURNS.append(sys.getswitchinterval())
            sys.setswitchinterval(min(_TURNS[0], GIL_TURN_S))
        _TURNS.append(0.0)
    try:
        yield
    finally:
        with _TURNS_LOCK:
            _TURNS.pop()
            if len(_TURNS) == 1:
                sys.setswitchinterval(_TURNS.pop())


_TURNS: list[float] = []  # [the interval before, then one entry per chip_scene running with threads]
_TURNS_LOCK = threading.Lock()


def chip_scene(reader: SceneReader, grid: ChipGrid, chips: Sequence[Chip],
               make: Callable[[Chip, dict[str, np.ndarray]], R], threads: int = 1,
               window_px: int = WINDOW_PX) -> list[R]:
    """``make(chip, data)`` for every chip, ``data`` its bands and ``scl`` (views into the window read);
    results in the order of ``chips``. The first error stops the work and is raised."""
    windows = plan_windows(chips, grid.chip_size, window_px)
    n_bands = max(1, len(reader.sources))
    # enough windows read ahead to keep the reader's threads busy (remote: many requests in flight)
    read_ahead = 1 + (reader.remote_settings.read_threads // n_bands if reader.is_remote else 0)
    results: dict[str, R] = {}

    def work(cw: ChipWindow, data: Future[dict[str, np.ndarray]]) -> list[tuple[str, R]]:
        arrays = data.result()
        return [(chip.chip_id, make(chip, cw.view(arrays, chip))) for chip in cw.chips]

    with _short_gil_turns(threads > 1), \
            ThreadPoolExecutor(read_ahead, thread_name_prefix="window-read") as reads, \
            ThreadPoolExecutor(max(1, threads), thread_name_prefix="chip") as workers:
        pending: deque[Future[list[tuple[str, R]]]] = deque()
        try:
            for cw in windows:
                while len(pending) >= threads + read_ahead:
                    results.update(pending.popleft().result())
                data = reads.submit(reader.read_window, grid, cw.window)
                pending.append(workers.submit(work, cw, data))
            while pending:
                results.update(pending.popleft().result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[c.chip_id] for c in chips]
