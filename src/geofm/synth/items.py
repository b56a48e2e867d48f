"""Earth Search v1 ``sentinel-2-l2a`` shaped STAC items (and their collection) for synthetic scenes.

They are valid STAC 1.1.0 (pystac's JSON-schema validation, tests/test_stac_validity.py): a ``collection``
field with its ``collection`` link, every declared extension's fields (projection v2.0.0: ``proj:code``),
eo common names from the eo extension's list, ``platform`` as ``sentinel-2a``/``sentinel-2b``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pystac.extensions.eo import Band as EOBand

from geofm import __version__
from geofm.sentinel2 import BANDS, SCL_NAME, SCL_RESOLUTION, VISUAL_NAME, make_scene_id

STAC_VERSION = "1.1.0"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
COLLECTION = "sentinel-2-l2a"
HARMONISED_BASELINE = "05.09"
PRE_2022_BASELINE = "02.14"
BASELINE_04_START = date(2022, 1, 25)
_FWHM = {"coastal": 0.027, "blue": 0.098, "green": 0.045, "red": 0.038, "rededge1": 0.019, "rededge2": 0.018,
         "rededge3": 0.028, "nir": 0.145, "nir08": 0.033, "nir09": 0.026, "swir16": 0.143, "swir22": 0.242}
_TITLES = {"coastal": "Coastal aerosol (band 1)", "blue": "Blue (band 2)", "green": "Green (band 3)",
           "red": "Red (band 4)", "rededge1": "Red edge 1 (band 5)", "rededge2": "Red edge 2 (band 6)",
           "rededge3": "Red edge 3 (band 7)", "nir": "NIR 1 (band 8)", "nir08": "NIR 2 (band 8A)",
           "nir09": "NIR 3 (band 9)", "swir16": "SWIR 1 (band 11)", "swir22": "SWIR 2 (band 12)"}
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]


def platform_name(platform: str) -> str:
    """STAC ``platform`` of a scene-id platform: ``S2A`` -> ``sentinel-2a``."""
    return f"sentinel-2{platform[2:].lower()}"


def common_name(band: str) -> str:
    """The eo common name of a band asset key: ``rededge1`` -> ``rededge`` (the red-edge bands share
    one), else the key itself; checked against the eo extension's list (as pystac knows it)."""
    name = "rededge" if band.startswith("rededge") else band
    if EOBand.band_range(name) is None:
        raise ValueError(f"band {band!r} has no eo common name")
    return name


def platform_on(day: date) -> str:
    """S2A or S2B, following the real 5-day alternation (S2B over 33TWL on 2023-08-10)."""
    return "S2B" if (day - date(2023, 8, 10)).days % 10 < 5 else "S2A"


def acquisition_time(day: date, lon: float) -> datetime:
    """About 10:30 local solar time (the descending node), i.e. ~10:00 UTC in central Europe."""
    hours = 11.0 - lon / 15.0
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hours % 24, seconds=27.024)


def eo_band(name: str) -> dict[str, Any]:
    b = next(b for b in BANDS if b.name == name)
    return {"name": name, "common_name": common_name(name), "description": _TITLES[name],
            "center_wavelength": b.wavelength, "full_width_half_max": _FWHM[name]}


def build_item(
    *, grid: str, day: date, epsg: int, origin: tuple[float, float], extent_m: float,
    hrefs: dict[str, str], shapes: dict[int, tuple[int, int]], geometry: dict[str, Any],
    bbox: list[float], lon: float, cloud_cover: float, scl_shares: dict[str, float],
    collection_href: str, harmonised: bool = True,
) -> dict[str, Any]:
    """One item: ``hrefs`` maps asset keys to absolute hrefs, ``shapes`` resolution -> (rows, cols);
    ``collection_href`` is where its collection (:func:`build_collection`) lies."""
    zone, band_letter, square = int(grid[:-3]), grid[-3], grid[-2:]
    platform = platform_on(day)
    scene_id = make_scene_id(platform, grid, day)
    when = acquisition_time(day, lon)
    if day >= BASELINE_04_START:
        baseline, applied = (HARMONISED_BASELINE, True) if harmonised else ("04.00", False)
        offset = -0.1
    else:
        baseline, applied, offset = PRE_2022_BASELINE, False, 0.0
    x0, y0 = origin

    def grid_info(res: int) -> dict[str, Any]:
        return {"proj:shape": list(shapes[res]), "proj:transform": [res, 0, x0, 0, -res, y0]}

    assets: dict[str, Any] = {}
    for b in BANDS:
        assets[b.name] = {
            "href": hrefs[b.name], "type": COG_TYPE, "title": f"{_TITLES[b.name]} - {b.resolution}m",
            "eo:bands": [eo_band(b.name)], "gsd": b.resolution, **grid_info(b.resolution),
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                              "spatial_resolution": b.resolution, "scale": 0.0001, "offset": offset}],
            "roles": ["data", "reflectance"],
        }
    assets[SCL_NAME] = {
        "href": hrefs[SCL_NAME], "type": COG_TYPE, "title": "Scene classification map (SCL)",
        **grid_info(SCL_RESOLUTION),
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": SCL_RESOLUTION}],
        "roles": ["data", "reflectance"],
    }
    assets[VISUAL_NAME] = {
        "href": hrefs[VISUAL_NAME], "type": COG_TYPE, "title": "True color image",
        "eo:bands": [eo_band("red"), eo_band("green"), eo_band("blue")], **grid_info(10), "roles": ["visual"],
    }
    stamp = when.strftime("%Y%m%dT%H%M%S")
    created = (when + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    props: dict[str, Any] = {
        "created": created, "updated": created,
        "platform": platform_name(platform), "constellation": "sentinel-2", "instruments": ["msi"],
        "eo:cloud_cover": round(cloud_cover, 6), "proj:code": f"EPSG:{epsg}",
        "processing:level": "L2A", "processing:software": {"geofm-synth": __version__},
        "mgrs:utm_zone": zone, "mgrs:latitude_band": band_letter, "mgrs:grid_square": square,
        "grid:code": f"MGRS-{grid}",
        "view:sun_azimuth": 160.0, "view:sun_elevation": 45.0,
        **{f"s2:{k}_percentage": round(v, 6) for k, v in scl_shares.items()},
        "s2:product_type": "S2MSI2A", "s2:processing_baseline": baseline,
        "s2:product_uri": f"{platform}_MSIL2A_{stamp}_N{baseline.replace('.', '')}_R022_T{grid}_{stamp}.SAFE",
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "s2:sequence": "0",
        "earthsearch:boa_offset_applied": applied,
        "geofm:synthetic": True,
        "geofm:extent_m": extent_m,
    }
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": STAC_EXTENSIONS, "id": scene_id,
        "collection": COLLECTION, "properties": props, "geometry": geometry, "bbox": bbox,
        "links": [collection_link(collection_href)], "assets": assets,
    }


def collection_link(href: str) -> dict[str, Any]:
    return {"rel": "collection", "href": href, "type": "application/json",
            "title": "Synthetic Sentinel-2 L2A"}


def build_collection(items: list[dict[str, Any]], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``sentinel-2-l2a`` collection of the items; its extent also covers ``previous`` (the archive's
    collection as written for other tiles or dates)."""
    boxes = [it["bbox"] for it in items]
    times = [it["properties"]["datetime"] for it in items]
    if previous is not None:
        boxes += previous["extent"]["spatial"]["bbox"]
        times += [t for t in previous["extent"]["temporal"]["interval"][0] if t]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes)]
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "id": COLLECTION,
        "title": "Synthetic Sentinel-2 L2A (geofm synth)",
        "description": "Synthetic Sentinel-2 L2A scenes shaped like Earth Search v1 items, made offline by "
                       "`geofm synth` with planted changes and their ground truth.",
        "license": "CC0-1.0",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[min(times), max(times)]]}},
        "links": [],
    }
