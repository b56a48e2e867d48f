"""Pipeline config: validation, ``--set`` parsing, YAML with overrides."""

from datetime import date

import pytest

from geofm.config import PipelineConfig, parse_set_options


def test_config_validation_and_set(tmp_path):
    with pytest.raises(ValueError, match="dates reversed"):
        PipelineConfig(start_date=date(2023, 2, 1), end_date=date(2023, 1, 1))
    assert parse_set_options(["chip_size=128", "s2_bands=[red, green]"]) == {
        "chip_size": 128, "s2_bands": ["red", "green"]}
    with pytest.raises(ValueError, match="unknown parameter 'chipsize'"):
        parse_set_options(["chipsize=1"])
    p = tmp_path / "run.yaml"
    p.write_text("aoi_name: x\nchip_size: 64\n")
    cfg = PipelineConfig.from_yaml(p, chip_size=128)
    assert (cfg.aoi_name, cfg.chip_size) == ("x", 128)
