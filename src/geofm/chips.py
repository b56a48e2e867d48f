"""The chip grid of a scene: square windows of the finest band grid, anchored at its origin.

``x_dim`` is the column index and ``y_dim`` the row index counted from the top, so ``chip_id``
(``<x_dim>_<y_dim>``) names the same ground on every date of a tile. Partial edge chips are not part
of the grid. Chips are selected by the AOI in the scene's own UTM CRS (no pixel is reprojected).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from geofm.errors import InputError

WGS84 = "EPSG:4326"
# AOI edges are densified to this step (degrees) before projection, so long edges follow UTM curvature.
_AOI_DENSIFY_DEG = 0.005


def chip_id(x_dim: int, y_dim: int) -> str:
    return f"{x_dim}_{y_dim}"


@dataclass(frozen=True)
class Chip:
    """One chip: its indices, pixel window on the grid and UTM bounds (minx, miny, maxx, maxy)."""

    x_dim: int
    y_dim: int
    window: Window
    bounds: tuple[float, float, float, float]

    @property
    def chip_id(self) -> str:
        return chip_id(self.x_dim, self.y_dim)


@dataclass(frozen=True)
class ChipGrid:
    """Chips of ``chip_size`` px over a north-up raster grid of ``width`` x ``height`` px."""

    transform: Affine
    width: int
    height: int
    crs: str  # e.g. "EPSG:32633"
    chip_size: int

    def __post_init__(self) -> None:
        t = self.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise InputError(f"chip grid needs a north-up grid without rotation, got {tuple(t)[:6]}")
        if self.chip_size <= 0:
            raise InputError(f"chip_size must be positive, got {self.chip_size}")

    @property
    def gsd(self) -> float:
        return float(self.transform.a)

    @property
    def n_cols(self) -> int:
        return self.width // self.chip_size

    @property
    def n_rows(self) -> int:
        return self.height // self.chip_size

    def chip(self, x_dim: int, y_dim: int) -> Chip:
        if not (0 <= x_dim < self.n_cols and 0 <= y_dim < self.n_rows):
            raise InputError(f"chip {chip_id(x_dim, y_dim)} is outside the {self.n_cols}x{self.n_rows} grid")
        s = self.chip_size
        col, row = x_dim * s, y_dim * s
        t = self.transform
        minx, maxy = t.c + col * t.a, t.f + row * t.e
        maxx, miny = minx + s * t.a, maxy + s * t.e
        return Chip(x_dim, y_dim, Window(col, row, s, s), (minx, miny, maxx, maxy))

    def all_chips(self) -> Iterator[Chip]:
        """Every whole chip, row by row from the top."""
        for y in range(self.n_rows):
            for x in range(self.n_cols):
                yield self.chip(x, y)

    def chips_meeting(self, aoi_wgs84: BaseGeometry) -> list[Chip]:
        """Chips whose area meets the AOI (given in WGS84); chips that only touch its edge are left out."""
        aoi = self.to_utm(aoi_wgs84)
        if aoi.is_empty:
            return []
        t, s = self.transform, self.chip_size
        minx, miny, maxx, maxy = aoi.bounds
        x_lo = max(0, int((minx - t.c) // (s * t.a)))
        x_hi = min(self.n_cols - 1, int((maxx - t.c) // (s * t.a)))
        y_lo = max(0, int((maxy - t.f) // (s * t.e)))
        y_hi = min(self.n_rows - 1, int((miny - t.f) // (s * t.e)))
        shapely.prepare(aoi)
        out = []
        for y in range(y_lo, y_hi + 1):
            for x in range(x_lo, x_hi + 1):
                c = self.chip(x, y)
                cell = box(*c.bounds)
                if aoi.intersects(cell) and not aoi.touches(cell):
                    out.append(c)
        return out

    @cached_property
    def _to_wgs84(self) -> Transformer:
        return Transformer.from_crs(CRS.from_user_input(self.crs), WGS84, always_xy=True)

    @cached_property
    def _to_utm(self) -> Transformer:
        return Transformer.from_crs(WGS84, CRS.from_user_input(self.crs), always_xy=True)

    def to_utm(self, geom_wgs84: BaseGeometry) -> BaseGeometry:
        dense = shapely.segmentize(geom_wgs84, _AOI_DENSIFY_DEG)
        return shapely.transform(dense, lambda xy: _stack(self._to_utm.transform(xy[:, 0], xy[:, 1])))

    def polygon_wgs84(self, chip: Chip) -> Polygon:
        """The chip's UTM box as a WGS84 polygon through its four projected corners."""
        minx, miny, maxx, maxy = chip.bounds
        lon, lat = self._to_wgs84.transform([minx, maxx, maxx, minx], [miny, miny, maxy, maxy])
        return Polygon(zip(lon, lat, strict=True))

    def centroid_wgs84(self, chip: Chip) -> tuple[float, float]:
        """(lon, lat) of the chip's UTM centre."""
        minx, miny, maxx, maxy = chip.bounds
        lon, lat = self._to_wgs84.transform((minx + maxx) / 2, (miny + maxy) / 2)
        return float(lon), float(lat)


def _stack(xy: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return np.column_stack(xy)
