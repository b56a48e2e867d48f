"""The chip NetCDF of step 1 is CF-1.10 by the checkers people use, offline:

- cfchecker (NCAS/CEDA, PyPI ``cfchecker``) with no error and no warning. Its newest release (4.1.0) knows
  CF up to 1.8, so the test registers "CF-1.10" with it and it applies its newest rules; the standard-name
  table is the real one that compliance-checker ships (table 93), the area-type and region tables are
  empty local files (the chip uses neither);
- the IOOS compliance-checker's ``cf:1.10`` suite, strict: every check passes;
- ``ncdump -t`` (netCDF-C) decodes ``time`` (its ``units`` are NC_CHAR);
- GDAL (rasterio/rioxarray) sees SCL's nodata 0; the flag table is sentinel2.SCL_CLASSES.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr

from fixtures.relative_run import RelativeRun
from geofm import cf, geoparquet, sentinel2

pytestmark = pytest.mark.slow
EMPTY_TABLE = "<?xml version='1.0'?><{0}><version_number>0</version_number><date>2026-11-28</date></{0}>"


@pytest.fixture(scope="module")
def chip(relative_run: RelativeRun) -> Path:
    """A chip the pipeline run wrote (all 10 default bands + SCL, a cloudy date's)."""
    lay = relative_run.layout
    meta = geoparquet.read(lay.meta_files()[0])
    return Path(lay.resolve(meta.sort_values("cloud_cover_perc")["s3_location_netcdf"].iloc[-1]))


@pytest.fixture(scope="module")
def cf_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import compliance_checker

    folder = tmp_path_factory.mktemp("cf-tables")
    (folder / "area.xml").write_text(EMPTY_TABLE.format("area_type_table"))
    (folder / "region.xml").write_text(EMPTY_TABLE.format("standardized_region_list"))
    names = Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"
    assert names.is_file()
    return {"cfStandardNamesXML": str(names), "cfAreaTypesXML": str(folder / "area.xml"),
            "cfRegionNamesXML": str(folder / "region.xml")}


def test_cfchecker_finds_no_error_and_no_warning(chip: Path, cf_tables: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cfchecker import cfchecks

    cf_110 = cfchecks.CFVersion((1, 10))
    monkeypatch.setattr(cfchecks, "cfVersions", [*cfchecks.cfVersions, cf_110])
    results = cfchecks.CFChecker(version=cf_110, silent=True, **cf_tables).checker(str(chip))
    assert "Checking against CF Version CF-1.10" in results["global"]["VERSION"]
    found = {(where, k): v for where, res in [("global", results["global"]), *results["variables"].items()]
             for k, v in res.items() if k in ("FATAL", "ERROR", "WARN") and v}
    assert found == {}
    assert set(results["variables"]) >= {"blue", "red", "swir22", "scl", "time", "x", "y", "spatial_ref"}


def test_cfchecker_would_warn_about_the_old_chips(chip: Path, cf_tables: dict[str, str], tmp_path: Path) -> None:
    """The check can fail: the same chip without the CF attributes of a band gets warnings."""
    from cfchecker import cfchecks

    old = tmp_path / "old.nc"
    with xr.open_dataset(chip, engine="h5netcdf", mask_and_scale=False) as ds:
        ds = ds.load()
    for key in ("long_name", "standard_name", "units"):
        del ds["blue"].attrs[key]
    ds.attrs["Conventions"] = "CF-1.8"
    ds.to_netcdf(old, engine="h5netcdf")
    results = cfchecks.CFChecker(version=cfchecks.CFVersion((1, 8)), silent=True, **cf_tables).checker(str(old))
    assert results["variables"]["blue"]["WARN"]


def test_ioos_compliance_checker_cf_1_10_passes_every_check(chip: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    exe = str(Path(sys.executable).with_name("compliance-checker"))
    subprocess.run([exe, "-t", "cf:1.10", "-c", "strict", "-f", "json", "-o", str(report), str(chip)],
                   capture_output=True, text=True, timeout=300, check=False)
    result = json.loads(report.read_text())["cf:1.10"]
    failed = [p for p in result["all_priorities"] if p["value"][0] < p["value"][1]]
    assert failed == [] and result["scored_points"] == result["possible_points"] > 100


def test_ncdump_decodes_the_acquisition_time(chip: Path) -> None:
    if shutil.which("ncdump") is None:
        pytest.skip("ncdump (Debian netcdf-bin, `make system-deps`) is not installed")
    out = subprocess.run(["ncdump", "-t", "-v", "time", str(chip)], capture_output=True, text=True, check=True)
    with xr.open_dataset(chip, engine="h5netcdf") as ds:
        when = pd.Timestamp(ds["time"].values)
        assert ds.attrs["Conventions"] == cf.CONVENTIONS
    assert f'time = "{when:%Y-%m-%d %H:%M:%S}' in out.stdout


def test_band_and_scl_attributes_gdal_sees_scl_nodata(chip: Path) -> None:
    with xr.open_dataset(chip, engine="h5netcdf") as ds:
        red = ds["red"].attrs
        assert red["standard_name"] == "surface_bidirectional_reflectance" and red["units"] == "1e-4"
        assert "B04" in red["long_name"] and "665 nm" in red["long_name"]
        values, meanings = ds["scl"].attrs["flag_values"], ds["scl"].attrs["flag_meanings"].split()
        assert dict(zip(values.tolist(), meanings, strict=True)) == {
            k: v for k, v in sentinel2.SCL_CLASSES.items() if k != sentinel2.NODATA}
        assert ds["x"].attrs["axis"] == "X" and "_FillValue" not in ds["x"].encoding
    with rasterio.open(f"netcdf:{chip}:scl") as src:
        assert src.nodata == 0 and src.crs.to_epsg() == 32633
        scl = src.read(1)
    with rasterio.open(f"netcdf:{chip}:red") as src:
        assert np.isnan(src.nodata)
    assert scl.dtype == np.uint8 and set(np.unique(scl)) <= set(sentinel2.SCL_CLASSES)
