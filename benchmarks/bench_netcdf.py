"""Step 1's chip NetCDF writer: ours (h5py, ``geofm.netcdf``) against xarray's ``to_netcdf`` (h5netcdf).

Both write the same chip datasets (``preprocess.chip_dataset`` on the AOI chips of one ``geofm synth``
scene: 12 bands + SCL, real-looking land cover, so compression ratios are realistic), gzip level 1 +
shuffle (ours: at each ``chip_compression``). Part 1 times the write alone per chip, alternating the
writers, ``--repeats`` rounds over all chips; part 2 times the whole of step 1 for the scene
(``process_unit``: reads, NetCDF, PNG, meta) with each writer (ours: ``chip_netcdf`` straight from the
arrays, default ``chip_compression``), alternating, after one untimed warm-up. Medians and ratios are
printed.

    .venv/bin/python benchmarks/bench_netcdf.py [--extent-m 20480] [--chip-size 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from _machine import machine
from bench_preprocess import make_scene, run_ours
from geofm.aoi import load_aoi
from geofm.config import DEFAULT_CHIP_COMPRESSION, PipelineConfig
from geofm.scene import SceneReader, item_datetime
from geofm.steps import preprocess

Writer = Callable[[xr.Dataset], bytes]


def xarray_bytes(ds: xr.Dataset) -> bytes:
    """The previous writer: xarray + h5netcdf, zlib level 1 + shuffle on every data variable."""
    encoding = {v: {"zlib": True, "complevel": 1, "shuffle": True}
                for v in ds.data_vars}
    return bytes(ds.to_netcdf(engine=preprocess.NETCDF_ENGINE, encoding=encoding))


OURS = f"ours, {DEFAULT_CHIP_COMPRESSION}"  # the default chip_compression
WRITERS: dict[str, Writer] = {"xarray (before)": xarray_bytes,
                              **{f"ours, {c}": functools.partial(preprocess.netcdf_bytes, compression=c)
                                 for c in preprocess.CHIP_COMPRESSION}}


def read_all(blob: bytes) -> np.ndarray:
    """What step 2 does with a chip: open it and read every band."""
    with xr.open_dataset(io.BytesIO(blob), engine=preprocess.NETCDF_ENGINE) as ds:
        return np.stack([ds[v].values.astype(np.float32) for v in ds.data_vars])


def chip_datasets(item: dict, aoi: str, chip_size: int, root: Path) -> list[xr.Dataset]:
    """The chip datasets step 1 writes for the scene's AOI chips."""
    cfg = PipelineConfig(aoi_name="bench", aoi=aoi, output_root=str(root), chip_size=chip_size)
    bands = list(cfg.s2_bands)
    when = item_datetime(item)
    out = []
    with SceneReader(item, bands, item["id"], str(root / "item.json")) as reader:
        grid = reader.grid(chip_size)
        for chip in grid.chips_meeting(load_aoi(aoi)):
            data = reader.read_chip(grid, chip)
            attrs = {"scene_id": item["id"], "chip_id": chip.chip_id, "bands": bands}
            out.append(preprocess.chip_dataset(data, bands, grid, chip, attrs, when))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extent-m", type=float, default=20480.0)
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--aoi-share", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nc-") as tmp:
        root = Path(tmp)
        item, aoi = make_scene(root / "scene", args.extent_m, args.aoi_share)
        chips = chip_datasets(item, aoi, args.chip_size, root)
        n_vars = len(chips[0].data_vars)
        print(f"{len(chips)} chips of {args.chip_size} px, {n_vars} variables each")
        sizes = {k: sum(len(w(ds)) for ds in chips) / len(chips) for k, w in WRITERS.items()}  # + warm-up
        per_chip: dict[str, list[float]] = {k: [] for k in WRITERS}
        for _ in range(args.repeats):
            for ds in chips:
                for name, write in WRITERS.items():
                    t = time.perf_counter()
                    write(ds)
                    per_chip[name].append(time.perf_counter() - t)
        reads: dict[str, list[float]] = {k: [] for k in WRITERS}
        blobs = {k: [w(ds) for ds in chips] for k, w in WRITERS.items()}
        for _ in range(args.repeats):
            for i in range(len(chips)):
                for name in WRITERS:
                    t = time.perf_counter()
                    read_all(blobs[name][i])
                    reads[name].append(time.perf_counter() - t)
        print("part 1: NetCDF write per chip (and read back of every band, as step 2 does)")
        med = {k: statistics.median(v) for k, v in per_chip.items()}
        for k in WRITERS:
            print(f"  {k:16s} write median {med[k] * 1000:7.1f} ms/chip  file {sizes[k] / 1e6:.3f} MB  "
                  f"read median {statistics.median(reads[k]) * 1000:6.1f} ms/chip")
        print(f"  ratio (before / ours, write time): {med['xarray (before)'] / med[OURS]:.2f}x")

        # the step's chip writer: ours straight from the arrays, or xarray's on the chip's Dataset
        def before(data: dict, bands: list[str], grid: object, chip: object, attrs: dict, when: object,
                   compression: str = "") -> bytes:
            return xarray_bytes(preprocess.chip_dataset(data, bands, grid, chip, attrs, when))

        step_writers = {"xarray (before)": before, OURS: preprocess.chip_netcdf}
        step: dict[str, list[float]] = {k: [] for k in step_writers}
        n = 0
        run_ours(item, aoi, args.chip_size, root / "warm")
        for _ in range(max(3, args.repeats // 2)):
            for name, write in step_writers.items():
                preprocess.chip_netcdf = write  # the step's writer, swapped for this run
                t = time.perf_counter()
                n = run_ours(item, aoi, args.chip_size, root / "step")
                step[name].append(time.perf_counter() - t)
        preprocess.chip_netcdf = step_writers[OURS]
        print(f"part 2: step 1 process_unit, {n} AOI chips")
        smed = {k: statistics.median(v) for k, v in step.items()}
        for k in step_writers:
            print(f"  {k:16s} median {smed[k]:6.2f} s  ({', '.join(f'{s:.2f}' for s in step[k])})  "
                  f"{n / smed[k]:5.2f} chips/s")
        print(f"  ratio (ours / before, chips per second): {smed['xarray (before)'] / smed[OURS]:.2f}x")
        print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
