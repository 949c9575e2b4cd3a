"""configs/<method>.yaml hold each built-in method's real defaults and load back as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BUILTIN_METHODS = ["sft", "rm", "dpo", "ipo", "rrhf", "ppo", "grpo", "rloo", "rlhf"]


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_config_file_is_show_config_output(cli_run, method):
    result = cli_run("show-config", "--method", method)
    assert result.exit_code == 0, result.stderr
    assert (CONFIGS / f"{method}.yaml").read_text() == result.stdout


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_config_file_loads_back_with_config(cli_run, method):
    result = cli_run("show-config", "--config", str(CONFIGS / f"{method}.yaml"), "--no-comments")
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout) == yaml.safe_load((CONFIGS / f"{method}.yaml").read_text())


def test_every_builtin_method_has_a_config_file():
    from easyrlhf_core.runtime.registry import build_registry

    builtin = {name for name, entry in build_registry().methods.items() if entry.plugin.package == "easyrlhf"}
    assert builtin == set(BUILTIN_METHODS)
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == builtin | set(PRESETS)


#: Shipped configs that are not a method's defaults but a chosen set of settings for one of them.
PRESETS = {"quickstart": "dpo", "quickstart-hh": "dpo"}


@pytest.mark.parametrize("preset, method", sorted(PRESETS.items()))
def test_presets_name_their_method_and_only_change_real_options(cli_run, preset, method):
    given = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    result = cli_run("show-config", "--config", preset, "--no-comments")
    assert result.exit_code == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert given["method"] == resolved["method"] == method
    for key, value in given.items():
        assert resolved[key] == value if not isinstance(value, dict) else resolved[key].items() >= value.items()
