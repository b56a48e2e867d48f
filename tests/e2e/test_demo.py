"""`geofm demo`: the whole pipeline on a synthetic AOI, offline, and a summary that finds the planted change."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from geofm.cli import app


@pytest.mark.slow
def test_demo_runs_end_to_end_and_finds_the_planted_change(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GEOFM_MODEL_CACHE", str(tmp_path / "empty-model-cache"))  # no Clay weights here
    monkeypatch.setenv("COLUMNS", "200")  # rich tables one row per line
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--quiet"])
    text = result.output
    assert result.exit_code == 0, text
    assert "model: spectral" in text  # "auto" without Clay weights in the cache
    table = text[text.index("chips that changed most"):text.index("scenes,")]
    first = next(line for line in table.splitlines() if "│" in line and "_" in line and "chip_id" not in line)
    assert "High" in first and "new_water" in first  # the most changed chip is the planted new lake
    assert "forest_cleared" in table
    assert "similarity search from the steadiest chip" in text
    assert "geofm serve --out" in text
    assert (tmp_path / "demo" / "output" / "demo" / "lance-db").is_dir()
