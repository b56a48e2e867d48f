"""Read one scene's band COGs window by window onto its finest band grid.

A scene is an Earth Search v1 item JSON. Each band asset is opened once (header only); a chip then
reads just the pixels it needs. Bands on a coarser grid are interpolated to the centres of the fine
grid's pixels in numpy, so the values are exactly bilinear interpolation of the COG (reflectance) or
the value of the coarse pixel holding the centre (SCL). Doing it ourselves, rather than through GDAL's
resampling, makes the result independent of window edges and GDAL versions.

Nodata handling: nodata DN become NaN before interpolation; a bilinear value is the weighted mean of
its valid neighbours (weights renormalised, as GDAL does) and NaN when none is valid. Fine-grid pixel
centres outside the coarse raster are NaN (SCL: 0).
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.windows import Window

from geofm import sentinel2, storage
from geofm.chips import Chip, ChipGrid
from geofm.errors import SceneError


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


def _pixel_centres(n: int, start: int, t_origin: float, t_res: float, s_origin: float, s_res: float
                   ) -> np.ndarray:
    """Fractional source pixel coordinates (0 = centre of the first pixel) of target pixel centres."""
    coords = t_origin + (start + np.arange(n) + 0.5) * t_res
    return (coords - s_origin) / s_res - 0.5


@dataclass
class BandSource:
    """One open band COG: how to read a window of the target grid from it."""

    name: str
    href: str
    dataset: rasterio.DatasetReader
    offset: int  # DN subtracted from valid pixels (harmonisation); 0 for SCL
    categorical: bool  # SCL: nearest, uint8, 0 = nodata

    @property
    def transform(self) -> Affine:
        return self.dataset.transform

    @property
    def nodata(self) -> float:
        nd = self.dataset.nodata
        return float(sentinel2.NODATA if nd is None else nd)

    def _read(self, window: Window) -> np.ndarray:
        try:
            return self.dataset.read(1, window=window)
        except Exception as exc:
            raise SceneError(f"asset {self.name!r} ({self.href}): cannot read pixels: {exc}") from exc

    def _values(self, raw: np.ndarray) -> np.ndarray:
        """Raw DN to harmonised float64 DN with NaN for nodata (offset removed, clipped at 0)."""
        out = raw.astype(np.float64)
        out[raw == self.nodata] = np.nan
        if self.offset:
            out = np.maximum(out - self.offset, 0.0)  # NaN stays NaN
        return out

    def read_onto(self, grid_transform: Affine, window: Window) -> np.ndarray:
        """The window of the target grid: float32 harmonised DN (NaN nodata), or uint8 SCL (0 nodata)."""
        s, t = self.transform, grid_transform
        h, w = int(window.height), int(window.width)
        if s == t:  # same grid: plain windowed read
            raw = self._read(window)
            return raw.astype(np.uint8) if self.categorical else self._values(raw).astype(np.float32)
        u = _pixel_centres(w, int(window.col_off), t.c, t.a, s.c, s.a)
        v = _pixel_centres(h, int(window.row_off), t.f, t.e, s.f, s.e)
        width, height = self.dataset.width, self.dataset.height
        if self.categorical:
            return self._nearest(u, v, width, height)
        return self._bilinear(u, v, width, height)

    def _nearest(self, u: np.ndarray, v: np.ndarray, width: int, height: int) -> np.ndarray:
        cols, rows = np.floor(u + 0.5).astype(int), np.floor(v + 0.5).astype(int)
        inside = ((cols >= 0) & (cols < width))[None, :] & ((rows >= 0) & (rows < height))[:, None]
        cc, rr = np.clip(cols, 0, width - 1), np.clip(rows, 0, height - 1)
        c0, r0 = int(cc.min()), int(rr.min())
        raw = self._read(Window(c0, r0, int(cc.max()) - c0 + 1, int(rr.max()) - r0 + 1))
        out = raw[np.ix_(rr - r0, cc - c0)].astype(np.uint8)
        out[~inside] = 0
        return out

    def _bilinear(self, u: np.ndarray, v: np.ndarray, width: int, height: int) -> np.ndarray:
        c_lo, r_lo = np.floor(u).astype(int), np.floor(v).astype(int)
        fx, fy = u - c_lo, v - r_lo
        c_idx = np.clip(np.stack([c_lo, c_lo + 1]), 0, width - 1)
        r_idx = np.clip(np.stack([r_lo, r_lo + 1]), 0, height - 1)
        c0, r0 = int(c_idx.min()), int(r_idx.min())
        win = Window(c0, r0, int(c_idx.max()) - c0 + 1, int(r_idx.max()) - r0 + 1)
        vals = self._values(self._read(win))
        wx = np.stack([1.0 - fx, fx])  # (2, W)
        wy = np.stack([1.0 - fy, fy])  # (2, H)
        num = np.zeros((len(v), len(u)))
        den = np.zeros_like(num)
        for i in range(2):
            for j in range(2):
                a = vals[np.ix_(r_idx[i] - r0, c_idx[j] - c0)]
                wgt = np.outer(wy[i], wx[j])
                ok = ~np.isnan(a)
                num += np.where(ok, a, 0.0) * wgt
                den += np.where(ok, wgt, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, num / den, np.nan)
        inside = ((u >= -0.5) & (u <= width - 0.5))[None, :] & ((v >= -0.5) & (v <= height - 0.5))[:, None]
        out[~inside] = np.nan
        return out.astype(np.float32)


class SceneReader:
    """Open the bands of one scene (a context manager) and read chips from them.

    ``bands`` are Earth Search asset keys (``red``, ``nir``...); SCL is always read as well.
    """

    def __init__(self, item: dict[str, Any], bands: list[str], scene_id: str, item_url: str) -> None:
        self.item = item
        self.bands = list(bands)
        self.scene_id = scene_id
        self.item_url = item_url
        self.offset = sentinel2.boa_offset_to_subtract(item["properties"])
        self.sources: dict[str, BandSource] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> SceneReader:
        names = [*self.bands, sentinel2.SCL_NAME]
        hrefs = {n: asset_href(self.item, n, self.item_url, self.scene_id) for n in names}  # all first
        self._stack.enter_context(rasterio.Env(**storage.gdal_env(*hrefs.values())))
        try:
            for name in names:
                try:
                    ds = self._stack.enter_context(rasterio.open(hrefs[name]))
                except Exception as exc:
                    raise SceneError(f"scene {self.scene_id}: asset {name!r} ({hrefs[name]}): "
                                     f"cannot open: {exc}") from exc
                scl = name == sentinel2.SCL_NAME
                self.sources[name] = BandSource(name, hrefs[name], ds, 0 if scl else self.offset, scl)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self._stack.close()

    def grid(self, chip_size: int) -> ChipGrid:
        """The chip grid on the finest band grid (read from the COGs), all bands in one CRS."""
        finest = min(self.sources.values(), key=lambda s: abs(s.transform.a))
        crs = {n: s.dataset.crs for n, s in self.sources.items()}
        if any(c is None for c in crs.values()):
            missing = [n for n, c in crs.items() if c is None]
            raise SceneError(f"scene {self.scene_id}: asset(s) {missing} have no CRS")
        if len({c.to_string() for c in crs.values()}) > 1:
            raise SceneError(f"scene {self.scene_id}: assets are in different CRSs: "
                             f"{ {n: c.to_string() for n, c in crs.items()} }")
        epsg = finest.dataset.crs.to_epsg()
        ds = finest.dataset
        return ChipGrid(ds.transform, ds.width, ds.height, f"EPSG:{epsg}" if epsg else ds.crs.to_string(),
                        chip_size)

    def read_chip(self, grid: ChipGrid, chip: Chip) -> dict[str, np.ndarray]:
        """Every band (float32 harmonised DN, NaN nodata) and ``scl`` (uint8) on the chip window."""
        out = {}
        for name, src in self.sources.items():
            try:
                out[name] = src.read_onto(grid.transform, chip.window)
            except SceneError as exc:
                raise SceneError(f"scene {self.scene_id}: {exc}") from exc
        return out

