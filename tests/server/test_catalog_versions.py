"""The explorer's catalog cache cannot answer stale or negative: an AOI asked for before step 4 ran is
found once its output exists, a removed grid is gone at once, a file rewritten while it is read is not
kept, the cache is bounded (LRU), and names that are not safe path parts are refused before any path
is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import box

from geofm import geoparquet
from geofm.errors import InvalidNameError, NotFoundError
from geofm.layout import Layout
from geofm.server.catalog import Catalog, VersionedLRU


def _write(root: Path, aoi: str, grid: str, sims: list[float]) -> None:
    frame = gpd.GeoDataFrame({
        "chip_id": [f"{i}_0" for i in range(len(sims))], "x_dim": list(range(len(sims))), "y_dim": 0,
        "date": pd.Timestamp("2023-06-01"), "cosine_sim": sims,
        "geometry": [box(16 + i * 0.01, 46, 16.01 + i * 0.01, 46.01) for i in range(len(sims))],
    }, crs="EPSG:4326")
    geoparquet.write(Layout(str(root), aoi).consolidated_output(grid), frame)


def test_no_negative_answer_is_kept(tmp_path):
    catalog = Catalog(str(tmp_path))
    with pytest.raises(NotFoundError, match="unknown AOI 'late'"):
        catalog.grids("late")
    assert catalog.aoi_names() == []
    _write(tmp_path, "late", "33TWL", [0.5])
    assert catalog.aoi_names() == ["late"] and catalog.grids("late") == ["33TWL"]
    assert list(catalog.table("late", "33TWL")["cosine_sim"]) == [0.5]


def test_removed_grid_is_not_served_from_the_cache(tmp_path):
    _write(tmp_path, "a", "33TWL", [0.9])
    _write(tmp_path, "a", "33TWK", [0.8])
    catalog = Catalog(str(tmp_path))
    assert list(catalog.table("a", "33TWL")["cosine_sim"]) == [0.9]
    shutil.rmtree(Layout(str(tmp_path), "a").consolidated_dir("33TWL"))
    with pytest.raises(NotFoundError, match="unknown grid '33TWL'"):
        catalog.table("a", "33TWL")
    shutil.rmtree(Layout(str(tmp_path), "a").output_dir)
    with pytest.raises(NotFoundError, match="unknown AOI 'a'"):
        catalog.table("a", "33TWK")


def test_cache_is_bounded_and_least_recently_used_goes_first(tmp_path):
    catalog = Catalog(str(tmp_path), max_tables=2)
    for i, grid in enumerate(("33TWL", "33TWK", "33TWM")):
        _write(tmp_path, "a", grid, [0.1 * (i + 1)])
    t1 = catalog.table("a", "33TWL")
    catalog.table("a", "33TWK")
    assert catalog.table("a", "33TWL") is t1  # used again: now the most recent
    catalog.table("a", "33TWM")  # evicts 33TWK, the least recently used
    assert len(catalog.tables) == 2
    assert catalog.table("a", "33TWL") is t1
    assert list(catalog.table("a", "33TWK")["cosine_sim"]) == [pytest.approx(0.2)]


def test_value_whose_files_changed_while_loading_is_not_kept():
    lru = VersionedLRU(4)
    stamps = iter(["v1", "v2", "v2", "v2", "v2"])  # the file moved on during the first load
    loads = []

    def load() -> str:
        loads.append(1)
        return f"value {len(loads)}"

    assert lru.get(("k",), lambda: next(stamps), load, "thing") == "value 1"
    assert len(lru) == 0  # not kept: it may mix two versions
    assert lru.get(("k",), lambda: next(stamps), load, "thing") == "value 2"
    assert lru.get(("k",), lambda: next(stamps), load, "thing") == "value 2" and len(loads) == 2


def test_vanished_file_is_not_found():
    def gone() -> str:
        raise FileNotFoundError("/secret/root/x.parquet")

    with pytest.raises(NotFoundError) as err:
        VersionedLRU(2).get(("k",), gone, lambda: None, "chip metadata of AOI 'a'")
    assert "/secret" not in str(err.value) and "chip metadata" in str(err.value)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "a" * 256, "a\x00b", ""])
def test_unsafe_names_never_reach_a_path(tmp_path, name):
    with pytest.raises(InvalidNameError):
        Catalog(str(tmp_path)).grids(name)


def test_listing_skips_aois_that_cannot_be_read(tmp_path):
    _write(tmp_path, "good", "33TWL", [0.9])
    (tmp_path / "output" / "notadir").mkdir()
    (tmp_path / "output" / "notadir" / "consolidated-output").write_text("a file, not a folder")
    shutil.copytree(tmp_path / "output" / "good", tmp_path / "output" / "bad\x01name")
    assert Catalog(str(tmp_path)).aois() == [("good", ["33TWL"])]
