"""The Python API (geofm.run, geofm.open): a real pipeline run on the shared synthetic scenes (2.56 km,
six dates, planted changes; ``spectral`` encoder, 64 px chips of the whole tile), then every reader of
the results checked against the files and the synthetic truth, the explorer URLs against a real
explorer (uvicorn on 127.0.0.1), and the errors that name what is missing."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import geopandas as gpd
import httpx
import morecantile
import numpy as np
import pytest
import uvicorn
import yaml
from PIL import Image

import geofm
from geofm import netcdf, storage
from geofm.errors import ConfigError, InputError, NotFoundError, RunFailedError
from geofm.layout import Layout
from geofm.sentinel2 import TILE_EXTENT_M
from geofm.synth import SynthResult

AOI = "api"
CHIP = 64
PARAMS = {"model": "spectral", "chip_size": CHIP, "whole_tile": True, "batch_size": 16, "workers": 2}


def _copy_items(synth: SynthResult, root: Path, aoi: str) -> None:
    """The synthetic items in the input layout of ``aoi`` under ``root`` (the archive stays read-only)."""
    lay = Layout(str(root), aoi)
    for item in synth.items:
        storage.write_json(lay.scene_metadata(item["id"]), item)


@pytest.fixture(scope="module")
def run_output(synth_scenes: SynthResult, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run through ``geofm.run``, with the progress it reported."""
    root = tmp_path_factory.mktemp("api")
    _copy_items(synth_scenes, root, AOI)
    seen: list[tuple[str, int, int]] = []
    record = geofm.run(aoi=synth_scenes.aoi_path, aoi_name=AOI, out=root, skip_discover=True,
                       progress=lambda step, done, total: seen.append((step, done, total)), **PARAMS)
    return {"root": root, "record": record, "progress": seen}


@pytest.fixture(scope="module")
def results(run_output: dict) -> geofm.Results:
    return geofm.open(run_output["root"], AOI)


@pytest.fixture(scope="module")
def truth(synth_scenes: SynthResult, results: geofm.Results) -> dict[str, tuple[str, str]]:
    """chip_id -> (planted change kind, its first date) for chips lying wholly in a planted change."""
    chips = results.change_intensity().to_crs(synth_scenes.crs)
    out = {}
    for feat in storage.read_json(synth_scenes.truth_path)["features"]:
        p = feat["properties"]
        for cid, geom in zip(chips["chip_id"], chips.geometry, strict=True):
            minx, miny, maxx, maxy = geom.bounds
            if (minx >= p["utm_minx"] - 1 and maxx <= p["utm_maxx"] + 1 and miny >= p["utm_miny"] - 1
                    and maxy <= p["utm_maxy"] + 1):
                out[cid] = (p["kind"], p["start_date"])
    assert {k for k, _ in out.values()} == {"forest_cleared", "new_water"}
    return out


# ---- import and run ------------------------------------------------------------------------------
def test_import_geofm_is_light() -> None:
    code = ("import sys, geofm; heavy = {'numpy', 'pandas', 'geopandas', 'xarray', 'torch', 'pydantic', "
            "'lancedb', 'rasterio', 'typer'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(geofm.run) and callable(geofm.open)


def test_run_returns_the_record_and_reports_progress(run_output: dict) -> None:
    record = run_output["record"]
    assert record.ok and record.steps == ["preprocess", "embed", "analyze", "consolidate"]
    assert record.config["chip_size"] == CHIP and record.config["model"] == "spectral"
    assert Path(Layout(str(run_output["root"]), AOI).run_record(record.run_id)).is_file()
    # every step started at 0 and advanced to its total
    for step in record.steps:
        calls = [(d, n) for s, d, n in run_output["progress"] if s == step]
        assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > 0


def test_rerun_with_a_config_file_skips_everything(run_output: dict, synth_scenes: SynthResult,
                                                   tmp_path: Path) -> None:
    """The YAML file gives parameters, keywords win over it; same parameters: nothing is redone."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**PARAMS, "chip_size": 32, "aoi_name": "other"}))
    record = geofm.run(config=config, aoi=synth_scenes.aoi_path, aoi_name=AOI, out=str(run_output["root"]),
                       steps="preprocess,embed,analyze,consolidate", chip_size=CHIP)
    assert record.config["chip_size"] == CHIP and record.config["aoi_name"] == AOI
    assert all(r.count("done") == 0 and r.count("skipped") > 0 for r in record.reports)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"chip_sise": 64}, "chip_sise"),
    ({"start": "2023-13-01"}, "start_date"),
    ({"steps": ["preprocess", "embedd"]}, "embedd"),
    ({"aoi_name": "../up"}, "aoi_name"),
    ({"progress": 3}, "progress"),
])
def test_run_refuses_bad_input_naming_it(kwargs: dict, named: str, tmp_path: Path) -> None:
    args = {"aoi_name": "x", "out": tmp_path, "model": "spectral", **kwargs}
    with pytest.raises(ConfigError, match=named):
        geofm.run(**args)
    assert not (tmp_path / "output").exists()  # refused before any work


def test_a_failed_unit_raises_with_the_record_after_the_others(synth_scenes: SynthResult,
                                                                 tmp_path: Path) -> None:
    _copy_items(synth_scenes, tmp_path, "broken")
    lay = Layout(str(tmp_path), "broken")
    bad = synth_scenes.scene_ids[1]
    item = storage.read_json(lay.scene_metadata(bad))
    item["assets"]["red"]["href"] = str(tmp_path / "missing" / "B04.tif")
    storage.write_json(lay.scene_metadata(bad), item)
    with pytest.raises(RunFailedError, match=bad) as caught:
        geofm.run(aoi=synth_scenes.aoi_path, aoi_name="broken", out=tmp_path, steps=["preprocess"],
                  retries=0, **PARAMS)
    record = caught.value.record
    assert [r.unit for r in record.reports[0].failed] == [bad]
    assert sorted(lay.meta_scene_ids()) == sorted(set(synth_scenes.scene_ids) - {bad})
    # without check the record is returned, and says so
    record = geofm.run(aoi=synth_scenes.aoi_path, aoi_name="broken", out=tmp_path, steps=["preprocess"],
                       retries=0, check=False, **PARAMS)
    assert not record.ok and record.reports[0].count("skipped") == len(synth_scenes.scene_ids) - 1


# ---- open and read ---------------------------------------------------------------------------------
def test_open_unknown_aoi_names_it_and_the_known_ones(run_output: dict) -> None:
    with pytest.raises(NotFoundError, match=r"'nope'.*AOIs there: api"):
        geofm.open(run_output["root"], "nope")
    with pytest.raises(NotFoundError, match="nope"):
        geofm.open(run_output["root"] / "nope", AOI)
    with pytest.raises(InputError, match="aoi_name"):
        geofm.open(run_output["root"], "../api")


def test_chips_table_has_every_analysed_chip_date_with_resolved_paths(
        results: geofm.Results, run_output: dict, synth_scenes: SynthResult, monkeypatch: pytest.MonkeyPatch) -> None:
    chips = results.chips()
    assert isinstance(chips, gpd.GeoDataFrame) and chips.crs.to_epsg() == 4326
    processed = {Path(u).name.split("_processed")[0] for u in results.layout.processed_files(synth_scenes.grid)}
    assert results.grids == [synth_scenes.grid] and set(chips["chip_id"]) == processed
    assert len(processed) >= 12  # 16 chips, less those in the nodata wedge (skipped by embed)
    assert list(chips["chip_id"]) == sorted(chips["chip_id"])  # sorted by chip, then date
    assert chips.groupby("chip_id")["date"].apply(lambda d: d.is_monotonic_increasing).all()
    for col in Layout.PATH_COLUMNS:
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in chips[col])
    # the stored paths are relative; opened from another folder with a relative root they still resolve
    monkeypatch.chdir(run_output["root"].parent)
    again = geofm.open(run_output["root"].name, AOI).chips()
    assert list(again["s3_location_netcdf"]) == list(chips["s3_location_netcdf"])


def test_datacube_stacks_every_date_of_a_chip(results: geofm.Results, truth: dict, synth_scenes: SynthResult
                                              ) -> None:
    chip = next(c for c, (kind, _) in truth.items() if kind == "forest_cleared")
    start = next(s for k, s in truth.values() if k == "forest_cleared")
    cube = results.datacube(chip)
    # every date step 1 cut, the cloudy ones too (the table holds only the analysed ones)
    assert cube.sizes == {"time": len(synth_scenes.dates), "y": CHIP, "x": CHIP}
    assert [str(t)[:10] for t in cube["time"].values] == [d.isoformat() for d in synth_scenes.dates]
    assert list(cube["scene_id"].values) == synth_scenes.scene_ids
    assert cube.rio.crs.to_epsg() == synth_scenes.epsg
    # the values are the chip files' own
    files = results.chips().query("chip_id == @chip")["s3_location_netcdf"]
    for url in files:
        scene = Path(url).name.split("_64_")[0]
        i = synth_scenes.scene_ids.index(scene)
        red = netcdf.read_bands(storage.read_bytes(url), ["red"], url)[0]
        np.testing.assert_array_equal(cube["red"].isel(time=i).values, red)
    # and they show the clearing: NDVI of the forest falls after the planted date
    ndvi = ((cube["nir"] - cube["red"]) / (cube["nir"] + cube["red"])).median(["x", "y"])
    clear = [i for i, s in enumerate(synth_scenes.scene_ids) if synth_scenes.sky[s] == "clear"]
    before = [float(ndvi[i]) for i in clear if str(cube["time"].values[i])[:10] < start]
    after = [float(ndvi[i]) for i in clear if str(cube["time"].values[i])[:10] >= start]
    assert before and after and min(before) > 0.6 > 0.3 > max(after)
    only = results.datacube(chip, bands=["red", "nir"], analysed_only=True)
    assert set(only.data_vars) == {"red", "nir"} and only.sizes["time"] == len(results.series(chip))


def test_series_drops_at_the_planted_change(results: geofm.Results, truth: dict) -> None:
    for chip, (_kind, start) in truth.items():
        s = results.series(chip)
        assert s.index.is_monotonic_increasing and s["is_baseline"].sum() == 1
        assert s.attrs["baseline_date"] == s.index[s["is_baseline"]][0]
        days = s.index.strftime("%Y-%m-%d")
        assert (s["cosine_sim"][days < start] > 0.9).all()
        assert (s["cosine_sim"][days >= start] < 0.3).all()
        assert (s["patch_changed_share"][days >= start] > 0.9).all()


def test_change_intensity_ranks_the_planted_chips_first(results: geofm.Results, truth: dict) -> None:
    layer = results.change_intensity()
    assert isinstance(layer, gpd.GeoDataFrame) and set(layer["chip_id"]) == set(results.chips()["chip_id"])
    assert list(layer["min_sim"]) == sorted(layer["min_sim"])
    assert set(layer["chip_id"].head(len(truth))) == set(truth)
    assert set(layer.loc[layer["chip_id"].isin(truth), "change_intensity"]) == {"High"}


def test_search_hits_resolved_thumbnails_and_filters(results: geofm.Results, truth: dict,
                                                     synth_scenes: SynthResult) -> None:
    lake = next(c for c, (kind, _) in truth.items() if kind == "new_water")
    last = synth_scenes.dates[-1]
    hits = results.search(lake, last, k=5, same_date=True)
    assert len(hits) == 5 and lake not in set(hits["chip_id"])
    assert set(hits["date"].astype(str)) == {last.isoformat()}
    assert list(hits["score"]) == sorted(hits["score"], reverse=True)
    assert isinstance(hits, gpd.GeoDataFrame) and hits.geometry.notna().all()
    for url in hits["s3_location_png_thumbnail"]:
        assert Image.open(io.BytesIO(Path(url).read_bytes())).format == "PNG"
    # default date: the chip's latest analysed one; any date when not same_date
    anyday = results.search(lake, k=50)
    assert anyday["date"].astype(str).nunique() > 1
    # a vector query: the lake's own rows come first
    vector = results.search(lake, last, k=1, same_date=True, exclude_query_chip=False)
    assert vector["chip_id"].iloc[0] == lake and vector["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("call", [
    lambda r: r.series("9_9"), lambda r: r.datacube("9_9"), lambda r: r.search("9_9"),
    lambda r: r.chips(grid="20LPP"), lambda r: r.change_intensity(grid="20LPP"),
    lambda r: r.explorer().chip("9_9"), lambda r: r.explorer().grid("20LPP"),
])
def test_unknown_grid_or_chip_is_named(results: geofm.Results, call) -> None:
    with pytest.raises(NotFoundError, match="9_9|20LPP"):
        call(results)


def test_search_with_an_unknown_date_lists_the_chips_dates(results: geofm.Results, truth: dict) -> None:
    chip = next(iter(truth))
    with pytest.raises(NotFoundError, match="its dates: 2023-01-15"):
        results.search(chip, date(2023, 2, 1))


# ---- the explorer's URLs against a real explorer --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def explorer(run_output: dict) -> Iterator[str]:
    """uvicorn serving the explorer over the run's root on 127.0.0.1, in a thread."""
    from geofm.server import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(str(run_output["root"])), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "explorer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_explorer_urls_answer(results: geofm.Results, explorer: str, truth: dict, synth_scenes: SynthResult
                              ) -> None:
    urls = results.explorer(explorer + "/")
    lake = next(c for c, (kind, _) in truth.items() if kind == "new_water")
    last = synth_scenes.dates[-1]
    with httpx.Client(timeout=60) as http:
        def get(url: str) -> httpx.Response:
            r = http.get(url)
            assert r.status_code == 200, (url, r.text[:200])
            return r

        assert get(urls.aoi()).json()["grids"] == [synth_scenes.grid]
        assert get(urls.grid()).json()["chip_count"] == results.chips()["chip_id"].nunique()
        tile_side = int(TILE_EXTENT_M // (CHIP * 10))
        assert len(get(urls.chip_grid(extent="full")).json()["features"]) == tile_side ** 2
        levels = {f["properties"]["chip_id"]: f["properties"]["change_intensity"]
                  for f in get(urls.change_intensity()).json()["features"]}
        assert levels[lake] == "High"
        assert get(urls.chip(lake)).json()["chip_id"] == lake
        png = get(urls.thumbnail(lake, last))
        assert Image.open(io.BytesIO(png.content)).format == "PNG"
        hits = get(urls.search(lake, last, k=3)).json()["results"]
        local = results.search(lake, last, k=3, same_date=True)
        assert [h["chip_id"] for h in hits] == list(local["chip_id"])
        centre = results.chips().query("chip_id == @lake").geometry.iloc[0].centroid
        tile = morecantile.tms.get("WebMercatorQuad").tile(centre.x, centre.y, 13)
        assert get(urls.tiles(last).format(z=tile.z, x=tile.x, y=tile.y)).headers["content-type"] == "image/png"
        page = get(urls.map(chip_id=lake, mode="change"))
        assert "text/html" in page.headers["content-type"]
    assert urls.map(chip_id=lake, mode="change").endswith(f"/?aoi={AOI}&grid={synth_scenes.grid}&chip={lake}"
                                                           "&mode=change")
    with pytest.raises(ConfigError, match="base_url"):
        results.explorer("localhost:8000")


def test_results_follow_a_rerun_of_a_step(run_output: dict, synth_scenes: SynthResult) -> None:
    """Tables are cached while their file is unchanged: a step rerun with other thresholds shows."""
    res = geofm.open(run_output["root"], AOI)
    before = res.change_intensity()
    assert (before["change_intensity"] == "High").sum() >= 2
    cfg = {**PARAMS, "change_threshold_high": -1.0, "change_threshold_medium": -1.0}
    geofm.run(aoi=synth_scenes.aoi_path, aoi_name=AOI, out=run_output["root"], steps="consolidate", **cfg)
    try:
        assert set(res.change_intensity()["change_intensity"]) == {"Low"}
    finally:  # the module's other tests read the original thresholds' layer
        geofm.run(aoi=synth_scenes.aoi_path, aoi_name=AOI, out=run_output["root"], steps="consolidate",
                  **PARAMS)
