"""Step 1: cut each scene into chips on its native UTM grid (NetCDF + PNG) and write its chip meta.

One scene is one unit of work. Only the chips that meet the AOI are made (all with ``whole_tile``),
and only their windows are read from the COGs: :mod:`geofm.chipping` reads them a block of chips at a
time and makes the chips on ``chip_threads`` threads, so memory stays bounded by a few windows.
Its inputs are the item JSON (and the AOI); file contents follow docs/formats.md.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from shapely.geometry.base import BaseGeometry

from geofm import cf, chipping, columns, geoparquet, netcdf, sentinel2, storage, thumbnails
from geofm.aoi import aoi_identity, load_aoi
from geofm.chips import WGS84, Chip, ChipGrid
from geofm.config import DEFAULT_CHIP_COMPRESSION, ChipCompression, PipelineConfig
from geofm.digest import digest_bytes
from geofm.errors import SceneError
from geofm.scene import SceneReader, item_datetime, load_item
from geofm.steps.base import Step, UnitOutput

NETCDF_ENGINE = "h5netcdf"  # the engine that reads the chips back
# ISA-L deflate level (geofm.netcdf) with the shuffle filter: smaller and ~6x faster than zlib level 1
NETCDF_COMPLEVEL = 2
# chip_compression -> (ISA-L level, the least share deflate must save on a byte plane, else it is stored:
# geofm.netcdf.deflated_chunk); "none": no filters, the values as they are (xarray's default encoding)
CHIP_COMPRESSION: dict[ChipCompression, tuple[int, float]] = {
    "deflate": (NETCDF_COMPLEVEL, 0.0), "fast": (NETCDF_COMPLEVEL, 0.4), "none": (0, 0.0)}
log = logging.getLogger(__name__)

def _aoi(cfg: PipelineConfig) -> BaseGeometry | None:
    return None if cfg.whole_tile else load_aoi(cfg.aoi_url)


# ---- quality shares -------------------------------------------------------------------------------
_CLOUDY = sorted(sentinel2.SCL_CLOUD_CLASSES - {sentinel2.NODATA})


def cloud_share(scl: np.ndarray) -> float:
    """Share of valid SCL pixels (class != 0) in the cloud classes; 1.0 when no SCL pixel is valid."""
    counts = np.bincount(scl.ravel(), minlength=256)  # one pass over the pixels: a count per class
    n = int(scl.size - counts[sentinel2.NODATA])
    if n == 0:
        return 1.0
    return float(int(counts[_CLOUDY].sum()) / n)


def missing_share(bands: list[np.ndarray]) -> float:
    """Share of chip pixels where any band is nodata (NaN)."""
    missing = np.isnan(bands[0])
    for b in bands[1:]:
        missing |= np.isnan(b)
    return float(np.count_nonzero(missing) / missing.size)


# ---- the chip NetCDF ------------------------------------------------------------------------------
def chip_netcdf(data: dict[str, np.ndarray], bands: list[str], grid: ChipGrid, chip: Chip,
                attrs: dict[str, Any], when: pd.Timestamp,
                compression: ChipCompression = DEFAULT_CHIP_COMPRESSION
                ) -> bytes:
    """The chip datacube of docs/formats.md (CF-1.10 attributes from :mod:`geofm.cf`) as NetCDF-4 bytes,
    written straight from the arrays: it reads as the file ``netcdf_bytes(chip_dataset(...))`` gives
    (tests/test_chipping.py), without building a Dataset."""
    t, (col, row) = grid.transform, (int(chip.window.col_off), int(chip.window.row_off))
    n = grid.chip_size
    plane = {"grid_mapping": cf.GRID_MAPPING}
    coords = {"coordinates": f"time {cf.GRID_MAPPING}"}
    variables = {b: netcdf.Variable(("y", "x"), data[b].astype(np.float32, copy=False),
                                    {**plane, **cf.band_attrs(b), **coords}) for b in bands}
    scl = data[sentinel2.SCL_NAME].astype(np.uint8, copy=False)
    variables[sentinel2.SCL_NAME] = netcdf.Variable(("y", "x"), scl, {**plane, **cf.scl_attrs(), **coords},
                                                    {"_FillValue": cf.SCL_FILL})
    no_fill = {"_FillValue": None}  # CF: coordinate variables have no fill value
    variables["x"] = netcdf.Variable(("x",), t.c + (col + np.arange(n) + 0.5) * t.a,
                                     cf.projection_coordinate_attrs("X"), no_fill)
    variables["y"] = netcdf.Variable(("y",), t.f + (row + np.arange(n) + 0.5) * t.e,
                                     cf.projection_coordinate_attrs("Y"), no_fill)
    variables["time"] = netcdf.Variable((), np.datetime64(when.tz_convert(None), "ns"), cf.time_attrs())
    geo = " ".join(str(v) for v in (t @ Affine.translation(col, row)).to_gdal())  # as rioxarray writes it
    grid_mapping = {**_grid_mapping(grid.crs), "GeoTransform": geo, **cf.grid_mapping_attrs()}
    variables[cf.GRID_MAPPING] = netcdf.Variable((), np.int64(0), grid_mapping)
    global_attrs = {**cf.global_attrs(str(attrs.get("scene_id")), str(attrs.get("chip_id"))), **attrs}
    complevel, min_saving = CHIP_COMPRESSION[compression]
    return netcdf.arrays_bytes(variables, global_attrs, complevel=complevel, shuffle=True,
                               min_saving=min_saving)


def chip_dataset(data: dict[str, np.ndarray], bands: list[str], grid: ChipGrid, chip: Chip,
                 attrs: dict[str, Any], when: pd.Timestamp) -> xr.Dataset:
    """The chip datacube of docs/formats.md as an xarray Dataset built with rioxarray (one float32
    variable per band, ``scl``, CF grid mapping): the reference :func:`chip_netcdf` is tested against."""
    t, (col, row) = grid.transform, (int(chip.window.col_off), int(chip.window.row_off))
    n = grid.chip_size
    x = t.c + (col + np.arange(n) + 0.5) * t.a
    y = t.f + (row + np.arange(n) + 0.5) * t.e
    variables = {b: (("y", "x"), data[b].astype(np.float32)) for b in bands}
    variables[sentinel2.SCL_NAME] = (("y", "x"), data[sentinel2.SCL_NAME].astype(np.uint8))
    geo = " ".join(str(v) for v in (t @ Affine.translation(col, row)).to_gdal())  # as rioxarray writes it
    spatial_ref = ((), np.int64(0), {**_grid_mapping(grid.crs), "GeoTransform": geo})
    ds = xr.Dataset(variables, coords={"x": x, "y": y, "time": np.datetime64(when.tz_convert(None), "ns"),
                                       cf.GRID_MAPPING: spatial_ref})
    for v in ds.data_vars:
        ds[v].attrs["grid_mapping"] = cf.GRID_MAPPING
        # list spatial_ref among the coordinates, so plain xr.open_dataset(...).rio.crs finds it
        ds[v].encoding["coordinates"] = f"time {cf.GRID_MAPPING}"
    _cf_attrs(ds, bands)
    ds.attrs = {**cf.global_attrs(str(attrs.get("scene_id")), str(attrs.get("chip_id"))), **attrs}
    return ds


@functools.lru_cache(maxsize=8)
def _grid_mapping(crs: str) -> dict[str, Any]:
    """The grid-mapping attributes rioxarray writes for ``crs``, made once per CRS: rioxarray's
    ``write_crs``/``write_transform`` on every chip kept about 0.7 MB per chip alive in the worker (a
    whole-tile scene of 1,764 chips grew each pool worker by 1.5 GB)."""
    return dict(xr.Dataset().rio.write_crs(crs)[cf.GRID_MAPPING].attrs)


def _cf_attrs(ds: xr.Dataset, bands: list[str]) -> None:
    """The CF-1.10 attributes and fill values of the chip's variables (geofm.cf)."""
    for b in bands:
        ds[b].attrs.update(cf.band_attrs(b))
    ds[sentinel2.SCL_NAME].attrs.update(cf.scl_attrs())
    ds[sentinel2.SCL_NAME].encoding["_FillValue"] = cf.SCL_FILL
    for axis in ("X", "Y"):
        name = axis.lower()
        ds[name].attrs.update(cf.projection_coordinate_attrs(axis))
        ds[name].encoding["_FillValue"] = None  # CF: coordinate variables have no fill value
    ds["time"].attrs.update(cf.time_attrs())
    ds[cf.GRID_MAPPING].attrs.update(cf.grid_mapping_attrs())


def netcdf_bytes(ds: xr.Dataset, compression: ChipCompression = DEFAULT_CHIP_COMPRESSION) -> bytes:
    """The chip as NetCDF-4 bytes, written with h5py + ISA-L (:mod:`geofm.netcdf`, ~5x faster than xarray's
    ``to_netcdf``); read back with ``xr.open_dataset(..., engine="h5netcdf")`` it is the same dataset."""
    complevel, min_saving = CHIP_COMPRESSION[compression]
    return netcdf.dataset_bytes(ds, complevel=complevel, shuffle=True, min_saving=min_saving)


# ---- meta ---------------------------------------------------------------------------------------
def _meta_frame(rows: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    if not rows:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns.META if c != "geometry"})
        return gpd.GeoDataFrame(empty, geometry=gpd.GeoSeries([], crs=WGS84), crs=WGS84)[list(columns.META)]
    return gpd.GeoDataFrame(pd.DataFrame(rows), geometry="geometry", crs=WGS84)[list(columns.META)]


def write_meta(url: str, rows: list[dict[str, Any]]) -> None:
    geoparquet.write(url, _meta_frame(rows))


read_meta = geoparquet.read


# ---- one scene ----------------------------------------------------------------------------------
def process_unit(cfg: PipelineConfig, scene_id: str) -> UnitOutput:
    """Chip one scene: its chip files, then its meta (the outputs the unit's marker records)."""
    layout = cfg.layout
    grid_code = sentinel2.parse_scene_id(scene_id).grid
    item_url = layout.scene_metadata(scene_id)
    item = load_item(item_url, scene_id)
    when = item_datetime(item)
    aoi = _aoi(cfg)
    bands = list(cfg.s2_bands)
    read_bands = bands + [b for b in sentinel2.RGB_BANDS if b not in bands]
    threads = chipping.chip_threads(cfg.chip_threads, 1)
    with SceneReader(item, read_bands, scene_id, item_url, cfg.remote_reads, threads) as reader:
        grid = reader.grid(cfg.chip_size)
        chips = list(grid.all_chips()) if aoi is None else grid.chips_meeting(aoi)
        rows = chipping.chip_scene(reader, grid, chips, functools.partial(
            _write_chip, cfg, scene_id, grid_code, grid, bands=bands, when=when, offset=reader.offset),
            threads)
    write_meta(layout.meta(scene_id), rows)
    files = [layout.resolve(r[c]) for r in rows for c in columns.FILE_COLUMNS]
    return UnitOutput([*files, layout.meta(scene_id)],
                      {"chips": len(rows), "grid": f"{grid.n_cols}x{grid.n_rows}", "crs": grid.crs})


def planned_chips(cfg: PipelineConfig, scene_id: str) -> int:
    """How many chips the scene would give (AOI chips, or the whole tile): reads only COG headers."""
    item_url = cfg.layout.scene_metadata(scene_id)
    item = load_item(item_url, scene_id)
    aoi = _aoi(cfg)
    with SceneReader(item, [*sentinel2.RGB_BANDS], scene_id, item_url) as reader:
        grid = reader.grid(cfg.chip_size)
        return len(list(grid.all_chips())) if aoi is None else len(grid.chips_meeting(aoi))


def _write_chip(cfg: PipelineConfig, scene_id: str, grid_code: str, grid: ChipGrid, chip: Chip,
                data: dict[str, np.ndarray], *, bands: list[str], when: pd.Timestamp, offset: int
                ) -> dict[str, Any]:
    layout, size = cfg.layout, cfg.chip_size
    lon, lat = grid.centroid_wgs84(chip)
    attrs: dict[str, Any] = {
        "scene_id": scene_id, "mgrs_grid": grid_code, "chip_id": chip.chip_id, "x_dim": chip.x_dim,
        "y_dim": chip.y_dim, "chip_size": size, "gsd": grid.gsd, "crs": grid.crs, "bands": bands,
        "wavelengths": [sentinel2.band(b).wavelength for b in bands], "datetime": when.isoformat(),
        "centroid_lat": lat, "centroid_lon": lon, "boa_offset_subtracted": offset,
    }
    nc_url = layout.raw_chip(scene_id, size, chip.x_dim, chip.y_dim)
    png_url = layout.rgb_thumbnail(scene_id, size, chip.x_dim, chip.y_dim)
    storage.write_bytes(nc_url, chip_netcdf(data, bands, grid, chip, attrs, when, cfg.chip_compression))
    storage.write_bytes(png_url, thumbnails.rgb_png(*(data[b] for b in sentinel2.RGB_BANDS)))
    minx, miny, maxx, maxy = chip.bounds
    return {
        "x_dim": chip.x_dim, "y_dim": chip.y_dim, "chip_id": chip.chip_id, "date": when.normalize(),
        "datetime": when, "aoi_name": cfg.aoi_name, "origin_tile": scene_id, "mgrs_grid": grid_code,
        "chip_size": size, "gsd": grid.gsd, "file_name": nc_url.rsplit("/", 1)[-1],
        "geometry": grid.polygon_wgs84(chip), "crs": grid.crs, "utm_minx": minx, "utm_miny": miny,
        "utm_maxx": maxx, "utm_maxy": maxy, "centroid_lat": lat, "centroid_lon": lon,
        "cloud_cover_perc": cloud_share(data[sentinel2.SCL_NAME]),
        "missing_data_perc": missing_share([data[b] for b in bands]),
        "s3_location_netcdf": layout.stored(nc_url), "s3_location_png_thumbnail": layout.stored(png_url),
    }


class Preprocess(Step):
    """Step 1 over the scenes of the input layout (see the module doc)."""

    name: ClassVar[str] = "preprocess"
    # chip_compression is not among them: it changes how chips are stored, never their values
    params: ClassVar[tuple[str, ...]] = ("processing_level", "s2_bands", "chip_size", "whole_tile")

    def check(self, cfg: PipelineConfig) -> None:
        if not cfg.whole_tile:
            load_aoi(cfg.aoi_url)  # a bad or missing AOI is an error before any work

    def units(self, cfg: PipelineConfig) -> list[str]:
        """Scene ids of the items in the input layout (``<scene_id>_metadata.json``), sorted."""
        return cfg.layout.scene_ids()

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        url = cfg.layout.scene_metadata(unit)
        try:
            item = digest_bytes(storage.read_bytes(url))
        except FileNotFoundError as exc:
            raise SceneError(f"scene {unit}: item JSON not found: {url}") from exc
        return {"item": item, "aoi": None if cfg.whole_tile else aoi_identity(cfg.aoi_url)}

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        return process_unit(cfg, unit)

    def sharing(self, cfg: PipelineConfig, units_at_once: int) -> PipelineConfig:
        """Scenes running at once share the cores: each gets its part of them as chip threads."""
        threads = chipping.chip_threads(cfg.chip_threads, units_at_once)
        return cfg.model_copy(update={"chip_threads": threads})
