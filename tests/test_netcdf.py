"""The h5py chip writer (geofm.netcdf, step 1's ``netcdf_bytes``) against xarray's own ``to_netcdf``.

A chip is cut from the real 33TWL COG crops (4 bands + SCL) and a 12-band chip with planted nodata is built
by ``chip_dataset``; both are written by the new writer and by xarray (the previous step-1 writer, kept
here as the reference) and read back with ``xr.open_dataset(engine="h5netcdf")``: values bit for bit, dtypes,
coordinates, attributes, encodings, decoded time and the CRS/transform rioxarray sees must be the same.
"""

from __future__ import annotations

import io
import json
import typing
import zlib
from pathlib import Path

import h5netcdf
import h5py
import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr
from affine import Affine

from geofm import netcdf, sentinel2
from geofm.chips import ChipGrid
from geofm.config import ChipCompression
from geofm.scene import SceneReader, item_datetime
from geofm.steps import preprocess

SCENE = "S2B_33TWL_20230810_0_L2A"
# all but the chunk shape and deflate level: ours stores each variable as one chunk (h5netcdf: h5py's small
# chunk guess), deflated by ISA-L at its level NETCDF_COMPLEVEL (xarray: zlib level 1)
ENCODING_KEYS = ("dtype", "zlib", "shuffle", "contiguous", "_FillValue", "units", "calendar", "coordinates")


def xarray_bytes(ds: xr.Dataset) -> bytes:
    """The previous step-1 writer: xarray + h5netcdf, zlib level 1 + shuffle on every data variable (and the
    variable's own encoding, e.g. SCL's ``_FillValue``, which an ``encoding`` argument would replace)."""
    own = {v: {k: e for k, e in ds[v].encoding.items() if k == "_FillValue"} for v in ds.data_vars}
    encoding = {v: {**own[v], "zlib": True, "complevel": 1, "shuffle": True} for v in ds.data_vars}
    return bytes(ds.to_netcdf(engine="h5netcdf", encoding=encoding))


def chip_attrs(scene_id: str, grid: ChipGrid, x_dim: int, y_dim: int, bands: list[str], when: pd.Timestamp
               ) -> dict:
    return {"scene_id": scene_id, "mgrs_grid": "33TWL", "chip_id": f"{x_dim}_{y_dim}", "x_dim": x_dim,
            "y_dim": y_dim, "chip_size": grid.chip_size, "gsd": grid.gsd, "crs": grid.crs, "bands": bands,
            "wavelengths": [sentinel2.band(b).wavelength for b in bands], "datetime": when.isoformat(),
            "centroid_lat": 41.25, "centroid_lon": 15.5, "boa_offset_subtracted": 1000}


@pytest.fixture(scope="module")
def real_chip(shared_data: Path) -> xr.Dataset:
    """Chip 1_2 (64 px) of a real scene, as step 1 builds it, with a planted nodata corner."""
    folder = shared_data / "s2l2a-33TWL-cogcrop" / SCENE
    item_url = str(folder / f"{SCENE}.json")
    item = json.loads(Path(item_url).read_text())
    bands = ["blue", "green", "red", "nir"]
    with SceneReader(item, bands, SCENE, item_url) as reader:
        grid = reader.grid(64)
        chip = grid.chip(1, 2)
        data = reader.read_chip(grid, chip)
    data["red"][:5, :7] = np.nan
    when = item_datetime(item)
    return preprocess.chip_dataset(data, bands, grid, chip, chip_attrs(SCENE, grid, 1, 2, bands, when), when)


def synthetic_chip(bands: list[str], size: int = 32) -> xr.Dataset:
    """A chip of every listed band (random DN, NaN stripes) and SCL (0 = nodata corner)."""
    rng = np.random.default_rng(7)
    grid = ChipGrid(Affine(10, 0, 600000, 0, -10, 4500000), 4 * size, 4 * size, "EPSG:32633", size)
    chip = grid.chip(2, 1)
    data = {b: rng.integers(0, 12000, (size, size)).astype(np.float32) for b in bands}
    for i, b in enumerate(bands):
        data[b][i % size, :] = np.nan
    data["scl"] = rng.integers(1, 12, (size, size)).astype(np.uint8)
    data["scl"][:3, :3] = 0
    when = pd.Timestamp("2023-07-14T09:50:31.024Z")
    return preprocess.chip_dataset(data, bands, grid, chip, chip_attrs("S2A_33TWL_20230714_0_L2A", grid, 2, 1,
                                                                       bands, when), when)


def read(blob: bytes) -> xr.Dataset:
    return xr.open_dataset(io.BytesIO(blob), engine="h5netcdf").load()


def assert_same_file_content(ds: xr.Dataset, tmp_path: Path) -> xr.Dataset:
    """Write ``ds`` both ways and assert the read-back datasets agree in everything step 2+ relies on."""
    ours, theirs = read(preprocess.netcdf_bytes(ds)), read(xarray_bytes(ds))
    xr.testing.assert_identical(ours, theirs)  # values (NaN where NaN), dims, coords, all attributes
    assert list(ours.variables) == list(theirs.variables)
    assert list(ours.coords) == list(theirs.coords) == ["x", "y", "time", "spatial_ref"]
    for name in ours.variables:
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype, name
        assert a.values.tobytes() == b.values.tobytes(), f"{name}: not bit-identical"
        for key in ENCODING_KEYS:
            assert str(a.encoding.get(key)) == str(b.encoding.get(key)), f"{name}: encoding {key}"
    raw = xr.open_dataset(io.BytesIO(preprocess.netcdf_bytes(ds)), engine="h5netcdf", mask_and_scale=False)
    for name, var in ds.data_vars.items():  # and both equal what was written (undecoded: SCL's 0 stays 0)
        assert raw[name].values.tobytes() == var.values.tobytes(), name
        assert ours[name].attrs["grid_mapping"] == "spatial_ref"
        assert ours[name].attrs.keys() >= {"long_name"} and "units" in ours[name].attrs or name == "scl"
        assert ours[name].encoding["chunksizes"] == var.shape  # one chunk per variable
        assert ours[name].encoding["complevel"] == preprocess.NETCDF_COMPLEVEL
    assert ours.attrs.keys() == theirs.attrs.keys() == ds.attrs.keys()
    assert ours.time.values == ds.time.values and ours.time.dtype == np.dtype("datetime64[ns]")
    assert ours.rio.crs == theirs.rio.crs == ds.rio.crs
    assert ours.rio.transform() == theirs.rio.transform() == ds.rio.transform()
    path = tmp_path / "ours.nc"
    path.write_bytes(preprocess.netcdf_bytes(ds))
    for band in ds.attrs["bands"]:  # GDAL's view through rioxarray, per variable
        with rioxarray.open_rasterio(path, variable=band, masked=True) as gdal_ds:
            da = gdal_ds[band]
            assert da.rio.crs.to_epsg() == int(ds.attrs["crs"].split(":")[1])
            assert da.rio.transform() == ds.rio.transform()
            np.testing.assert_array_equal(da.values[0], ds[band].values)
    return ours


def test_real_chip_reads_back_the_same_as_xarrays_file(real_chip: xr.Dataset, tmp_path: Path) -> None:
    ours = assert_same_file_content(real_chip, tmp_path)
    assert len(preprocess.netcdf_bytes(real_chip)) < len(xarray_bytes(real_chip))  # and the file is smaller
    assert np.isnan(ours["red"].values[:5, :7]).all() and not np.isnan(ours["red"].values[5:, 7:]).any()
    # SCL class 0 is its _FillValue: xarray masks it (float32, NaN) unless asked for the raw uint8 classes
    assert ours["scl"].dtype == np.float32 and ours["scl"].encoding["_FillValue"] == 0
    raw = xr.open_dataset(io.BytesIO(preprocess.netcdf_bytes(real_chip)), engine="h5netcdf", mask_and_scale=False)
    assert raw["scl"].dtype == np.uint8
    np.testing.assert_array_equal(raw["scl"].values, real_chip["scl"].values)
    np.testing.assert_array_equal(np.isnan(ours["scl"].values), real_chip["scl"].values == 0)
    assert ours.attrs["bands"] == ["blue", "green", "red", "nir"]
    np.testing.assert_array_equal(ours.attrs["wavelengths"], [0.493, 0.56, 0.665, 0.842])
    assert ours.attrs["crs"] == "EPSG:32633" and ours.rio.crs.to_epsg() == 32633
    assert ours.time.values == np.datetime64(item_time(real_chip), "ns")


def item_time(ds: xr.Dataset) -> pd.Timestamp:
    return pd.Timestamp(ds.attrs["datetime"]).tz_convert(None)


def test_twelve_band_chip_reads_back_the_same(tmp_path: Path) -> None:
    bands = [b.name for b in sentinel2.BANDS]
    ds = synthetic_chip(bands)
    ours = assert_same_file_content(ds, tmp_path)
    assert len(preprocess.netcdf_bytes(ds)) < len(xarray_bytes(ds))  # data, not attributes, make the size
    assert ours.attrs["bands"] == bands and len(ours.attrs["wavelengths"]) == 12
    assert ours.attrs["x_dim"] == 2 and ours.attrs["chip_size"] == 32 and ours.attrs["gsd"] == 10.0
    assert np.isnan(ours["swir22"].values[11]).all() and np.isnan(ours["scl"].values[0, 0])  # SCL 0: fill
    assert ours.x.values[0] == 600000 + 2 * 320 + 5 and ours.y.values[0] == 4500000 - 320 - 5


def test_one_element_list_reads_back_as_a_scalar_as_before(tmp_path: Path) -> None:
    ours = assert_same_file_content(synthetic_chip(["red"]), tmp_path)
    assert ours.attrs["bands"] == "red" and ours.attrs["wavelengths"] == pytest.approx(0.665)


def test_file_is_valid_netcdf4_with_compression(real_chip: xr.Dataset) -> None:
    blob = preprocess.netcdf_bytes(real_chip)
    assert blob[:8] == b"\x89HDF\r\n\x1a\n"
    # h5netcdf in strict mode (no phony dimensions): every variable's dimensions are netCDF dimensions
    with h5netcdf.File(io.BytesIO(blob), "r", phony_dims=None) as f:
        assert dict(f.dimensions).keys() == {"y", "x"} and f.dimensions["x"].size == 64
        assert f.variables["blue"].dimensions == ("y", "x") and f.variables["time"].dimensions == ()
    with h5py.File(io.BytesIO(blob), "r") as f:
        assert f.attrs["_NCProperties"].startswith(b"version=2")
        assert f["x"].attrs["CLASS"] == b"DIMENSION_SCALE" and int(f["y"].attrs["_Netcdf4Dimid"]) == 0
        for name in ["blue", "scl"]:
            assert f[name].compression == "gzip" and f[name].shuffle
            assert f[name].compression_opts == preprocess.NETCDF_COMPLEVEL
    for bad in (blob[:100], blob[: len(blob) // 2]):  # the test can fail: a broken file does not open
        with pytest.raises(OSError, match="truncated file"):
            read(bad)


def test_complevel_0_stores_uncompressed_with_the_same_values(real_chip: xr.Dataset) -> None:
    blob = netcdf.dataset_bytes(real_chip, complevel=0)
    with h5py.File(io.BytesIO(blob), "r") as f:
        assert f["blue"].compression is None and not f["blue"].shuffle
    xr.testing.assert_identical(read(blob), read(preprocess.netcdf_bytes(real_chip)))
    assert len(blob) > len(preprocess.netcdf_bytes(real_chip))


# ---- chip compression: byte planes deflated or stored ------------------------------------------------
def _shuffled_bytes(values: np.ndarray) -> bytes:
    """HDF5's shuffle of ``values``, written plainly: byte k of every value, k = 0, 1, ..."""
    return np.ascontiguousarray(values).view(np.uint8).reshape(-1, values.dtype.itemsize).T.tobytes()


@pytest.mark.parametrize("min_saving", [0.0, 0.2, 0.4, 0.99])
@pytest.mark.parametrize(("shape", "dtype", "shuffle"), [
    ((256, 256), np.float32, True), ((256, 256), np.float32, False), ((300, 300), np.uint16, True),
    ((256, 256), np.uint8, True), ((100, 100), np.float64, True), ((8, 8), np.float32, True)])
def test_deflated_chunk_is_one_standard_zlib_stream(shape: tuple[int, int], dtype: type, shuffle: bool,
                                                      min_saving: float) -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(3000, 300, shape).astype(dtype)
    if values.dtype.kind == "f":
        values[:5, :5] = np.nan
    window = np.zeros((shape[0] + 10, shape[1] + 20), dtype)
    window[3:3 + shape[0], 7:7 + shape[1]] = values  # a strided view, as step 1 hands its windows' chips
    chunk = netcdf.deflated_chunk(window[3:3 + shape[0], 7:7 + shape[1]], 2, shuffle, min_saving)
    expected = _shuffled_bytes(values) if shuffle else values.tobytes()
    assert zlib.decompress(chunk) == expected  # plain zlib (what every HDF5 reader uses) decodes it


def test_chip_compression_keeps_every_value_and_trades_size_for_speed(tmp_path: Path) -> None:
    """256 px chips: whole reflectance (10 m), quarters (20 m) and NaN stripes; every setting gives files
    every reader decodes to the same values, 'fast' stores the near-noise byte planes 'deflate' deflates."""
    ds = synthetic_chip(["blue", "red", "rededge1", "nir"], size=256)
    ds["rededge1"].values[:] += (np.arange(256) % 4 / 4).astype(np.float32)  # bilinear 20 m values
    blobs = {c: preprocess.netcdf_bytes(ds, c) for c in preprocess.CHIP_COMPRESSION}
    reference = read(blobs["deflate"])
    for name, blob in blobs.items():
        xr.testing.assert_identical(read(blob), reference)
        path = tmp_path / f"{name}.nc"
        path.write_bytes(blob)
        with xr.open_dataset(path, engine="netcdf4") as through_netcdf_c:  # netCDF-C's own reader
            xr.testing.assert_identical(through_netcdf_c.load(), reference)
        with rioxarray.open_rasterio(path, variable="red", masked=True) as gdal_ds:  # GDAL's
            np.testing.assert_array_equal(gdal_ds["red"].values[0], ds["red"].values)
        for band in ("blue", "rededge1"):
            np.testing.assert_array_equal(read(blob)[band].values, ds[band].values)
        np.testing.assert_array_equal(netcdf.read_bands(blob, ["red", "nir"], name),
                                      np.stack([ds["red"].values, ds["nir"].values]))
    assert len(blobs["deflate"]) < len(blobs["fast"]) < len(blobs["none"])
    assert set(typing.get_args(ChipCompression)) == set(preprocess.CHIP_COMPRESSION)  # every setting named
    # the random DN's low bytes (shuffle plane 1 of float32) are stored as they are by 'fast', not by 'deflate'
    plane = _shuffled_bytes(ds["red"].values)[65536:65536 + 4096]
    with h5py.File(io.BytesIO(blobs["fast"]), "r") as fast, h5py.File(io.BytesIO(blobs["deflate"]), "r") as small:
        assert plane in fast["red"].id.read_direct_chunk((0, 0))[1]
        assert plane not in small["red"].id.read_direct_chunk((0, 0))[1]
        assert fast["red"].compression == "gzip" and fast["red"].shuffle  # the same declared filters
    with h5py.File(io.BytesIO(blobs["none"]), "r") as none:
        assert none["red"].compression is None and none["red"].chunks is None


# ---- bad input ------------------------------------------------------------------------------------
def test_dimension_without_coordinate_is_a_clear_error() -> None:
    ds = xr.Dataset({"a": (("y", "x"), np.zeros((2, 3), np.float32))}, coords={"x": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="dimension 'y' has no 1-D coordinate"):
        netcdf.dataset_bytes(ds)


@pytest.mark.parametrize("values", [np.array(["a", "b"]), np.array([True, False])])
def test_string_or_bool_variable_is_a_clear_error(values: np.ndarray) -> None:
    ds = xr.Dataset({"name": (("x",), values)}, coords={"x": [0.0, 1.0]})
    with pytest.raises(ValueError, match="variable 'name' has dtype"):
        netcdf.dataset_bytes(ds)


@pytest.mark.parametrize("value", [{"a": 1}, None, True, [[1, 2], [3, 4]], [b"x"]])
def test_unsupported_attribute_is_a_clear_error(value: object) -> None:
    ds = xr.Dataset({"a": (("x",), np.zeros(2, np.float32))}, coords={"x": [0.0, 1.0]}, attrs={"odd": value})
    with pytest.raises(ValueError, match="global attribute 'odd'"):
        netcdf.dataset_bytes(ds)


def test_bad_compression_level_is_a_clear_error() -> None:
    ds = xr.Dataset({"a": (("x",), np.zeros(2, np.float32))}, coords={"x": [0.0, 1.0]})
    with pytest.raises(ValueError, match="complevel must be 0-3"):
        netcdf.dataset_bytes(ds, complevel=4)


# ---- the fast band reader (step 2) ------------------------------------------------------------------
def test_read_bands_equals_xarray_and_names_missing_bands(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    red = (rng.random((16, 16)) * 3000).astype(np.float32)
    red[2, 3] = np.nan
    nir = (rng.random((16, 16)) * 4000).astype(np.float32)
    coords = {"x": np.arange(16) * 10.0 + 5, "y": 5000.0 - np.arange(16) * 10.0}
    ds = xr.Dataset({"red": (("y", "x"), red), "nir": (("y", "x"), nir)}, coords=coords)
    ours = netcdf.read_bands(netcdf.dataset_bytes(ds), ["nir", "red"], "chip.nc")
    assert ours.dtype == np.float32 and ours.shape == (2, 16, 16)
    np.testing.assert_array_equal(ours, np.stack([nir, red]))  # NaN where NaN (assert_array_equal: equal_nan)
    # a packed variable (scale/offset, integer fill) written by xarray decodes like xarray does it
    path = tmp_path / "packed.nc"
    ds.to_netcdf(path, engine="h5netcdf", encoding={
        "red": {"dtype": "int16", "scale_factor": 0.5, "add_offset": 0.0, "_FillValue": -1}})
    packed = netcdf.read_bands(path.read_bytes(), ["red"], str(path))
    with xr.open_dataset(path, engine="h5netcdf") as back:
        np.testing.assert_array_equal(packed[0], back["red"].values.astype(np.float32))
    with pytest.raises(ValueError, match=r"chip.nc: chip lacks bands \['swir16'\]"):
        netcdf.read_bands(netcdf.dataset_bytes(ds), ["red", "swir16"], "chip.nc")
