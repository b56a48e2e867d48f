"""CF-1.10 metadata of the chip NetCDF (docs/formats.md): the attributes of each kind of variable and the
global ones, one function each, so every writer of chips (step 1) states them the same way.

Facts come from :mod:`geofm.sentinel2` (band ids, wavelengths, SCL classes). Band values are harmonised
DN, i.e. reflectance x 10000: their ``units`` are ``1e-4`` (one DN is 1e-4 of reflectance, a unit UDUNITS
reads), which makes ``surface_bidirectional_reflectance`` (canonical unit ``1``) the right standard name
without changing a single stored value: a unit-aware reader converts DN to reflectance by unit conversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofm import __version__, sentinel2

CONVENTIONS = "CF-1.10"
REFLECTANCE_STANDARD_NAME = "surface_bidirectional_reflectance"
DN_UNITS = "1e-4"  # DN = reflectance x 10000 (sentinel2.REFLECTANCE_SCALE)
GRID_MAPPING = "spatial_ref"  # rioxarray's name for the CF grid-mapping variable


def band_attrs(name: str) -> dict[str, Any]:
    """A reflectance band (``red``, ``B04``, ...): standard name, long name (band id, wavelength), units."""
    b = sentinel2.band(name)
    return {
        "standard_name": REFLECTANCE_STANDARD_NAME,
        "long_name": (f"Sentinel-2 {b.band_id} ({b.name}, {b.wavelength * 1000:.0f} nm) bottom-of-atmosphere "
                      "reflectance in DN (reflectance x 10000)"),
        "units": DN_UNITS,
    }


def scl_flag_table() -> tuple[np.ndarray, str]:
    """``flag_values`` (uint8, the SCL classes but nodata) and ``flag_meanings`` (their names, in order)."""
    classes = {k: v for k, v in sentinel2.SCL_CLASSES.items() if k != sentinel2.NODATA}
    return np.array(list(classes), np.uint8), " ".join(classes.values())


def scl_attrs() -> dict[str, Any]:
    """The scene classification: a CF flag variable (its ``_FillValue`` is :data:`SCL_FILL`)."""
    values, meanings = scl_flag_table()
    return {"long_name": "Sentinel-2 L2A scene classification (SCL)", "flag_values": values,
            "flag_meanings": meanings}


SCL_FILL = np.uint8(sentinel2.NODATA)  # SCL class 0 (no_data) is the fill value


def projection_coordinate_attrs(axis: str) -> dict[str, Any]:
    """``x`` or ``y``: UTM metres of pixel centres."""
    name = {"X": "x", "Y": "y"}[axis]
    return {"standard_name": f"projection_{name}_coordinate", "long_name": f"{name} of pixel centre (UTM)",
            "units": "m", "axis": axis}


def time_attrs() -> dict[str, Any]:
    """The scalar acquisition time (its ``units``/``calendar`` come from the time encoder)."""
    return {"standard_name": "time", "long_name": "acquisition time (UTC)", "axis": "T"}


def grid_mapping_attrs() -> dict[str, Any]:
    """Added to the grid-mapping variable: chips list it among the data variables' ``coordinates`` (so a
    plain ``xr.open_dataset`` gives each band its CRS), where CF wants a ``long_name`` and ``units``."""
    return {"long_name": "coordinate reference system (CF grid mapping, crs_wkt)", "units": "1"}


def global_attrs(scene_id: str, chip_id: str) -> dict[str, Any]:
    """``Conventions``, ``title``, ``source``, ``history`` (no wall-clock time: same inputs, same bytes)."""
    return {
        "Conventions": CONVENTIONS,
        "title": f"Sentinel-2 L2A chip {chip_id} of scene {scene_id}",
        "source": f"Sentinel-2 L2A scene {scene_id} (band COGs of its STAC item)",
        "history": f"cut on the native UTM grid of the scene, without resampling, by geofm {__version__}",
    }
