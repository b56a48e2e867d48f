"""Step 1 throughput: AOI chips per second for one scene, ours against the reference approach.

Ours: :func:`geofm.steps.preprocess.process_unit`, windowed reads of only the chips that meet the AOI, on the
native UTM grid (coarser bands interpolated per chip), NetCDF + PNG per chip and the meta GeoParquet.
Reference (../shared/reference/origin-notes.md section 2): read every band of the whole tile (rioxarray,
masked), resample 20/60 m bands bilinear (SCL nearest) to the 10 m grid, reproject the whole stack to
EPSG:4326, then slice chips. To favour the reference, it writes only the chips that meet the AOI (NetCDF +
PNG) instead of all of them. Both run in this process, alternating, on the same synthetic scene (``geofm synth``,
12 bands + SCL), ``--repeats`` times each after one untimed warm-up; medians and the ratio are printed.

    .venv/bin/python benchmarks/bench_preprocess.py [--extent-m 20480] [--chip-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import rioxarray
import xarray as xr
from PIL import Image
from pyproj import Transformer
from rasterio.enums import Resampling
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from _machine import machine
from geofm import sentinel2
from geofm.aoi import load_aoi
from geofm.config import PipelineConfig
from geofm.steps import preprocess
from geofm.synth import synthesize


def make_scene(root: Path, extent_m: float, aoi_share: float) -> tuple[dict, str]:
    """One synthetic scene and an AOI square covering ``aoi_share`` of it (centred)."""
    res = synthesize(str(root), aoi_name="bench", grid="33TWL", dates=[date(2023, 7, 14)], extent_m=extent_m,
                     seed=0, into_layout=False)
    x0, y0 = res.origin
    side = extent_m * aoi_share ** 0.5
    lo = (extent_m - side) / 2
    utm = box(x0 + lo, y0 - lo - side, x0 + lo + side, y0 - lo)
    to_wgs = Transformer.from_crs(res.crs, "EPSG:4326", always_xy=True)
    geom = shp_transform(lambda x, y: to_wgs.transform(x, y), utm.segmentize(100))
    aoi_path = root / "aoi.geojson"
    aoi_path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(geom)}]}))
    return res.items[0], str(aoi_path)


def run_ours(item: dict, aoi: str, chip_size: int, out: Path) -> int:
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(aoi_name="bench", aoi=aoi, output_root=str(out), chip_size=chip_size, force=True)
    Path(cfg.layout.scene_metadata(item["id"])).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.layout.scene_metadata(item["id"])).write_text(json.dumps(item))
    return int(preprocess.process_unit(cfg, item["id"]).info["chips"])


def run_reference(item: dict, aoi: str, chip_size: int, out: Path) -> int:
    """origin-notes section 2: whole tile, resample to B02's grid, reproject to EPSG:4326, slice."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = [b.name for b in sorted(sentinel2.BANDS, key=lambda b: b.resolution)]  # 10 m, 20 m, 60 m
    ref = rioxarray.open_rasterio(item["assets"]["blue"]["href"], masked=True).squeeze("band", drop=True)
    layers = {}
    for name in [*names, "scl"]:
        da = rioxarray.open_rasterio(item["assets"][name]["href"], masked=True).squeeze("band", drop=True)
        if da.rio.resolution() != ref.rio.resolution():
            da = da.rio.reproject_match(ref, resampling=Resampling.nearest if name == "scl"
                                        else Resampling.bilinear)
        layers[name] = da
    stack = xr.Dataset(layers).assign_coords(time=np.datetime64(item["properties"]["datetime"][:19]))
    stack = stack.rio.write_crs(ref.rio.crs).rio.reproject("EPSG:4326", nodata=np.nan)
    aoi_geom = load_aoi(aoi)
    n = 0
    ny, nx = stack.sizes["y"], stack.sizes["x"]
    for y in range(0, ny - chip_size + 1, chip_size):
        for x in range(0, nx - chip_size + 1, chip_size):
            chip = stack.isel(y=slice(y, y + chip_size), x=slice(x, x + chip_size))
            if not box(*chip.rio.bounds()).intersects(aoi_geom):
                continue
            chip.to_netcdf(out / f"chip_{x // chip_size}_{y // chip_size}.nc", engine="h5netcdf")
            rgb = np.dstack([chip[b].values for b in ("red", "green", "blue")]).astype(np.float64)
            lo, hi = np.nanmin(rgb, axis=(0, 1)), np.nanmax(rgb, axis=(0, 1))  # per-chip min-max stretch
            img = np.nan_to_num((rgb - lo) / np.where(hi > lo, hi - lo, 1) * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            (out / f"chip_{x // chip_size}_{y // chip_size}.png").write_bytes(buf.getvalue())
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extent-m", type=float, default=20480.0, help="scene side in metres (tile: 109800)")
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--aoi-share", type=float, default=0.1, help="AOI area as a share of the scene")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pre-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        item, aoi = make_scene(root / "scene", args.extent_m, args.aoi_share)
        print(f"scene: {args.extent_m / 10:.0f} x {args.extent_m / 10:.0f} px at 10 m, 12 bands + SCL, "
              f"chip {args.chip_size}, AOI {args.aoi_share:.0%} of the scene (synth {time.perf_counter() - t:.1f} s)")
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        chips: dict[str, int] = {}
        run_ours(item, aoi, args.chip_size, root / "warm")  # untimed warm-up: imports, GDAL, PROJ, HDF5
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("reference", run_reference)):
                t = time.perf_counter()
                chips[name] = fn(item, aoi, args.chip_size, root / name)
                times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: chips[k] / med[k] for k in med}
        for k in med:
            print(f"{k:10s} chips {chips[k]:3d}  median {med[k]:7.2f} s  ({', '.join(f'{s:.2f}' for s in times[k])})"
                  f"  {rate[k]:6.2f} chips/s")
        print(f"ratio (ours / reference, chips per second): {rate['ours'] / rate['reference']:.1f}x")
        print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
