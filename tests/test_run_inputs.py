"""Bad input for ``geofm run``: each is refused before any work with exit code 2 and a message naming
the input, and nothing is written; ``--dry-run`` prints the plan and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from geofm.cli import app
from geofm.layout import Layout
from geofm.synth import SynthResult

UNREACHABLE_STAC = "http://127.0.0.1:9"  # discard port: nothing answers; these runs must stop before it


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` (relative paths), [] when it does not exist."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", "--quiet", *args])


def write_geojson(path: Path, obj: Any) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def polygon(coords: list[list[float]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [coords]}}]}


@pytest.fixture
def good_aoi(synth_scenes: SynthResult, tmp_path: Path) -> str:
    dest = tmp_path / "aoi.geojson"
    shutil.copyfile(synth_scenes.aoi_path, dest)
    return str(dest)


def run_args(out: Path, aoi: str, *extra: str) -> list[str]:
    return ["--out", str(out), "--aoi-name", "bad", "--aoi", aoi, "--start", "2023-01-01", "--end",
            "2023-12-31", "--model", "spectral", "--set", "chip_size=64", "--set",
            f"stac_url={UNREACHABLE_STAC}", *extra]


def assert_refused(result: Any, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.output}"
    assert "Traceback" not in result.output
    assert files_under(out) == []


# ---- the AOI ---------------------------------------------------------------------------------------
AOI_CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda d: str(d / "nowhere.geojson"), "AOI file not found"),
    "not-json": (lambda d: write_geojson(d / "a.geojson", "this is not json {"), "not valid JSON"),
    "not-geojson": (lambda d: write_geojson(d / "a.geojson", {"hello": "world"}), "not GeoJSON"),
    "no-polygon": (lambda d: write_geojson(d / "a.geojson", {"type": "Feature", "properties": {}, "geometry": {
        "type": "Point", "coordinates": [15.0, 46.0]}}), "no Polygon or MultiPolygon found (found Point)"),
    "invalid": (lambda d: write_geojson(d / "a.geojson", polygon(  # a bow tie
        [[15.0, 46.0], [15.1, 46.1], [15.1, 46.0], [15.0, 46.1], [15.0, 46.0]])), "invalid geometry"),
    "empty": (lambda d: write_geojson(d / "a.geojson", {"type": "Polygon", "coordinates": []}),
              "geometry is empty"),
    "antimeridian": (lambda d: write_geojson(d / "a.geojson", polygon(
        [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]])), "antimeridian"),
    "not-wgs84": (lambda d: write_geojson(d / "a.geojson", polygon(
        [[500000, 5000000], [501000, 5000000], [501000, 5001000], [500000, 5000000]])), "EPSG:4326"),
}


@pytest.mark.parametrize("case", sorted(AOI_CASES))
def test_bad_aoi_is_refused_before_any_work(case: str, tmp_path: Path) -> None:
    make, message = AOI_CASES[case]
    aoi = make(tmp_path)
    out = tmp_path / "out"
    result = invoke(*run_args(out, aoi))
    assert_refused(result, out, message, aoi if case == "missing" else Path(aoi).name)


def test_bad_aoi_is_refused_with_skip_discover_too(synth_scenes: SynthResult, tmp_path: Path) -> None:
    aoi = write_geojson(tmp_path / "point.geojson", {"type": "Point", "coordinates": [15.0, 46.0]})
    out = tmp_path / "out"
    result = invoke(*run_args(out, aoi, "--skip-discover"))
    assert_refused(result, out, "point.geojson", "no Polygon")


# ---- other parameters --------------------------------------------------------------------------------
def test_dates_reversed(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = run_args(out, good_aoi)
    args[args.index("--start") + 1] = "2024-06-01"
    result = invoke(*args)
    assert_refused(result, out, "dates reversed", "2024-06-01", "2023-12-31")


def test_bad_date(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = run_args(out, good_aoi)
    args[args.index("--end") + 1] = "2023-13-01"
    result = invoke(*args)
    assert result.exit_code == 2 and "--end" in result.output and "2023-13-01" in result.output
    assert files_under(out) == []


def test_unknown_model(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = run_args(out, good_aoi)
    args[args.index("--model") + 1] = "no-such-model"
    assert_refused(invoke(*args), out, "unknown model 'no-such-model'", "spectral")


def test_clay_without_weights_is_refused_before_any_work(good_aoi: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOFM_MODEL_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)  # as on a machine with no network
    out = tmp_path / "out"
    args = run_args(out, good_aoi)
    args[args.index("--model") + 1] = "clay-v1"
    assert_refused(invoke(*args), out, "no weights for clay-v1", "geofm models import clay-v1")
    missing = tmp_path / "nowhere.ckpt"
    assert_refused(invoke(*args, "--set", f"checkpoint={missing}"), out, "checkpoint for clay-v1 not found")


def test_chip_size_not_a_multiple_of_the_patch_size(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(*run_args(out, good_aoi, "--set", "chip_size=60"))
    assert_refused(result, out, "chip_size 60 is not a multiple of spectral's patch size 8")


def test_unknown_parameter(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(invoke(*run_args(out, good_aoi, "--set", "chips_size=64")), out, "unknown parameter 'chips_size'")


def test_unknown_step(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(invoke(*run_args(out, good_aoi, "--steps", "preprocess,embedd")), out, "embedd")


def test_output_under_a_file_is_not_writable(good_aoi: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    result = invoke(*run_args(out, good_aoi))
    assert_refused(result, tmp_path / "nothing-here", "output location", str(out), "is not writable")
    assert files_under(tmp_path) == ["a-file", "aoi.geojson"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_not_writable(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert_refused(invoke(*run_args(out, good_aoi)), out, "is not writable")
    finally:
        out.chmod(0o755)


def test_no_scenes_found(synth_scenes: SynthResult, stac_server: Callable[[list[dict[str, Any]]], str],
                         good_aoi: str, tmp_path: Path) -> None:
    url = stac_server(synth_scenes.items)  # a real STAC API holding only 2023 scenes
    out = tmp_path / "out"
    args = run_args(out, good_aoi, "--set", f"stac_url={url}")
    args[args.index("--start") + 1], args[args.index("--end") + 1] = "2020-01-01", "2020-12-31"
    result = invoke(*args)
    assert_refused(result, out, "no scenes found", url, "2020-01-01 to 2020-12-31")


def test_no_scenes_in_the_input_folder_with_skip_discover(good_aoi: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(*run_args(out, good_aoi, "--skip-discover"))
    assert_refused(result, out, "no scenes in", "run discover first")


# ---- dry run -----------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_writes_nothing(synth_scenes: SynthResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    lay = Layout(str(out), "dry")
    Path(lay.scenes_dir).mkdir(parents=True)
    for sid in synth_scenes.scene_ids:
        Path(lay.scene_metadata(sid)).write_text(json.dumps(synth_scenes.item(sid)))
    before = files_under(out)
    result = CliRunner().invoke(app, ["run", "--dry-run", "--out", str(out), "--aoi-name", "dry", "--aoi",
                                      synth_scenes.aoi_path, "--model", "spectral", "--set", "chip_size=64",
                                      "--skip-discover"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("\nplan\n") + 6:])
    assert plan["scenes"] == synth_scenes.scene_ids
    assert plan["steps"]["preprocess"] == f"{len(synth_scenes.scene_ids)} units of work"
    # 2560 m at 64 px chips is a 4 x 4 grid; synth's AOI meets 9 of its chips, on every date
    assert plan["chips_per_scene"] == {sid: 9 for sid in synth_scenes.scene_ids}
    assert plan["chips"] == 9 * len(synth_scenes.scene_ids)
    assert set(plan["steps"]) == {"preprocess", "embed", "analyze", "consolidate"}
    assert "chip_size: 64" in result.output  # the resolved parameters are printed
    assert files_under(out) == before  # nothing written: no chips, no markers, no run record
    assert not Path(lay.output_dir).exists()  # not even empty output folders
