"""Paths of the synthetic Sentinel-2 archive that ``geofm synth`` writes under a root (shared by every
AOI under that root): what a STAC API's asset hrefs point to."""

from __future__ import annotations

from geofm.layout import join


def archive_dir(root: str) -> str:
    """Folder of the synthetic scene archive: what a STAC API's asset hrefs point to."""
    return join(root, "synthetic-archive")


def collection(root: str) -> str:
    """The STAC collection (``sentinel-2-l2a``) that every synthetic item links to."""
    return join(archive_dir(root), "collection.json")


def scene_dir(root: str, scene_id: str) -> str:
    return join(archive_dir(root), "scenes", scene_id)


def asset(root: str, scene_id: str, file_name: str) -> str:
    """One asset file of a synthetic scene, e.g. ``B04.tif``, ``SCL.tif``, ``TCI.tif``."""
    return join(scene_dir(root, scene_id), file_name)


def grid_dir(root: str, grid: str) -> str:
    return join(archive_dir(root), grid)


def items(root: str, grid: str) -> str:
    """FeatureCollection of every synthetic item of a tile (what ``rustac serve`` loads)."""
    return join(grid_dir(root, grid), "items.json")


def aoi(root: str, grid: str, aoi_name: str) -> str:
    return join(grid_dir(root, grid), f"aoi_{aoi_name}.geojson")


def truth(root: str, grid: str) -> str:
    """Ground truth of the planted changes (GeoJSON, EPSG:4326)."""
    return join(grid_dir(root, grid), "planted_changes.geojson")


def landcover(root: str, grid: str, scene_id: str | None = None) -> str:
    """Land-cover COG (uint8, 10 m): before any change, or as on one scene's date."""
    name = "landcover.tif" if scene_id is None else f"landcover_{scene_id}.tif"
    return join(grid_dir(root, grid), name)


def classes(root: str, grid: str) -> str:
    return join(grid_dir(root, grid), "classes.json")
