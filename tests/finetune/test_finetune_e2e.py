"""End to end: synthetic scenes (geofm.synth) -> step-1 NetCDF chips -> fine-tune a tiny Clay
(``clay-tiny``, RANDOM init, encoder NOT frozen, FPN head) -> metrics against the majority-class
baseline -> class-map COGs; checkpoint reload; and train/evaluate on real Sentinel-2 L1C
(eolearn-lulc) through the CLI, metrics printed in the test output."""

from __future__ import annotations

import glob
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from geofm.cli import app
from geofm.config import PipelineConfig
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.data import prepare_data, raster_info, read_window
from geofm.finetune.module import load_module
from geofm.finetune.predict import predict_rasters
from geofm.finetune.train import TrainResult, train
from geofm.synth import synthesize
from helpers import REPO, run_step

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "segmentation.yaml"
MARGIN = 0.15  # the trained model's val mIoU must beat the majority-class baseline by this much


@pytest.fixture(scope="module")
def synth_chips(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two clear dates of a 1.28 km synthetic scene, chipped by step 1 into 64 px NetCDF chips."""
    root = tmp_path_factory.mktemp("ft-synth")
    res = synthesize(str(root), "ft", "33TWL", [date(2023, 6, 1), date(2023, 7, 1)], extent_m=1280.0, seed=1)
    report = run_step(PipelineConfig(aoi_name="ft", output_root=str(root), chip_size=64, whole_tile=True,
                                     workers=1), "preprocess")
    assert report.ok, report.summary()
    chips = sorted(glob.glob(f"{root}/output/ft/raw-chips/**/*.nc", recursive=True))
    assert len(chips) == 8
    classes = [{"id": c["id"], "name": c["name"], "color": c["colour"]} for c in res.classes]
    return {"root": root, "synth": res, "chips": chips, "classes": classes}


@pytest.fixture(scope="module")
def trained(synth_chips: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationConfig, TrainResult]:
    cfg = SegmentationConfig(
        images=synth_chips["chips"], labels=synth_chips["synth"].landcover_path, classes=synth_chips["classes"],
        chip_size=32, model="clay-tiny", checkpoint="random", head="fpn", freeze_encoder=False, loss="ce",
        lr=2e-3, epochs=8, batch_size=8, val_fraction=0.25, seed=0,
        output_dir=str(tmp_path_factory.mktemp("ft-run")),
    )
    return cfg, train(cfg, quiet=True)


def test_netcdf_chip_labels_line_up_with_the_landcover(synth_chips: dict) -> None:
    cfg = SegmentationConfig(images=synth_chips["chips"], labels=synth_chips["synth"].landcover_path,
                             classes=synth_chips["classes"], chip_size=32, val_fraction=0.25)
    data = prepare_data(cfg)
    with rasterio.open(synth_chips["synth"].landcover_path) as src:
        truth, t = src.read(1), src.transform
    for split in data.splits.values():
        for chip, labels in zip(split.chips, split.labels, strict=True):
            col, row = (round(v) for v in ~t @ (chip.transform[2], chip.transform[5]))
            np.testing.assert_array_equal(labels, truth[row:row + 32, col:col + 32])
    assert [b.name for b in data.bands][:3] == ["blue", "green", "red"]


def test_tiny_clay_beats_the_majority_baseline(trained: tuple[SegmentationConfig, TrainResult],
                                               capsys: pytest.CaptureFixture) -> None:
    cfg, result = trained
    val, base = result.metrics["val"], result.baseline["val"]
    with capsys.disabled():
        print(f"\nsynthetic val: mIoU {val['miou']:.3f} (majority baseline {base['miou']:.3f}, "
              f"class {base['majority_class']}), weighted IoU {val['weighted_iou']:.3f}, F1 {val['f1']:.3f}, "
              f"{result.epochs_run} epochs, {result.train_chips} training chips")
    assert val["miou"] >= base["miou"] + MARGIN
    layout_files = ["metrics_val.json", "confusion_matrix_val.png", "config.yaml", "checkpoints/best.ckpt",
                    "checkpoints/last.ckpt"]
    for name in layout_files:
        assert (Path(cfg.output_dir) / name).is_file(), name
    assert glob.glob(f"{cfg.output_dir}/logs/csv/**/metrics.csv", recursive=True)
    assert glob.glob(f"{cfg.output_dir}/logs/tensorboard/**/events.out.tfevents*", recursive=True)
    saved = json.loads((Path(cfg.output_dir) / "metrics_val.json").read_text())
    assert saved["miou"] == pytest.approx(val["miou"]) and "per_class_iou" in saved


def _chip_logits(module, path: str) -> torch.Tensor:
    from geofm.finetune.data import model_bands, normalise

    info = raster_info(path)
    picked = model_bands(info.band_names)
    raw = read_window(info, rasterio.windows.Window(0, 0, info.width, info.height), [i for i, _ in picked])
    pixels = torch.from_numpy(normalise(raw, [b for _, b in picked], module.cfg.value_scale))[None]
    with torch.no_grad():
        return module(pixels)


def test_predicted_cog_matches_the_chip_grid_and_the_models_argmax(
    trained: tuple[SegmentationConfig, TrainResult], synth_chips: dict, tmp_path: Path
) -> None:
    cfg, result = trained
    module = load_module(result.best_checkpoint)
    chip = synth_chips["chips"][0]
    out = tmp_path / "chip_classes.tif"
    pred = predict_rasters(module, [chip], str(out), tile=64, overlap=0)
    want = module.predict_classes(_chip_logits(module, chip))[0].numpy()
    info = raster_info(chip)
    with rasterio.open(out) as src:
        assert src.crs == info.crs and src.transform.almost_equals(info.transform)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.nodata == cfg.ignore_id
        cmap = src.colormap(1)
        got = src.read(1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pred.classes, want)
    forest = next(c for c in cfg.classes if c.name == "forest")
    assert cmap[forest.id][:3] == forest.rgb
    # default tiling (32 px tiles, half overlap, blended) mostly agrees with the single pass
    blended = predict_rasters(module, [chip]).classes
    assert (blended == want).mean() > 0.8


def test_whole_scene_prediction_through_the_cli(trained: tuple[SegmentationConfig, TrainResult],
                                                synth_chips: dict, tmp_path: Path) -> None:
    _, result = trained
    scene = synth_chips["synth"].scene_ids[0]
    out, probs = tmp_path / "scene.tif", tmp_path / "probs.tif"
    folder = str(Path(synth_chips["chips"][0]).parent)
    r = CliRunner().invoke(app, ["finetune", "predict", "--checkpoint", result.best_checkpoint, "--input", folder,
                                 "--scene", scene, "--out", str(out), "--probabilities", str(probs)])
    assert r.exit_code == 0, r.output
    with rasterio.open(synth_chips["synth"].landcover_path) as src:
        truth, t, crs = src.read(1), src.transform, src.crs
    with rasterio.open(out) as src:
        assert src.crs == crs and src.transform.almost_equals(t) and src.shape == truth.shape
        classes = src.read(1)
    with rasterio.open(probs) as src:
        p = src.read()
        assert src.count == 7 and src.descriptions[1] == "forest"
    has_data = classes != 0
    assert 0 < has_data.mean() < 1  # the synthetic scene has nodata edges: ignore id there, NaN probabilities
    assert np.isnan(p[:, ~has_data]).all()
    np.testing.assert_allclose(p[:, has_data].sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p[:, has_data].argmax(0), classes[has_data])
    valid = truth != 0
    assert (classes[valid] == truth[valid]).mean() > 0.5  # the scene's land cover is recognisable
    bad = CliRunner().invoke(app, ["finetune", "predict", "--checkpoint", str(tmp_path / "nope.ckpt"),
                                   "--input", folder, "--out", str(out)])
    assert bad.exit_code == 2 and "checkpoint not found" in bad.output


def test_checkpoint_reloads_and_predicts_the_same(trained: tuple[SegmentationConfig, TrainResult],
                                                  synth_chips: dict, tmp_path: Path) -> None:
    cfg, result = trained
    assert result.module is not None
    reloaded = load_module(result.last_checkpoint)  # last.ckpt holds the weights still in memory
    for chip in synth_chips["chips"][:2]:
        torch.testing.assert_close(_chip_logits(reloaded, chip), _chip_logits(result.module, chip),
                                   rtol=0, atol=1e-5)
    # evaluating the best checkpoint from the CLI gives the metrics training reported
    metrics_json = tmp_path / "val.json"
    r = CliRunner().invoke(app, ["finetune", "evaluate", "--config", _write_config(cfg, tmp_path),
                                 "--checkpoint", result.best_checkpoint, "--split", "val", "--out", str(metrics_json)])
    assert r.exit_code == 0, r.output
    assert json.loads(metrics_json.read_text())["miou"] == pytest.approx(result.metrics["val"]["miou"], abs=1e-9)
    r = CliRunner().invoke(app, ["finetune", "evaluate", "--config", _write_config(cfg, tmp_path),
                                 "--checkpoint", result.best_checkpoint])
    assert r.exit_code == 2 and "test split is empty" in r.output


def _write_config(cfg: SegmentationConfig, folder: Path) -> str:
    path = folder / "seg.yaml"
    path.write_text(cfg.to_yaml())
    return str(path)


def test_train_and_evaluate_on_real_eolearn_lulc(shared_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Real Sentinel-2 L1C (13 bands, 0..1 TOA) with real land-cover labels, through the CLI."""
    if not (shared_data / "eolearn-lulc" / "LULC.tif").is_file():
        pytest.skip("eolearn-lulc not present")
    run = tmp_path / "eolearn"
    sets = ["--set", f"output_dir={run}"]  # the example's own settings: 25 epochs max, CE
    r = CliRunner().invoke(app, ["finetune", "train", "--config", str(EXAMPLE), "--quiet", *sets])
    assert r.exit_code == 0, r.output
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    e = CliRunner().invoke(app, ["finetune", "evaluate", "--config", str(EXAMPLE), "--checkpoint", str(ckpt),
                                 "--split", "test", *sets])
    assert e.exit_code == 0, e.output
    test_metrics = json.loads((run / "metrics_test.json").read_text())
    val_metrics = json.loads((run / "metrics_val.json").read_text())
    with capsys.disabled():
        print("\neolearn-lulc (real S2 L1C, clay-tiny RANDOM init, unfrozen, FPN, CE):")
        for name, m in (("val", val_metrics), ("test", test_metrics)):
            per_class = ", ".join(f"{k} {v:.2f}" for k, v in m["per_class_iou"].items())
            print(f"  {name}: mIoU {m['miou']:.3f} (majority {m['majority_baseline_miou']:.3f}), weighted IoU "
                  f"{m['weighted_iou']:.3f}, F1 {m['f1']:.3f}, accuracy {m['accuracy']:.3f}; IoU {per_class}")
    for m in (val_metrics, test_metrics):
        assert 0.0 <= m["miou"] <= 1.0 and m["pixels"] > 0
        assert m["miou"] > m["majority_baseline_miou"] + 0.03  # it learns more than "everything is forest"
        assert "forest" in m["per_class_iou"]  # the dominant real class is evaluated
    assert (run / "confusion_matrix_test.png").stat().st_size > 1000
    assert "miou" in e.output
