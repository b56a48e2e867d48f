"""Step 1 from COGs 50 ms away against the same COGs on local disk, in the same run.

The band COGs of ``--dates`` synthetic scenes (tile 33TWL, ``--extent-m`` a side, 12 bands + SCL, the
whole tile in 256 px chips) are served over HTTP on 127.0.0.1 (tests/fixtures/http_server.py, no faults)
behind a small asyncio TCP proxy that delays every byte by ``--delay-ms`` (25) in each direction, so each
request pays a 50 ms round trip, as a bucket in a neighbouring region does (this kernel has no netem).
Step 1 (``geofm preprocess``, default settings, all cores) runs on the proxied hrefs and on the local files,
alternating, ``--repeats`` times each after one untimed warm-up of each; medians and the ratio of chips per
second (remote / local, target >= 0.5) are printed, with the requests the server answered per chip.

    .venv/bin/python benchmarks/bench_remote.py [--delay-ms 25] [--dates 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's HTTP server

from _machine import machine  # noqa: E402
from bench_preprocess import fresh, make_scenes, step1_all_cores, timed  # noqa: E402
from fixtures.http_server import FaultyHTTPServer, serve_items  # noqa: E402

CHUNK = 65536


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that forwards each direction ``delay_s`` late (latency, not bandwidth:
    bytes keep flowing while earlier ones wait), plus one round trip before a new connection's first byte."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay = target_port, delay_s
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)  # connections the client kept alive
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((self.loop.time() + self.delay, data))
                if not data:
                    return

        async def send() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(receive(), send())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * self.delay)  # the TCP handshake's round trip
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, up_writer), self._pipe(up_reader, client_writer))

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=25.0, help="added latency in each direction")
    ap.add_argument("--extent-m", type=float, default=20480.0)
    ap.add_argument("--dates", type=int, default=2)
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        root = Path(tmp)
        res = make_scenes(root / "scenes", args.extent_m, args.dates)
        archive = Path(res.archive_dir)
        with FaultyHTTPServer(archive) as server, DelayProxy(server.port, args.delay_ms / 1000) as proxy:
            remote = [json.loads(json.dumps(it).replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{proxy.port}"))
                      for it in serve_items(res.items, archive, server)]
            size = args.chip_size
            runs: dict[str, tuple[Callable[[], object], Callable[[object], int]]] = {
                "local files": (lambda: fresh(root / "local", size, res.items), step1_all_cores),
                f"HTTP, {2 * args.delay_ms:.0f} ms RTT": (lambda: fresh(root / "remote", size, remote),
                                                         step1_all_cores),
            }
            for setup, fn in runs.values():  # untimed warm-up of each
                fn(setup())
            requests0 = server.counts["GET"] + server.counts["HEAD"]
            times: dict[str, list[float]] = {k: [] for k in runs}
            chips: dict[str, int] = {}
            for _ in range(args.repeats):
                for name, (setup, fn) in runs.items():
                    chips[name], seconds, _ = timed(setup, fn)
                    times[name].append(seconds)
            requests = server.counts["GET"] + server.counts["HEAD"] - requests0
        rate = {k: chips[k] / statistics.median(v) for k, v in times.items()}
        print(f"{len(res.items)} scenes of {args.extent_m / 10:.0f} px, 12 bands + SCL, whole tile, chip "
              f"{args.chip_size}; step 1 with default settings ({os.cpu_count()} cores)")
        for k, v in times.items():
            print(f"{k:18s} chips {chips[k]:4d}  median {statistics.median(v):6.2f} s  "
                  f"({', '.join(f'{s:.2f}' for s in v)})  {rate[k]:6.1f} chips/s")
        local, remote_name = list(runs)
        print(f"requests per chip over HTTP: {requests / (args.repeats * chips[remote_name]):.2f}")
        print(f"ratio remote / local (chips per second): {rate[remote_name] / rate[local]:.2f} (target >= 0.5)")
        print(f"machine: {machine()}; load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
