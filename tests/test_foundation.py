"""Band table, scene ids, harmonisation rule, layout paths, config and storage basics."""

import json
from datetime import date

import pytest

from geofm import storage
from geofm.aoi import AoiError, parse_aoi
from geofm.config import PipelineConfig, parse_set_options
from geofm.layout import Layout
from geofm.sentinel2 import band, band_tag, boa_offset_to_subtract, parse_scene_id, utm_epsg


def test_scene_id_parts():
    s = parse_scene_id("S2A_20LPP_20220606_0_L2A")
    assert (s.platform, s.grid, s.date, s.sequence, s.utm_zone) == ("S2A", "20LPP", date(2022, 6, 6), 0, 20)
    with pytest.raises(ValueError, match="not a Sentinel-2 scene id"):
        parse_scene_id("LC08_whatever")


def test_bands_and_epsg():
    assert band("B04").name == "red" and band("nir08").band_id == "B8A"
    assert band_tag(["B04", "green", "blue", "nir"]) == "red_green_blue_nir"
    with pytest.raises(ValueError, match="unknown Sentinel-2 band 'B13'"):
        band("B13")
    assert utm_epsg("33TWL") == 32633 and utm_epsg("20LPP") == 32720


@pytest.mark.parametrize(
    "props, expected",
    [
        ({"s2:processing_baseline": "02.14"}, 0),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}, 0),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": False}, 1000),
        ({"s2:processing_baseline": "05.09"}, 1000),
        ({}, 0),
    ],
)
def test_boa_offset_rule(props, expected):
    assert boa_offset_to_subtract(props) == expected


def test_layout_matches_spec():
    lay = Layout("s3://b/p", "brazil")
    sid = "S2A_20LPP_20220606_0_L2A"
    assert lay.scene_metadata(sid) == f"s3://b/p/processing/brazil/input/sentinel2_scenes/{sid}_metadata.json"
    assert lay.meta(sid) == f"s3://b/p/output/brazil/meta/{sid}_chip_meta.parquet"
    assert lay.raw_chip(sid, 256, 3, 7) == f"s3://b/p/output/brazil/raw-chips/l2a/20LPP/2022/6/{sid}_256_chipped_3_7.nc"
    assert lay.rgb_thumbnail(sid, 256, 3, 7).endswith(f"rgb-imgs/l2a/20LPP/2022/6/{sid}_256_rgb_thumbnail_3_7.png")
    assert lay.unique_chip_id("20LPP", 3, 7) == "s3://b/p/output/brazil/unique-chip-ids/20LPP/3_7.txt"
    assert lay.processed_embeddings("20LPP", 3, 7).endswith("processed-embeddings/20LPP/3_7_processed_embeddings.parquet")
    assert lay.consolidated_output("20LPP").endswith("consolidated-output/20LPP/consolidated_output.parquet")
    assert lay.frontend_config("20LPP").endswith("consolidated-output/20LPP/config_brazil.json")


def test_config_validation_and_set(tmp_path):
    with pytest.raises(ValueError, match="dates reversed"):
        PipelineConfig(start_date=date(2023, 2, 1), end_date=date(2023, 1, 1))
    assert parse_set_options(["chip_size=128", "s2_bands=[red, green]"]) == {
        "chip_size": 128, "s2_bands": ["red", "green"]}
    with pytest.raises(ValueError, match="unknown parameter 'chipsize'"):
        parse_set_options(["chipsize=1"])
    p = tmp_path / "run.yaml"
    p.write_text("aoi_name: x\nchip_size: 64\n")
    cfg = PipelineConfig.from_yaml(p, chip_size=128)
    assert (cfg.aoi_name, cfg.chip_size) == ("x", 128)


def test_storage_atomic_roundtrip(tmp_path):
    url = str(tmp_path / "a" / "b.json")
    storage.write_json(url, {"k": 1})
    assert storage.read_json(url) == {"k": 1}
    assert storage.list_files(str(tmp_path / "a"), ".json") == [url]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))


def test_aoi_errors():
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    assert parse_aoi({"type": "Feature", "geometry": square, "properties": {}}).area == 1
    with pytest.raises(AoiError, match="no Polygon"):
        parse_aoi({"type": "Point", "coordinates": [0, 0]})
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(AoiError, match="invalid geometry"):
        parse_aoi(bowtie)
    wide = {"type": "Polygon", "coordinates": [[[-179, 0], [179, 0], [179, 1], [-179, 1], [-179, 0]]]}
    with pytest.raises(AoiError, match="antimeridian"):
        parse_aoi(wide)
    with pytest.raises(AoiError, match="not GeoJSON"):
        parse_aoi(json.loads("[1, 2]"))


def test_list_folders(tmp_path):
    for name in ("33TWL", "20LPP", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert storage.list_folders(str(tmp_path)) == ["20LPP", "33TWL"]
    assert storage.list_folders(str(tmp_path / "missing")) == []
