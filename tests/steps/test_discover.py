"""Scene discovery (``geofm discover``) against a real ``rustac serve`` on loopback, and the offset rule on
real items."""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from shapely.affinity import translate
from shapely.geometry import mapping, shape
from typer.testing import CliRunner

from geofm import storage
from geofm.aoi import load_aoi
from geofm.cli import app
from geofm.config import PipelineConfig
from geofm.errors import AoiError, StacError
from geofm.layout import Layout
from geofm.sentinel2 import boa_offset_to_subtract
from geofm.stac import deduplicate, find_scenes, item_grid
from geofm.synth import SynthResult


def _variant(item: dict[str, Any], new_id: str, day: str | None = None, **props: Any) -> dict[str, Any]:
    out = copy.deepcopy(item)
    out["id"] = new_id
    if day:
        out["properties"]["datetime"] = f"{day}T09:59:00.000Z"
    out["properties"].update(props)
    return out


@pytest.fixture
def archive_items(synth_scenes: SynthResult) -> tuple[list[dict[str, Any]], set[str]]:
    """The synthetic items plus altered copies; returns (all items, ids discover must return)."""
    items = [copy.deepcopy(i) for i in synth_scenes.items]
    by_day = {i["id"][10:18]: i for i in items}
    extra = [
        # a reprocessing of 2023-07-14 (sequence 1, same baseline): replaces sequence 0
        _variant(by_day["20230714"], "S2B_33TWL_20230714_1_L2A", **{"s2:sequence": "1"}),
        # an older-baseline reprocessing of 2023-11-11 (sequence 1 but baseline 05.00): loses
        _variant(by_day["20231111"], "S2B_33TWL_20231111_1_L2A", **{"s2:sequence": "1",
                                                                   "s2:processing_baseline": "05.00"}),
        # a cloudy date, a date outside the range, another tile over the AOI
        _variant(by_day["20230115"], "S2A_33TWL_20230204_0_L2A", "2023-02-04", **{"eo:cloud_cover": 93.0}),
        _variant(by_day["20230115"], "S2A_33TWL_20220604_0_L2A", "2022-06-04"),
        _variant(by_day["20230316"], "S2B_33TWM_20230316_0_L2A", **{
            "grid:code": "MGRS-33TWM", "mgrs:grid_square": "WM"}),
    ]
    far = _variant(by_day["20230115"], "S2A_33TWL_20230125_0_L2A", "2023-01-25")
    far["geometry"] = mapping(translate(shape(far["geometry"]), xoff=3.0))  # 3 degrees east: misses the AOI
    far["bbox"] = list(shape(far["geometry"]).bounds)
    extra.append(far)
    heavy = {s for s in synth_scenes.scene_ids if synth_scenes.cloud_cover[s] >= 50}
    assert len(heavy) == 1
    expected = set(synth_scenes.scene_ids) - heavy - {"S2B_33TWL_20230714_0_L2A"}
    expected.add("S2B_33TWL_20230714_1_L2A")
    return items + extra, expected


def _cfg(synth_scenes: SynthResult, url: str, out: Path, **kw: Any) -> PipelineConfig:
    base: dict[str, Any] = dict(aoi_name="found", aoi=synth_scenes.aoi_path, output_root=str(out), stac_url=url,
                                start_date="2023-01-01", end_date="2023-12-31", max_cloud_cover=50)
    base.update(kw)
    return PipelineConfig(**base)


def _discover(out: Path, url: str, *extra: str, aoi: str | None = None) -> Any:
    """``geofm discover`` as a user runs it (the synth AOI unless ``aoi`` says otherwise)."""
    args = ["discover", "--out", str(out), "--aoi-name", "found", "--start", "2023-01-01", "--end", "2023-12-31",
            "--stac-url", url, "--max-cloud-cover", "50", "--quiet", *extra]
    if aoi is not None:
        args += ["--aoi", aoi]
    return CliRunner().invoke(app, args)


def _text(result: Any) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_discover_returns_and_writes_the_expected_scenes(
    synth_scenes: SynthResult, archive_items: tuple[list[dict[str, Any]], set[str]], stac_server: Any,
    tmp_path: Path,
) -> None:
    items, expected = archive_items
    url = stac_server(items)
    result = _discover(tmp_path, url, "--grid-id", "33TWL", aoi=synth_scenes.aoi_path)
    assert result.exit_code == 0, result.output
    cfg = _cfg(synth_scenes, url, tmp_path, grid_id="33TWL")
    written = storage.list_files(cfg.layout.scenes_dir, "_metadata.json")
    assert {cfg.layout.scene_id_from_metadata(w) for w in written} == expected
    assert f"{len(expected)} scenes in" in _text(result)
    one = storage.read_json(cfg.layout.scene_metadata("S2B_33TWL_20230714_1_L2A"))
    assert one["assets"]["red"]["href"] == synth_scenes.item("S2B_33TWL_20230714_0_L2A")["assets"]["red"]["href"]
    assert load_aoi(cfg.layout.aoi_geojson).equals_exact(load_aoi(synth_scenes.aoi_path), 1e-9)

    # the search follows pagination (12 items over 6 pages) and returns the scenes in date order
    found = find_scenes(cfg, load_aoi(synth_scenes.aoi_path), page_size=2)
    assert {i["id"] for i in found} == expected
    assert [i["properties"]["datetime"] for i in found] == sorted(i["properties"]["datetime"] for i in found)
    # without the grid filter the other tile over the AOI comes back too; max_items caps the list
    nogrid = find_scenes(_cfg(synth_scenes, url, tmp_path / "nogrid"), load_aoi(synth_scenes.aoi_path), page_size=5)
    assert {i["id"] for i in nogrid} == expected | {"S2B_33TWM_20230316_0_L2A"}
    capped = _discover(tmp_path / "cap", url, "--set", "max_items=2", aoi=synth_scenes.aoi_path)
    assert capped.exit_code == 0, capped.output
    assert len(storage.list_files(Layout(str(tmp_path / "cap"), "found").scenes_dir, "_metadata.json")) == 2


def test_no_scenes_names_the_filters(synth_scenes: SynthResult, stac_server: Any, tmp_path: Path) -> None:
    url = stac_server(synth_scenes.items)
    result = CliRunner().invoke(app, [
        "discover", "--out", str(tmp_path), "--aoi-name", "found", "--aoi", synth_scenes.aoi_path, "--start",
        "2020-01-01", "--end", "2020-12-31", "--stac-url", url, "--grid-id", "33TWL", "--quiet"])
    assert result.exit_code == 2, result.output  # nothing to work on: refused like bad input
    assert re.search(r"no scenes found at http://127\.0\.0\.1.*2020-01-01.*33TWL", _text(result)), result.output
    assert not Path(_cfg(synth_scenes, url, tmp_path).layout.scenes_dir).exists()


def test_api_that_does_not_answer_is_named(synth_scenes: SynthResult, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(StacError, match=f"STAC API {url} did not answer"):
        find_scenes(_cfg(synth_scenes, url, tmp_path), load_aoi(synth_scenes.aoi_path))
    result = _discover(tmp_path, url, aoi=synth_scenes.aoi_path)
    assert result.exit_code == 1, result.output  # a backend failure, not bad input
    assert f"FAILED search: StacError: STAC API {url} did not answer" in _text(result)


def test_aoi_problems(synth_scenes: SynthResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    no_aoi = _discover(out, "http://127.0.0.1:9")
    assert no_aoi.exit_code == 2 and "discover needs an AOI" in _text(no_aoi), no_aoi.output
    missing = _discover(out, "http://127.0.0.1:9", aoi=str(tmp_path / "nope.geojson"))
    assert missing.exit_code == 2 and "nope.geojson" in _text(missing), missing.output
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [15.0, 46.0]}))
    pointed = _discover(out, "http://127.0.0.1:9", aoi=str(point))
    assert pointed.exit_code == 2 and "no Polygon" in _text(pointed), pointed.output
    assert not out.exists()  # refused before any work
    with pytest.raises(AoiError, match="no Polygon"):
        load_aoi(str(point))


def test_deduplicate_rules() -> None:
    def item(sid: str, baseline: str, seq: str) -> dict[str, Any]:
        return {"id": sid, "properties": {"datetime": f"{sid[10:14]}-{sid[14:16]}-{sid[16:18]}T10:00:00Z",
                                          "s2:processing_baseline": baseline, "s2:sequence": seq}}
    a0 = item("S2A_33TWN_20220122_0_L2A", "03.01", "0")
    a1 = item("S2A_33TWN_20220122_1_L2A", "04.00", "1")
    a2 = item("S2A_33TWN_20220122_2_L2A", "03.01", "2")
    b0 = item("S2A_33TWM_20220122_0_L2A", "03.01", "0")
    kept = deduplicate([a0, a2, b0, a1])
    assert {i["id"] for i in kept} == {"S2A_33TWN_20220122_1_L2A", "S2A_33TWM_20220122_0_L2A"}
    assert {i["id"] for i in deduplicate([a0, a2])} == {"S2A_33TWN_20220122_2_L2A"}


def test_real_items_parse_and_get_the_offset_rule(shared_data: Path) -> None:
    files = sorted((shared_data / "earthsearch-items").glob("*/*.json"))
    assert len(files) == 25
    for f in files:
        item = json.loads(f.read_text())
        p = item["properties"]
        assert item_grid(item) == item["id"].split("_")[1]
        offset = boa_offset_to_subtract(p)
        baseline = p["s2:processing_baseline"]
        if item["id"].startswith("S2B_33TWN_20220226"):
            assert offset == 1000
        else:
            assert offset == 0, (item["id"], baseline)
        if baseline.startswith("05."):
            assert p["earthsearch:boa_offset_applied"] is True
    mapchete = {json.loads(f.read_text())["id"] for f in files if f.parent.name == "mapchete-eo"}
    assert "S2B_33TWN_20220130_0_L2A" in mapchete  # the other 04.00 item: harmonised, 0
