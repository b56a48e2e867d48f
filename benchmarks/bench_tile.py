"""A whole MGRS tile on one machine: a synthetic 10,980 px tile (``geofm synth --extent 109800``) through
every processing step, at growing AOIs from 4 chips per date to the whole tile (1,764 chips of 256 px).

For each size it runs ``geofm run`` (the CLI, local executor, ``spectral`` encoder) in a child process
and prints the seconds of each step, chip-dates per second, output bytes per chip-date (by artifact) and
the peak memory of the whole run: the sum over the run's process tree (driver and pool workers) of the
resident set (RSS, an upper bound: pages shared after fork count once per process) and of the
proportional set (PSS, shared pages split between their users), sampled from /proc every
``--sample-s``; the step running at the peak is named. Then it fits seconds and peak memory against
chip-dates (``y = a + b x``, and the log-log slope k over the larger sizes: 1 means linear, 0 flat) and
extrapolates to a tile-year (50 dates): seconds linearly, peak memory by k from the largest size.

Resumable: the synthetic tile and each size's figures are kept under ``--work`` (``results.json``); a
rerun measures only the sizes not yet there (``--redo`` measures them again), so the long whole-tile
run can be done alone (``--sizes 1764``). Each size starts from an empty output root, deleted after it is
measured (``--keep`` keeps it). Needs about 4 GB of disk for the tile's 2 dates plus 1.5 MB per chip-date
of the largest size.

Run: .venv/bin/python benchmarks/bench_tile.py [--sizes 4,16,64,256,1764] [--dates 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import yaml
from pyproj import Transformer

from _machine import machine
from geofm import storage
from geofm.aoi import to_feature_collection
from geofm.layout import Layout
from geofm.sentinel2 import TILE_EXTENT_M, utm_epsg
from geofm.synth import paths
from geofm.synth.mgrs import tile_origin

GRID = "33TWL"
AOI = "tile"
# Two clear dates (synth: first and last dates are clear); the planted changes start on the second.
DATES = [date(2023, 6, 10), date(2023, 8, 20), date(2023, 9, 29), date(2023, 11, 8)]
STEPS = ("preprocess", "embed", "analyze", "consolidate")
PAGE = os.sysconf("SC_PAGE_SIZE")
GB = 2**30


# ---- memory of a process tree ----------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc (children of children included)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [p for p, pp in parent.items() if pp == pid]
    return out


def _rss_pss(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss = rss
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


@dataclass
class Sampler:
    """Samples the summed RSS and PSS of a process tree every ``every`` seconds, in a thread."""

    pid: int
    every: float
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # time, rss, pss, processes
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            sizes = [_rss_pss(p) for p in pids]
            self.samples.append((time.time(), sum(s[0] for s in sizes), sum(s[1] for s in sizes), len(pids)))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = math.inf) -> tuple[int, int]:
        """Peak summed RSS and PSS between ``start`` and ``end`` (Unix seconds)."""
        inside = [s for s in self.samples if start <= s[0] <= end] or [(0.0, 0, 0, 0)]
        return max(s[1] for s in inside), max(s[2] for s in inside)


def run_measured(cmd: Sequence[str], every: float, log: Path) -> tuple[float, Sampler]:
    """Run ``cmd`` (output to ``log``) while sampling its process tree; fails loudly when it fails."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, every)
        rc = proc.wait()
        sampler.stop()
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}; its output: {log}\n{log.read_text()[-3000:]}")
    return seconds, sampler


# ---- the synthetic tile and the AOIs ---------------------------------------------------------------
def synth_tile(work: Path, args: argparse.Namespace, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The synthetic tile's items, synthesized once per (extent, dates, seed) and kept in ``work``."""
    archive = work / "archive"
    key = {"extent": args.extent, "dates": [d.isoformat() for d in DATES[: args.dates]], "grid": GRID}
    done = archive / "done.json"
    if done.is_file() and json.loads(done.read_text()) == key and "synth" in results:
        print(f"synthetic tile: kept from an earlier run ({archive})")
    else:
        shutil.rmtree(archive, ignore_errors=True)
        archive.mkdir(parents=True)
        cmd = [sys.executable, "-m", "geofm.cli", "synth", "--out", str(archive), "--grid", GRID,
               "--extent", str(args.extent), "--dates", ",".join(key["dates"]), "--no-into-layout"]
        seconds, sampler = run_measured(cmd, args.sample_s, work / "synth.log")
        rss, pss = sampler.peak()
        results["synth"] = {"seconds": seconds, "peak_rss": rss, "peak_pss": pss,
                            "bytes": folder_bytes(archive)}
        done.write_text(json.dumps(key))
        save(work, results)
    s = results["synth"]
    print(f"synthetic tile {args.extent:.0f} m, {args.dates} dates: {s['seconds']:.0f} s, peak RSS "
          f"{s['peak_rss'] / GB:.2f} GB, {s['bytes'] / GB:.2f} GB of COGs")
    return storage.read_json(paths.items(str(archive), GRID))["features"]


def chips_per_side(args: argparse.Namespace) -> int:
    return int(round(args.extent / 10)) // args.chip_size


def aoi_of(side: int, args: argparse.Namespace) -> dict[str, Any]:
    """A square AOI of ``side`` x ``side`` chips from chip (1, 1) (away from the tile's nodata corner):
    the chips' UTM square shrunk by 5 m, so exactly those chips meet it."""
    x0, y0 = tile_origin(GRID)
    step = args.chip_size * 10.0
    square = shapely.box(x0 + step + 5, y0 - step * (1 + side) + 5, x0 + step * (1 + side) - 5, y0 - step - 5)
    to_ll = Transformer.from_crs(utm_epsg(GRID), 4326, always_xy=True)
    dense = shapely.segmentize(square, 100.0)
    ll = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return to_feature_collection(ll, f"{side}x{side} chips")


# ---- one size --------------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(size: int, items: list[dict[str, Any]], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run every step on an AOI of ``size`` chips per date into a fresh root; its figures."""
    side = math.isqrt(size)
    whole = chips_per_side(args)
    if side * side != size or side > whole - (0 if size == whole * whole else 1):
        raise SystemExit(f"--sizes: {size} is not a square of at most {(whole - 1) ** 2} chips, nor the "
                         f"whole tile's {whole * whole}")
    root = work / "runs" / str(size)
    shutil.rmtree(root, ignore_errors=True)
    lay = Layout(str(root), AOI)
    for item in items:
        storage.write_json(lay.scene_metadata(item["id"]), item)
    cfg: dict[str, Any] = {"aoi_name": AOI, "output_root": str(root), "model": "spectral",
                           "chip_size": args.chip_size, "batch_size": args.batch_size, "workers": args.workers}
    if size == whole * whole:
        cfg["whole_tile"] = True
    else:
        cfg["aoi"] = str(work / f"aoi_{size}.geojson")
        storage.write_json(cfg["aoi"], aoi_of(side, args))
    config = work / f"run_{size}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "geofm.cli", "run", "--config", str(config), "--skip-discover", "--quiet"]
    seconds, sampler = run_measured(cmd, args.sample_s, work / f"run_{size}.log")
    record = storage.read_json(sorted(Path(lay.runs_dir).glob("*.json"))[-1].as_posix())
    started = datetime.fromisoformat(record["started"]).timestamp()
    steps, t = {}, started
    for rep in record["reports"]:
        rss, pss = sampler.peak(t, t + rep["seconds"])
        steps[rep["step"]] = {"seconds": rep["seconds"], "peak_rss": rss, "peak_pss": pss}
        t += rep["seconds"]
    pre = next(r for r in record["reports"] if r["step"] == "preprocess")
    emb = next(r for r in record["reports"] if r["step"] == "embed")
    out_dir = Path(lay.output_dir)
    artifacts = {p.name: folder_bytes(p) for p in out_dir.iterdir() if p.is_dir()}
    rss, pss = sampler.peak()
    result = {
        "chips_per_date": size, "dates": len(items), "seconds": seconds, "peak_rss": rss, "peak_pss": pss,
        "processes_max": max(s[3] for s in sampler.samples),
        "chip_dates": sum(r["info"].get("chips", 0) for r in pre["results"]),
        "embedded": sum(r["info"].get("embedded", 0) for r in emb["results"]),
        "steps": steps, "output_bytes": folder_bytes(out_dir), "artifacts": artifacts, "ok": record["ok"],
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


# ---- report ----------------------------------------------------------------------------------------
def save(work: Path, results: dict[str, Any]) -> None:
    tmp = work / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(work / "results.json")


def fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``y = a + b x`` by least squares (a, b, R²) and the log-log slope over the larger half of x."""
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    r2 = 1 - float(((y - pred) ** 2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
    big = x >= np.median(x)
    k = float(np.polyfit(np.log(x[big]), np.log(y[big]), 1)[0]) if big.sum() >= 2 else math.nan
    return float(a), float(b), r2, k


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = sorted(results["sizes"].values(), key=lambda r: r["chips_per_date"])
    if not sizes:
        return
    print(f"\n{machine()}; {results['when']}; spectral, {args.chip_size} px chips, {args.workers} workers, "
          f"batch {args.batch_size}")
    head = (f"{'chips/date':>10} {'chip-dates':>10} {'total s':>8} " + " ".join(f"{s[:10]:>10}" for s in STEPS)
            + f" {'c-d/s':>6} {'MB/c-d':>7} {'peak RSS':>9} {'peak PSS':>9}  peak in")
    print(head)
    for r in sizes:
        st = r["steps"]
        at = max(st, key=lambda s: st[s]["peak_pss"])
        print(f"{r['chips_per_date']:>10} {r['chip_dates']:>10} {r['seconds']:>8.1f} "
              + " ".join(f"{st[s]['seconds']:>10.1f}" for s in STEPS)
              + f" {r['chip_dates'] / r['seconds']:>6.2f} {r['output_bytes'] / r['chip_dates'] / 2**20:>7.2f}"
              f" {r['peak_rss'] / GB:>7.2f}GB {r['peak_pss'] / GB:>7.2f}GB  {at}")
    big = sizes[-1]
    print(f"\noutput per chip-date at {big['chips_per_date']} chips/date, by artifact (MB): "
          + ", ".join(f"{k} {v / big['chip_dates'] / 2**20:.3f}" for k, v in sorted(big["artifacts"].items())))
    print("per-step peak memory (PSS, GB) at each size: " + "; ".join(
        f"{r['chips_per_date']}: " + " ".join(f"{s[:4]} {r['steps'][s]['peak_pss'] / GB:.2f}" for s in STEPS)
        for r in sizes))
    if len(sizes) < 3:
        return
    x = np.array([r["chip_dates"] for r in sizes], float)
    print(f"\nfits over {len(sizes)} sizes, x = chip-dates: y = a + b x (R²), log-log slope k over the larger half")
    series = {"total s": [r["seconds"] for r in sizes]}
    series |= {f"{s} s": [r["steps"][s]["seconds"] for r in sizes] for s in STEPS}
    series |= {"peak RSS GB": [r["peak_rss"] / GB for r in sizes], "peak PSS GB": [r["peak_pss"] / GB for r in sizes]}
    year = 50 * chips_per_side(args) ** 2
    x_big, last = x[-1], {name: ys[-1] for name, ys in series.items()}
    for name, ys in series.items():
        a, b, r2, k = fit(x, np.array(ys, float))
        # a tile-year (50 dates): seconds by the linear fit; memory, which levels off, by the log-log slope
        # from the largest size (a linear fit of a plateau would extrapolate its noise)
        year_value = a + b * year if name.endswith(" s") else last[name] * (year / x_big) ** max(k, 0.0)
        print(f"  {name:>16}: a {a:9.3f}  b {b:.5f}/chip-date  R² {r2:.3f}  k {k:.2f}  "
              f"tile-year ({year} chip-dates): {year_value:,.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,16,64,256,1764", help="chips per date, squares (1764: whole tile)")
    parser.add_argument("--dates", type=int, default=2, help=f"first N of {len(DATES)} dates (>= 2)")
    parser.add_argument("--extent", type=float, default=TILE_EXTENT_M, help="tile side synthesized, m")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval, s")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "geofm-bench-tile")
    parser.add_argument("--redo", action="store_true", help="measure sizes already in results.json again")
    parser.add_argument("--keep", action="store_true", help="keep each size's output root")
    args = parser.parse_args()
    if not 2 <= args.dates <= len(DATES):
        raise SystemExit(f"--dates must be 2..{len(DATES)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results.setdefault("sizes", {})
    results["when"] = f"{datetime.now(UTC):%Y-%m-%d}"
    items = synth_tile(work, args, results)
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        if str(size) in results["sizes"] and not args.redo:
            print(f"{size} chips/date: measured before (--redo to measure again)")
            continue
        print(f"{size} chips/date x {len(items)} dates ...", flush=True)
        r = measure(size, items, work, args)
        results["sizes"][str(size)] = r
        save(work, results)
        print(f"  {r['seconds']:.1f} s, {r['chip_dates']} chip-dates, peak RSS {r['peak_rss'] / GB:.2f} GB, "
              f"PSS {r['peak_pss'] / GB:.2f} GB, {r['output_bytes'] / r['chip_dates'] / 2**20:.2f} MB/chip-date",
              flush=True)
    report(results, args)


if __name__ == "__main__":
    main()
