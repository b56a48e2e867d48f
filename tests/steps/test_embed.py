"""Step 2 on the shared synthetic archive: files, meta columns, skipped chips, planted changes, reruns."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from geofm import storage
from geofm.config import PipelineConfig
from geofm.errors import ConfigError, ModelError, NotFoundError
from geofm.layout import Layout
from geofm.pipeline import run_pipeline
from geofm.steps import embed
from helpers import run_step, stage_scenes

CHIP = 64


def _prepare(synth_scenes: Any, root: Path, scene_ids: list[str], **kw: Any) -> PipelineConfig:
    cfg = PipelineConfig(aoi_name="synth-embed", aoi=synth_scenes.aoi_path, chip_size=CHIP, workers=1,
                         retries=0, output_root=str(root), whole_tile=True, **kw)
    stage_scenes(cfg.output_root, cfg.aoi_name, synth_scenes, scene_ids)
    report = run_step(cfg, "preprocess")
    assert report.ok, report.summary()
    return cfg


def _resolved(cfg: PipelineConfig, meta: pd.DataFrame) -> pd.DataFrame:
    """The meta with its stored paths (relative to the AOI's output folder) turned into URLs."""
    for col in set(Layout.PATH_COLUMNS) & set(meta.columns):
        meta[col] = [cfg.layout.resolve(u) if isinstance(u, str) else u for u in meta[col]]
    return meta


def _meta(cfg: PipelineConfig, scene_id: str) -> pd.DataFrame:
    return _resolved(cfg, embed.read_meta(cfg.layout.meta(scene_id))).set_index("chip_id")


def _load(url: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)


@pytest.fixture(scope="module")
def spectral_run(synth_scenes: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, list[str]]:
    """First clear date, the heavy-cloud date and the last clear date, embedded with ``spectral``."""
    first, last = synth_scenes.clear_scene_ids[0], synth_scenes.clear_scene_ids[-1]
    heavy = next(s for s in synth_scenes.scene_ids if synth_scenes.sky[s] == "heavy")
    cfg = _prepare(synth_scenes, tmp_path_factory.mktemp("embed"), [first, heavy, last], model="spectral",
                   batch_size=5, embed_max_cloud=0.5, embed_max_missing=0.05)
    report = run_step(cfg, "embed")
    assert report.ok and report.count("done") == 3, report.summary()
    return cfg, [first, heavy, last]


def test_writes_files_and_meta_columns(spectral_run: tuple[PipelineConfig, list[str]]) -> None:
    cfg, scenes = spectral_run
    for sid in scenes:
        meta = _meta(cfg, sid)
        assert len(meta) == 16
        for col in ("year", "month", "s3_location_cls_emb", "s3_location_patch_emb", "model", "embedding_dim",
                    "embedding_status"):
            assert col in meta.columns
        assert (meta["model"] == "spectral").all() and (meta["embedding_dim"] == 32).all()
        assert (meta["year"] == 2023).all()
        assert set(meta["month"]) == {int(sid.split("_")[2][4:6])}
        ok = meta[meta["embedding_status"] == "ok"]
        for _, row in ok.iterrows():
            cls, patch = _load(row["s3_location_cls_emb"]), _load(row["s3_location_patch_emb"])
            assert cls.shape == (32,) and patch.shape == ((CHIP // 8) ** 2, 32)
            assert cls.dtype == np.float32 and np.isfinite(patch).all()
            assert "/embeddings/spectral/" in row["s3_location_cls_emb"]
            assert row["s3_location_cls_emb"].endswith(
                f"{sid}_{CHIP}_chip_cls_embeddings_blue_green_red_rededge1_rededge2_rededge3_nir_nir08_swir16_swir22"
                f"_{row['x_dim']}_{row['y_dim']}.npy")
    # the nodata corner of the tile: chip 0_3 (68 % missing) is skipped; 0_2 (2 %) is embedded, finite
    first = _meta(cfg, scenes[0])
    assert first.at["0_3", "embedding_status"] == "skipped-missing" and first.at["0_2", "embedding_status"] == "ok"
    assert first.at["0_2", "missing_data_perc"] > 0
    # the heavy-cloud date: chips over the cloud limit are skipped and recorded, without files
    heavy = _meta(cfg, scenes[1])
    skipped = heavy[heavy["embedding_status"] == "skipped-cloud"]
    assert len(skipped) > 0
    assert (skipped["cloud_cover_perc"] > 0.5).all()
    assert skipped["s3_location_cls_emb"].isna().all() and skipped["s3_location_patch_emb"].isna().all()
    assert (heavy.loc[heavy["embedding_status"] == "ok", "cloud_cover_perc"] <= 0.5).all()


def test_planted_changes_have_the_lowest_similarity(spectral_run: tuple[PipelineConfig, list[str]],
                                                    synth_scenes: Any) -> None:
    """Chips lying wholly inside a planted change (forest cleared, new water) change the most."""
    cfg, (first, _, last) = spectral_run
    a, b = _meta(cfg, first), _meta(cfg, last)
    inside = set()
    for ch in synth_scenes.changes:
        for chip_id, row in a.iterrows():
            r0, c0 = row["y_dim"] * CHIP, row["x_dim"] * CHIP
            if ch.rows[0] <= r0 and r0 + CHIP <= ch.rows[1] and ch.cols[0] <= c0 and c0 + CHIP <= ch.cols[1]:
                inside.add(chip_id)
    assert len(inside) == 2
    sims = {}
    both_ok = (a["embedding_status"] == "ok") & (b["embedding_status"] == "ok")
    assert both_ok.sum() == 15
    for chip_id in a.index[both_ok]:
        u, v = _load(a.at[chip_id, "s3_location_cls_emb"]), _load(b.at[chip_id, "s3_location_cls_emb"])
        sims[chip_id] = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    lowest = sorted(sims, key=sims.get)[:2]
    assert set(lowest) == inside, sims


def test_rerun_skips_and_other_model_gets_its_own_files(spectral_run: tuple[PipelineConfig, list[str]]) -> None:
    cfg, scenes = spectral_run
    first = scenes[0]
    spectral_meta = _meta(cfg, first)
    spectral_file = spectral_meta["s3_location_cls_emb"].dropna().iloc[0]
    stamp = Path(spectral_file).stat().st_mtime_ns
    again = run_step(cfg, "embed")
    assert again.count("skipped") == len(scenes) and Path(spectral_file).stat().st_mtime_ns == stamp
    tiny = cfg.model_copy(update={"model": "clay-tiny", "checkpoint": "random", "batch_size": 7})
    report = run_step(tiny, "embed")  # another model: every scene is redone
    assert report.ok and report.count("done") == len(scenes), report.summary()
    info = next(r.info for r in report.results if r.unit == first)
    assert info["embedded"] == 15 and info["model"] == "clay-tiny"
    meta = _meta(tiny, first)
    assert (meta["model"] == "clay-tiny").all() and (meta["embedding_dim"] == 72).all()
    row = meta[meta["embedding_status"] == "ok"].iloc[0]
    assert "/embeddings/clay-tiny/" in row["s3_location_cls_emb"]
    assert _load(row["s3_location_cls_emb"]).shape == (72,)
    assert _load(row["s3_location_patch_emb"]).shape == (64, 72)
    # the spectral files are gone with the spectral run they belonged to: the output is a clean clay-tiny run's
    assert row["s3_location_cls_emb"].replace("/clay-tiny/", "/spectral/") == spectral_file
    assert not Path(spectral_file).exists()
    assert run_step(tiny, "embed").count("skipped") == len(scenes)
    back = run_step(cfg, "embed")  # back to spectral: redone, not taken for complete
    assert back.count("done") == len(scenes)
    assert next(r.info for r in back.results if r.unit == first)["embedded"] == 15
    assert (_meta(cfg, first)["model"] == "spectral").all() and Path(spectral_file).exists()
    assert not Path(row["s3_location_cls_emb"]).exists()


def test_patch_embeddings_switch_off_and_limits(synth_scenes: Any, tmp_path: Path) -> None:
    sid = synth_scenes.clear_scene_ids[0]
    cfg = _prepare(synth_scenes, tmp_path, [sid], model="spectral", patch_embeddings=False, batch_size=16,
                   embed_max_missing=0.05)
    # one chip unreadable, one over the missing-data limit (set by hand in the meta)
    meta = embed.read_meta(cfg.layout.meta(sid))
    broken = cfg.layout.resolve(meta.iloc[3]["s3_location_netcdf"])
    storage.write_bytes(broken, b"not a netcdf file")
    meta.loc[5, "missing_data_perc"] = 0.25
    embed.write_meta(cfg.layout.meta(sid), meta)
    report = run_step(cfg, "embed")
    assert report.ok, report.summary()
    assert report.results[0].info["failed_chips"] == 1
    out = _resolved(cfg, embed.read_meta(cfg.layout.meta(sid)))
    assert out.loc[3, "embedding_status"] == "failed" and out.loc[5, "embedding_status"] == "skipped-missing"
    assert (out.drop(index=[3, 5])["embedding_status"].isin(["ok", "skipped-missing"])).all()
    assert (out["embedding_status"] == "ok").sum() == 13
    assert out["s3_location_patch_emb"].isna().all()
    cls = out.loc[out["embedding_status"] == "ok", "s3_location_cls_emb"].iloc[0]
    assert storage.exists(cls) and not storage.exists(cls.replace("_cls_", "_patch_"))


def test_scene_with_a_failed_chip_is_redone_next_run(synth_scenes: Any, tmp_path: Path) -> None:
    """A chip that could not be read (e.g. a transient read error) leaves its scene incomplete: the next
    run redoes the scene, and once the chip reads again it is embedded like the others."""
    sid = synth_scenes.clear_scene_ids[0]
    cfg = _prepare(synth_scenes, tmp_path, [sid], model="spectral", batch_size=16, embed_max_missing=1.0)
    chip = cfg.layout.resolve(embed.read_meta(cfg.layout.meta(sid)).iloc[3]["s3_location_netcdf"])
    good = storage.read_bytes(chip)
    storage.write_bytes(chip, b"not a netcdf file")
    first = run_step(cfg, "embed")
    assert first.results[0].info["failed_chips"] == 1
    assert embed.read_meta(cfg.layout.meta(sid)).loc[3, "embedding_status"] == "failed"
    storage.write_bytes(chip, good)  # the chip reads again
    second = run_step(cfg, "embed")
    assert second.count("done") == 1, "a scene with a failed chip was taken for complete"
    out = _resolved(cfg, embed.read_meta(cfg.layout.meta(sid)))
    assert (out["embedding_status"] == "ok").all() and storage.exists(out.loc[3, "s3_location_cls_emb"])


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with pytest.raises(ModelError, match="unknown model 'clay-v7'"):
        run_pipeline(PipelineConfig(output_root=out, model="clay-v7"), ["embed"])
    with pytest.raises(ConfigError, match=r"spectral needs at least bands.*lack \['nir'\]"):
        run_pipeline(PipelineConfig(output_root=out, model="spectral",
                                    embed_bands=["blue", "green", "red", "swir16"]), ["embed"])
    with pytest.raises(ConfigError, match=r"embed_bands \['swir16'\] were not chipped"):
        run_pipeline(PipelineConfig(output_root=out, model="clay-tiny", s2_bands=["red", "nir"],
                                    embed_bands=["red", "swir16"]), ["embed"])
    with pytest.raises(ModelError, match=r"model clay-tiny does not take bands \['coastal'\]"):
        run_pipeline(PipelineConfig(output_root=out, model="clay-tiny", embed_bands=["coastal"]), ["embed"])
    assert not Path(out).exists()  # refused before any work: nothing written
    with pytest.raises(NotFoundError, match="no chip meta in .*run preprocess first"):
        run_step(PipelineConfig(output_root=out, model="spectral"), "embed")


def test_scene_whose_every_chip_fails_is_a_failed_unit(synth_scenes: Any, tmp_path: Path) -> None:
    """A scene with no embeddable chip fails (named, with the first reason); the other scene finishes."""
    good, bad = synth_scenes.clear_scene_ids[0], synth_scenes.clear_scene_ids[-1]
    cfg = _prepare(synth_scenes, tmp_path, [good, bad], model="spectral", embed_max_missing=1.0)
    bad_meta = embed.read_meta(cfg.layout.meta(bad))
    for url in bad_meta["s3_location_netcdf"]:
        storage.write_bytes(cfg.layout.resolve(url), b"not a netcdf file")
    report = run_step(cfg, "embed")
    by_unit = {r.unit: r for r in report.results}
    assert by_unit[good].status == "done"
    assert by_unit[bad].status == "failed"
    first_chip = bad_meta["chip_id"].iloc[0]  # the first row of the meta (rows lie in Hilbert order)
    assert f"scene {bad}: no chip could be embedded" in by_unit[bad].error
    assert f"chip {first_chip}:" in by_unit[bad].error


def test_default_bands_are_the_chipped_ones(synth_scenes: Any, tmp_path: Path) -> None:
    """Chips with only blue, green, red, nir (like the real test data) embed with both model kinds."""
    sid = synth_scenes.clear_scene_ids[0]
    rgbn = ["blue", "green", "red", "nir"]
    cfg = _prepare(synth_scenes, tmp_path, [sid], model="spectral", s2_bands=rgbn, embed_max_missing=1.0)
    for model in ("spectral", "clay-tiny"):
        run_cfg = cfg.model_copy(update={"model": model, "checkpoint": "random" if model == "clay-tiny" else None})
        assert embed.model_bands(run_cfg, embed.get_model_spec(model)) == rgbn
        report = run_step(run_cfg, "embed")
        assert report.ok, report.summary()
        meta = _meta(cfg, sid)
        assert (meta["embedding_status"] == "ok").all()
        assert all("_blue_green_red_nir_" in u for u in meta["s3_location_cls_emb"])
