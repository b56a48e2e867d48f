"""Embedding throughput of Clay v1.5 / v1 at 256x256 (random weights): our inference path against a plain
fp32 eager baseline, measured in the same run.

ours:     SDPA attention, torch.inference_mode, bf16 autocast on GPU (fp32 on CPU), patch-embedding kernel
          generated once per band set, batched.
baseline: explicit matmul-softmax attention (vit-pytorch 1.6.8 form), torch.no_grad, fp32 (TF32 off on GPU),
          kernel regenerated every call (as upstream does), same batch.

Prints per-batch medians, chips/s, the ratio, and on GPU the model FLOP utilisation (analytic FLOPs per
chip / peak dense bf16 of the card).

``--loader-only``: the input side alone. Step 1 chips a synthetic scene (10 of its bands are Clay's, 256 px
chips); the embedding step's loader (:class:`geofm.models.loader.ChipLoader`: read, decode, Clay-normalise,
batch) feeds a model that returns at once, with 1 reader thread and with ``--readers`` (default: all
cores); chips/s per reader and in all are printed (what the loader can feed a GPU with; target >= 300
chips/s on the 2-core machine), against the step's previous input path measured in the same run (one
prefetch thread reading whole batches, normalisation on the model's thread); chips per CPU-second say
what each does when it has its cores (the machine may be shared). Usage:
    python benchmarks/bench_embed.py                      # CPU, a few chips (takes a couple of minutes)
    python benchmarks/bench_embed.py --device cuda --batch 32 --repeats 10
    python benchmarks/bench_embed.py --loader-only [--readers 2] [--batch 32] [--repeats 3] [--chip-compression fast]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from geofm.models.registry import build_clay, get_model_spec

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0, "L40S": 362.0}


def flops_per_chip(name: str, size: int, bands: int = 10) -> float:
    """Forward FLOPs (2 per multiply-add) of one chip: stem conv + transformer (matmuls and attention)."""
    c = get_model_spec(name).clay
    assert c is not None
    grid = size // c.patch_size
    n, d, inner, mlp = grid * grid + 1, c.dim, c.heads * c.dim_head, int(c.dim * c.mlp_ratio)
    stem = 2 * grid * grid * bands * c.patch_size**2 * d
    block = 2 * n * d * 3 * inner + 2 * 2 * n * n * inner + 2 * n * inner * d + 2 * 2 * n * d * mlp
    return stem + c.depth * block


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def bench_model(name: str, device: torch.device, batch: int, size: int, repeats: int, warmup: int,
                peak: float | None) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_clay(get_model_spec(name), device).eval()  # RANDOM weights: throughput only
    pixels = torch.randn(batch, 10, size, size, device=device)
    time_ = torch.zeros(batch, 4, device=device)
    latlon = torch.zeros(batch, 4, device=device)
    waves = torch.tensor([0.493, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19], device=device)
    gsd = torch.tensor(10.0, device=device)
    with torch.inference_mode():
        kernel = model.patch_embedding.kernel(waves)

    def ours() -> torch.Tensor:
        model.set_fused_attention(True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model(pixels, time_, latlon, gsd, waves, kernel=kernel)

    def baseline() -> torch.Tensor:
        model.set_fused_attention(False)
        with torch.no_grad():
            return model(pixels, time_, latlon, gsd, waves)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():  # the two paths compute the same function
        diff = (ours().float() - baseline()).abs().max().item()
    t_base = statistics.median(timed(baseline, device, repeats, warmup))
    t_ours = statistics.median(timed(ours, device, repeats, warmup))
    gflop = flops_per_chip(name, size) / 1e9
    res = {"batch": batch, "gflop_per_chip": gflop, "base_s": t_base, "ours_s": t_ours,
           "base_cps": batch / t_base, "ours_cps": batch / t_ours, "speedup": t_base / t_ours, "max_abs_diff": diff}
    if peak:
        res["ours_mfu"] = res["ours_cps"] * gflop / (peak * 1e3)
        res["base_mfu"] = res["base_cps"] * gflop / (peak * 1e3)
    return res


def bench_loader(args: argparse.Namespace) -> None:
    """The loader alone: chips/s with 1 reader and with ``args.readers``, against the previous input path."""
    import os
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from datetime import date
    from pathlib import Path

    import numpy as np

    from _machine import machine
    from geofm import storage
    from geofm.config import PipelineConfig
    from geofm.models.loader import ChipLoader, read_chip
    from geofm.models.registry import normalise
    from geofm.steps import preprocess
    from geofm.synth import synthesize

    bands = list(get_model_spec("clay-v1.5").bands)  # 10 bands
    readers = args.readers or os.cpu_count() or 1
    batch = args.batch or 32
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        res = synthesize(str(Path(tmp) / "scene"), grid="33TWL", dates=[date(2023, 7, 14)], extent_m=20480.0,
                         seed=0, into_layout=False)
        cfg = PipelineConfig(aoi_name="bench", output_root=str(Path(tmp) / "out"), chip_size=args.size,
                             whole_tile=True, **({"chip_compression": args.chip_compression}
                                                 if args.chip_compression else {}))
        storage.write_json(cfg.layout.scene_metadata(res.items[0]["id"]), res.items[0])
        preprocess.process_unit(cfg, res.items[0]["id"])
        stored = preprocess.read_meta(cfg.layout.meta(res.items[0]["id"]))["s3_location_netcdf"]
        urls = [cfg.layout.resolve(u) for u in stored] * 4
        def prepare(pixels: np.ndarray) -> np.ndarray:  # as ClayEmbedder.prepare: in place
            return normalise(pixels, bands, out=pixels)

        def loader(n_readers: int) -> int:
            n = 0
            for b in ChipLoader(urls, bands, (args.size, args.size), batch, readers=n_readers, prepare=prepare):
                n += len(b.index)  # the model: returns at once
            return n

        def previous() -> int:  # one prefetch thread reads a batch; normalise on the consuming thread
            n = 0
            starts = list(range(0, len(urls), batch))
            with ThreadPoolExecutor(1) as pool:
                load = lambda s: np.stack([read_chip(u, bands) for u in urls[s:s + batch]])  # noqa: E731
                pending = pool.submit(load, starts[0])
                for k in range(len(starts)):
                    pixels = pending.result()
                    if k + 1 < len(starts):
                        pending = pool.submit(load, starts[k + 1])
                    n += len(normalise(pixels, bands))
            return n

        runs = {"previous path (1 prefetch thread)": previous, "loader, 1 reader": lambda: loader(1),
                f"loader, {readers} readers": lambda: loader(readers)}
        loader(readers)  # warm-up: page cache, imports
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        load = os.getloadavg()[0]
        for _ in range(args.repeats or 3):
            for name, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                n = fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        print(f"loader only: {len(urls)} chips ({len(urls) // 4} files x 4) of {len(bands)} bands, "
              f"{args.size} px, batch {batch}, Clay normalisation; the model returns at once")
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:36s} median {statistics.median(v):6.3f} s  {rate[k]:7.1f} chips/s  "
                  f"{n / statistics.median(cpu[k]):6.1f} chips per CPU-second")
        all_readers = rate[f"loader, {readers} readers"]
        print(f"per reader thread: {rate['loader, 1 reader']:.1f} chips/s; all {readers} readers: "
              f"{all_readers:.1f} chips/s (target >= 300); "
              f"{all_readers / rate['previous path (1 prefetch thread)']:.2f}x the previous path")
        print(f"machine: {machine()}; load average at the start: {load:.2f}, at the end: "
              f"{os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--models", nargs="+", default=["clay-v1.5", "clay-v1"])
    ap.add_argument("--batch", type=int, default=None, help="chips per batch (default: 2 on CPU, 32 on GPU)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=None, help="timed batches (default: 3 CPU, 10 GPU)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak for MFU")
    ap.add_argument("--loader-only", action="store_true", help="time the chip loader with a model that "
                    "returns at once")
    ap.add_argument("--readers", type=int, default=None, help="loader threads (default: CPU count)")
    ap.add_argument("--chip-compression", default=None,
                    help="how step 1 stores the chips the loader reads (default: the config's default)")
    args = ap.parse_args()
    if args.loader_only:
        bench_loader(args)
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    batch = args.batch or (32 if gpu else 2)
    repeats = args.repeats or (10 if gpu else 3)
    peak = args.peak_tflops
    card = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    if gpu and peak is None:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
    print(f"device: {card}; torch {torch.__version__}; {args.size}x{args.size}, 10 bands, batch {batch}, "
          f"median of {repeats} batches after {args.warmup} warm-up; RANDOM weights")
    for name in args.models:
        r = bench_model(name, device, batch, args.size, repeats, args.warmup, peak)
        if gpu:
            torch.cuda.empty_cache()
        line = (f"{name:10s} {r['gflop_per_chip']:.0f} GFLOP/chip | baseline fp32 eager: {r['base_s']:.3f} s/batch "
                f"{r['base_cps']:.2f} chips/s | ours: {r['ours_s']:.3f} s/batch {r['ours_cps']:.2f} chips/s | "
                f"speed-up x{r['speedup']:.2f} | max |diff| {r['max_abs_diff']:.2e}")
        if "ours_mfu" in r:
            line += f" | MFU ours {100 * r['ours_mfu']:.1f}% baseline {100 * r['base_mfu']:.1f}%"
        print(line, flush=True)


if __name__ == "__main__":
    main()
