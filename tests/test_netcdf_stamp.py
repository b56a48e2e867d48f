"""The stamped chip writer (geofm.netcdf: chips stamped from a checked template of their structure) gives
files that read back exactly as HDF5's own file of the same chip (``arrays_bytes(..., stamp=False)``),
through h5py, xarray (h5netcdf and netCDF4 engines) and ncdump, for chips of several UTM zones, dates,
sizes and chip ids, with nodata; and a structure whose template cannot be checked is written by HDF5."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine

from geofm import hdf5_layout, netcdf, sentinel2
from geofm.chips import ChipGrid
from geofm.steps import preprocess
from helpers import hdf5_content

ALL_BANDS = [b.name for b in sentinel2.BANDS]

# (crs, UTM origin, chip size, chip (x, y), date): zones north and south, chip ids of 3 to 5 characters
CASES = [
    ("EPSG:32633", (499980, 5100000), 64, (2, 1), "2023-07-14T09:50:31.024Z"),
    ("EPSG:32633", (499980, 5100000), 64, (3, 0), "2023-07-14T09:50:31.024Z"),
    ("EPSG:32633", (499980, 5100000), 64, (12, 7), "2023-07-19T09:50:29Z"),
    ("EPSG:32617", (300000, 4000020), 64, (11, 13), "2021-01-02T16:04:00Z"),
    ("EPSG:32755", (600000, 6100000), 32, (5, 40), "2024-12-31T23:59:59.5Z"),
    ("EPSG:32755", (600000, 6100000), 100, (0, 0), "2024-12-31T23:59:59.5Z"),
]


def chip_files(crs: str, origin: tuple[int, int], size: int, xy: tuple[int, int], when: str, seed: int
               ) -> tuple[bytes, bytes]:
    """The chip NetCDF stamped and written by HDF5, from the same arrays (nodata in places)."""
    rng = np.random.default_rng(seed)
    grid = ChipGrid(Affine(10, 0, origin[0], 0, -10, origin[1]), 64 * size, 64 * size, crs, size)
    chip = grid.chip(*xy)
    data = {b: rng.integers(0, 12000, (size, size)).astype(np.float32) for b in ALL_BANDS}
    data["red"][: size // 3] = np.nan  # a nodata edge
    data["nir09"] = data["nir09"] + np.float32(0.25)  # interpolated bands are not whole DN
    data["swir22"][rng.random((size, size)) < 0.1] = np.nan
    data["scl"] = rng.integers(0, 12, (size, size)).astype(np.uint8)
    data["scl"][: size // 3] = 0
    ts = pd.Timestamp(when)
    lon, lat = grid.centroid_wgs84(chip)
    attrs: dict[str, Any] = {
        "scene_id": f"S2B_{crs[-2:]}XYZ_{ts:%Y%m%d}_0_L2A", "chip_id": chip.chip_id, "x_dim": xy[0],
        "y_dim": xy[1], "chip_size": size, "gsd": 10.0, "crs": crs, "bands": ALL_BANDS,
        "wavelengths": [sentinel2.band(b).wavelength for b in ALL_BANDS], "datetime": ts.isoformat(),
        "centroid_lat": lat, "centroid_lon": lon, "boa_offset_subtracted": 1000 * (seed % 2),
    }
    stamped = preprocess.chip_netcdf(data, ALL_BANDS, grid, chip, attrs, ts)
    real = netcdf.arrays_bytes
    try:
        netcdf.arrays_bytes = lambda *a, **k: real(*a, **{**k, "stamp": False})  # HDF5 writes it all
        written = preprocess.chip_netcdf(data, ALL_BANDS, grid, chip, attrs, ts)
    finally:
        netcdf.arrays_bytes = real
    return stamped, written


@pytest.mark.parametrize("case", range(len(CASES)))
def test_stamped_chip_reads_back_as_the_hdf5_written_one(case: int, tmp_path: Path) -> None:
    chip_files(*CASES[case], seed=case + 101)  # the template, if made here, is made from other values
    stamped, written = chip_files(*CASES[case], seed=case)
    assert stamped != written  # really stamped: HDF5 interleaves chunks and metadata, a stamp appends chunks
    assert hdf5_content(stamped) == hdf5_content(written)
    paths = {}
    for name, blob in (("stamped", stamped), ("written", written)):
        paths[name] = tmp_path / f"{name}.nc"
        paths[name].write_bytes(blob)
    for engine in ("h5netcdf", "netcdf4"):
        with xr.open_dataset(paths["stamped"], engine=engine) as a, \
                xr.open_dataset(paths["written"], engine=engine) as b:
            assert a.identical(b)
            for v in a.variables:  # NaN-aware, bit for bit
                np.testing.assert_array_equal(a[v].values, b[v].values)
                assert a[v].encoding.get("_FillValue") is b[v].encoding.get("_FillValue") or np.array_equal(
                    a[v].encoding.get("_FillValue"), b[v].encoding.get("_FillValue"), equal_nan=True)
            assert a.attrs["chip_id"] == "{}_{}".format(*CASES[case][3])
            assert int(np.isnan(a["red"].values).sum()) == (a.sizes["y"] // 3) * a.sizes["x"]
    if shutil.which("ncdump"):
        dumps = [subprocess.run(["ncdump", str(p)], capture_output=True, text=True, check=True).stdout
                 for p in paths.values()]
        assert dumps[0].split("\n", 1)[1] == dumps[1].split("\n", 1)[1]  # all but the name line
    bands = ["red", "nir09", "swir22"]
    np.testing.assert_array_equal(netcdf.read_bands(stamped, bands, "s.nc"),
                                  netcdf.read_bands(written, bands, "w.nc"))


def test_chips_stamped_one_after_another_each_carry_their_own_values() -> None:
    """A template is reused: each chip stamped from it has its own pixels, coordinates and attributes."""
    blobs = [chip_files(*CASES[0][:3], xy, CASES[0][4], seed=s)
             for s, xy in enumerate([(2, 1), (4, 1), (2, 5), (9, 9)])]
    contents = [hdf5_content(stamped) for stamped, _ in blobs]
    for (_, written), content in zip(blobs, contents, strict=True):
        assert content == hdf5_content(written)
    assert all(a != b for a, b in zip(contents, contents[1:], strict=False))  # the test can fail


def test_a_structure_whose_template_fails_its_check_is_written_by_hdf5(monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    """The template's layout cannot be read (here: refused on purpose): the chip is HDF5's own file."""
    monkeypatch.setattr(netcdf, "_TEMPLATES", {})

    def refuse(*_: Any) -> Any:
        raise ValueError("refused by the test")

    monkeypatch.setattr(hdf5_layout, "object_attributes", refuse)
    stamped, written = chip_files(*CASES[3], seed=7)
    assert list(netcdf._TEMPLATES.values()) == [None]  # no template: both are HDF5's own files
    assert hdf5_content(stamped) == hdf5_content(written)


def test_metadata_checksum_is_lookup3() -> None:
    """HDF5's metadata checksum: Jenkins' lookup3 hashlittle (its own test vectors), and the checksums
    HDF5 wrote in a chip's object headers."""
    assert hdf5_layout.checksum(b"") == 0xDEADBEEF
    assert hdf5_layout.checksum(b"Four score and seven years ago") == 0x17770551
    stamped, _ = chip_files(*CASES[0], seed=1)
    with h5py.File(io.BytesIO(stamped), "r") as f:
        addresses = [h5py.h5o.get_info(f.id).addr] + [h5py.h5o.get_info(f[n].id).addr for n in f]
    for address in addresses:  # raises on any checksum mismatch
        hdf5_layout.object_attributes(stamped, address)
    sb = hdf5_layout.superblock(stamped)
    assert int.from_bytes(stamped[sb.eof_at:sb.eof_at + 8], "little") == len(stamped)


def xarray_bands(data: bytes, names: list[str]) -> np.ndarray:
    with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as ds:
        return np.stack([ds[n].values.astype(np.float32) for n in names])


def test_chips_of_a_known_layout_are_read_without_hdf5(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first stamped chip of a structure is read through h5py and teaches its layout; the next ones
    (other pixels, coordinates, attribute values) are read from it alone, the same values as xarray's."""
    monkeypatch.setattr(netcdf, "_KNOWN_LAYOUTS", [])
    bands = ["blue", "red", "nir09", "swir22"]  # (scl has a fill value, 0: read through xarray)
    first = chip_files(*CASES[4], seed=11)[0]
    np.testing.assert_array_equal(netcdf.read_bands(first, bands, "a.nc"), xarray_bands(first, bands))
    assert len(netcdf._KNOWN_LAYOUTS) == 1
    others = [chip_files(*CASES[4][:3], xy, CASES[4][4], seed=s)[0] for s, xy in ((12, (6, 40)), (13, (7, 41)))]
    expected = [xarray_bands(o, bands) for o in others]

    def no_hdf5(*_: Any, **__: Any) -> Any:
        raise AssertionError("read through h5py")

    with monkeypatch.context() as m:
        m.setattr(netcdf.h5py, "File", no_hdf5)
        got = [netcdf.read_bands(o, bands, "b.nc") for o in others]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)  # NaN where nodata
        assert np.isnan(g[1]).any() and not np.isnan(g[0]).any()
    assert not np.array_equal(got[0], got[1], equal_nan=True)


def test_a_file_differing_beyond_values_is_not_read_by_the_known_layout(monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    """Another fill value (same layout, other bytes in the header) is decoded as CF says (xarray: the
    fill value becomes NaN); a cut-off chip raises instead of reading past its end."""
    monkeypatch.setattr(netcdf, "_KNOWN_LAYOUTS", [])
    first = chip_files(*CASES[0], seed=21)[0]
    netcdf.read_bands(first, ["red"], "a.nc")
    assert len(netcdf._KNOWN_LAYOUTS) == 1
    rng = np.random.default_rng(5)
    red = rng.integers(0, 3, (64, 64)).astype(np.float32)  # zeros: the fill value below
    variables = {"red": netcdf.Variable(("y", "x"), red, {}, {"_FillValue": 0.0}),
                 "x": netcdf.Variable(("x",), np.arange(64.0)), "y": netcdf.Variable(("y",), np.arange(64.0))}
    zero_fill = netcdf.arrays_bytes(variables, {})
    got = netcdf.read_bands(zero_fill, ["red"], "z.nc")[0]
    np.testing.assert_array_equal(np.isnan(got), red == 0)
    with pytest.raises(Exception):  # noqa: B017 (h5py's error for a truncated file)
        netcdf.read_bands(first[:-100], ["red"], "cut.nc")


@pytest.mark.parametrize("dtype", ["<u2", "<i4", "<f4", ">f4", "<f8", "u1"])
def test_shuffled_chunks_are_hdf5_shuffle_and_deflate(dtype: str) -> None:
    """A chunk is zlib of HDF5's byte shuffle (byte k of every value, k = 0, 1, ...), also from a strided
    view; read back into an array of its type or into float32."""
    import zlib

    rng = np.random.default_rng(1)
    whole = rng.integers(0, 30000, (40, 70)).astype(dtype)
    values = whole[3:35, 5:61]  # a strided view, as the chip writer's windows are
    size = whole.dtype.itemsize
    chunk = netcdf.deflated_chunk(values, 2, shuffle=True)
    expected = np.ascontiguousarray(values).view(np.uint8).reshape(-1, size).T.tobytes()
    assert zlib.decompress(chunk) == expected
    for out_dtype in (values.dtype, np.float32):
        out = np.empty(values.shape, out_dtype)
        netcdf._Chunk(chunk, values.dtype, values.shape, True).decode_into(out)
        np.testing.assert_array_equal(out, values.astype(out_dtype))


def test_same_chip_same_bytes_whichever_chip_made_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same inputs, same file: a chip's file does not depend on the chip its template was made from (its
    content, as readers see it: the compressed bytes may differ from run to run, ISA-L's do)."""
    a_args, b_args = (*CASES[1], 31), (*CASES[0], 32)  # one structure (chip ids of one length)
    monkeypatch.setattr(netcdf, "_TEMPLATES", {})
    chip_files(*a_args[:5], seed=a_args[5])
    b_after_a = chip_files(*b_args[:5], seed=b_args[5])[0]
    assert len(netcdf._TEMPLATES) == 1
    monkeypatch.setattr(netcdf, "_TEMPLATES", {})
    b_first = chip_files(*b_args[:5], seed=b_args[5])[0]
    assert hdf5_content(b_first) == hdf5_content(b_after_a)
