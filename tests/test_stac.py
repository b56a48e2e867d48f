"""Scene discovery against a real ``rustac serve`` on loopback, and the offset rule on real items."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from shapely.affinity import translate
from shapely.geometry import mapping, shape

from geofm import storage
from geofm.aoi import AoiError, load_aoi
from geofm.config import PipelineConfig
from geofm.sentinel2 import boa_offset_to_subtract
from geofm.stac import deduplicate, discover, item_grid
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


def test_discover_returns_and_writes_the_expected_scenes(
    synth_scenes: SynthResult, archive_items: tuple[list[dict[str, Any]], set[str]], stac_server: Any,
    tmp_path: Path,
) -> None:
    items, expected = archive_items
    url = stac_server(items)
    cfg = _cfg(synth_scenes, url, tmp_path, grid_id="33TWL")
    found = discover(cfg, page_size=2)  # 12 items over 6 pages: pagination must be followed
    assert {i["id"] for i in found} == expected
    assert [i["properties"]["datetime"] for i in found] == sorted(i["properties"]["datetime"] for i in found)
    written = storage.list_files(cfg.layout.scenes_dir, "_metadata.json")
    assert {cfg.layout.scene_id_from_metadata(w) for w in written} == expected
    one = storage.read_json(cfg.layout.scene_metadata("S2B_33TWL_20230714_1_L2A"))
    assert one["assets"]["red"]["href"] == synth_scenes.item("S2B_33TWL_20230714_0_L2A")["assets"]["red"]["href"]
    assert load_aoi(cfg.layout.aoi_geojson).equals_exact(load_aoi(synth_scenes.aoi_path), 1e-9)

    # without the grid filter the other tile over the AOI comes back too; max_items caps the list
    out2 = tmp_path / "nogrid"
    assert {i["id"] for i in discover(_cfg(synth_scenes, url, out2), page_size=5)} == expected | {
        "S2B_33TWM_20230316_0_L2A"}
    assert len(discover(_cfg(synth_scenes, url, tmp_path / "cap", max_items=2))) == 2


def test_no_scenes_names_the_filters(synth_scenes: SynthResult, stac_server: Any, tmp_path: Path) -> None:
    url = stac_server(synth_scenes.items)
    cfg = _cfg(synth_scenes, url, tmp_path, start_date="2020-01-01", end_date="2020-12-31", grid_id="33TWL")
    with pytest.raises(ValueError, match=r"no scenes found at http://127\.0\.0\.1.*2020-01-01.*33TWL"):
        discover(cfg)
    assert not Path(cfg.layout.scenes_dir).exists()


def test_api_that_does_not_answer_is_named(synth_scenes: SynthResult, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RuntimeError, match=f"STAC API {url} did not answer"):
        discover(_cfg(synth_scenes, url, tmp_path))


def test_aoi_problems(synth_scenes: SynthResult, tmp_path: Path) -> None:
    with pytest.raises(AoiError, match="needs an AOI"):
        discover(_cfg(synth_scenes, "http://127.0.0.1:9", tmp_path, aoi=None))
    missing = str(tmp_path / "nope.geojson")
    with pytest.raises(AoiError, match="nope.geojson"):
        discover(_cfg(synth_scenes, "http://127.0.0.1:9", tmp_path, aoi=missing))
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [15.0, 46.0]}))
    with pytest.raises(AoiError, match="no Polygon"):
        discover(_cfg(synth_scenes, "http://127.0.0.1:9", tmp_path, aoi=str(point)))


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
