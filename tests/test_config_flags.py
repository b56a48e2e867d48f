"""Parameters through the commands: ``--set`` values survive every subcommand (a flag left out never
hides them), and an unsafe ``--aoi-name`` exits 2 from every command that takes one, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geofm.cli import app
from geofm.synth import SynthResult
from helpers import run_records, stage_scenes

AOI = "flags"
runner = CliRunner()


def _invoke(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_set_values_survive_every_subcommand(synth_scenes: SynthResult, tmp_path: Path) -> None:
    lay = stage_scenes(str(tmp_path / "out"), AOI, synth_scenes, synth_scenes.scene_ids[:2])
    base = ["--out", lay.root, "--aoi-name", AOI, "--quiet"]

    # step 1: whole_tile and chip_size from --set (the subcommand has flags for both, left out here)
    r = _invoke("preprocess", *base, "--aoi", synth_scenes.aoi_path, "--set", "whole_tile=true",
                "--set", "chip_size=128")
    assert r.exit_code == 0, r.output
    meta = pd.read_parquet(lay.meta(synth_scenes.scene_ids[0]))
    assert set(meta["chip_size"]) == {128} and len(meta) == 4  # the whole 256 px raster: 2 x 2 chips
    # step 2: the model from --set (the subcommand's --model left out)
    r = _invoke("embed", *base, "--set", "model=spectral", "--set", "batch_size=3")
    assert r.exit_code == 0, r.output
    assert set(pd.read_parquet(lay.meta(synth_scenes.scene_ids[0]))["model"]) == {"spectral"}
    # step 3: three PCA components
    r = _invoke("analyze", *base, "--set", "n_components=3", "--set", "analyze_max_cloud=1.0")
    assert r.exit_code == 0, r.output
    consolidated_grid = synth_scenes.grid
    processed = pd.read_parquet(lay.processed_files(consolidated_grid)[0])
    assert "patch_emb_pca_3" in processed.columns
    # step 4: thresholds reach the front-end config
    r = _invoke("consolidate", *base, "--aoi", synth_scenes.aoi_path, "--set", "change_threshold_high=0.05",
                "--set", "change_threshold_medium=0.15")
    assert r.exit_code == 0, r.output
    conf = json.loads(Path(lay.frontend_config(consolidated_grid)).read_text())["demos"][0]["config"]
    assert (conf["change_threshold_high"], conf["change_threshold_medium"]) == (0.05, 0.15)
    # every step's run record holds the --set values it was given
    records = run_records(lay)
    assert [r["steps"] for r in records] == [["preprocess"], ["embed"], ["analyze"], ["consolidate"]]
    assert records[0]["config"]["whole_tile"] is True and records[0]["config"]["chip_size"] == 128
    assert records[1]["config"]["model"] == "spectral" and records[1]["config"]["batch_size"] == 3
    assert records[2]["config"]["n_components"] == 3
    # `run` and `config`: --set with a flag left out, and a given flag winning over --set
    r = _invoke("run", *base, "--skip-discover", "--dry-run", "--set", "model=spectral", "--set",
                "chip_size=128", "--set", "whole_tile=true")
    assert r.exit_code == 0, r.output
    assert "model: spectral" in r.output and "chip_size: 128" in r.output and "whole_tile: true" in r.output
    r = _invoke("config", "--set", "retries=4")
    assert "retries: 4" in r.output
    r = _invoke("run", *base, "--skip-discover", "--dry-run", "--set", "model=clay-v1", "--model", "spectral")
    assert "model: spectral" in r.output


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "a\\b", "x" * 256])
@pytest.mark.parametrize("command", [
    ["run", "--skip-discover", "--model", "spectral"], ["preprocess"], ["embed"], ["analyze"], ["consolidate"],
    ["discover", "--start", "2023-01-01", "--end", "2023-02-01"], ["search", "--chip", "0_0", "--date", "2023-01-01"],
])
def test_unsafe_aoi_name_exits_2_and_writes_nothing(command: list[str], name: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    r = runner.invoke(app, [*command, "--out", "out", "--aoi-name", name])
    assert r.exit_code == 2, r.output
    assert "aoi_name" in r.output
    assert not any(tmp_path.rglob("*.*")) and [p.name for p in tmp_path.iterdir()] == ["root"]
    assert not any(root.iterdir())


@pytest.mark.parametrize("name", ["../../x", ".."])
def test_synth_refuses_an_unsafe_aoi_name(name: str, tmp_path: Path) -> None:
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "out"), "--aoi-name", name])
    assert r.exit_code == 2 and "--aoi-name" in r.output
    assert not (tmp_path / "out").exists()
