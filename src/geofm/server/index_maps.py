"""Spectral-index images (NDVI, NBR, NDWI... of :mod:`geofm.indices`) computed from the chip NetCDFs: one
chip at a date, and web-mercator map tiles of a grid's chips at a date, each at a bounded cost.

What is read: only the chip files that the catalog rebuilds from the metadata (:class:`Layout`, nothing
from the request reaches a path), and only when the chip :class:`SourcePolicy` allows them: regular
files inside the output root after resolving symlinks (or objects under an ``s3://`` root). A chip that
may not or cannot be read is a 404 for its image, and left transparent in a tile.

Cost: a chip image reads one chip file (at most ``MAX_CHIP_PIXELS`` pixels). A tile reads the chips that
meet it, and only from the zoom at which a chip spans ``MIN_CHIP_PIXELS`` tile pixels
(:meth:`IndexMaps.minzoom`, answered empty below, as the true-colour tiles do); a tile meeting more than
``MAX_TILE_CHIPS`` chips anyway is refused. The routes run these in the explorer's render pool. Index
arrays are kept in a :class:`VersionedLRU` keyed on the chip file's version, so panning and zooming over
the same chips reads each once, and a rewritten chip is read again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date

import morecantile
import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from geofm import indices, netcdf, storage
from geofm.errors import InputError, NotFoundError
from geofm.indices import SpectralIndex
from geofm.sentinel2 import utm_epsg
from geofm.server import tiles
from geofm.server.catalog import Catalog, ChipFiles, VersionedLRU
from geofm.server.sources import SourcePolicy, SourceRefused

MIN_CHIP_PIXELS = 32  # index tiles start at the zoom where one chip spans this many tile pixels
MAX_TILE_CHIPS = 128  # chips one tile may read: (256 / 32 + 1)^2 = 81 square chips, plus room for skew
MAX_CHIP_PIXELS = 1024 * 1024  # largest chip (pixels per band) an image or tile reads
CACHE_SIZE = 256  # chip index arrays kept (a 256 px chip's is 256 KiB)


@dataclass(frozen=True)
class ChipIndex:
    """An index computed over one chip: values (float32, NaN = nodata) on the chip's UTM grid."""

    values: np.ndarray
    transform: Affine
    crs: str


@dataclass(frozen=True)
class TileResult:
    png: bytes
    source: str  # "chips", "empty" or "below-minzoom" (the X-Tile-Source header)
    note: str = ""  # chips left out, and why (X-Tile-Fallback)


class IndexMaps:
    """Index images and tiles over the catalog's outputs; chips are read only inside its root."""

    def __init__(self, catalog: Catalog, cache_size: int = CACHE_SIZE) -> None:
        self.catalog = catalog
        self.policy = SourcePolicy([catalog.root])  # chips live in the output root, never in an archive
        self.cache = VersionedLRU(cache_size)

    def minzoom(self, aoi: str, grid: str) -> int:
        """Lowest zoom with index tiles: where a chip of the grid spans ``MIN_CHIP_PIXELS`` tile pixels."""
        table = self.catalog.table(aoi, grid)
        return tiles.useful_minzoom(tuple(table.geometry.iloc[0].bounds), MIN_CHIP_PIXELS)

    def chip_index(self, files: ChipFiles, grid: str, index: SpectralIndex, what: str) -> ChipIndex:
        """``index`` over a chip's NetCDF (cached by the file's version). A file that may not be read,
        is gone, lacks the index's bands or is too large raises :class:`NotFoundError`/:class:`InputError`
        naming ``what``; an unreadable one :class:`~geofm.errors.StorageError`."""
        try:
            source = self.policy.resolve(files.netcdf, files.netcdf)
        except SourceRefused as exc:
            raise NotFoundError(f"{what}: no chip file that may be read ({exc})") from None

        def load() -> ChipIndex:
            data = storage.read_bytes(source)
            transform, crs = netcdf.read_grid(data, what)
            try:
                bands = netcdf.read_bands(data, list(index.bands), what)
            except ValueError as exc:  # the chip was cut without one of the bands
                raise NotFoundError(f"{exc}: {index.label} needs {' and '.join(index.bands)}") from None
            if bands[0].size > MAX_CHIP_PIXELS:
                raise InputError(f"{what}: {bands[0].shape[1]} x {bands[0].shape[0]} px is larger than the "
                                 f"{MAX_CHIP_PIXELS} px an index image reads")
            values = indices.compute(index, dict(zip(index.bands, bands, strict=True)))
            return ChipIndex(values, transform, crs or f"EPSG:{utm_epsg(grid)}")

        return self.cache.get(("index", source, index.name), lambda: storage.version(source), load, what)

    def chip_png(self, aoi: str, grid: str, files: ChipFiles, day: date, index: SpectralIndex) -> bytes:
        """PNG of ``index`` over one chip at its own resolution, drawn with the index's fixed ramp."""
        what = f"chip {files.chip_id} of AOI {aoi!r} on {day}"
        return indices.index_png(index, self.chip_index(files, grid, index, what).values)

    def tile(
        self, aoi: str, grid: str, day: date, index: SpectralIndex, x: int, y: int, z: int,
        cancel: threading.Event | None = None,
    ) -> TileResult:
        """The web-mercator tile z/x/y of ``index`` over the grid's chips on ``day`` (see the module doc)."""
        chips = self.catalog.chips_on(aoi, grid, day)
        if not chips:
            raise NotFoundError(f"no chip of AOI {aoi!r} grid {grid!r} on {day}")
        tile = morecantile.Tile(x, y, z)
        west, south, east, north = tiles.TMS.bounds(tile)
        meeting = [c for c in chips if c.bounds is not None and c.bounds[0] < east and c.bounds[2] > west
                   and c.bounds[1] < north and c.bounds[3] > south]
        if not meeting:
            return TileResult(tiles.empty_png(), "empty")
        if len(meeting) > MAX_TILE_CHIPS:
            raise InputError(f"tile {z}/{x}/{y} meets {len(meeting)} chips, more than the {MAX_TILE_CHIPS} "
                             "one index tile reads: zoom in")
        size = tiles.TILE_SIZE
        dst = np.full((size, size), np.nan, np.float32)
        dst_transform = from_bounds(*tiles.TMS.xy_bounds(tile), size, size)
        skipped: list[str] = []
        for c in meeting:
            tiles.check_cancel(cancel)
            try:
                chip = self.chip_index(c, grid, index, f"chip {c.chip_id} on {day}")
            except (NotFoundError, InputError) as exc:
                skipped.append(str(exc))
                continue
            # a tile pixel coarser than the chip's: average the chip's pixels into it
            coarse = abs(dst_transform.a) > 2 * abs(chip.transform.a)
            reproject(chip.values, dst, src_transform=chip.transform, src_crs=chip.crs,
                      dst_transform=dst_transform, dst_crs=tiles.WEB_MERCATOR, src_nodata=np.nan,
                      dst_nodata=np.nan, init_dest_nodata=False,
                      resampling=Resampling.average if coarse else Resampling.nearest)
        note = f"{len(skipped)} chip(s) left out: {skipped[0]}" if skipped else ""
        return TileResult(indices.index_png(index, dst), "chips", note)
