"""Config layers: defaults < file < flags < --set; type checks and validation with file:line."""

from __future__ import annotations

import pytest

from easyrlhf_core.kit.config import Layer
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.runtime.config_layers import config_to_yaml, load_yaml_layer, parse_set_options, resolve_config
from tests.plugin_fixtures import EchoConfig


def test_defaults_file_flags_set_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("beta: 0.3\nmode: slow\nlearning_rate: 2e-5\nlora:\n  r: 4\n", encoding="utf-8")
    layers = [
        load_yaml_layer(cfg_file),
        Layer({"mode": "flag", "max_steps": 7}, "flags"),
        parse_set_options(["mode=set", "lora.alpha=64"]),
    ]
    cfg = resolve_config(EchoConfig, layers)
    assert cfg.beta == 0.3  # file over default
    assert cfg.mode == "set"  # --set over flag over file
    assert cfg.max_steps == 7  # flag over default
    assert cfg.learning_rate == 2e-5  # YAML's string "2e-5" read as a number
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.enabled) == (4, 64, False)  # nested groups merge
    assert cfg.per_device_train_batch_size == 4  # untouched default


def test_unknown_key_in_file_names_file_line_and_suggests(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("beta: 0.3\n\nlearnig_rate: 1.0e-4\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        resolve_config(EchoConfig, [load_yaml_layer(cfg_file)])
    assert err.value.location == f"{cfg_file}:3"
    assert "did you mean 'learning_rate'" in err.value.message


def test_wrong_type_in_nested_key_names_line(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("lora:\n  enabled: true\n  r: eight\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        resolve_config(EchoConfig, [load_yaml_layer(cfg_file)])
    assert err.value.location == f"{cfg_file}:3"
    assert "'lora.r' must be an integer" in err.value.message


def test_validation_error_points_at_the_layer_that_set_the_value(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("mode: x\nbeta: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        resolve_config(EchoConfig, [load_yaml_layer(cfg_file)])
    assert err.value.location == f"{cfg_file}:2" and "'beta' must be > 0" in err.value.message
    with pytest.raises(ConfigError) as err:
        resolve_config(EchoConfig, [load_yaml_layer(cfg_file), parse_set_options(["beta=-2"])])
    assert err.value.location == "--set beta"


def test_invalid_yaml_reports_line(tmp_path):
    cfg_file = tmp_path / "broken.yaml"
    cfg_file.write_text("beta: 0.1\nmode: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml_layer(cfg_file)
    assert err.value.file == str(cfg_file) and err.value.line is not None and "invalid YAML" in err.value.message


def test_set_values_keep_strings_and_split_lists():
    cfg = resolve_config(
        EchoConfig, [parse_set_options(["mode=007", "data_files=a.jsonl,b.jsonl", "max_train_samples=null"])]
    )
    assert cfg.mode == "007"
    assert cfg.data_files == ["a.jsonl", "b.jsonl"]
    assert cfg.max_train_samples is None


@pytest.mark.parametrize(
    "pair, message",
    [
        ("beta", "expected key=value"),
        ("lora=3", "is a group of options"),
        ("precision=fp64", "one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ("max_steps=1.5", "must be an integer"),
        ("save_adapter_only=true", "needs LoRA"),
    ],
)
def test_set_errors(pair, message):
    with pytest.raises(ConfigError) as err:
        resolve_config(EchoConfig, [parse_set_options([pair])])
    assert message in err.value.message


def test_yaml_dump_round_trips(tmp_path):
    cfg = resolve_config(EchoConfig, [parse_set_options(["beta=0.25", "lora.target_modules=[q_proj,v_proj]"])])
    path = tmp_path / "dump.yaml"
    path.write_text(config_to_yaml(cfg, comments=True), encoding="utf-8")
    again = resolve_config(EchoConfig, [load_yaml_layer(path)])
    assert again == cfg
