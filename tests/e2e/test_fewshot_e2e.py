"""Few-shot search on a synthetic scene with known land cover (steps 1-4, weights-free ``spectral``
encoder, 32 px chips): 3 positives and 3 negatives rank a cover's chips better than single-chip cosine
search; ``geofm search`` with examples, the score layer, patch heat maps that sit on the cover."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from geofm import fewshot, vectordb
from geofm.cli import app
from geofm.config import PipelineConfig
from geofm.pipeline import run_pipeline
from geofm.synth import SynthResult, synthesize, truth

pytestmark = pytest.mark.slow
runner = CliRunner()
DAY = date(2023, 8, 20)
CHIP = 32
K = 10


@dataclass
class Scene:
    synth: SynthResult
    cfg: PipelineConfig
    ids: list[str]  # chips in the vector DB on DAY

    def shares(self, cover: str) -> dict[str, float]:
        class_id = next(c["id"] for c in self.synth.classes if c["name"] == cover)
        return truth.class_shares(self.synth.landcover_paths[self.synth.scene_ids[-1]], class_id, CHIP)

    def cli(self, *args: str) -> list[dict]:
        result = runner.invoke(app, ["search", "--out", self.cfg.output_root, "--aoi-name", self.cfg.aoi_name,
                                     *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else []


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = str(tmp_path_factory.mktemp("fewshot"))
    synth = synthesize(root, aoi_name="fewshot", extent_m=5120.0, dates=[DAY], seed=3)
    cfg = PipelineConfig(aoi_name="fewshot", output_root=root, aoi=synth.aoi_path, chip_size=CHIP,
                         whole_tile=True, model="spectral", batch_size=64, workers=1, retries=0)
    record = run_pipeline(cfg, ["preprocess", "embed", "analyze", "consolidate"])
    assert record.ok, record.summary()
    rows, _ = vectordb.rows_on(cfg.layout.lance_db, DAY)
    return Scene(synth, cfg, list(rows["chip_id"]))


def test_three_positives_and_three_negatives_beat_single_chip_cosine(scene: Scene) -> None:
    db = scene.cfg.layout.lance_db
    rng = np.random.default_rng(0)
    few, single = [], []
    for cover in ("forest", "cropland", "grassland", "bare_soil", "water"):
        shares = scene.shares(cover)
        covered = sorted(c for c in scene.ids if shares[c] >= 0.5)
        others = sorted(c for c in scene.ids if shares[c] < 0.1)
        if len(covered) < 3 + K:
            continue
        for _ in range(3):
            pos = [str(c) for c in rng.choice(covered, 3, replace=False)]
            neg = [str(c) for c in rng.choice(others, 3, replace=False)]
            relevant = set(covered) - set(pos)
            query = fewshot.Query.of([f"{c}@{DAY}" for c in pos], [f"{c}@{DAY}" for c in neg], k=K)
            result = fewshot.classify(db, query)
            assert result.method == "svm" and result.date == DAY
            assert not set(result.scored["chip_id"]) & set(pos + neg)  # examples are not results
            few.append(fewshot.precision_at_k(list(result.hits["chip_id"]), relevant, K))
            for p in pos:  # single-chip cosine search on the same date
                hits = vectordb.search(db, chip_id=p, date=DAY, k=K + 3, date_range=(DAY, DAY))
                ranked = [c for c in hits["chip_id"] if c not in set(pos)]
                single.append(fewshot.precision_at_k(ranked, relevant, K))
    print(f"\nprecision@{K}: few-shot (3+3) {np.mean(few):.3f} over {len(few)} queries; single-chip cosine "
          f"{np.mean(single):.3f}")
    assert len(few) >= 9
    assert np.mean(few) > np.mean(single)


def test_cli_few_shot_with_score_layer_and_patch_heat_maps(scene: Scene, tmp_path: Path) -> None:
    shares = scene.shares("forest")
    forest = sorted((c for c in scene.ids if shares[c] >= 0.9), key=lambda c: -shares[c])
    others = sorted(c for c in scene.ids if shares[c] == 0)
    layer = tmp_path / "layer.geojson"
    args = [a for c in forest[:3] for a in ("--positive", f"{c}@{DAY}")]
    args += [a for c in others[:3] for a in ("--negative", f"{c}@{DAY}")]
    hits = scene.cli(*args, "-k", "5", "--geojson", str(layer), "--patch-maps", "--json")
    assert len(hits) == 5 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["date"] == DAY.isoformat() and shares[h["chip_id"]] >= 0.5 for h in hits)
    feats = json.loads(layer.read_text())["features"]
    assert len(feats) == len(scene.ids) - 6  # every chip of the date but the examples
    assert [f["properties"]["rank"] for f in feats[:3]] == [1, 2, 3]
    assert feats[0]["properties"]["chip_id"] == hits[0]["chip_id"] and feats[0]["geometry"]["type"] == "Polygon"
    for h in hits:
        heat = np.array(h["patch_scores"], float)
        assert heat.shape == (CHIP // 8, CHIP // 8) and h["best_patch"] is not None


def test_patch_heat_map_sits_on_the_cover(scene: Scene) -> None:
    """On chips that are part forest, part not, the forest patches score higher than the others."""
    shares = scene.shares("forest")
    pure = sorted(c for c in scene.ids if shares[c] >= 0.95)
    none = sorted(c for c in scene.ids if shares[c] == 0)
    mixed = sorted(c for c in scene.ids if 0.3 <= shares[c] <= 0.7)
    query = fewshot.Query.of([f"{c}@{DAY}" for c in pure[:3]], [f"{c}@{DAY}" for c in none[:3]], k=K)
    result = fewshot.classify(scene.cfg.layout.lance_db, query)
    lay = scene.cfg.layout
    scorer = fewshot.fit_patch_scorer(lay, result.examples, result.method, result.scored.head(16))
    with rasterio.open(scene.synth.landcover_paths[scene.synth.scene_ids[-1]]) as ds:
        lc = ds.read(1)
    gaps = []
    for chip in mixed[:6]:
        x, y = (int(v) for v in chip.split("_"))
        heat = fewshot.patch_heatmap(lay, scorer, scene.synth.grid, x, y, DAY)
        block = lc[y * CHIP:(y + 1) * CHIP, x * CHIP:(x + 1) * CHIP] == 1
        patch_share = block.reshape(4, 8, 4, 8).mean(axis=(1, 3))
        inside, outside = heat[patch_share >= 0.9], heat[patch_share <= 0.1]
        if inside.size and outside.size:
            gaps.append(np.nanmean(inside) - np.nanmean(outside))
    assert len(gaps) >= 3 and all(g > 0 for g in gaps), gaps


def test_cli_single_chip_search_is_unchanged_and_bad_examples_are_refused(scene: Scene) -> None:
    query = scene.ids[0]
    hits = scene.cli("--chip", query, "--date", DAY.isoformat(), "-k", "7", "--json")
    expected = vectordb.search(scene.cfg.layout.lance_db, chip_id=query, date=DAY, k=7)
    assert [h["chip_id"] for h in hits] == list(expected["chip_id"])
    same = scene.cli("--positive", f"{query}@{DAY}", "-k", "7", "--json")
    assert [h["chip_id"] for h in same] == [h["chip_id"] for h in hits]
    base = ["search", "--out", scene.cfg.output_root, "--aoi-name", scene.cfg.aoi_name]
    for args, message in ((["--chip", query], "--chip needs --date"),
                          (["--positive", "3-4@2023-08-20"], "expected CHIP@YYYY-MM-DD"),
                          (["--negative", f"{query}@{DAY}"], "--positive"),
                          (["--positive", f"{query}@2020-01-01", "--positive", f"{scene.ids[1]}@{DAY}"],
                           "has no row for date 2020-01-01")):
        result = runner.invoke(app, base + args)
        assert result.exit_code == 2 and message in result.output, result.output
