"""Step 3 on hand-made embeddings with a planted change: similarity, baselines, patch maps, PCA, reruns."""

from __future__ import annotations

import io

import geopandas as gpd
import numpy as np
import pytest
from sklearn.decomposition import PCA

from fixtures.hand_embeddings import CHANGE_CHIP, CHANGE_INDEX, DATES, GRID, L, cid, write_hand_embeddings
from geofm import change, markers, storage
from geofm.errors import InputError, NotFoundError
from geofm.executors import LocalExecutor, UnitTask
from geofm.pipeline import run_pipeline
from geofm.reduce import fit_pca, load_pca, save_pca
from geofm.steps import analyze
from geofm.steps.analyze import Analyze
from helpers import run_step


def _processed(lay, chip_id: str) -> gpd.GeoDataFrame:
    x, y = map(int, chip_id.split("_"))
    return gpd.read_parquet(io.BytesIO(storage.read_bytes(lay.processed_embeddings(GRID, x, y))))


def test_planted_change_detected_and_localised(hand_embeddings):
    cfg = hand_embeddings.cfg()
    report = run_step(cfg, "analyze")
    assert report.ok, report.summary()
    # the chip ids and the PCA, then each chip
    assert [r.unit for r in report.results[:2]] == ["chip-ids", "pca"] and report.count("done") == 2 + 6
    lay = hand_embeddings.layout
    changed = _processed(lay, CHANGE_CHIP)
    assert list(changed["date"].dt.date) == DATES
    sims = changed["cosine_sim"].to_numpy()
    assert (sims[:CHANGE_INDEX] > 0.99).all() and (sims[CHANGE_INDEX:] < 0.9).all()
    # the per-patch map puts the change in the left half of the chip
    side = int(changed["patch_grid"].iloc[0])
    assert side * side == L
    after = np.asarray(changed["patch_sim_map"].iloc[-1]).reshape(side, side)
    assert (after[:, : side // 2] < 0.8).all() and (after[:, side // 2:] > 0.99).all()
    assert changed["patch_changed_share"].iloc[-1] == pytest.approx(0.5)
    assert changed["patch_changed_share"].iloc[0] == 0.0
    for other in (cid(0, 0), cid(2, 0), cid(1, 1)):
        assert (_processed(lay, other)["cosine_sim"] > 0.99).all()
    # formats.md columns, GeoParquet readable, meta columns kept
    for col in ("embedding_kind", "baseline_date", "cosine_sim", "patch_emb_pca_1", "patch_emb_pca_2",
                "embedding_contains_nan_yn", "patch_sim_mean", "patch_sim_p10", "patch_changed_share",
                "patch_grid", "patch_sim_map", "chip_id", "origin_tile", "s3_location_png_thumbnail"):
        assert col in changed.columns, col
    assert changed.crs.to_epsg() == 4326


def test_rows_limits_nan_and_missing_embeddings(hand_embeddings):
    assert run_step(hand_embeddings.cfg(), "analyze").ok
    lay = hand_embeddings.layout
    limited = _processed(lay, cid(2, 0))  # dates 4 (cloudy) and 5 (missing data) dropped
    assert list(limited["date"].dt.date) == DATES[:4]
    not_embedded = _processed(lay, cid(0, 0))  # date 1 has no embedding
    assert DATES[1] not in set(not_embedded["date"].dt.date) and len(not_embedded) == 5
    nan_chip = _processed(lay, cid(0, 1))
    flagged = nan_chip[nan_chip["embedding_contains_nan_yn"]]
    assert list(flagged["date"].dt.date) == [DATES[2]]
    assert flagged[["cosine_sim", "patch_emb_pca_1"]].isna().all().all()
    assert nan_chip.loc[~nan_chip["embedding_contains_nan_yn"], "cosine_sim"].notna().all()


def test_baseline_first_clear_vs_first(tmp_path):
    data = write_hand_embeddings(str(tmp_path))
    cloudy = cid(2, 1)  # date 0 is 3 % cloudy
    assert run_step(data.cfg(baseline="first-clear"), "analyze").ok
    clear = _processed(data.layout, cloudy)
    assert clear["baseline_date"].iloc[0].date() == DATES[1]
    assert clear["cosine_sim"].iloc[1] == pytest.approx(1.0)
    # another baseline rule redoes every chip (no --force needed: the rule shapes the outputs)
    assert run_step(data.cfg(baseline="first"), "analyze").count("done") == 1 + 6
    first = _processed(data.layout, cloudy)
    assert first["baseline_date"].iloc[0].date() == DATES[0]
    assert first["cosine_sim"].iloc[0] == pytest.approx(1.0)
    # a looser baseline cloud limit makes the 3 % date acceptable as 'first-clear'
    assert run_step(data.cfg(baseline="first-clear", baseline_max_cloud=0.05), "analyze").ok
    assert _processed(data.layout, cloudy)["baseline_date"].iloc[0].date() == DATES[0]


def test_pca_same_whichever_partition_projects_a_chip(tmp_path):
    data = write_hand_embeddings(str(tmp_path))
    cfg = data.cfg()
    step = Analyze()
    chip_ids, fitted = step.prepare(cfg)  # the chip ids and the global PCA, once, before any chip
    assert (chip_ids.unit, fitted.unit) == ("chip-ids", "pca") and fitted.status == "done"
    assert chip_ids.info["chips"] == 6
    model = load_pca(data.layout.reducer_model("pca"))
    assert model.sample_size > 2 and model.kind == "patch"
    units = step.units(cfg)
    assert len(units) == 6 and units[0] == f"{GRID}/{cid(0, 0)}"
    target = f"{GRID}/{CHANGE_CHIP}"
    forced = cfg.model_copy(update={"force": True, "workers": 2})
    values = []
    for part in ([target, units[0]], [units[-1], units[2], target]):  # two partitions, two orders, 2 workers
        results = []
        LocalExecutor(forced).map(UnitTask(step, forced), part, results.append)
        assert [r.status for r in results] == ["done"] * len(part), results
        values.append(_processed(data.layout, CHANGE_CHIP)[["patch_emb_pca_1", "patch_emb_pca_2"]].to_numpy())
    np.testing.assert_array_equal(values[0], values[1])
    # and they are the global model's projection of the chip's embeddings
    rows = analyze.chip_rows(cfg, GRID, CHANGE_CHIP)
    embs = np.stack([analyze.load_embedding(u).ravel() for u in rows["s3_location_patch_emb"]])
    np.testing.assert_allclose(values[0], model.transform(embs), rtol=1e-10)
    # refitting from scratch (another run) gives the identical model: seeded global sample
    _, refitted = step.prepare(cfg.model_copy(update={"force": True}))
    assert refitted.status == "done"
    again = load_pca(data.layout.reducer_model("pca"))
    np.testing.assert_array_equal(again.components, model.components)
    assert again.model_id == model.model_id


def test_fit_pca_matches_sklearn_and_roundtrips(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 12)) + rng.normal(0, 0.01, (40, 12))
    for data in (x, x[:, :3].repeat(20, axis=0)):  # Gram route (n <= F) and covariance route (n > F)
        ours = fit_pca(data, 2)
        ref = PCA(2, svd_solver="full").fit(data)
        for a, b in zip(ours.components, ref.components_, strict=True):
            assert abs(float(a @ b)) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-6)
        np.testing.assert_allclose(np.abs(ours.transform(data)), np.abs(ref.transform(data)), atol=1e-6)
    url = str(tmp_path / "pca_model.npz")
    m = fit_pca(x, 3, kind="cls", seed=7)
    save_pca(m, url)
    back = load_pca(url)
    assert (back.kind, back.seed, back.sample_size, back.model_id) == ("cls", 7, 40, m.model_id)
    np.testing.assert_array_equal(back.components, m.components)
    assert set(np.load(url, allow_pickle=False).files) >= {"mean", "components", "explained_variance_ratio",
                                                            "kind", "sample_size", "seed"}


def test_rerun_skips_and_keeps_rows(hand_embeddings):
    cfg = hand_embeddings.cfg()
    assert run_step(cfg, "analyze").ok
    before = sum(len(_processed(hand_embeddings.layout, c)) for c in hand_embeddings.chips)
    again = run_step(cfg, "analyze")
    # the chip ids, the PCA and every chip
    assert again.count("skipped") == 2 + 6 and again.count("done") == 0
    assert sum(len(_processed(hand_embeddings.layout, c)) for c in hand_embeddings.chips) == before == 33  # 36 - 1 not embedded - 2 over the limits


def test_cls_kind(hand_embeddings):
    cfg = hand_embeddings.cfg(embedding_kind="cls", n_components=3)
    assert run_step(cfg, "analyze").ok
    out = _processed(hand_embeddings.layout, CHANGE_CHIP)
    assert {"cls_emb_pca_1", "cls_emb_pca_3"} <= set(out.columns) and "patch_sim_map" not in out.columns
    assert out["cosine_sim"].iloc[-1] < out["cosine_sim"].iloc[0]


def test_bad_inputs(tmp_path, hand_embeddings):
    empty = hand_embeddings.cfg(output_root=str(tmp_path / "nothing"))
    with pytest.raises(NotFoundError, match="no embedded chip meta in .*run preprocess and embed first"):
        run_pipeline(empty, ["analyze"])  # refused: nothing to analyse
    strict = hand_embeddings.cfg(analyze_max_cloud=0.0, analyze_max_missing=0.0, embedding_kind="cls")
    with pytest.raises(InputError, match="not an analyze unit: 'nonsense'"):
        analyze.parse_unit("nonsense")
    with pytest.raises(ValueError, match="unknown baseline rule 'last'"):
        change.baseline_index([0.0], "last")
    with pytest.raises(ValueError, match="do not form a square grid"):
        change.patch_grid_side(10)
    with pytest.raises(ValueError, match="n_components 5 exceeds"):
        fit_pca(np.ones((3, 4)) + np.eye(3, 4), 5)
    with pytest.raises(NotFoundError, match="PCA model not found"):
        load_pca(str(tmp_path / "missing.npz"))
    # a PCA fitted on another embedding kind is refused by the units
    assert [r.status for r in Analyze().prepare(strict)] == ["done", "done"]
    result = UnitTask(Analyze(), hand_embeddings.cfg())(f"{GRID}/{CHANGE_CHIP}")
    assert result.status == "failed" and result.error_kind == "input"
    assert "fitted on 'cls' embeddings, not 'patch'" in result.error


def test_analysis_reruns_when_step_2_embeds_a_new_date_or_redoes_a_scene(hand_embeddings):
    """Step 3 reads what step 2 finished: a date embedded after the analysis ran (a scene that failed
    before) brings every chip and the PCA back into the next run; a scene redone by step 2 too."""
    cfg, lay = hand_embeddings.cfg(), hand_embeddings.layout
    late = hand_embeddings.scene_ids[-1]
    finished = markers.read(lay, "embed", late)
    storage.remove(lay.marker("embed", late))  # step 2 has not finished the last date yet
    assert run_step(cfg, "analyze").ok
    assert DATES[-1] not in set(_processed(lay, CHANGE_CHIP)["date"].dt.date)
    assert run_step(cfg, "analyze").count("done") == 0

    markers.write(lay, finished)  # now it has
    report = run_step(cfg, "analyze")
    # the same chips (their ids kept), a new PCA and every chip redone
    assert report.ok and report.count("done") == 1 + 6 and report.count("skipped") == 1
    assert list(_processed(lay, CHANGE_CHIP)["date"].dt.date) == DATES
    assert run_step(cfg, "analyze").count("done") == 0

    # step 2 redoes one scene (its marker names another output): the analysis follows, for the chips that
    # read a row of that scene (42_30 does not: its last date is over the missing-data limit)
    markers.write(lay, markers.Marker("embed", late, "redone", finished.outputs))
    report = run_step(cfg, "analyze")
    assert {r.unit for r in report.results if r.status == "skipped"} == {"chip-ids", f"{GRID}/{cid(2, 0)}"}
    assert report.count("done") == 1 + 5
