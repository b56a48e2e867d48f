"""Feed a model with chips: read, prepare and batch them on several reader threads, ahead of the model.

Each chip is read (:mod:`geofm.storage`), decoded (:func:`geofm.netcdf.read_bands`: ISA-L inflate and
numpy, both outside the GIL) and prepared for the model (the embedder's ``prepare``, e.g. Clay's
normalisation) by one of ``readers`` threads, straight into its slot of a batch buffer. Batches come out
in order while the next ``prefetch`` ones are being filled, so reading overlaps the model.

On CUDA the buffers are pinned (page-locked) torch tensors, so the copy to the GPU can run asynchronously
(``non_blocking``). Buffers are reused round-robin (pinning is costly): a batch's pixels stay valid until
the batch after it is requested, which a consumer that embeds one batch at a time respects.

A chip that cannot be read, or has another shape, is reported with its batch (``Batch.failed``) and left
out of it; it never stops the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofm import netcdf, storage

PREFETCH = 2  # batches filled while the model works on the current one
Prepare = Callable[[np.ndarray], np.ndarray]  # [1, C, H, W] harmonised DN -> model input, in place if it can
Read = Callable[[str, list[str], np.ndarray], np.ndarray]  # (url, bands, out [C, H, W]) -> out


def default_readers(configured: int | None = None) -> int:
    """Reader threads: ``configured``, else the CPU count (reading a chip is mostly decoding: CPU work)."""
    return configured or max(1, os.cpu_count() or 1)


def read_chip(url: str, bands: list[str], out: np.ndarray | None = None) -> np.ndarray:
    """The chip's bands as float32 [C, H, W] (NaN = nodata), into ``out`` when given; a missing band or
    another shape raises naming the file."""
    return netcdf.read_bands(storage.read_bytes(url), bands, url, out)


@dataclass
class Batch:
    """The chips at positions ``index`` of the loader's list (in order) as ``pixels`` [len(index), C, H, W]:
    a numpy array, or a pinned torch tensor when the loader feeds CUDA. ``failed``: (position, error) of
    this batch's chips that could not be read."""

    index: list[int]
    pixels: Any
    failed: list[tuple[int, str]]


@dataclass
class _Buffer:
    array: np.ndarray  # what the readers write into
    pixels: Any  # what the batch hands out: the same memory (the array, or the pinned tensor)


class ChipLoader:
    """Batches of the chips at ``urls``, each ``len(bands)`` x ``shape`` (see module doc).

    ``prepare``: one chip's harmonised DN [1, C, H, W] to the model's input (default: unchanged);
    ``pin_memory``: pinned torch buffers, for a model on CUDA."""

    def __init__(self, urls: Sequence[str], bands: list[str], shape: tuple[int, int], batch_size: int,
                 readers: int | None = None, prepare: Prepare | None = None, pin_memory: bool = False,
                 prefetch: int = PREFETCH, read: Read = read_chip) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.urls = list(urls)
        self.bands = list(bands)
        self.chip_shape = (len(self.bands), *shape)
        self.batch_size = batch_size
        self.readers = default_readers(readers)
        self.prepare = prepare
        self.pin_memory = pin_memory
        self.prefetch = max(0, prefetch)
        self._read = read

    def __len__(self) -> int:
        return -(-len(self.urls) // self.batch_size)

    def _new_buffer(self) -> _Buffer:
        shape = (self.batch_size, *self.chip_shape)
        if self.pin_memory:
            import torch

            tensor = torch.empty(shape, dtype=torch.float32).pin_memory()
            return _Buffer(tensor.numpy(), tensor)
        array = np.empty(shape, np.float32)
        return _Buffer(array, array)

    def _fill(self, slot: np.ndarray, url: str) -> str | None:
        """Read and prepare one chip in ``slot`` (decoded straight into it, prepared in place where the
        embedder can: no per-chip arrays, whose fresh pages cost more than the work); None, or the error."""
        try:
            self._read(url, self.bands, slot)
            if self.prepare is not None:
                prepared = self.prepare(slot[None])
                if not np.shares_memory(prepared, slot):
                    slot[...] = prepared[0]
            return None
        except Exception as exc:  # one unreadable chip is reported, the others go on
            return f"{type(exc).__name__}: {exc}"

    def __iter__(self) -> Iterator[Batch]:
        starts = list(range(0, len(self.urls), self.batch_size))
        # ring of buffers: batch b + prefetch + 1 reuses the buffer of batch b - 1, done with by then
        ring = [self._new_buffer() for _ in range(min(len(starts), self.prefetch + 2))]
        pending: deque[tuple[list[int], list[Future[str | None]]]] = deque()
        with ThreadPoolExecutor(self.readers, thread_name_prefix="chip-reader") as pool:

            def submit(b: int) -> None:
                positions = list(range(starts[b], min(starts[b] + self.batch_size, len(self.urls))))
                array = ring[b % len(ring)].array
                pending.append((positions, [pool.submit(self._fill, array[k], self.urls[p])
                                            for k, p in enumerate(positions)]))

            try:
                for b in range(min(len(starts), self.prefetch + 1)):
                    submit(b)
                for b in range(len(starts)):
                    positions, futures = pending.popleft()
                    errors = [f.result() for f in futures]
                    if b + self.prefetch + 1 < len(starts):
                        submit(b + self.prefetch + 1)
                    yield self._batch(ring[b % len(ring)], positions, errors)
            finally:
                for _, futures in pending:
                    for f in futures:
                        f.cancel()

    @staticmethod
    def _batch(buffer: _Buffer, positions: list[int], errors: list[str | None]) -> Batch:
        """The batch of the chips read, moved to the front of the buffer when some failed."""
        keep = [k for k, e in enumerate(errors) if e is None]
        failed = [(p, e) for p, e in zip(positions, errors, strict=True) if e is not None]
        if len(keep) < len(positions) and keep:
            buffer.array[: len(keep)] = buffer.array[keep]
        return Batch([positions[k] for k in keep], buffer.pixels[: len(keep)], failed)
