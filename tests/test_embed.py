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
from geofm.layout import Layout
from geofm.steps import embed, preprocess

CHIP = 64


def _prepare(synth_scenes: Any, root: Path, scene_ids: list[str], **kw: Any) -> PipelineConfig:
    cfg = PipelineConfig(aoi_name="synth-embed", aoi=synth_scenes.aoi_path, chip_size=CHIP, workers=1,
                         retries=0, output_root=str(root), whole_tile=True, **kw)
    for sid in scene_ids:
        storage.write_json(cfg.layout.scene_metadata(sid), synth_scenes.item(sid))
    report = preprocess.run(cfg, quiet=True)
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
    report = embed.run(cfg, quiet=True)
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
        for chip_id, row in ok.iterrows():
            cls, patch = _load(row["s3_location_cls_emb"]), _load(row["s3_location_patch_emb"])
            assert cls.shape == (32,) and patch.shape == ((CHIP // 8) ** 2, 32)
            assert cls.dtype == np.float32 and np.isfinite(patch).all()
            assert "/embeddings/spectral/" in row["s3_location_cls_emb"]
            assert row["s3_location_cls_emb"].endswith(
                f"{sid}_{CHIP}_chip_cls_embeddings_blue_green_red_rededge1_rededge2_rededge3_nir_nir08_swir16_swir22"
                f"_{row['x_dim']}_{row['y_dim']}.npy")
            assert storage.read_text(cfg.layout.unique_chip_id(row["mgrs_grid"], row["x_dim"], row["y_dim"])) == chip_id
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
    cfg, (first, _, _) = spectral_run
    assert embed.process_unit(cfg, first) == {"skipped": True}
    tiny = cfg.model_copy(update={"model": "clay-tiny", "checkpoint": "random", "batch_size": 7})
    info = embed.process_unit(tiny, first)
    assert info["embedded"] == 15 and info["model"] == "clay-tiny"
    meta = _meta(tiny, first)
    assert (meta["model"] == "clay-tiny").all() and (meta["embedding_dim"] == 72).all()
    row = meta[meta["embedding_status"] == "ok"].iloc[0]
    assert "/embeddings/clay-tiny/" in row["s3_location_cls_emb"]
    assert _load(row["s3_location_cls_emb"]).shape == (72,)
    assert _load(row["s3_location_patch_emb"]).shape == (64, 72)
    # the spectral files are still there, untouched; spectral is no longer what the meta describes
    spectral_file = row["s3_location_cls_emb"].replace("/clay-tiny/", "/spectral/")
    assert _load(spectral_file).shape == (32,)
    assert embed.process_unit(tiny, first) == {"skipped": True}
    assert not embed.is_embedded(cfg, embed.read_meta(cfg.layout.meta(first)))
    assert embed.process_unit(cfg, first)["embedded"] == 15  # back to spectral
    assert (_meta(cfg, first)["model"] == "spectral").all()


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
    report = embed.run(cfg, quiet=True)
    assert report.ok, report.summary()
    out = _resolved(cfg, embed.read_meta(cfg.layout.meta(sid)))
    assert out.loc[3, "embedding_status"] == "failed" and out.loc[5, "embedding_status"] == "skipped-missing"
    assert (out.drop(index=[3, 5])["embedding_status"].isin(["ok", "skipped-missing"])).all()
    assert (out["embedding_status"] == "ok").sum() == 13
    assert out["s3_location_patch_emb"].isna().all()
    cls = out.loc[out["embedding_status"] == "ok", "s3_location_cls_emb"].iloc[0]
    assert storage.exists(cls) and not storage.exists(cls.replace("_cls_", "_patch_"))
    assert not embed.is_embedded(cfg, embed.read_meta(cfg.layout.meta(sid)))  # a failed chip means the scene is redone next time


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'clay-v7'"):
        embed.run(PipelineConfig(output_root=str(tmp_path), model="clay-v7"), quiet=True)
    with pytest.raises(ValueError, match=r"spectral needs at least bands.*lack \['nir'\]"):
        embed.run(PipelineConfig(output_root=str(tmp_path), model="spectral",
                                 embed_bands=["blue", "green", "red", "swir16"]), quiet=True)
    with pytest.raises(ValueError, match=r"embed_bands \['swir16'\] were not chipped"):
        embed.run(PipelineConfig(output_root=str(tmp_path), model="clay-tiny", s2_bands=["red", "nir"],
                                 embed_bands=["red", "swir16"]), quiet=True)
    with pytest.raises(ValueError, match=r"model clay-tiny does not take bands \['coastal'\]"):
        embed.run(PipelineConfig(output_root=str(tmp_path), model="clay-tiny", embed_bands=["coastal"]),
                  quiet=True)
    assert embed.run(PipelineConfig(output_root=str(tmp_path), model="spectral"), quiet=True).results == []


def test_scene_whose_every_chip_fails_is_a_failed_unit(synth_scenes: Any, tmp_path: Path) -> None:
    """A scene with no embeddable chip fails (named, with the first reason); the other scene finishes."""
    good, bad = synth_scenes.clear_scene_ids[0], synth_scenes.clear_scene_ids[-1]
    cfg = _prepare(synth_scenes, tmp_path, [good, bad], model="spectral", embed_max_missing=1.0)
    bad_meta = embed.read_meta(cfg.layout.meta(bad))
    for url in bad_meta["s3_location_netcdf"]:
        storage.write_bytes(cfg.layout.resolve(url), b"not a netcdf file")
    report = embed.run(cfg, quiet=True)
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
        report = embed.run(run_cfg, quiet=True)
        assert report.ok, report.summary()
        meta = _meta(cfg, sid)
        assert (meta["embedding_status"] == "ok").all()
        assert all("_blue_green_red_nir_" in u for u in meta["s3_location_cls_emb"])
