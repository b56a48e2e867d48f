"""Step 0: find the scenes over the AOI in a STAC API and write their items and the AOI to the input
layout (``processing/<aoi>/input/``). One unit (the search); the search itself is :mod:`geofm.stac`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from geofm import storage
from geofm.aoi import aoi_identity, load_aoi, to_feature_collection
from geofm.config import PipelineConfig
from geofm.errors import ConfigError
from geofm.stac import find_scenes
from geofm.steps.base import Step, UnitOutput

log = logging.getLogger(__name__)
UNIT = "search"


class Discover(Step):
    """One STAC search; its outputs are the item JSONs and the AOI of the input layout. Always redone:
    the catalog grows (a monitoring run finds the scenes published since); rewriting an item with the
    same content redoes nothing downstream (step 1 keys on the item's content)."""

    name: ClassVar[str] = "discover"
    cacheable: ClassVar[bool] = False
    params: ClassVar[tuple[str, ...]] = ("start_date", "end_date", "stac_url", "collection",
                                         "max_cloud_cover", "grid_id", "max_items")

    def check(self, cfg: PipelineConfig) -> None:
        if not cfg.aoi:
            raise ConfigError("discover needs an AOI: give --aoi FILE (a GeoJSON polygon in EPSG:4326)")
        if not (cfg.start_date and cfg.end_date):
            raise ConfigError("discover needs a date range: give --start and --end")
        load_aoi(cfg.aoi)

    def units(self, cfg: PipelineConfig) -> list[str]:
        return [UNIT]

    def inputs(self, cfg: PipelineConfig, unit: str) -> Any:
        return {"aoi": aoi_identity(cfg.aoi) if cfg.aoi else None}

    def process(self, cfg: PipelineConfig, unit: str) -> UnitOutput:
        assert cfg.aoi is not None  # check() refused a run without one
        aoi = load_aoi(cfg.aoi)
        items = find_scenes(cfg, aoi)
        lay = cfg.layout
        outputs = []
        for item in items:
            url = lay.scene_metadata(item["id"])
            storage.write_json(url, item)
            outputs.append(url)
        storage.write_json(lay.aoi_geojson, to_feature_collection(aoi, cfg.aoi_name))
        log.info("%d scenes written to %s", len(items), lay.scenes_dir)
        return UnitOutput([*outputs, lay.aoi_geojson], {"scenes": len(items)})
