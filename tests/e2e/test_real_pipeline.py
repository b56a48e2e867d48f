"""The whole pipeline on real Sentinel-2 L2A (tile 33TWL, 5 dates in 10 days of August 2023, blue/green/red/
nir + SCL, 120 m crops with their real Earth Search items): clouds are kept out of the analysis and ten
days of unchanged land raise no change alarm."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from pyproj import Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform
from typer.testing import CliRunner

from geofm import storage
from geofm.cli import app
from geofm.layout import Layout

COGCROP = "s2l2a-33TWL-cogcrop"
CROP_BOUNDS = (553740, 5046240, 584460, 5076960)  # EPSG:32633, from its SOURCE.md


def _stage(shared_data: Path, lay: Layout) -> list[str]:
    """The real items into the input layout, their relative COG hrefs made absolute."""
    ids = []
    for folder in sorted(p for p in (shared_data / COGCROP).iterdir() if p.is_dir()):
        item = json.loads((folder / f"{folder.name}.json").read_text())
        for asset in item["assets"].values():
            if not asset["href"].startswith(("http", "s3://", "/")):
                asset["href"] = str((folder / asset["href"]).resolve())
        storage.write_json(lay.scene_metadata(folder.name), item)
        ids.append(folder.name)
    return ids


@pytest.mark.slow
def test_pipeline_on_real_scenes_keeps_clouds_out_and_finds_no_change(shared_data: Path, tmp_path: Path) -> None:
    lay = Layout(str(tmp_path / "out"), "slovenia")
    scenes = _stage(shared_data, lay)
    to_wgs84 = Transformer.from_crs(32633, 4326, always_xy=True).transform
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": mapping(transform(to_wgs84, box(*CROP_BOUNDS).buffer(-1000)))}))
    result = CliRunner().invoke(app, [
        "run", "--out", lay.root, "--aoi-name", "slovenia", "--aoi", str(aoi), "--skip-discover",
        "--model", "spectral", "--set", "s2_bands=[blue,green,red,nir]", "--set", "chip_size=64", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = gpd.read_parquet(lay.consolidated_output("33TWL"))
    assert set(rows["origin_tile"]) <= set(scenes) and rows["chip_id"].nunique() == 16
    assert (rows["cloud_cover_perc"] <= 0.05).all()  # step 3's default limit
    # 2023-08-10 is 80 % cloud in this crop: (almost) none of its chips is clear enough to analyse
    assert (rows["origin_tile"] == "S2B_33TWL_20230810_0_L2A").sum() <= 2
    # ten days of August: the land did not change, and no chip is flagged
    assert rows["cosine_sim"].min() > 0.9
    layer = gpd.read_file(lay.change_intensity("33TWL"))
    assert set(layer["change_intensity"]) == {"Low"}
