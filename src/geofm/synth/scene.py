"""Write a synthetic scene archive: COGs per band and date, items, AOI, land cover, planted-change truth."""

from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import box, mapping

from geofm import storage, thumbnails
from geofm.aoi import to_feature_collection
from geofm.errors import InputError
from geofm.layout import Layout
from geofm.sentinel2 import (
    BANDS,
    BOA_ADD_OFFSET,
    REFLECTANCE_SCALE,
    SCL_NAME,
    TILE_EXTENT_M,
    VISUAL_NAME,
    utm_epsg,
)
from geofm.synth import paths
from geofm.synth import spectra as sp
from geofm.synth.items import BASELINE_04_START, build_collection, build_item, platform_on
from geofm.synth.mgrs import parse_grid, tile_origin
from geofm.synth.render import (
    Landscape,
    PlantedChange,
    SkyPlan,
    block_mean,
    scene_classes,
    sky_plans,
    wedge_mask,
)

DEFAULT_DATES = [date(2023, 1, 15), date(2023, 3, 16), date(2023, 5, 15), date(2023, 7, 14),
                 date(2023, 9, 12), date(2023, 11, 11)]
CHANGE_CHIP_PX = 64  # planted changes cover whole 64 px chips (at 10 m) of the tile-anchored grid
AOI_SPAN = (0.2, 0.72)  # AOI square as shares of the extent, from the upper-left corner
_SCL_SHARE_KEYS = {2: "dark_features", 3: "cloud_shadow", 4: "vegetation", 5: "not_vegetated", 6: "water",
                   7: "unclassified", 8: "medium_proba_clouds", 9: "high_proba_clouds", 10: "thin_cirrus",
                   11: "snow_ice"}


@dataclass
class SynthResult:
    """What :func:`synthesize` made, and where. Paths are URLs (local paths or ``s3://``)."""

    root: str
    aoi_name: str
    grid: str
    epsg: int
    crs: str  # "EPSG:326xx"
    origin: tuple[float, float]  # upper-left (x, y) of the tile in UTM metres
    transform: Affine  # 10 m grid
    extent_m: float
    shape: tuple[int, int]  # (rows, cols) of the 10 m grid
    dates: list[date]
    scene_ids: list[str]
    items: list[dict[str, Any]]
    items_path: str
    aoi_path: str
    truth_path: str
    landcover_path: str  # land cover before any planted change
    landcover_paths: dict[str, str]  # scene id -> land cover on that date
    classes: list[dict[str, Any]]  # id, name, colour; 0 = nodata/ignore
    changes: list[PlantedChange]
    sky: dict[str, str]  # scene id -> clear | light | heavy
    cloud_cover: dict[str, float]  # scene id -> eo:cloud_cover (percent)
    archive_dir: str = ""
    scenario: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)

    def item(self, scene_id: str) -> dict[str, Any]:
        return next(i for i in self.items if i["id"] == scene_id)

    @property
    def clear_scene_ids(self) -> list[str]:
        return [s for s in self.scene_ids if self.sky[s] == "clear"]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """UTM (minx, miny, maxx, maxy) of the synthesized extent."""
        x0, y0 = self.origin
        return x0, y0 - self.extent_m, x0 + self.extent_m, y0


def _check(grid: str, dates: list[date], extent_m: float) -> None:
    parse_grid(grid)
    if not dates:
        raise InputError("dates: give at least one date")
    if len(set(dates)) != len(dates):
        raise InputError(f"dates: duplicates in {sorted(dates)}")
    if not 0 < extent_m <= TILE_EXTENT_M or extent_m % 20 != 0:
        raise InputError(f"extent_m: {extent_m} must be a multiple of 20 m in (0, {TILE_EXTENT_M:.0f}]")


def plant_changes(n_rows: int, dates: list[date]) -> list[PlantedChange]:
    """Forest cleared from the middle date, new water one date later, each covering whole 64 px chips."""
    if len(dates) < 2:
        return []
    nc = n_rows // CHANGE_CHIP_PX
    if nc < 3:
        return []
    k = max(1, nc // 4)
    m = 8 if nc >= 8 else 6

    def span(chip: int) -> tuple[int, int]:
        return max(chip * CHANGE_CHIP_PX - m, 0), min((chip + k) * CHANGE_CHIP_PX + m, n_rows)

    ordered = sorted(dates)
    mid = len(ordered) // 2
    forest = PlantedChange("forest_cleared", ordered[mid], sp.FOREST.id, sp.BARE.id,
                           span(max(1, nc // 4)), span(nc // 8))
    water = PlantedChange("new_water", ordered[min(mid + 1, len(ordered) - 1)], sp.GRASSLAND.id, sp.WATER.id,
                          span(nc // 2), span(nc // 2))
    return [forest, water]


class _Writers:
    """Temporary tiled GeoTIFFs for every asset of every date, written strip by strip."""

    def __init__(self, stack: ExitStack, tmp: Path, scene_ids: list[str], crs: str,
                 origin: tuple[float, float], shapes: dict[int, tuple[int, int]]):
        self.files: dict[tuple[str, str], Path] = {}
        self.ds: dict[tuple[str, str], Any] = {}
        x0, y0 = origin
        specs: list[tuple[str, int, str, int]] = [(b.band_id, b.resolution, "uint16", 1) for b in BANDS]
        specs += [("SCL", 20, "uint8", 1), ("TCI", 10, "uint8", 3), ("LC", 10, "uint8", 1)]
        todo = [(sid, spec) for sid in scene_ids for spec in specs] + [("base", ("LC", 10, "uint8", 1))]
        for sid, (name, res, dtype, count) in todo:
            if True:
                path = tmp / f"{sid}_{name}.tif"
                h, w = shapes[res]
                ds = stack.enter_context(rasterio.open(
                    path, "w", driver="GTiff", height=h, width=w, count=count, dtype=dtype, crs=crs,
                    transform=Affine(res, 0, x0, 0, -res, y0), nodata=0, tiled=True, blockxsize=256,
                    blockysize=256))
                self.files[(sid, name)] = path
                self.ds[(sid, name)] = ds


def _to_cog(src: Path, url: str, blocksize: int, resampling: str) -> None:
    with storage.local_file_for_write(url, ".tif") as tmp:
        rasterio.shutil.copy(src, tmp, driver="COG", compress="DEFLATE", level=1, predictor=2,
                             blocksize=blocksize, overview_resampling=resampling)


def _footprint(origin: tuple[float, float], extent_m: float) -> shapely.Polygon:
    """Data footprint in UTM: the extent minus the nodata wedge in its lower-left corner."""
    from geofm.synth.render import WEDGE_SHARE

    x0, y0 = origin
    ymin = y0 - extent_m
    leg = WEDGE_SHARE * extent_m
    wedge = shapely.Polygon([(x0, ymin), (x0 + leg, ymin), (x0, ymin + leg)])
    return box(x0, ymin, x0 + extent_m, y0).difference(wedge)


def _to_wgs84(geom: shapely.Geometry, epsg: int) -> shapely.Geometry:
    t = Transformer.from_crs(epsg, 4326, always_xy=True)
    dense = shapely.segmentize(geom, max(geom.length / 200, 10.0))
    return shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def synthesize(
    root: str,
    aoi_name: str = "synth",
    grid: str = "33TWL",
    dates: list[date] | None = None,
    extent_m: float = 10240.0,
    seed: int = 0,
    into_layout: bool = True,
    harmonised: bool = True,
    quiet: bool = True,
    scenario: str = "default",
) -> SynthResult:
    """Synthesize Sentinel-2 L2A scenes of MGRS tile ``grid`` on ``dates`` under ``root``.

    The scenes cover ``extent_m`` x ``extent_m`` from the tile's upper-left corner (109,800 for the
    whole tile). ``harmonised=False`` writes baseline-04.00 scenes with the +1000 DN offset still in
    the pixels and ``earthsearch:boa_offset_applied: false`` (for dates from 2022-01-25 on).
    ``scenario`` picks the landscape recipe (:data:`geofm.synth.spectra.SCENARIOS`): ``default``, or
    ``farmland`` (half the land in crops whose cycle shifts from year to year; give it dates over two
    or more years to compare change baselines against the seasons).
    """
    grid = grid.upper().removeprefix("MGRS-")
    recipe = sp.scenario(scenario)
    dates = sorted(dates or DEFAULT_DATES)
    _check(grid, dates, extent_m)
    epsg = utm_epsg(grid)
    crs = f"EPSG:{epsg}"
    origin = tile_origin(grid)
    x0, y0 = origin
    n10 = int(round(extent_m / 10))
    shapes = {10: (n10, n10), 20: (n10 // 2, n10 // 2), 60: (math.ceil(n10 / 6),) * 2}
    pad = shapes[60][0] * 6  # render on a 10 m grid padded to whole 60 m pixels
    scene_ids = [f"{platform_on(d)}_{grid}_{d:%Y%m%d}_0_L2A" for d in dates]
    plans: list[SkyPlan] = sky_plans(dates)
    changes = plant_changes(n10, dates)
    land = Landscape(pad, pad, plans, changes, seed, scenario=recipe)

    scl_counts = [np.zeros(12, np.int64) for _ in dates]
    blocksize = 512 if n10 >= 4096 else (256 if n10 >= 1024 else 64)
    strip_h = max(6, min(pad, (2_000_000 // pad) // 6 * 6))
    archive = paths.archive_dir(root)
    tmp = Path(tempfile.mkdtemp(prefix="geofm-synth-"))
    try:
        with ExitStack() as stack:
            w = _Writers(stack, tmp, scene_ids, crs, origin, shapes)
            for r0 in range(0, pad, strip_h):
                r1 = min(r0 + strip_h, pad)
                patches = land.patches(r0, r1)
                base = land.base_landcover(r0, patches)
                for i, sid in enumerate(scene_ids):
                    strip = land.render(r0, r1, i, patches, base)
                    _write_strip(w, sid, strip, r0, shapes, extent_m, scl_counts[i],
                                 offset=0 if harmonised or dates[i] < BASELINE_04_START else BOA_ADD_OFFSET)
                _write(w.ds[("base", "LC")], _lc_with_wedge(base, r0, shapes[10], extent_m), r0)
        hrefs_of: dict[str, dict[str, str]] = {}
        for sid in scene_ids:
            hrefs: dict[str, str] = {}
            for b in BANDS:
                url = paths.asset(root, sid, f"{b.band_id}.tif")
                size = blocksize if b.resolution == 10 else max(64, blocksize // 2)
                _to_cog(w.files[(sid, b.band_id)], url, size, "average")
                hrefs[b.name] = url
            hrefs[SCL_NAME] = paths.asset(root, sid, "SCL.tif")
            _to_cog(w.files[(sid, "SCL")], hrefs[SCL_NAME], max(64, blocksize // 2), "nearest")
            hrefs[VISUAL_NAME] = paths.asset(root, sid, "TCI.tif")
            _to_cog(w.files[(sid, "TCI")], hrefs[VISUAL_NAME], blocksize, "average")
            _to_cog(w.files[(sid, "LC")], paths.landcover(root, grid, sid), blocksize, "nearest")
            hrefs_of[sid] = {k: _absolute(v) for k, v in hrefs.items()}
        _to_cog(w.files[("base", "LC")], paths.landcover(root, grid), blocksize, "nearest")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    footprint = _to_wgs84(_footprint(origin, extent_m), epsg)
    lon = footprint.centroid.x
    items = []
    collection_url = paths.collection(root)
    for i, (sid, day) in enumerate(zip(scene_ids, dates, strict=True)):
        counts = scl_counts[i]
        valid = max(int(counts[1:].sum()), 1)
        shares = {name: 100.0 * counts[c] / valid for c, name in _SCL_SHARE_KEYS.items()}
        shares["nodata_pixel"] = 100.0 * counts[0] / max(int(counts.sum()), 1)
        cloud = 100.0 * (counts[8] + counts[9] + counts[10]) / valid
        item = build_item(grid=grid, day=day, epsg=epsg, origin=origin, extent_m=extent_m,
                          hrefs=hrefs_of[sid], shapes=shapes, geometry=mapping(footprint),
                          bbox=list(footprint.bounds), lon=lon,
                          cloud_cover=cloud, scl_shares=shares, collection_href=_absolute(collection_url),
                          harmonised=harmonised)
        assert item["id"] == sid
        items.append(item)

    items_path = paths.items(root, grid)
    storage.write_json(items_path, {"type": "FeatureCollection", "features": items})
    previous = storage.read_json(collection_url) if storage.exists(collection_url) else None
    storage.write_json(collection_url, build_collection(items, previous))
    aoi_geom = _to_wgs84(box(x0 + AOI_SPAN[0] * extent_m, y0 - AOI_SPAN[1] * extent_m,
                             x0 + AOI_SPAN[1] * extent_m, y0 - AOI_SPAN[0] * extent_m), epsg)
    aoi_fc = to_feature_collection(aoi_geom, aoi_name)
    aoi_path = paths.aoi(root, grid, aoi_name)
    storage.write_json(aoi_path, aoi_fc)
    truth_path = paths.truth(root, grid)
    storage.write_json(truth_path, _truth(changes, origin, epsg, grid))
    classes = [{"id": c.id, "name": c.name, "colour": c.colour} for c in sp.CLASSES]
    storage.write_json(paths.classes(root, grid), classes)
    if into_layout:
        lay = Layout(root, aoi_name)
        for item in items:
            storage.write_json(lay.scene_metadata(item["id"]), item)
        storage.write_json(lay.aoi_geojson, aoi_fc)
    return SynthResult(
        root=root, aoi_name=aoi_name, grid=grid, epsg=epsg, crs=crs, origin=origin,
        transform=Affine(10, 0, x0, 0, -10, y0), extent_m=float(extent_m), shape=shapes[10], dates=dates,
        scene_ids=scene_ids, items=items, items_path=items_path, aoi_path=aoi_path, truth_path=truth_path,
        landcover_path=paths.landcover(root, grid),
        landcover_paths={s: paths.landcover(root, grid, s) for s in scene_ids},
        classes=classes, changes=changes, sky={s: p.kind for s, p in zip(scene_ids, plans, strict=True)},
        cloud_cover={it["id"]: it["properties"]["eo:cloud_cover"] for it in items}, archive_dir=archive,
        scenario=recipe.name,
    )


def _absolute(url: str) -> str:
    return url if storage.is_remote(url) else str(Path(url).resolve())


def _truth(changes: list[PlantedChange], origin: tuple[float, float], epsg: int, grid: str) -> dict[str, Any]:
    x0, y0 = origin
    feats = []
    for ch in changes:
        minx, maxx = x0 + 10 * ch.cols[0], x0 + 10 * ch.cols[1]
        miny, maxy = y0 - 10 * ch.rows[1], y0 - 10 * ch.rows[0]
        geom = _to_wgs84(box(minx, miny, maxx, maxy), epsg)
        feats.append({"type": "Feature", "geometry": mapping(geom), "properties": {
            "kind": ch.kind, "start_date": ch.start_date.isoformat(),
            "from_class": sp.CLASSES[ch.from_class].name, "to_class": sp.CLASSES[ch.to_class].name,
            "mgrs_grid": grid, "crs": f"EPSG:{epsg}",
            "utm_minx": minx, "utm_miny": miny, "utm_maxx": maxx, "utm_maxy": maxy,
            "row_start": ch.rows[0], "row_stop": ch.rows[1], "col_start": ch.cols[0], "col_stop": ch.cols[1],
        }})
    return {"type": "FeatureCollection", "features": feats}


def _write(ds: Any, data: np.ndarray, row0: int) -> None:
    """Write the rows of ``data`` (2-D, or 3-D band-first) that fall inside ``ds``, from row ``row0``."""
    h, w = ds.height, ds.width
    n = min(data.shape[-2], h - row0)
    if n <= 0:
        return
    block = data[..., :n, :w]
    if block.ndim == 2:
        ds.write(block, 1, window=Window(0, row0, w, n))
    else:
        ds.write(block, window=Window(0, row0, w, n))


def _lc_with_wedge(lc: np.ndarray, r0: int, shape10: tuple[int, int], extent_m: float) -> np.ndarray:
    out = lc[:, : shape10[1]].copy()
    rows = np.arange(r0, r0 + lc.shape[0])
    out[wedge_mask(rows, out.shape[1], 10, extent_m)] = 0
    return out


def _write_strip(w: _Writers, sid: str, strip: Any, r0: int, shapes: dict[int, tuple[int, int]],
                 extent_m: float, scl_counts: np.ndarray, offset: int) -> None:
    """Write one rendered strip of one date into that date's band, SCL, TCI and land-cover files."""
    refl = strip.reflectance
    for res in (10, 20, 60):
        k = res // 10
        if r0 // k >= shapes[res][0]:
            continue
        picks = [bi for bi, b in enumerate(BANDS) if b.resolution == res]
        grid = refl[picks] if k == 1 else block_mean(refl[picks], k)
        rows = np.arange(r0 // k, r0 // k + grid.shape[1])
        nodata = wedge_mask(rows, grid.shape[2], res, extent_m)
        for gi, bi in enumerate(picks):
            b = BANDS[bi]
            dn = np.clip(np.round(grid[gi] * 10000.0), 1, 65535 - offset).astype(np.uint16)
            dn += np.uint16(offset)
            dn[nodata] = 0
            _write(w.ds[(sid, b.band_id)], dn, r0 // k)
        if res == 10:
            # the one RGB stretch (geofm.thumbnails); 0 is TCI's nodata, so valid pixels are at least 1
            rgb = np.maximum(thumbnails.to_uint8(refl[[3, 2, 1]] * REFLECTANCE_SCALE), 1)
            rgb[:, nodata] = 0
            _write(w.ds[(sid, "TCI")], rgb, r0)
            _write(w.ds[(sid, "LC")], _lc_with_wedge(strip.landcover, r0, shapes[10], extent_m), r0)
        if res == 20:
            scl = scene_classes(strip, 2)
            scl[nodata] = 0
            inside = scl[: max(0, min(scl.shape[0], shapes[20][0] - r0 // 2)), : shapes[20][1]]
            scl_counts += np.bincount(inside.ravel(), minlength=12)[:12]
            _write(w.ds[(sid, "SCL")], scl, r0 // 2)
