"""The whole pipeline against S3 (moto server mode on loopback): the scenes' COGs and items in a bucket
(hrefs ``s3://``), the items served by a real STAC API (``rustac serve`` on 127.0.0.1), discovery
included, and the output root ``s3://bucket/prefix``."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geofm import storage
from geofm.cli import app
from geofm.layout import Layout
from geofm.synth import SynthResult, paths
from geofm.vectordb import search
from helpers import counts, run_records

pytestmark = pytest.mark.slow

AOI = "s3aoi"
SCENE_INDICES = (0, 3, 5)  # three clear dates, the forest cleared from the second


def upload_archive(synth: SynthResult, scene_ids: list[str], archive_root: str) -> list[dict[str, Any]]:
    """Copy the scenes' COGs into the bucket; return their items with every href pointing there."""
    items = []
    for sid in scene_ids:
        local_dir = Path(paths.scene_dir(synth.root, sid))
        for f in sorted(local_dir.iterdir()):
            storage.upload_file(f, paths.asset(archive_root, sid, f.name))
        item = copy.deepcopy(synth.item(sid))
        for asset in item["assets"].values():
            if str(asset.get("href", "")).startswith(str(local_dir.parent)):
                asset["href"] = paths.asset(archive_root, sid, Path(asset["href"]).name)
        items.append(item)
    return items


def test_whole_pipeline_on_s3(synth_scenes: SynthResult, s3_bucket: str,
                              stac_server: Callable[[list[dict[str, Any]]], str]) -> None:
    scenes = [synth_scenes.scene_ids[i] for i in SCENE_INDICES]
    archive = f"s3://{s3_bucket}/archive"
    items = upload_archive(synth_scenes, scenes, archive)
    hrefs = [a["href"] for it in items for k, a in it["assets"].items() if k in ("red", "scl", "nir")]
    assert hrefs and all(h.startswith(f"{archive}/") for h in hrefs)
    aoi = f"s3://{s3_bucket}/archive/aoi.geojson"
    storage.write_bytes(aoi, storage.read_bytes(synth_scenes.aoi_path))
    stac_url = stac_server(items)
    out = f"s3://{s3_bucket}/runs/first"

    result = CliRunner().invoke(app, [
        "run", "--quiet", "--out", out, "--aoi-name", AOI, "--aoi", aoi, "--start", "2023-01-01",
        "--end", "2023-12-31", "--model", "spectral", "--set", "chip_size=64", "--set", f"stac_url={stac_url}",
        "--set", "workers=2"])
    assert result.exit_code == 0, result.output

    lay = Layout(out, AOI)
    (record,) = run_records(lay)
    steps = counts(record)
    assert steps["discover"] == {"done": 1, "skipped": 0, "failed": 0}
    assert steps["preprocess"] == steps["embed"] == {"done": len(scenes), "skipped": 0, "failed": 0}
    assert steps["analyze"]["done"] > 0 and steps["analyze"]["failed"] == 0

    # discovery wrote the items (hrefs still s3://) and the AOI to the input layout in the bucket
    found = sorted(lay.scene_id_from_metadata(u) for u in storage.list_files(lay.scenes_dir, "_metadata.json"))
    assert found == sorted(scenes)
    assert storage.read_json(lay.scene_metadata(scenes[0]))["assets"]["red"]["href"].startswith(archive)
    assert storage.exists(lay.aoi_geojson)

    # every step's outputs are in the bucket
    n_ok = 0
    for sid in scenes:
        meta = gpd.read_parquet(io.BytesIO(storage.read_bytes(lay.meta(sid))))
        ok = meta[meta["embedding_status"] == "ok"]
        assert len(ok) > 0 and set(meta["embedding_status"]) <= {"ok", "skipped-missing"}
        n_ok += len(ok)
        for stored in [*meta["s3_location_netcdf"], *meta["s3_location_png_thumbnail"], *ok["s3_location_cls_emb"],
                       *ok["s3_location_patch_emb"]]:
            url = lay.resolve(stored)  # stored relative to output/<aoi>/ (the paths rule)
            assert "://" not in stored and url.startswith(f"{lay.output_dir}/") and storage.exists(url), url
        cls = np.load(io.BytesIO(storage.read_bytes(lay.resolve(ok["s3_location_cls_emb"].iloc[0]))),
                      allow_pickle=False)
        assert cls.shape == (32,) and cls.dtype == np.float32 and np.isfinite(cls).all()
    grid = synth_scenes.grid
    assert storage.exists(lay.reducer_model("pca"))
    consolidated = pd.read_parquet(io.BytesIO(storage.read_bytes(lay.consolidated_output(grid))))
    assert 0 < len(consolidated) <= n_ok and set(consolidated["origin_tile"]) == set(scenes)
    processed = storage.list_files(lay.processed_embeddings_dir(grid), "_processed_embeddings.parquet")
    assert len(processed) == consolidated["chip_id"].nunique() > 1
    for url in (lay.chip_grid_aoi(grid), lay.chip_grid_full_tile(grid), lay.change_intensity(grid),
                lay.frontend_config(grid)):
        assert storage.exists(url), url

    # the LanceDB table in the bucket answers searches: a chip is its own best match
    row = consolidated.iloc[0]
    day = pd.Timestamp(row["date"]).date()
    hits = search(lay.lance_db, chip_id=row["chip_id"], date=day, k=3, exclude_query_chip=False)
    assert hits.iloc[0]["chip_id"] == row["chip_id"] and hits.iloc[0]["score"] == pytest.approx(1.0, abs=1e-4)
    everything = search(lay.lance_db, chip_id=row["chip_id"], date=day, k=1000, exclude_query_chip=False)
    assert len(everything) == len(consolidated)

    # a rerun against the same bucket skips every unit
    again = CliRunner().invoke(app, [
        "run", "--quiet", "--out", out, "--aoi-name", AOI, "--aoi", aoi, "--skip-discover", "--model",
        "spectral", "--set", "chip_size=64", "--set", "workers=2"])
    assert again.exit_code == 0, again.output
    rerun = counts(next(r for r in run_records(lay) if r["run_id"] != record["run_id"]))
    for step in ("preprocess", "embed", "analyze", "consolidate"):  # consolidate: its grid and the DB load
        assert rerun[step] == {**steps[step], "done": 0, "skipped": steps[step]["done"]}, step
    again_rows = search(lay.lance_db, chip_id=row["chip_id"], date=day, k=1000, exclude_query_chip=False)
    assert len(again_rows) == len(consolidated)
