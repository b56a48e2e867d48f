"""Read one scene's band COGs onto its finest band grid, a window (a block of chips) at a time.

A scene is an Earth Search v1 item JSON. Each band asset is opened once for its header; pixels are then
read window by window (:meth:`SceneReader.read_window`; :mod:`geofm.chipping` plans the windows), so
every COG block is fetched and decoded once per scene, not once per chip and band. Bands on a coarser
grid are interpolated to the centres of the fine grid's pixels in numpy, so the values are exactly
bilinear interpolation of the COG (reflectance) or the value of the coarse pixel holding the centre
(SCL). Doing it ourselves, rather than through GDAL's resampling, makes the result independent of
window edges and GDAL versions.

Nodata handling: nodata DN become NaN before interpolation; a bilinear value is the weighted mean of
its valid neighbours (weights renormalised, as GDAL does) and NaN when none is valid. Fine-grid pixel
centres outside the coarse raster are NaN (SCL: 0).

Arithmetic: interpolation is separable (along rows, then columns). Where the grids are nested, as
Sentinel-2's 10/20/60 m grids are, every weight is a whole number of 1/(2 x ratio) and every partial sum
of 16-bit DN is a whole number below 2^24, so float32 holds them exactly and the one division at the
end rounds the exact value once: the result equals float64 interpolation rounded to float32. Where
that divisor is a power of two (20 m onto 10 m: 4 x 4) the weights are the fractions themselves, exact
in binary, and nothing is left to divide. Other grids are interpolated in float64. A window is
interpolated in strips of :data:`STRIP_ROWS` target rows, whose temporaries stay in the core's cache;
each value depends only on its own neighbours, so strips change no value.

Reads are thread-safe: each band keeps a pool of open handles (one per thread reading it at once), and
the reader fans a window's band reads out over its own threads (many for remote hrefs, to hide each
request's round trip). Remote hrefs (http(s), s3) get geofm's GDAL settings and attempts
(:mod:`geofm.remote`); a read that fails for a network cause raises
:class:`~geofm.errors.RemoteReadError`, a bad file :class:`SceneError`.
"""

from __future__ import annotations

import posixpath
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.windows import Window

from geofm import remote, sentinel2, storage
from geofm.chips import Chip, ChipGrid
from geofm.errors import RemoteReadError, SceneError
from geofm.storage import RemoteReadSettings

__all__ = ["BandSource", "SceneError", "SceneReader", "asset_href", "item_datetime", "load_item"]

T = TypeVar("T")
EXACT_LIMIT = 2**24  # float32 holds every whole number below this exactly
# Target rows interpolated at a time: a strip's temporaries (~1 MB for a 1024 px window) stay in the
# core's cache, where a whole window's (~4 MB a pass) stream through memory: ~2.5x faster, same values.
STRIP_ROWS = 256


def load_item(url: str, scene_id: str) -> dict[str, Any]:
    """The item JSON at ``url``; missing or broken files raise :class:`SceneError` naming the scene."""
    try:
        item = storage.read_json(url)
    except FileNotFoundError as exc:
        raise SceneError(f"scene {scene_id}: item JSON not found: {url}") from exc
    except ValueError as exc:
        raise SceneError(f"scene {scene_id}: broken item JSON: {exc}") from exc
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise SceneError(f"scene {scene_id}: {url} is not a STAC item (no 'assets' object)")
    if not isinstance(item.get("properties"), dict) or not item["properties"].get("datetime"):
        raise SceneError(f"scene {scene_id}: {url} has no properties.datetime")
    return item


def item_datetime(item: dict[str, Any]) -> pd.Timestamp:
    """Acquisition time of the item, UTC."""
    ts = pd.Timestamp(item["properties"]["datetime"])
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def asset_href(item: dict[str, Any], asset: str, item_url: str, scene_id: str) -> str:
    """The asset's href, relative hrefs resolved against the item's ``self`` link or its file."""
    entry = item["assets"].get(asset)
    if not isinstance(entry, dict) or not entry.get("href"):
        have = ", ".join(sorted(item["assets"]))
        raise SceneError(f"scene {scene_id}: the item has no asset {asset!r} (band {asset}); assets: {have}")
    href = str(entry["href"])
    if "://" in href or href.startswith("/"):
        return href
    base = next((lk["href"] for lk in item.get("links", []) if lk.get("rel") == "self"), item_url)
    joined = posixpath.join(posixpath.dirname(base), href)
    return joined if storage.is_remote(base) else posixpath.normpath(joined)


# ---- how target pixels sample a band: one plan per axis ------------------------------------------------
def _pixel_centres(n: int, start: int, t_origin: float, t_res: float, s_origin: float, s_res: float
                   ) -> np.ndarray:
    """Fractional source pixel coordinates (0 = centre of the first pixel) of target pixel centres."""
    coords = t_origin + (start + np.arange(n) + 0.5) * t_res
    return (coords - s_origin) / s_res - 0.5


@dataclass(frozen=True)
class _Axis:
    """How target pixels along one axis sample a band: which band pixels to read and, per target pixel,
    its neighbours (indices from ``start``) and their weights.

    ``units`` > 0: every weight is a whole number of 1/``units`` (nested grids), so float32 holds the
    weighted sums of 16-bit DN exactly. ``period`` > 0: target pixels ``p, p + period, ...`` share their
    weights and step through consecutive band pixels, so interpolation is a few strided slices (~8x
    faster than gathering every neighbour); 0 where the raster's edge clamps the neighbours."""

    start: int  # first band pixel read
    size: int  # band pixels read
    pad: tuple[int, int]  # copies of the edge pixel added before and after them (neighbours off the raster)
    lo: np.ndarray  # lower neighbour (bilinear) or the nearest pixel, from the first (padded) pixel
    hi: np.ndarray  # upper neighbour (bilinear; = lo for nearest)
    w_lo: np.ndarray  # float64 weights of lo and hi
    w_hi: np.ndarray
    units: int
    inside: np.ndarray  # the target pixel's centre lies on the band raster
    period: int = 0
    same: bool = False  # the target pixels are the band's pixels (same grid)

    @staticmethod
    def make(idx_lo: np.ndarray, idx_hi: np.ndarray, w_hi: np.ndarray, units: int, inside: np.ndarray,
             ratio: float, n_src: int, same: bool = False) -> _Axis:
        """The plan from band pixel indices (off the raster where a neighbour is: such a neighbour is the
        edge pixel, as if the index were clamped)."""
        first, last = int(min(idx_lo.min(), idx_hi.min())), int(max(idx_lo.max(), idx_hi.max()))
        if first > n_src - 1 or last < 0:  # wholly off the raster (every pixel 'outside'): clamp
            idx_lo, idx_hi = np.clip(idx_lo, 0, n_src - 1), np.clip(idx_hi, 0, n_src - 1)
            first, last = int(min(idx_lo.min(), idx_hi.min())), int(max(idx_lo.max(), idx_hi.max()))
        start, stop = max(first, 0), min(last, n_src - 1)
        lo, hi = idx_lo - first, idx_hi - first
        w_lo = 1.0 - w_hi
        k = round(ratio)
        period = k if k >= 1 and abs(ratio - k) < 1e-9 else 0
        for p in range(min(period, len(lo))):
            steps = np.arange(len(lo[p::period]))
            if not (np.array_equal(lo[p::period], lo[p] + steps)
                    and np.array_equal(hi[p::period], hi[p] + steps) and (w_hi[p::period] == w_hi[p]).all()):
                period = 0
                break
        return _Axis(start, stop - start + 1, (start - first, last - stop), lo, hi, w_lo, w_hi, units,
                     inside, period, same)

    def part(self, i0: int, i1: int) -> tuple[slice, _Axis]:
        """Target pixels ``i0:i1`` alone: the band pixels they need (a slice of those read, padding
        included) and their plan from there (a period holds for any run of consecutive target pixels)."""
        lo, hi = self.lo[i0:i1], self.hi[i0:i1]
        base, top = int(min(lo.min(), hi.min())), int(max(lo.max(), hi.max()))
        first = self.start - self.pad[0] + base  # the band pixel of the slice's first (edge copies: beyond)
        return slice(base, top + 1), _Axis(first, top + 1 - base, (0, 0), lo - base, hi - base,
                                           self.w_lo[i0:i1], self.w_hi[i0:i1], self.units,
                                           self.inside[i0:i1], self.period, self.same)

    @staticmethod
    def identity(start: int, n: int) -> _Axis:
        idx = start + np.arange(n)
        return _Axis.make(idx, idx, np.zeros(n), 1, np.ones(n, bool), 1.0, start + n, same=True)

    @staticmethod
    def nearest(u: np.ndarray, n_src: int, ratio: float) -> _Axis:
        idx = np.floor(u + 0.5).astype(np.int64)
        inside = (idx >= 0) & (idx < n_src)
        return _Axis.make(idx, idx, np.zeros(len(u)), 1, inside, ratio, n_src)

    @staticmethod
    def bilinear(u: np.ndarray, n_src: int, ratio: float) -> _Axis:
        lo = np.floor(u).astype(np.int64)
        frac = u - lo
        inside = (u >= -0.5) & (u <= n_src - 0.5)
        units = round(2 * ratio)
        whole = np.round(frac * units)
        if units > 0 and np.all(np.abs(frac * units - whole) < 1e-6):  # nested grids: exact weights
            frac = whole / units
        else:
            units = 0
        return _Axis.make(lo, lo + 1, frac, units, inside, ratio, n_src)

    @property
    def divisor(self) -> int:
        """What exact weights leave to divide by: ``units``, or 1 when it is a power of two (such weights
        are the fractions themselves: dividing by a power of two is exact in binary floats)."""
        return 1 if self.units & (self.units - 1) == 0 else self.units

    def weights(self, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """(w_lo, w_hi): float32 whole numbers of 1/``divisor`` when ``exact``, else float64 fractions."""
        if exact:
            scale = self.units // self.divisor
            return (np.round(self.w_lo * self.units).astype(np.float32) / np.float32(scale),
                    np.round(self.w_hi * self.units).astype(np.float32) / np.float32(scale))
        return self.w_lo, self.w_hi


def _along(axis: int, s: slice | np.ndarray) -> tuple[Any, ...]:
    return (s, slice(None)) if axis == 0 else (slice(None), s)


def _interp(z: np.ndarray, a: _Axis, axis: int, exact: bool) -> np.ndarray:
    """``z`` interpolated along ``axis`` by plan ``a`` (a copy when every weight is 1 on the nearest)."""
    w_lo, w_hi = a.weights(exact)
    copy = not a.w_hi.any()
    n = len(a.lo)
    if not a.period:
        shape = [1, 1]
        shape[axis] = n
        out = np.take(z, a.lo, axis=axis)
        if copy:
            return out
        out = out * w_lo.reshape(shape)
        out += np.take(z, a.hi, axis=axis) * w_hi.reshape(shape)
        return out
    shape = list(z.shape)
    shape[axis] = n
    out = np.empty(shape, z.dtype)
    for p in range(min(a.period, n)):
        m = len(range(p, n, a.period))
        dst = out[_along(axis, slice(p, None, a.period))]
        src = z[_along(axis, slice(int(a.lo[p]), int(a.lo[p]) + m))]
        if copy:
            dst[...] = src
            continue
        np.multiply(src, w_lo[p], out=dst)
        if w_hi[p]:
            dst += z[_along(axis, slice(int(a.hi[p]), int(a.hi[p]) + m))] * w_hi[p]
    return out


def _separable(z: np.ndarray, ay: _Axis, ax: _Axis, exact: bool) -> np.ndarray:
    """``z`` (band pixels read) interpolated along columns, then rows."""
    return _interp(_interp(z, ax, 1, exact), ay, 0, exact)


# ---- one band -------------------------------------------------------------------------------------------
def _as_stored(value: float, dtype: np.dtype) -> Any:
    """``value`` in the integer ``dtype`` where it holds it exactly (comparing an integer array with a
    Python float converts every pixel to float64), else as it is."""
    if dtype.kind in "ui" and value.is_integer():
        info = np.iinfo(dtype)
        if info.min <= value <= info.max:
            return dtype.type(int(value))
    return value


class BandSource:
    """One band COG: its grid (from the header) and thread-safe window reads through a pool of handles.

    ``remote`` settings make every open and read go through :func:`geofm.remote.attempts`."""

    def __init__(self, name: str, href: str, offset: int, categorical: bool, env: dict[str, str],
                 remote_settings: RemoteReadSettings | None) -> None:
        self.name = name
        self.href = href
        self.offset = offset  # DN subtracted from valid pixels (harmonisation); 0 for SCL
        self.categorical = categorical  # SCL: nearest, uint8, 0 = nodata
        self._env = env
        self._remote = remote_settings
        self._idle: queue.SimpleQueue[rasterio.DatasetReader] = queue.SimpleQueue()
        self._open_handles: set[rasterio.DatasetReader] = set()
        self._lock = threading.Lock()
        header = self._attempt("open", self._open_handle, lambda: None)
        self.transform: Affine = header.transform
        self.width, self.height = header.width, header.height
        self.crs = header.crs
        self.dtype = np.dtype(header.dtypes[0])
        nd = header.nodata
        self.nodata = float(sentinel2.NODATA if nd is None else nd)
        self._nodata_stored = _as_stored(self.nodata, self.dtype)
        self._idle.put(header)

    def _open_handle(self) -> rasterio.DatasetReader:
        with rasterio.Env(**self._env):
            ds = rasterio.open(self.href)
        with self._lock:
            self._open_handles.add(ds)
        return ds

    def _close_handle(self, ds: rasterio.DatasetReader | None) -> None:
        if ds is None:
            return
        with self._lock:
            self._open_handles.discard(ds)
        ds.close()

    def close(self) -> None:
        """Close every handle (call when no read runs any more)."""
        with self._lock:
            handles, self._open_handles = list(self._open_handles), set()
        for ds in handles:
            ds.close()

    def _attempt(self, what: str, fn: Callable[[], T], after_failure: Callable[[], None]) -> T:
        """``fn()``: once for local files, with geofm's attempts for remote ones; errors named."""
        try:
            if self._remote is None:
                return fn()
            return remote.attempts(self.href, what, fn, self._remote, after_failure)
        except RemoteReadError as exc:
            raise RemoteReadError(f"asset {self.name!r}: {exc}") from exc
        except remote.GDAL_ERRORS as exc:  # a local file, or a remote one served fine: the file is bad
            raise SceneError(f"asset {self.name!r} ({self.href}): cannot {what}: {exc}") from exc

    def read_raw(self, window: Window) -> np.ndarray:
        """Band pixels of ``window`` (of the band's own grid) as stored: DN, nodata included."""
        try:
            held: list[rasterio.DatasetReader | None] = [self._idle.get_nowait()]
        except queue.Empty:
            held = [None]

        def read() -> np.ndarray:
            if held[0] is None:
                held[0] = self._open_handle()
            with rasterio.Env(**self._env):
                return held[0].read(1, window=window)

        def drop() -> None:  # a handle that failed is not used again
            self._close_handle(held[0])
            held[0] = None

        try:
            raw = self._attempt("read pixels", read, drop)
        except BaseException:
            drop()
            raise
        self._idle.put(held[0])  # type: ignore[arg-type]
        return raw

    def plan(self, grid_transform: Affine, window: Window) -> tuple[_Axis, _Axis]:
        """How the ``window`` of the target grid samples this band: (rows, columns)."""
        s, t = self.transform, grid_transform
        h, w = int(window.height), int(window.width)
        row0, col0 = int(window.row_off), int(window.col_off)
        if s == t:
            return _Axis.identity(row0, h), _Axis.identity(col0, w)
        u = _pixel_centres(w, col0, t.c, t.a, s.c, s.a)
        v = _pixel_centres(h, row0, t.f, t.e, s.f, s.e)
        ry, rx = abs(t.e / s.e), abs(t.a / s.a)  # band pixels per target pixel: < 1 on a coarser band
        if self.categorical:
            return _Axis.nearest(v, self.height, 1 / ry), _Axis.nearest(u, self.width, 1 / rx)
        return _Axis.bilinear(v, self.height, 1 / ry), _Axis.bilinear(u, self.width, 1 / rx)

    def onto(self, raw: np.ndarray, ay: _Axis, ax: _Axis) -> np.ndarray:
        """Band pixels read for ``(ay, ax)`` on the target window: float32 harmonised DN (NaN nodata), or
        uint8 SCL (0 nodata)."""
        if self.categorical:
            out = _separable(raw, ay, ax, exact=False).astype(np.uint8)
            out[~(ay.inside[:, None] & ax.inside[None, :])] = 0
            return out
        if ay.same and ax.same:
            out = raw.astype(np.float32)
            if self.offset:
                np.maximum(out - self.offset, 0, out=out)
            out[raw == self._nodata_stored] = np.nan
            return out
        largest = (max(-int(np.iinfo(self.dtype).min), int(np.iinfo(self.dtype).max))
                   if self.dtype.kind in "ui" and self.dtype.itemsize <= 2 else EXACT_LIMIT)
        exact = ay.units * ax.units * largest < EXACT_LIMIT and ay.units * ax.units > 0
        out = np.empty((len(ay.lo), len(ax.lo)), np.float32)
        for r0 in range(0, len(ay.lo), STRIP_ROWS):
            rows, strip = ay.part(r0, r0 + STRIP_ROWS)
            self._interpolated(raw[rows], strip, ax, exact, out[r0:r0 + STRIP_ROWS])
        out[~ay.inside, :] = np.nan
        out[:, ~ax.inside] = np.nan
        return out

    def _interpolated(self, raw: np.ndarray, ay: _Axis, ax: _Axis, exact: bool, out: np.ndarray) -> None:
        """Bilinear values of ``raw`` (nodata left out) for ``(ay, ax)`` into ``out`` (float32)."""
        valid = raw != self._nodata_stored
        vals = raw.astype(np.float32 if exact else np.float64)
        if self.offset:
            np.subtract(vals, self.offset, out=vals)
            np.maximum(vals, 0, out=vals)
        all_valid = bool(valid.all())
        if not all_valid:
            vals[~valid] = 0
        num = _separable(vals, ay, ax, exact)
        if exact and all_valid:
            den: np.ndarray | np.float32 = np.float32(ay.divisor * ax.divisor)
        else:
            den = _separable(valid.astype(vals.dtype), ay, ax, exact)
        if exact and all_valid and den == 1:  # 20 m onto 10 m: the weighted sums are the values
            out[...] = num
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[...] = np.divide(num, den)
        if not (exact and all_valid):
            out[den <= 0] = np.nan

    def read_onto(self, grid_transform: Affine, window: Window) -> np.ndarray:
        """The window of the target grid from this band (see :meth:`onto`)."""
        ay, ax = self.plan(grid_transform, window)
        raw = self.read_raw(Window(ax.start, ay.start, ax.size, ay.size))
        if any(ay.pad) or any(ax.pad):  # neighbours off the raster are its edge pixels
            raw = np.pad(raw, (ay.pad, ax.pad), mode="edge")
        return self.onto(raw, ay, ax)


# ---- one scene ------------------------------------------------------------------------------------------
class SceneReader:
    """Open the bands of one scene (a context manager) and read windows or chips from them.

    ``bands`` are Earth Search asset keys (``red``, ``nir``...); SCL is always read as well. ``remote``:
    settings for remote hrefs (default: the pipeline's defaults). ``threads``: band reads in flight for
    local files (remote ones use ``remote.read_threads``).
    """

    def __init__(self, item: dict[str, Any], bands: list[str], scene_id: str, item_url: str,
                 remote_settings: RemoteReadSettings | None = None, threads: int = 1) -> None:
        self.item = item
        self.bands = list(bands)
        self.scene_id = scene_id
        self.item_url = item_url
        self.offset = sentinel2.boa_offset_to_subtract(item["properties"])
        self.remote_settings = remote_settings or RemoteReadSettings()
        self.threads = threads
        self.sources: dict[str, BandSource] = {}
        self.is_remote = False
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> SceneReader:
        names = [*self.bands, sentinel2.SCL_NAME]
        hrefs = {n: asset_href(self.item, n, self.item_url, self.scene_id) for n in names}  # all first
        self.is_remote = any(storage.is_remote(h) for h in hrefs.values())
        env = storage.gdal_env(*hrefs.values(), remote=self.remote_settings)
        for href in hrefs.values():  # what an earlier attempt at this scene left in GDAL's cache
            remote.clear_cached(href)
        n = self.remote_settings.read_threads if self.is_remote else self.threads
        self._pool = ThreadPoolExecutor(max(1, n), thread_name_prefix="band-read")

        def open_band(name: str) -> BandSource:
            scl = name == sentinel2.SCL_NAME
            return BandSource(name, hrefs[name], 0 if scl else self.offset, scl, env,
                              self.remote_settings if storage.is_remote(hrefs[name]) else None)

        opened = [self._pool.submit(open_band, n) for n in names]  # headers fetched in parallel
        try:
            for name, fut in zip(names, opened, strict=True):
                self.sources[name] = self._named(fut)
        except BaseException:
            for fut in opened:
                if not fut.cancel() and fut.exception() is None:
                    fut.result().close()
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
                 ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for src in self.sources.values():
            src.close()

    def _named(self, fut: Future[T]) -> T:
        """The future's result; its errors prefixed with the scene id."""
        try:
            return fut.result()
        except (SceneError, RemoteReadError) as exc:
            raise type(exc)(f"scene {self.scene_id}: {exc}") from exc

    def grid(self, chip_size: int) -> ChipGrid:
        """The chip grid on the finest band grid (read from the COGs), all bands in one CRS."""
        finest = min(self.sources.values(), key=lambda s: abs(s.transform.a))
        crs = {n: s.crs for n, s in self.sources.items()}
        if any(c is None for c in crs.values()):
            missing = [n for n, c in crs.items() if c is None]
            raise SceneError(f"scene {self.scene_id}: asset(s) {missing} have no CRS")
        if len({c.to_string() for c in crs.values()}) > 1:
            raise SceneError(f"scene {self.scene_id}: assets are in different CRSs: "
                             f"{ {n: c.to_string() for n, c in crs.items()} }")
        epsg = finest.crs.to_epsg()
        return ChipGrid(finest.transform, finest.width, finest.height,
                        f"EPSG:{epsg}" if epsg else finest.crs.to_string(), chip_size)

    def read_window(self, grid: ChipGrid, window: Window) -> dict[str, np.ndarray]:
        """Every band (float32 harmonised DN, NaN nodata) and ``scl`` (uint8) on ``window`` of the grid;
        the bands are read in parallel on the reader's threads, each resampled as soon as it arrives."""
        assert self._pool is not None, "SceneReader used outside its with-block"
        futures = {name: self._pool.submit(src.read_onto, grid.transform, window)
                   for name, src in self.sources.items()}
        try:
            return {name: self._named(fut) for name, fut in futures.items()}
        except BaseException:
            for fut in futures.values():
                fut.cancel()
            raise

    def read_chip(self, grid: ChipGrid, chip: Chip) -> dict[str, np.ndarray]:
        """Every band and ``scl`` on the chip window (see :meth:`read_window`)."""
        return self.read_window(grid, chip.window)
