"""The explorer under load (issue 12): the low-zoom tile before and after, then a bounded mixed load test.

Part 1, one tile: a scene's 8-bit TCI with nodata=0 (the demo's ``geofm synth`` scene: 10.24 km,
1024 px, overviews 2 and 4) read as a 256 px web-mercator tile around its centre, per zoom, by
rio-tiler's ``Reader.tile`` (how the explorer read tiles before), by rio-tiler on a copy without nodata,
and by ``geofm.server.tiles.read_tile`` (now). Median of ``--repeat`` runs (one when a run passes 5 s).

Part 2, load: ``geofm serve`` over the demo output in its own process; ``--clients`` concurrent clients
(one keep-alive connection each) send ``--requests`` requests per phase. Phase A, the baseline: API only
(grid summaries, chip series, similarity searches, thumbnails, chip grid). Phase B: the same plus tiles
at every zoom 0..18 around the data (half of the requests). Per kind p50/p95 latency, errors (any status
but 200 and 503) and busy answers (503); the ratio of the API's p95 in B to A says whether tiles in
flight slow the API down.

    .venv/bin/python benchmarks/bench_explorer.py [--out DIR] [--zooms 4 6 8 10 12 14] [--repeat 3]
        [--requests 600] [--clients 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import morecantile
import rasterio
from rio_tiler.io import Reader

from _machine import machine
from geofm.server import tiles

TMS = morecantile.tms.get("WebMercatorQuad")
SLOW_S = 5.0
MAX_PHASE_S = 600


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs; a single run when the first passes SLOW_S."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[0] > SLOW_S:
            break
    return statistics.median(times)


def part1(tci: Path, zooms: list[int], repeat: int, work: Path) -> None:
    plain = work / "tci-no-nodata.tif"
    shutil.copy(tci, plain)
    with rasterio.open(plain, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.nodata = None
    with rasterio.open(tci) as src:
        lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", [(src.bounds.left + src.bounds.right) / 2],
                                           [(src.bounds.bottom + src.bounds.top) / 2])
        ovr = src.overviews(1)
    print(f"\n## One tile, TCI {tci.name} ({rasterio.open(tci).width} px, nodata=0, overviews {ovr})\n")
    print("| zoom | rio-tiler, nodata=0 (before) s | rio-tiler, no nodata s | ours, nodata=0 s | before/ours |")
    print("|---:|---:|---:|---:|---:|")
    for z in zooms:
        t = TMS.tile(lon[0], lat[0], z)

        def rio(path: Path = tci, t: morecantile.Tile = t) -> None:
            with Reader(str(path)) as r:
                r.tile(t.x, t.y, t.z, tilesize=256, indexes=(1, 2, 3))

        before = timed(rio, repeat)
        no_nodata = timed(lambda t=t: rio(plain, t), repeat)
        ours = timed(lambda t=t: tiles.read_tile(str(tci), (1, 2, 3), TMS.xy_bounds(t)), max(repeat, 5))
        print(f"| {z} | {before:.3f} | {no_nodata:.3f} | {ours:.4f} | {before / ours:,.0f}x |", flush=True)


# ---- part 2 ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def requests_for(out: Path, port: int, n: int, with_tiles: bool, seed: int) -> list[tuple[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    aoi = json.loads(get(conn, "/api/aois")[1])[0]
    base = f"/api/aois/{aoi['aoi_name']}/grids/{aoi['grids'][0]}"
    summary = json.loads(get(conn, base)[1])
    analysed, imaged = [], []  # (chip, date) pairs that exist: every request below should answer 200
    for f in json.loads(get(conn, f"{base}/chip-grid")[1])["features"]:
        status, body = get(conn, f"{base}/chips/{f['properties']['chip_id']}")
        if status == 200:
            series = json.loads(body)
            analysed += [(series["chip_id"], d) for d in series["dates"]]
            imaged += [(series["chip_id"], d) for d in series["imagery_dates"]]
    conn.close()
    minx, miny, maxx, maxy = summary["bounds"]
    rng = random.Random(seed)

    def pick(pairs: list[tuple[str, str]], fmt: str) -> str:
        chip, day = rng.choice(pairs)
        return fmt.format(chip=chip, day=day)

    api = [("summary", lambda: base),
           ("series", lambda: pick(analysed, base + "/chips/{chip}")),
           ("search", lambda: pick(analysed, base + "/search?chip_id={chip}&date={day}&k=10")),
           ("thumbnail", lambda: pick(imaged, base + "/chips/{chip}/thumbnail?date={day}")),
           ("chip-grid", lambda: f"{base}/chip-grid")]
    out_reqs = []
    for _ in range(n):
        if with_tiles and rng.random() < 0.5:
            z = rng.randint(0, 18)
            t = TMS.tile(rng.uniform(minx, maxx), rng.uniform(miny, maxy), z)
            kind = "tile z<min" if z < summary["imagery_minzoom"] else "tile z>=min"
            out_reqs.append((kind, f"{base}/tiles/{z}/{t.x}/{t.y}.png?date={rng.choice(summary['imagery_dates'])}"))
        else:
            kind, make = rng.choice(api)
            out_reqs.append((kind, make()))
    return out_reqs


def run_phase(port: int, reqs: list[tuple[str, str]], clients: int) -> tuple[dict, float]:
    """Send ``reqs`` from ``clients`` threads; {kind: [(status, seconds)]} and the wall time."""
    queue = list(reversed(reqs))
    lock = threading.Lock()
    results: dict[str, list[tuple[int, float]]] = defaultdict(list)
    deadline = time.monotonic() + MAX_PHASE_S

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                if not queue:
                    break
                kind, path = queue.pop()
            t0 = time.perf_counter()
            try:
                status, _ = get(conn, path)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                results[kind].append((status, time.perf_counter() - t0))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(name: str, results: dict, wall: float) -> list[float]:
    total = sum(len(v) for v in results.values())
    print(f"\n### {name}: {total} requests in {wall:.1f} s ({total / wall:.1f} req/s)\n")
    print("| kind | n | p50 ms | p95 ms | max ms | errors | busy (503) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    api_times = []
    for kind in sorted(results):
        rows = results[kind]
        secs = [s for _, s in rows]
        errors = sum(1 for st, _ in rows if st not in (200, 503))
        busy = sum(1 for st, _ in rows if st == 503)
        print(f"| {kind} | {len(rows)} | {pct(secs, 50) * 1e3:.1f} | {pct(secs, 95) * 1e3:.1f} | "
              f"{max(secs) * 1e3:.1f} | {errors} | {busy} |")
        if not kind.startswith("tile"):
            api_times += secs
    return api_times


def part2(out: Path, n: int, clients: int) -> None:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-explorer-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "geofm.cli", "serve", "--out", str(out), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                if get(conn, "/api/aois")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"geofm serve did not start; log: {log.name}")
        print(f"\n## Load: geofm serve on {out}, {clients} clients, {n} requests per phase")
        warm = requests_for(out, port, 40, True, seed=0)
        run_phase(port, warm, clients)
        a_results, a_wall = run_phase(port, requests_for(out, port, n, False, seed=1), clients)
        api_a = report("A: API only (baseline)", a_results, a_wall)
        b_results, b_wall = run_phase(port, requests_for(out, port, n, True, seed=2), clients)
        api_b = report("B: API + tiles at zooms 0..18", b_results, b_wall)
        print(f"\nAPI p95 with tiles in flight / without: {pct(api_b, 95) / pct(api_a, 95):.2f}x "
              f"({pct(api_b, 95) * 1e3:.1f} / {pct(api_a, 95) * 1e3:.1f} ms); API p50 "
              f"{pct(api_b, 50) / pct(api_a, 50):.2f}x")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="existing demo output (default: run `geofm demo` into a temp dir)")
    ap.add_argument("--zooms", type=int, nargs="+", default=[4, 6, 8, 10, 12, 14])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    print(f"# bench_explorer: {machine()}, {dt.date.today()}")
    with tempfile.TemporaryDirectory(prefix="bench-explorer-") as tmp:
        out = args.out
        if out is None:
            from geofm.demo import run_demo

            out = Path(tmp) / "demo"
            if run_demo(str(out), model="spectral", quiet=True) != 0:
                raise SystemExit("geofm demo failed")
        tci = sorted((out / "synthetic-archive" / "scenes").glob("*/TCI.tif"))[0]
        part1(tci, args.zooms, args.repeat, Path(tmp))
        part2(out, args.requests, args.clients)


if __name__ == "__main__":
    main()
