"""The synthetic STAC items and their collection (``geofm synth``) are valid STAC, checked offline.

Core: pystac's JSON-schema validator with the STAC 1.1.0 JSON schemas pystac itself ships (no schema is
vendored here); :class:`OfflineValidator` refuses any schema that would have to be downloaded. The
extension schemas (processing, grid, raster, view, projection, mgrs, eo) are shipped by no package on
the registries this project uses, so they cannot be validated offline; instead each declared extension is
read through pystac's own implementation of that extension version (projection v2.0.0: ``proj:code``,
eo: common names from its enumeration) and must have fields in the item (no empty declaration).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.grid import GridExtension
from pystac.extensions.mgrs import MgrsExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.extensions.view import ViewExtension
from pystac.validation import JsonSchemaSTACValidator, validate_dict

from geofm import storage, thumbnails
from geofm.synth import SynthResult, paths
from geofm.synth.items import platform_name


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's validator limited to the schemas pystac ships (STAC 1.1.0 core, GeoJSON)."""

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not shipped with pystac; tests never download")
        return super()._get_schema(schema_uri)


def validate_core(obj: dict[str, Any]) -> list[Any]:
    return validate_dict(obj, extensions=[], validator=OfflineValidator())


def test_items_and_collection_pass_stac_core_validation(synth_scenes: SynthResult) -> None:
    collection = storage.read_json(paths.collection(synth_scenes.root))
    assert validate_core(collection) == [
        "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json"]
    assert collection["id"] == "sentinel-2-l2a"
    for item in synth_scenes.items:
        assert item["stac_version"] == "1.1.0"
        assert validate_core(item) == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]
        link = next(lk for lk in item["links"] if lk["rel"] == "collection")
        assert item["collection"] == collection["id"]
        assert link["href"] == str(Path(paths.collection(synth_scenes.root)).resolve())
        start, end = collection["extent"]["temporal"]["interval"][0]
        assert start <= item["properties"]["datetime"] <= end


def test_validation_can_fail(synth_scenes: SynthResult) -> None:
    """The check has teeth: an item naming a collection without linking it is refused, as is a bad date."""
    item = copy.deepcopy(synth_scenes.items[0])
    item["links"] = []
    with pytest.raises(pystac.STACValidationError):
        validate_core(item)
    item = copy.deepcopy(synth_scenes.items[0])
    item["properties"]["created"] = "yesterday"
    with pytest.raises(pystac.STACValidationError):
        validate_core(item)


def test_declared_extensions_are_used_in_their_declared_version(synth_scenes: SynthResult) -> None:
    for d in synth_scenes.items:
        item = pystac.Item.from_dict(d)
        props = d["properties"]
        for uri in d["stac_extensions"]:  # every declared extension has fields (no empty declaration)
            name = uri.split("/")[3]
            prefix = {"projection": "proj"}.get(name, name) + ":"
            in_assets = any(k.startswith(prefix) for a in d["assets"].values() for k in a)
            assert any(k.startswith(prefix) for k in props) or in_assets, uri
        proj = ProjectionExtension.ext(item)  # pystac's v2.0.0 implementation: proj:code, no proj:epsg
        assert ProjectionExtension.get_schema_uri() in d["stac_extensions"]
        assert proj.code == f"EPSG:{synth_scenes.epsg}" and "proj:epsg" not in props
        assert ProjectionExtension.ext(item.assets["red"]).transform[2] == synth_scenes.origin[0]
        assert props["processing:level"] == "L2A" and props["processing:software"]
        assert GridExtension.ext(item).code == f"MGRS-{synth_scenes.grid}"
        assert MgrsExtension.ext(item).utm_zone == int(synth_scenes.grid[:2])
        assert 0 <= ViewExtension.ext(item).sun_elevation <= 90
        assert RasterExtension.ext(item.assets["nir"]).bands[0].scale == 0.0001
        names = {b.common_name for a in item.assets.values() if "eo:bands" in a.extra_fields
                 for b in EOExtension.ext(a).bands or []}
        assert all(Band.band_range(n) is not None for n in names), names  # the eo list of common names
        assert {"rededge", "nir", "nir08", "nir09", "coastal", "swir16", "swir22"} <= names
        assert props["platform"] in {"sentinel-2a", "sentinel-2b"}
        assert props["platform"] == platform_name(d["id"][:3])


def test_tci_uses_the_one_rgb_stretch(synth_scenes: SynthResult) -> None:
    """TCI pixels are thumbnails.to_uint8 of the red/green/blue DN (at least 1: 0 is TCI's nodata)."""
    item = next(it for it in synth_scenes.items if it["properties"]["earthsearch:boa_offset_applied"])
    window = ((100, 140), (100, 140))
    with rasterio.open(item["assets"]["visual"]["href"]) as src:
        tci = src.read(window=window)
    expected = []
    for key in ("red", "green", "blue"):
        with rasterio.open(item["assets"][key]["href"]) as src:
            expected.append(np.maximum(thumbnails.to_uint8(src.read(1, window=window).astype(np.float64)), 1))
    # both are rounded from the same reflectance (DN are rounded to integers first): at most 1 apart
    assert np.abs(tci.astype(int) - np.stack(expected).astype(int)).max() <= 1
    assert tci.mean() > 20  # not the old 0..0.2 linear stretch's darker image of the same land
