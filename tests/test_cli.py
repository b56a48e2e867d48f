"""Every subcommand answers --help, and the config command prints the resolved parameters."""

import yaml
from typer.testing import CliRunner

from geofm.cli import app

runner = CliRunner()


def _commands(typer_app, prefix=()):
    import typer.main

    group = typer.main.get_command(typer_app)
    stack = [(prefix, group)]
    while stack:
        path, cmd = stack.pop()
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append(((*path, name), sub))


def test_every_subcommand_has_help():
    paths = list(_commands(app))
    names = {" ".join(p) for p in paths}
    for expected in ("discover", "preprocess", "embed", "analyze", "consolidate", "run", "demo", "search",
                     "serve", "synth", "config", "models list", "models import", "finetune train",
                     "finetune evaluate", "finetune predict"):
        assert expected in names, f"missing subcommand {expected!r}"
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_config_prints_resolved_parameters(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("aoi_name: brazil\nchip_size: 128\n")
    result = runner.invoke(app, ["config", "--config", str(cfg), "--set", "batch_size=8"])
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(result.output)
    assert (values["aoi_name"], values["chip_size"], values["batch_size"]) == ("brazil", 128, 8)


def test_bad_parameter_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["config", "--set", "chip_size=-5"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["config", "--set", "no_such=1"])
    assert result.exit_code == 2 and "unknown parameter 'no_such'" in result.output


def test_chip_compression_is_set_by_name_and_an_unknown_one_is_refused():
    result = runner.invoke(app, ["config", "--set", "chip_compression=fast"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["chip_compression"] == "fast"
    result = runner.invoke(app, ["config", "--set", "chip_compression=zstd"])
    assert result.exit_code == 2 and "chip_compression" in result.output
