"""Step 1 reading its band COGs over HTTP from a server that misbehaves as a busy object store does.

The server (tests/fixtures/http_server.py, real HTTP on 127.0.0.1) serves the shared synthetic archive
and answers 503 to some requests, cuts some bodies off halfway and stalls some transfers. Step 1 runs with
geofm's default remote-read settings and no GDAL/CPL environment variable: every scene must finish, and
every chip (all variables, NaN where NaN), thumbnail and meta row must equal those of a run on the local
files. A file the server always refuses makes its scene fail alone, the error naming the URL and the
HTTP status, and a retry of the unit really asks the server again (no failure cached by GDAL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyogrio  # noqa: F401  (a second GDAL in the process, as geopandas brings: geofm must act on rasterio's)
import pytest
import xarray as xr

from fixtures.http_server import Faults, FaultyHTTPServer, serve_items
from geofm import storage
from geofm.config import PipelineConfig
from geofm.errors import InputError
from geofm.report import StepReport
from geofm.steps import preprocess
from geofm.synth import SynthResult
from helpers import hdf5_content, png_content, run_step

CHIP = 64
# The one default changed here: how long a transfer may stall before it is aborted (default 10 s), so
# that the stalls below cost seconds, not tens of seconds. It is a named parameter, not environment.
STALL_LIMIT_S = 2
URL_COLUMNS = ["s3_location_netcdf", "s3_location_png_thumbnail", "file_name"]


def run_step1(items: list[dict[str, Any]], out: Path, **params: Any) -> tuple[PipelineConfig, StepReport]:
    cfg = PipelineConfig(aoi_name="remote", output_root=str(out), chip_size=CHIP, whole_tile=True, **params)
    for item in items:
        storage.write_json(cfg.layout.scene_metadata(item["id"]), item)
    return cfg, run_step(cfg, "preprocess")


@pytest.fixture(autouse=True)
def no_gdal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing set by hand: whatever makes the remote reads survive comes from geofm itself."""
    for var in list(os.environ):
        if var.startswith(("GDAL_", "CPL_", "VSI_", "AWS_")):
            monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def local_run(synth_scenes: SynthResult, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    cfg, report = run_step1(synth_scenes.items, tmp_path_factory.mktemp("local"))
    assert report.ok, report.summary()
    return cfg


def archive(synth: SynthResult) -> Path:
    return Path(synth.archive_dir)


def assert_same_outputs(local: PipelineConfig, remote: PipelineConfig, scenes: list[str]) -> int:
    """Every scene's meta rows, chip files and thumbnails are equal; returns the chips compared.

    Chip files are compared as readers see them, every stored value bit for bit (``hdf5_content``: the
    compressed bytes may differ, ISA-L's output does from run to run), thumbnails pixel for pixel, and the
    first chip of each scene also as datasets, every variable NaN-aware, to say what equal content means."""
    n = 0
    for scene in scenes:
        a = preprocess.read_meta(local.layout.meta(scene)).set_index("chip_id").sort_index()
        b = preprocess.read_meta(remote.layout.meta(scene)).set_index("chip_id").sort_index()
        assert list(a.index) == list(b.index) and len(a) > 0
        pd.testing.assert_frame_equal(a.drop(columns=URL_COLUMNS), b.drop(columns=URL_COLUMNS))
        for chip_id in a.index:
            for column, content in (("s3_location_netcdf", hdf5_content), ("s3_location_png_thumbnail", png_content)):
                file_a = Path(local.layout.resolve(a.at[chip_id, column]))
                file_b = Path(remote.layout.resolve(b.at[chip_id, column]))
                assert content(file_a.read_bytes()) == content(file_b.read_bytes()), f"{scene} {chip_id}: {column}"
            n += 1
        first = a.index[0]
        with xr.open_dataset(local.layout.resolve(a.at[first, "s3_location_netcdf"])) as da, \
                xr.open_dataset(remote.layout.resolve(b.at[first, "s3_location_netcdf"])) as db:
            xr.testing.assert_identical(da.load(), db.load())  # values (NaN where NaN), coords, attrs
            for name in da.variables:
                np.testing.assert_array_equal(da[name].values, db[name].values)
    return n


def test_faulty_server_every_scene_finishes_with_the_local_chips(synth_scenes: SynthResult,
                                                                 local_run: PipelineConfig,
                                                                 tmp_path: Path) -> None:
    faults = Faults(error_rate=0.05, cut_rate=0.04, stall_rate=0.03, stall_s=STALL_LIMIT_S + 3, max_stalls=2,
                    seed=11)
    with FaultyHTTPServer(archive(synth_scenes), faults) as server:
        items = serve_items(synth_scenes.items, archive(synth_scenes), server)
        assert all(a["href"].startswith("http://127.0.0.1:") for it in items for a in it["assets"].values())
        cfg, report = run_step1(items, tmp_path / "out", remote_low_speed_time=STALL_LIMIT_S)
        counts = server.counts
    assert report.ok, report.summary()
    assert report.count("done") == len(synth_scenes.scene_ids)
    # the faults really happened (the test can fail): 503s, cut-off bodies and stalled transfers
    assert counts["503"] >= 3 and counts["cut"] >= 2 and counts["stall"] >= 1, counts
    assert counts["HEAD"] > 0  # sizes come from HEAD requests, not GETs of whole files
    n = assert_same_outputs(local_run, cfg, synth_scenes.scene_ids)
    assert n == 16 * len(synth_scenes.scene_ids)


def test_a_file_always_refused_fails_its_scene_alone_naming_url_and_status(synth_scenes: SynthResult,
                                                                         local_run: PipelineConfig,
                                                                         tmp_path: Path) -> None:
    bad_scene = synth_scenes.scene_ids[1]
    bad_file = Path(synth_scenes.item(bad_scene)["assets"]["red"]["href"]).relative_to(archive(synth_scenes))
    faults = Faults(always_fail=frozenset({bad_file.as_posix()}))
    with FaultyHTTPServer(archive(synth_scenes), faults) as server:
        items = serve_items(synth_scenes.items, archive(synth_scenes), server)
        # short retries (named parameters) so that running them out takes a second, not a minute
        cfg, report = run_step1(items, tmp_path / "out", retries=1, remote_retries=1, remote_retry_delay=0.05,
                                remote_read_attempts=2)
        counts = server.counts
    failed = {r.unit: r for r in report.results if r.status == "failed"}
    assert list(failed) == [bad_scene]
    error = failed[bad_scene].error or ""
    assert server.url(bad_file.as_posix()) in error and "HTTP 503" in error, error
    assert error.startswith("RemoteReadError"), error
    assert report.count("done") == len(synth_scenes.scene_ids) - 1
    # every attempt asked the server again: 2 unit attempts x 2 read attempts x (1 + 1 GDAL retry),
    # where a cached failure would have sent 2 requests in all
    assert counts[f"HEAD {bad_file.as_posix()}"] >= 8, counts
    good = [s for s in synth_scenes.scene_ids if s != bad_scene]
    assert assert_same_outputs(local_run, cfg, good) == 16 * len(good)


def test_a_bad_file_served_fine_is_bad_input_not_a_network_failure(synth_scenes: SynthResult,
                                                                   http_files: tuple[Path, FaultyHTTPServer],
                                                                   tmp_path: Path) -> None:
    folder, server = http_files
    scene = synth_scenes.scene_ids[0]
    item = synth_scenes.item(scene)
    for asset in item["assets"].values():  # the scene's files, one of them not a GeoTIFF
        src = Path(asset["href"])
        if src.is_file():
            (folder / src.name).write_bytes(src.read_bytes())
    (folder / "B04.tif").write_bytes(b"<html>not a GeoTIFF</html>" * 100)
    served = serve_items([item], Path(item["assets"]["red"]["href"]).parent, server)
    # an input error (not a backend one): the run, whose only scene it is, is refused like bad input
    with pytest.raises(InputError, match=r"asset 'red'.*B04\.tif.*not recognized") as refused:
        run_step1(served, tmp_path / "out", retries=0, remote_read_attempts=2)
    assert server.url("B04.tif") in str(refused.value)


@pytest.mark.parametrize(("fault", "cause"), [("cut", "body cut off"), ("stall", "timeout")])
def test_exhausted_reads_name_a_cut_off_or_stalled_transfer(fault: str, cause: str, synth_scenes: SynthResult,
                                                            tmp_path: Path) -> None:
    """Every body cut off halfway, or stalled past the low-speed limit: the error says which. (Cut-off
    bodies are read with generous time limits, so that a loaded machine's slow answer is never taken
    for a stall.)"""
    always = Faults(cut_rate=1.0 if fault == "cut" else 0.0, stall_rate=1.0 if fault == "stall" else 0.0,
                    stall_s=4, max_stalls=10**6, max_in_a_row=10**6)
    limit = 1 if fault == "stall" else 30
    with FaultyHTTPServer(archive(synth_scenes), always) as server:
        items = serve_items([synth_scenes.item(synth_scenes.scene_ids[0])], archive(synth_scenes), server)
        _, report = run_step1(items, tmp_path / "out", retries=0, remote_low_speed_time=limit,
                              remote_connect_timeout=limit, remote_read_attempts=2, remote_retries=1,
                              remote_retry_delay=0.05)
        url_prefix = server.url("")
    error = report.results[0].error or ""
    assert report.results[0].status == "failed" and error.startswith("RemoteReadError"), error
    assert url_prefix in error and cause in error and "after 2 attempts" in error, error


def test_gdal_settings_come_from_the_named_parameters() -> None:
    cfg = PipelineConfig(remote_retries=7, remote_retry_delay=0.25, remote_retry_codes="503",
                         remote_connect_timeout=4, remote_low_speed_time=6, remote_low_speed_limit=10)
    env = storage.gdal_env("https://bucket.example/B04.tif", remote=cfg.remote_reads)
    assert env["GDAL_HTTP_MAX_RETRY"] == "7" and env["GDAL_HTTP_RETRY_DELAY"] == "0.25"
    assert env["GDAL_HTTP_RETRY_CODES"] == "503" and env["GDAL_HTTP_CONNECTTIMEOUT"] == "4.0"
    assert env["GDAL_HTTP_LOW_SPEED_TIME"] == "6" and env["GDAL_HTTP_LOW_SPEED_LIMIT"] == "10"
    assert env["CPL_VSIL_CURL_USE_HEAD"] == "YES"  # sizes by HEAD, not by a GET of the whole file
    defaults = storage.gdal_env("http://x/a.tif")
    assert defaults["GDAL_HTTP_MAX_RETRY"] == str(PipelineConfig().remote_retries)
    assert "GDAL_HTTP_MAX_RETRY" not in storage.gdal_env("/data/B04.tif")  # local files: no HTTP settings
    assert storage.gdal_env("s3://b/B04.tif")["CPL_VSIL_CURL_USE_HEAD"] == "NO"
    with pytest.raises(ValueError, match="remote_retry_codes"):
        PipelineConfig(remote_retry_codes="5O3")
