"""Fine-tuning benchmark: training throughput (chips/s) and the val mIoU reached, per head (FPN vs
PixelShuffle) and encoder mode (frozen vs unfrozen), all in one run on the same synthetic data.

Throughput is the median of timed training steps (forward, loss, backward, AdamW) on one fixed batch,
interleaved across the four set-ups; mIoU comes from a full ``train`` run of each set-up.

The baseline is the Clay examples' set-up (FPN head, frozen encoder); every other row prints its
throughput ratio against it. The majority-class mIoU is the floor every row should beat.
Encoders have RANDOM weights (no download here), so a frozen encoder gives random features: expect the
unfrozen rows to learn more. Run: ``.venv/bin/python benchmarks/bench_finetune.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from geofm.config import PipelineConfig
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.data import SegmentationDataset, prepare_data
from geofm.finetune.module import SegmentationModule, segmentation_loss
from geofm.finetune.train import train
from geofm.pipeline import run_pipeline
from geofm.synth import synthesize


def step_seconds(modules: dict[str, SegmentationModule], batch: dict[str, torch.Tensor], rounds: int,
                 device: str) -> dict[str, float]:
    """Median seconds of one training step (forward, loss, backward, AdamW) per set-up, measured
    round-robin so a busy shared machine slows every set-up alike."""
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
            for k, m in modules.items()}
    batch = {k: v.to(device) for k, v in batch.items()}
    times: dict[str, list[float]] = {k: [] for k in modules}
    for r in range(rounds + 1):
        for k, m in modules.items():
            m.train()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
                logits = m(batch["pixels"], batch["time"], batch["latlon"])
            loss = segmentation_loss(logits, batch["label"], "ce", m.cfg.ignore_id)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:  # round 0 warms up
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def make_data(root: Path, extent_m: float) -> tuple[list[str], str, list[dict]]:
    res = synthesize(str(root), "bench", "33TWL", [date(2023, 6, 1), date(2023, 7, 1)], extent_m=extent_m, seed=1)
    record = run_pipeline(PipelineConfig(aoi_name="bench", output_root=str(root), chip_size=64, whole_tile=True,
                                         workers=1), ["preprocess"])
    assert record.ok, record.summary()
    chips = sorted(glob.glob(f"{root}/output/bench/raw-chips/**/*.nc", recursive=True))
    classes = [{"id": c["id"], "name": c["name"], "color": c["colour"]} for c in res.classes]
    return chips, res.landcover_path, classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="clay-tiny")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--extent-m", type=float, default=1280.0)
    ap.add_argument("--rounds", type=int, default=15, help="Timed training steps per set-up.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        root = Path(tmp)
        chips, labels, classes = make_data(root / "data", args.extent_m)
        base = SegmentationConfig(
            images=chips, labels=labels, classes=classes, chip_size=args.chip_size, model=args.model,
            checkpoint="random", loss="ce", lr=2e-3, epochs=args.epochs, batch_size=args.batch_size,
            val_fraction=0.25, early_stopping_patience=args.epochs, device=args.device, seed=0,
            output_dir=str(root / "run"), head_channels=64,
        )
        data = prepare_data(base)
        setups = [(h, f) for h in ("fpn", "pixelshuffle") for f in (True, False)]
        cfgs = {f"{h}/{'frozen' if f else 'unfrozen'}": base.model_copy(update={
            "head": h, "freeze_encoder": f, "output_dir": str(root / f"run-{h}-{f}")}) for h, f in setups}
        # throughput: fresh modules, one fixed batch, steps interleaved across set-ups
        train_set = data.splits["train"]
        loader = DataLoader(SegmentationDataset(train_set), batch_size=args.batch_size)
        batch = next(iter(loader))
        bands = [b.name for b in data.bands]
        modules = {k: SegmentationModule(c.model_dump(mode="json"), bands, data.gsd).to(args.device)
                   for k, c in cfgs.items()}
        secs = step_seconds(modules, batch, args.rounds, args.device)
        rows = []
        for k, cfg in cfgs.items():
            result = train(cfg, quiet=True, data=data)
            rows.append((*k.split("/"), len(batch["label"]) / secs[k], result.metrics["val"]["miou"],
                         result.baseline["val"]["miou"]))
        n_train = len(train_set.chips)
    ref = rows[0][2]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{args.model} (RANDOM init), {n_train} training chips of {args.chip_size} px, batch "
          f"{args.batch_size}, {args.epochs} epochs, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'head':<13}{'encoder':<10}{'train chips/s':>15}{'vs fpn+frozen':>15}{'val mIoU':>10}"
          f"{'majority mIoU':>15}")
    for head, mode, cps, miou, base_miou in rows:
        print(f"{head:<13}{mode:<10}{cps:>15.1f}{cps / ref:>14.2f}x{miou:>10.3f}{base_miou:>15.3f}")


if __name__ == "__main__":
    main()
