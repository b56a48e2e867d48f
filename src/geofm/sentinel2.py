"""Sentinel-2 facts in one place: the band table, scene ids, MGRS tiles, SCL classes and the
processing-baseline 04.00 harmonisation rule."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from geofm.errors import InputError

PROCESSING_LEVEL = "l2a"
NODATA = 0  # DN value meaning "no data" in every L2A band COG and in SCL
REFLECTANCE_SCALE = 10000.0  # DN = reflectance x 10000
BOA_ADD_OFFSET = 1000  # DN added by ESA from processing baseline 04.00 on (reflectance offset -0.1)
TILE_EXTENT_M = 109_800.0  # side of an MGRS tile's product grid, from its upper-left origin


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 L2A band: the Earth Search v1 asset key, the ESA band id, native resolution and
    central wavelength. ``clay_mean``/``clay_std`` are Clay's normalisation statistics (raw DN) where
    Clay was trained on the band."""

    name: str
    band_id: str
    resolution: int
    wavelength: float  # micrometres
    clay_mean: float | None = None
    clay_std: float | None = None


# The 12 L2A reflectance bands in ESA order. Clay stats: ../shared/reference/clay-v1.md section 3.
BANDS: tuple[Band, ...] = (
    Band("coastal", "B01", 60, 0.443),
    Band("blue", "B02", 10, 0.493, 1105.0, 1809.0),
    Band("green", "B03", 10, 0.56, 1355.0, 1757.0),
    Band("red", "B04", 10, 0.665, 1552.0, 1888.0),
    Band("rededge1", "B05", 20, 0.704, 1887.0, 1870.0),
    Band("rededge2", "B06", 20, 0.74, 2422.0, 1732.0),
    Band("rededge3", "B07", 20, 0.783, 2630.0, 1697.0),
    Band("nir", "B08", 10, 0.842, 2743.0, 1742.0),
    Band("nir08", "B8A", 20, 0.865, 2785.0, 1648.0),
    Band("nir09", "B09", 60, 0.945),
    Band("swir16", "B11", 20, 1.61, 2388.0, 1470.0),
    Band("swir22", "B12", 20, 2.19, 1835.0, 1379.0),
)
BANDS_BY_NAME: dict[str, Band] = {b.name: b for b in BANDS}
BANDS_BY_ID: dict[str, Band] = {b.band_id: b for b in BANDS}
L2A_BANDS: tuple[str, ...] = tuple(b.name for b in BANDS)
RGB_BANDS: tuple[str, str, str] = ("red", "green", "blue")

SCL_NAME = "scl"
SCL_BAND_ID = "SCL"
SCL_RESOLUTION = 20
VISUAL_NAME = "visual"

# Scene classification (SCL) classes.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
# Classes counted as cloud in a chip's cloud share: shadows, medium/high cloud, cirrus.
SCL_CLOUD_CLASSES: frozenset[int] = frozenset({3, 8, 9, 10})


def band(name: str) -> Band:
    """Look a band up by asset key (``red``) or ESA id (``B04``); unknown names raise with the list."""
    found = BANDS_BY_NAME.get(name) or BANDS_BY_ID.get(name.upper())
    if found is None:
        raise InputError(f"unknown Sentinel-2 band {name!r}; known: {', '.join(L2A_BANDS)}")
    return found


def band_tag(names: list[str] | tuple[str, ...]) -> str:
    """Readable tag for a band list, used in embedding file names: ``red_green_blue_nir``."""
    return "_".join(band(n).name for n in names)


_SCENE_ID = re.compile(
    r"^(?P<platform>S2[A-D])_(?P<grid>\d{1,2}[C-X][A-Z]{2})_(?P<date>\d{8})_(?P<seq>\d+)_(?P<level>L[12][AC])$"
)


@dataclass(frozen=True)
class SceneId:
    """The parts of an Earth Search v1 scene id such as ``S2A_20LPP_20220606_0_L2A``."""

    scene_id: str
    platform: str
    grid: str  # MGRS tile, e.g. 20LPP
    date: date
    sequence: int
    level: str  # L2A

    @property
    def utm_zone(self) -> int:
        return int(self.grid[:-3])

    @property
    def latitude_band(self) -> str:
        return self.grid[-3]

    @property
    def grid_square(self) -> str:
        return self.grid[-2:]


def parse_scene_id(scene_id: str) -> SceneId:
    """Split a scene id into platform, MGRS grid, date, sequence and level; bad ids raise naming the id."""
    m = _SCENE_ID.match(scene_id)
    if m is None:
        raise InputError(
            f"not a Sentinel-2 scene id: {scene_id!r} (expected like S2A_20LPP_20220606_0_L2A)"
        )
    return SceneId(
        scene_id=scene_id,
        platform=m["platform"],
        grid=m["grid"],
        date=datetime.strptime(m["date"], "%Y%m%d").date(),
        sequence=int(m["seq"]),
        level=m["level"],
    )


def scenes_of_grid(scene_ids: Iterable[str], grid: str) -> list[str]:
    """The ids among ``scene_ids`` of scenes of MGRS ``grid`` (ids that are not scene ids left out)."""
    out = []
    for scene_id in scene_ids:
        try:
            if parse_scene_id(scene_id).grid == grid:
                out.append(scene_id)
        except ValueError:
            continue
    return out


def make_scene_id(platform: str, grid: str, day: date, sequence: int = 0, level: str = "L2A") -> str:
    return f"{platform}_{grid}_{day:%Y%m%d}_{sequence}_{level}"


def utm_epsg(grid: str) -> int:
    """EPSG code of the UTM zone of an MGRS tile (326xx north of the equator, 327xx south)."""
    zone = int(grid[:-3])
    lat_band = grid[-3].upper()
    return (32600 if lat_band >= "N" else 32700) + zone


def processing_baseline(properties: dict[str, Any]) -> tuple[int, int] | None:
    """``s2:processing_baseline`` as (major, minor), or None when the item does not say."""
    raw = properties.get("s2:processing_baseline")
    if raw in (None, ""):
        return None
    try:
        major, minor = str(raw).split(".")
        return int(major), int(minor)
    except ValueError as exc:
        raise InputError(f"unreadable s2:processing_baseline {raw!r}") from exc


def boa_offset_to_subtract(properties: dict[str, Any]) -> int:
    """DN to subtract from reflectance bands so values mean the same before and after baseline 04.00.

    The rule, stated once: ESA adds 1000 DN to L2A reflectances from processing baseline 04.00 on.
    Earth Search v1 marks items whose pixels it has already harmonised with
    ``earthsearch:boa_offset_applied: true``. We trust that flag, not ``raster:bands`` offsets (which
    are published as -0.1 on harmonised items too, see ../shared/data/README.md):

    - baseline < 04.00 (or unknown): 0, there is no offset in the pixels;
    - baseline >= 04.00 and ``earthsearch:boa_offset_applied`` true: 0, already harmonised;
    - baseline >= 04.00 otherwise (flag false or absent): 1000.
    """
    baseline = processing_baseline(properties)
    if baseline is None or baseline < (4, 0):
        return 0
    if properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    return BOA_ADD_OFFSET
