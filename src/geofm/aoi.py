"""Areas of interest: read a GeoJSON (file or URL), check it, and hand back one WGS84 geometry."""

from __future__ import annotations

import json
from typing import Any

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from geofm import storage
from geofm.digest import digest_bytes
from geofm.errors import AoiError


def _geometries(obj: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict) or "type" not in obj:
        raise AoiError(f"{source}: not GeoJSON (no 'type' member)")
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features") or []
        return [g for f in feats for g in _geometries(f, source)]
    if kind == "Feature":
        geom = obj.get("geometry")
        return [] if geom is None else _geometries(geom, source)
    if kind == "GeometryCollection":
        return [g for sub in obj.get("geometries", []) for g in _geometries(sub, source)]
    return [obj]


def parse_aoi(obj: Any, source: str = "AOI") -> BaseGeometry:
    """One valid (Multi)Polygon in WGS84 from a GeoJSON object; raise :class:`AoiError` otherwise."""
    geoms = _geometries(obj, source)
    polys = []
    for g in geoms:
        if g.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            polys.append(shape(g))
        except Exception as exc:
            raise AoiError(f"{source}: unreadable {g.get('type')} ({exc})") from exc
    if not polys:
        found = sorted({str(g.get("type")) for g in geoms}) or ["nothing"]
        raise AoiError(f"{source}: no Polygon or MultiPolygon found (found {', '.join(found)})")
    for poly in polys:
        if not poly.is_empty and not poly.is_valid:
            reason = shapely.is_valid_reason(poly)
            raise AoiError(f"{source}: invalid geometry ({reason}); fix it, e.g. with shapely make_valid")
    geom = shapely.union_all(polys)
    if geom.is_empty or geom.area == 0:
        raise AoiError(f"{source}: the AOI geometry is empty")
    minx, miny, maxx, maxy = geom.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AoiError(f"{source}: coordinates outside WGS84 lon/lat ranges (bounds {geom.bounds}); "
                       "the AOI must be in EPSG:4326")
    if maxx - minx > 180:
        raise AoiError(f"{source}: the AOI spans {maxx - minx:.0f} degrees of longitude; an AOI crossing "
                       "the antimeridian is not supported: split it into two AOIs, one each side")
    return geom


def load_aoi(url: str) -> BaseGeometry:
    """Read and check the AOI GeoJSON at ``url`` (local path or s3://)."""
    if not storage.exists(url):
        raise AoiError(f"AOI file not found: {url}")
    try:
        obj = json.loads(storage.read_bytes(url))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AoiError(f"{url}: not valid JSON ({exc})") from exc
    return parse_aoi(obj, source=url)


def to_feature_collection(geom: BaseGeometry, name: str) -> dict[str, Any]:
    """The AOI as a one-feature GeoJSON FeatureCollection (what the input layout stores)."""
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {"aoi_name": name}, "geometry": mapping(geom)}],
    }


def aoi_identity(url: str) -> str | None:
    """Digest of the AOI file's content (what shapes the chips selected), or None when there is none."""
    try:
        return digest_bytes(storage.read_bytes(url))
    except FileNotFoundError:
        return None
