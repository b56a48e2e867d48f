"""`geofm synth` over several years: `--years`, and the `farmland` landscape whose crops follow a real
seasonal cycle that shifts from year to year (while the default landscape repeats its cycle exactly)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import rasterio
from typer.testing import CliRunner

from geofm.cli import app
from geofm.synth import paths as synth_paths
from geofm.synth import synthesize, years_end

runner = CliRunner()
CROP = 2


def _band(root: str, scene_id: str, band: str) -> np.ndarray:
    with rasterio.open(synth_paths.asset(root, scene_id, f"{band}.tif")) as ds:
        return ds.read(1).astype(float) / 10000.0


def test_years_spans_whole_years_from_start() -> None:
    assert years_end(date(2022, 1, 10), 2) == date(2024, 1, 9)
    assert years_end(date(2024, 2, 29), 1) == date(2025, 2, 28)


def test_cli_years_and_scenario(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--scenario", "farmland", "--start", "2022-06-20",
                                 "--years", "2", "--every", "365", "--extent", "640", "--no-into-layout"])
    assert result.exit_code == 0, result.output
    # two whole years from 2022-06-20 end on 2024-06-19 (2024 is a leap year): 730 days, three dates
    assert "3 synthetic scenes (farmland)" in result.output
    assert all(d in result.output for d in ("20220620", "20230620", "20240619"))
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path), "--scenario", "desert", "--extent", "640"])
    assert bad.exit_code == 2 and "farmland" in bad.output


def test_farmland_crops_green_up_every_summer_but_not_alike_every_year(tmp_path: Path) -> None:
    dates = [date(2022, 1, 15), date(2022, 6, 24), date(2023, 6, 24)]
    diffs = {}
    for scenario in ("default", "farmland"):
        root = str(tmp_path / scenario)
        s = synthesize(root, extent_m=1280.0, dates=dates, seed=4, scenario=scenario, into_layout=False)
        with rasterio.open(s.landcover_path) as ds:
            crop = ds.read(1) == CROP
        assert crop.mean() > 0.1

        def ndvi(i: int) -> np.ndarray:
            nir, red = _band(root, s.scene_ids[i], "B08")[crop], _band(root, s.scene_ids[i], "B04")[crop]  # noqa: B023
            return (nir - red) / (nir + red)

        winter, summer, next_summer = ndvi(0), ndvi(1), ndvi(2)
        assert np.median(summer) - np.median(winter) > 0.4  # a strong seasonal NDVI cycle
        diffs[scenario] = float(np.median(np.abs(next_summer - summer)))
    # the same day of the next year: the default crops repeat (pixel noise only), farmland's do not
    assert diffs["default"] < 0.03 and diffs["farmland"] > 2 * diffs["default"], diffs
