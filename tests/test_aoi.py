"""AOI parsing: what a usable AOI is, and clear errors for what is not."""

import json

import pytest

from geofm.aoi import AoiError, parse_aoi


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
