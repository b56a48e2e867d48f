"""Step 1 throughput against the one-core decode ceiling, on the same synthetic scenes, in the same run.

Scenes: ``geofm synth`` tile 33TWL, ``--dates`` scenes of ``--extent-m`` (default 4 scenes of 20.48 km =
2048 px: 64 chips of 256 px each), 12 L2A bands + SCL, the whole tile chipped (``whole_tile``).

- ceiling: one thread reads, for every chip of every scene, the chip's window of every band (13 windowed
  rasterio reads per chip, datasets opened once per scene) and nothing else: what decoding costs on one core.
- step 1, all cores: step 1 (``geofm preprocess``) over all the scenes with its defaults (scene workers x
  ``chip_threads`` = the CPU count), as ``geofm preprocess`` runs it.
- step 1, one scene: ``process_unit`` with ``chip_threads`` 1 and 2 (scaling within a scene).
- all cores, <setting>: step 1 as above with each other ``chip_compression`` (the default: ``fast``).
- ``--one-strip``: also step 1 with each window's coarse bands interpolated in one go (the baseline of
  ``geofm.scene.STRIP_ROWS``: strips of rows that stay in the cache).
- ``--reference``: also the reference approach of origin-notes section 2 on one scene (whole-tile read,
  resample to 10 m, reproject the stack to EPSG:4326, slice), as this benchmark measured before.

Each measure runs ``--repeats`` times, alternating, after one untimed warm-up of step 1; medians are
printed, and step 1's chips/s per core over the ceiling (target >= 0.25). Each measure's CPU time (this
process and its pool workers) is printed too: on a machine shared with other jobs the step does not get
its cores, and chips per CPU-second say what it does when it has them.

    .venv/bin/python benchmarks/bench_preprocess.py [--extent-m 20480] [--dates 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from PIL import Image
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from _machine import machine
from geofm import scene, sentinel2
from geofm.aoi import load_aoi
from geofm.config import DEFAULT_CHIP_COMPRESSION, PipelineConfig
from geofm.pipeline import run_step
from geofm.steps import preprocess
from geofm.steps.preprocess import Preprocess
from geofm.synth import SynthResult, synthesize

BANDS = [*sentinel2.L2A_BANDS, sentinel2.SCL_NAME]


def make_scenes(root: Path, extent_m: float, n_dates: int) -> SynthResult:
    """``n_dates`` synthetic scenes of tile 33TWL (summer dates, 5 days apart)."""
    dates = [date(2023, 6, 1) + timedelta(days=5 * i) for i in range(n_dates)]
    return synthesize(str(root), aoi_name="bench", grid="33TWL", dates=dates, extent_m=extent_m, seed=0,
                      into_layout=False)


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


def step_config(out: Path, chip_size: int, **kw: object) -> PipelineConfig:
    return PipelineConfig(aoi_name="bench", output_root=str(out), chip_size=chip_size, whole_tile=True, **kw)


def install(cfg: PipelineConfig, items: list[dict]) -> None:
    for item in items:
        path = Path(cfg.layout.scene_metadata(item["id"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(item))


def ceiling(items: list[dict], chip_size: int) -> int:
    """Window reads of every band of every chip, one thread, nothing else; returns the chips read."""
    n = 0
    for item in items:
        datasets = [rasterio.open(item["assets"][b]["href"]) for b in BANDS]
        try:
            fine = min(datasets, key=lambda d: d.res[0])
            for y in range(fine.height // chip_size):
                for x in range(fine.width // chip_size):
                    for ds in datasets:
                        k = fine.res[0] / ds.res[0]  # band pixels per fine pixel
                        c0, r0 = math.floor(x * chip_size * k), math.floor(y * chip_size * k)
                        c1, r1 = math.ceil((x + 1) * chip_size * k), math.ceil((y + 1) * chip_size * k)
                        ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                    n += 1
        finally:
            for ds in datasets:
                ds.close()
    return n


def fresh(out: Path, chip_size: int, items: list[dict], **kw: object) -> PipelineConfig:
    """An empty output root with the items installed (untimed)."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = step_config(out, chip_size, **kw)
    install(cfg, items)
    return cfg


def step1_all_cores(cfg: PipelineConfig) -> int:
    """Step 1 as ``geofm preprocess`` runs it (forced), defaults (all cores); returns the chips made."""
    report = run_step(Preprocess(), cfg.model_copy(update={"force": True}))
    assert report.ok, report.summary()
    return sum(int(r.info["chips"]) for r in report.results)


def step1_one_strip(cfg: PipelineConfig) -> int:
    """:func:`step1_all_cores` with every window interpolated in one strip (the pool's workers are forked
    while it runs, so they see the setting)."""
    saved = scene.STRIP_ROWS
    scene.STRIP_ROWS = sys.maxsize
    try:
        return step1_all_cores(cfg)
    finally:
        scene.STRIP_ROWS = saved


def step1_one_scene(cfg: PipelineConfig) -> int:
    """``process_unit`` for the one scene installed; returns the chips made."""
    return int(preprocess.process_unit(cfg, cfg.layout.scene_ids()[0]).info["chips"])


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


def run_ours(item: dict, aoi: str, chip_size: int, out: Path) -> int:
    """Step 1 on one scene's AOI chips (``process_unit``, default threads)."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(aoi_name="bench", aoi=aoi, output_root=str(out), chip_size=chip_size, force=True)
    install(cfg, [item])
    return int(preprocess.process_unit(cfg, item["id"]).info["chips"])


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(setup: Callable[[], object], fn: Callable[[object], int]) -> tuple[int, float, float]:
    """``fn(setup())``, only ``fn`` timed: (its result, wall seconds, CPU seconds)."""
    arg = setup()
    t, c = time.perf_counter(), cpu_seconds()
    n = fn(arg)
    return n, time.perf_counter() - t, cpu_seconds() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extent-m", type=float, default=20480.0, help="scene side in metres (tile: 109800)")
    ap.add_argument("--dates", type=int, default=4, help="scenes (dates) of the tile")
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one-strip", action="store_true",
                    help="also step 1 with windows interpolated in one strip (before geofm.scene.STRIP_ROWS)")
    ap.add_argument("--reference", action="store_true", help="also time the reference approach (AOI 10%%)")
    ap.add_argument("--out", default=None, help="where step 1 writes (default: the temporary folder; "
                    "/dev/shm keeps other jobs' disk traffic out of the figures on a shared machine)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-pre-") as tmp, \
            tempfile.TemporaryDirectory(prefix="bench-pre-out-", dir=args.out) as out_tmp:
        root = Path(tmp)
        t = time.perf_counter()
        items = make_scenes(root / "scenes", args.extent_m, args.dates).items
        print(f"{len(items)} scenes of {args.extent_m / 10:.0f} x {args.extent_m / 10:.0f} px at 10 m, 12 bands + "
              f"SCL, whole tile, chip {args.chip_size} (synth {time.perf_counter() - t:.1f} s); {cores} cores")
        out = Path(out_tmp)
        size = args.chip_size
        measures: dict[str, tuple[Callable[[], object], Callable[[object], int]]] = {
            "ceiling (1 core)": (lambda: items, lambda its: ceiling(its, size)),
            "step 1, all cores": (lambda: fresh(out / "all", size, items), step1_all_cores),
            "1 scene, 1 thread": (lambda: fresh(out / "one1", size, items[:1], chip_threads=1), step1_one_scene),
            "1 scene, 2 threads": (lambda: fresh(out / "one2", size, items[:1], chip_threads=2),
                                   step1_one_scene),
        }
        for other in (c for c in preprocess.CHIP_COMPRESSION if c != DEFAULT_CHIP_COMPRESSION):
            measures[f"all cores, {other}"] = (
                lambda c=other: fresh(out / f"all-{c}", size, items, chip_compression=c), step1_all_cores)
        if args.one_strip:
            measures["all cores, one strip"] = (lambda: fresh(out / "all-strip", size, items), step1_one_strip)
        if args.reference:
            item, aoi = make_scene(root / "ref-scene", args.extent_m, 0.1)
            measures["AOI 10%: ours"] = (lambda: None, lambda _: run_ours(item, aoi, size, out / "ours"))
            measures["AOI 10%: reference"] = (lambda: None, lambda _: run_reference(item, aoi, size, out / "ref"))
        step1_all_cores(fresh(out / "warm", size, items))  # untimed warm-up: imports, GDAL, PROJ, HDF5
        times: dict[str, list[float]] = {k: [] for k in measures}
        cpu: dict[str, list[float]] = {k: [] for k in measures}
        chips: dict[str, int] = {}
        load = os.getloadavg()[0]
        for _ in range(args.repeats):
            for name, (setup, fn) in measures.items():
                chips[name], seconds, cpu_s = timed(setup, fn)
                times[name].append(seconds)
                cpu[name].append(cpu_s)
        rate = {k: chips[k] / statistics.median(v) for k, v in times.items()}
        cpu_rate = {k: chips[k] / statistics.median(v) for k, v in cpu.items()}
        for k, v in times.items():
            print(f"{k:20s} chips {chips[k]:4d}  median {statistics.median(v):6.2f} s  "
                  f"({', '.join(f'{s:.2f}' for s in v)})  {rate[k]:7.1f} chips/s  "
                  f"{cpu_rate[k]:6.1f} chips per CPU-second")
        ceil = rate["ceiling (1 core)"]
        print(f"step 1 all cores, chips/s per core over the one-core ceiling: "
              f"{rate['step 1, all cores'] / cores / ceil:.3f} (target >= 0.25)")
        print(f"the same in CPU time (what it is when the step has its cores to itself): "
              f"{cpu_rate['step 1, all cores'] / cpu_rate['ceiling (1 core)']:.3f}")
        for k in (k for k in rate if k.startswith("all cores, ")):
            print(f"{k}: per core over the ceiling {rate[k] / cores / ceil:.3f}, in CPU time "
                  f"{cpu_rate[k] / cpu_rate['ceiling (1 core)']:.3f}")
        print(f"one scene, per core over the ceiling: 1 thread {rate['1 scene, 1 thread'] / ceil:.3f}, "
              f"2 threads {rate['1 scene, 2 threads'] / 2 / ceil:.3f}; 2 threads / 1 thread: "
              f"{rate['1 scene, 2 threads'] / rate['1 scene, 1 thread']:.2f}x")
        if args.reference:
            print(f"AOI 10%, ours / reference (chips per second): "
                  f"{rate['AOI 10%: ours'] / rate['AOI 10%: reference']:.1f}x")
        print(f"machine: {machine()}; load average at the start: {load:.2f}, at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
