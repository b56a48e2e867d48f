"""Paths in the tables (meta, analyze rows, processed, consolidated, LanceDB ``s3_location_*``) follow the one
rule of :meth:`geofm.layout.Layout.stored`: relative to ``output/<aoi>/``. A run started with a relative
``--out`` is read, rerun and searched from another working folder, and after its folder moved; tables
written before the rule (working-folder-relative or absolute paths) are still read, and step 4 rewrites
their paths by the rule."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from fixtures.relative_run import RELATIVE_AOI, RELATIVE_OUT, RelativeRun, geofm
from geofm import geoparquet, storage, vectordb
from geofm.layout import Layout

pytestmark = pytest.mark.slow
ARTIFACT_FOLDERS = {"raw-chips", "rgb-imgs", "embeddings"}


def path_tables(lay: Layout) -> dict[str, pd.DataFrame]:
    """Every table of the AOI that stores paths, by name."""
    tables: dict[str, pd.DataFrame] = {u.rsplit("/", 1)[-1]: geoparquet.read(u) for u in lay.meta_files()}
    tables["analyze_rows"] = geoparquet.read(lay.analyze_rows)
    grid = storage.list_folders(lay.consolidated_root)[0]
    for url in lay.processed_files(grid):
        tables[url.rsplit("/", 1)[-1]] = geoparquet.read(url)
    tables["consolidated"] = geoparquet.read(lay.consolidated_output(grid))
    tables["lance-db"] = vectordb.open_table(lay.lance_db).to_pandas()
    return tables


def stored_values(lay: Layout) -> list[tuple[str, str, str]]:
    return [(name, col, v) for name, t in path_tables(lay).items() for col in Layout.PATH_COLUMNS
            if col in t.columns for v in t[col] if isinstance(v, str)]


def run_steps_2_to_4(out: str, aoi: str, cwd: Path) -> None:
    done = geofm("run", "--out", out, "--aoi-name", RELATIVE_AOI, "--aoi", aoi, "--steps", "embed,analyze,consolidate",
                 "--model", "spectral", "--set", "chip_size=64", "--force", "--quiet", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr


def consolidated(lay: Layout) -> gpd.GeoDataFrame:
    grid = storage.list_folders(lay.consolidated_root)[0]
    frame = geoparquet.read(lay.consolidated_output(grid))
    return frame.sort_values(["chip_id", "date"]).reset_index(drop=True)


def test_every_stored_path_is_relative_to_the_aoi_folder_and_exists(relative_run: RelativeRun) -> None:
    lay = relative_run.layout
    values = stored_values(lay)
    tables = {name for name, _, _ in values}
    assert {"analyze_rows", "consolidated", "lance-db"} <= tables and len(tables) > 6
    for name, col, value in values:
        assert not value.startswith("/") and "://" not in value and RELATIVE_OUT not in value, (name, col, value)
        assert value.split("/", 1)[0] in ARTIFACT_FOLDERS, (name, col, value)
        url = lay.resolve(value)
        assert storage.exists(url) and lay.stored(url) == value, (name, col, value)
    assert any(col == "s3_location_patch_emb" for _, col, _ in values)


def test_another_working_folder_searches_and_reruns_the_output(relative_run: RelativeRun, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    out_from_there = os.path.relpath(relative_run.root, elsewhere)  # another spelling of the same root
    before = consolidated(relative_run.layout)
    row = before.dropna(subset=["cosine_sim"]).iloc[-1]
    found = geofm("search", "--out", out_from_there, "--aoi-name", RELATIVE_AOI, "--chip", row["chip_id"],
                  "--date", str(row["date"])[:10], "-k", "3", "--json", cwd=elsewhere)
    assert found.returncode == 0, found.stdout + found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    for hit in hits:  # printed as URLs that open from where the command ran
        assert (elsewhere / hit["s3_location_png_thumbnail"]).is_file(), hit
    run_steps_2_to_4(out_from_there, relative_run.synth.aoi_path, elsewhere)  # reads .nc and .npy by the stored paths
    after = consolidated(relative_run.layout)
    pd.testing.assert_frame_equal(after.drop(columns="geometry"), before.drop(columns="geometry"))


def test_a_moved_output_folder_reads_without_its_old_place(relative_run: RelativeRun, tmp_path: Path) -> None:
    moved = tmp_path / "moved-out"
    shutil.copytree(relative_run.root, moved)
    hidden = relative_run.root.with_name("hidden-while-moved")
    relative_run.root.rename(hidden)  # nothing may still point into the old folder
    try:
        run_steps_2_to_4("moved-out", relative_run.synth.aoi_path, tmp_path)
        lay = Layout(str(moved), RELATIVE_AOI)
        assert all(storage.exists(lay.resolve(v)) for _, _, v in stored_values(lay))
    finally:
        hidden.rename(relative_run.root)
    assert len(consolidated(lay)) == len(consolidated(relative_run.layout))


@pytest.mark.parametrize("style", ["working-folder-relative", "absolute"])
def test_tables_written_before_the_rule_are_still_read(relative_run: RelativeRun, tmp_path: Path, style: str) -> None:
    """Older runs stored paths as given: ``<--out>/output/<aoi>/...`` relative to the run's working folder, or
    absolute. Such metas are read by steps 2-4 run from another folder, and step 4 stores them by the rule."""
    old_cwd = tmp_path / "old-cwd"
    old_root = old_cwd / "old-out"
    shutil.copytree(relative_run.root, old_root)
    lay = Layout(str(old_root), RELATIVE_AOI)

    def as_older_runs_stored(value: object) -> object:
        if not isinstance(value, str):
            return value
        if style == "absolute":
            return str(old_root / "output" / RELATIVE_AOI / value)
        return f"old-out/output/{RELATIVE_AOI}/{value}"  # relative to old-cwd, where that run started

    for url in lay.meta_files():
        meta = geoparquet.read(url)
        for col in set(Layout.PATH_COLUMNS) & set(meta.columns):
            meta[col] = [as_older_runs_stored(v) for v in meta[col]]
        geoparquet.write(url, meta)
    before = consolidated(relative_run.layout)
    other = tmp_path / "other"
    other.mkdir()
    run_steps_2_to_4(str(old_root) if style == "absolute" else "../old-cwd/old-out", relative_run.synth.aoi_path,
                     other)
    after = consolidated(lay)
    np.testing.assert_allclose(after["cosine_sim"], before["cosine_sim"], rtol=0, atol=1e-6)
    for col in ("s3_location_netcdf", "s3_location_cls_emb"):
        assert all(v.split("/", 1)[0] in ARTIFACT_FOLDERS for v in after[col]), col
    assert (after["s3_location_netcdf"] == before["s3_location_netcdf"]).all()
    table = vectordb.open_table(lay.lance_db).to_pandas()
    assert all(v.startswith("rgb-imgs/") for v in table["s3_location_png_thumbnail"])


def test_lancedb_geometry_is_wkb_with_its_bounds(relative_run: RelativeRun) -> None:
    lay = relative_run.layout
    table = vectordb.open_table(lay.lance_db).to_pandas()
    assert "geometry_wkt" not in table.columns
    polygons = shapely.from_wkb(np.asarray(table["geometry"].tolist(), dtype=object))
    chips = consolidated(lay).drop_duplicates("chip_id").set_index("chip_id").geometry
    for poly, chip_id, minx, maxy in zip(polygons, table["chip_id"], table["minx"], table["maxy"], strict=True):
        assert poly.equals_exact(chips[chip_id], 1e-12)
        assert (minx, maxy) == (poly.bounds[0], poly.bounds[3])
    # the explorer's search API turns it into WKT, as before
    from geofm.server.search import similar_chips

    day = pd.Timestamp(table["date"].max()).date()
    hits = similar_chips(lay.lance_db, table["chip_id"].iloc[0], day, k=2)
    assert shapely.from_wkt(hits[0]["geometry_wkt"]).equals_exact(chips[hits[0]["chip_id"]], 1e-12)
