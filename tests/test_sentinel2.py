"""Sentinel-2 facts: scene ids, the band table, UTM zones and the BOA offset harmonisation rule."""

from datetime import date

import pytest

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
