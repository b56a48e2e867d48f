"""Searching a STAC API for Sentinel-2 scenes over an AOI and keeping one processing of each tile and
date (the work of step 0, :mod:`geofm.steps.discover`)."""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from geofm.config import PipelineConfig
from geofm.errors import NotFoundError, StacError
from geofm.sentinel2 import parse_scene_id, processing_baseline

log = logging.getLogger(__name__)
DEFAULT_PAGE_SIZE = 100


def item_grid(item: dict[str, Any]) -> str | None:
    """MGRS tile of an item: ``grid:code``, else the ``mgrs:*`` properties, else the scene id."""
    p = item.get("properties", {})
    code = p.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    if all(k in p for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        return f"{int(p['mgrs:utm_zone'])}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}".upper()
    try:
        return parse_scene_id(str(item.get("id"))).grid
    except ValueError:
        return None


def item_date(item: dict[str, Any]) -> date:
    """Acquisition date (UTC) from ``datetime``, else from the scene id."""
    raw = item.get("properties", {}).get("datetime")
    if raw:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).date()
    return parse_scene_id(str(item["id"])).date


def _sequence(item: dict[str, Any]) -> int:
    seq = item.get("properties", {}).get("s2:sequence")
    if seq is not None:
        try:
            return int(seq)
        except ValueError:
            pass
    try:
        return parse_scene_id(str(item["id"])).sequence
    except ValueError:
        return 0


def _rank(item: dict[str, Any]) -> tuple[tuple[int, int], int, str]:
    """Which processing of a tile and date wins: highest baseline, then latest sequence, then update."""
    p = item.get("properties", {})
    try:
        baseline = processing_baseline(p) or (-1, -1)
    except ValueError:
        baseline = (-1, -1)
    return baseline, _sequence(item), str(p.get("updated") or p.get("created") or "")


def deduplicate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one item per (MGRS tile, date): the highest processing baseline, then the latest sequence."""
    best: dict[tuple[str, date], dict[str, Any]] = {}
    for item in items:
        key = (item_grid(item) or str(item.get("id")), item_date(item))
        if key not in best or _rank(item) > _rank(best[key]):
            if key in best:
                log.info("duplicate of %s %s: keeping %s over %s", *key, item["id"], best[key]["id"])
            best[key] = item
        else:
            log.info("duplicate processing of %s %s: dropping %s", *key, item["id"])
    return sorted(best.values(), key=lambda it: (str(it["properties"].get("datetime")), it["id"]))


def _keep(item: dict[str, Any], cfg: PipelineConfig, aoi: BaseGeometry) -> bool:
    """Client-side filters, since some APIs (``rustac serve``) ignore ``query``/``filter``."""
    p = item.get("properties", {})
    cloud = p.get("eo:cloud_cover")
    if cloud is not None and float(cloud) >= cfg.max_cloud_cover:
        return False
    day = item_date(item)
    if (cfg.start_date and day < cfg.start_date) or (cfg.end_date and day > cfg.end_date):
        return False
    if cfg.grid_id and item_grid(item) != cfg.grid_id:
        return False
    geom = item.get("geometry")
    return geom is None or shape(geom).intersects(aoi)


def describe(cfg: PipelineConfig) -> str:
    parts = [f"collection {cfg.collection!r}", f"AOI {cfg.aoi}",
             f"dates {cfg.start_date or '..'} to {cfg.end_date or '..'}",
             f"eo:cloud_cover < {cfg.max_cloud_cover:g}"]
    if cfg.grid_id:
        parts.append(f"MGRS grid {cfg.grid_id}")
    return ", ".join(parts)


def search(
    cfg: PipelineConfig, aoi: BaseGeometry, page_size: int = DEFAULT_PAGE_SIZE
) -> list[dict[str, Any]]:
    """Run the item search (all pages) and apply the client-side filters; no deduplication."""
    try:
        client = Client.open(cfg.stac_url, timeout=30)
    except Exception as exc:  # APIError, requests' connection errors, bad JSON...
        raise StacError(f"STAC API {cfg.stac_url} did not answer: {exc}") from exc
    kwargs: dict[str, Any] = {"collections": [cfg.collection], "intersects": mapping(aoi), "limit": page_size}
    if cfg.start_date or cfg.end_date:
        kwargs["datetime"] = f"{cfg.start_date or '..'}/{cfg.end_date or '..'}"
    if client.conforms_to(ConformanceClasses.QUERY):
        kwargs["query"] = {"eo:cloud_cover": {"lt": cfg.max_cloud_cover}}
    try:
        found = list(client.search(**kwargs).items_as_dicts())
    except Exception as exc:
        raise StacError(f"STAC search at {cfg.stac_url} failed: {exc}") from exc
    return [it for it in found if _keep(it, cfg, aoi)]


def find_scenes(cfg: PipelineConfig, aoi: BaseGeometry, page_size: int = DEFAULT_PAGE_SIZE
                ) -> list[dict[str, Any]]:
    """The scenes of ``cfg`` over ``aoi``: searched, filtered, deduplicated, at most ``max_items``;
    none found raises :class:`~geofm.errors.NotFoundError` describing the search."""
    items = deduplicate(search(cfg, aoi, page_size))
    if cfg.max_items:
        items = items[: cfg.max_items]
    if not items:
        raise NotFoundError(f"no scenes found at {cfg.stac_url} for {describe(cfg)}")
    return items
