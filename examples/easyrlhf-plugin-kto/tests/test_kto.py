"""The plugin's own tests, written as a third party writes them: the fixtures EasyRLHF ships (easyrlhf_plugin,
easyrlhf_cli, and tiny_causal_lm: a tiny random model built locally, never downloaded)."""

from __future__ import annotations

import json

import easyrlhf_plugin_kto
import pytest


@pytest.fixture
def kto(easyrlhf_plugin):
    return easyrlhf_plugin("kto", easyrlhf_plugin_kto)


def test_listed_with_its_method_and_reward(kto, easyrlhf_cli):
    data = json.loads(easyrlhf_cli("list-plugins", "--json").stdout)
    assert any(m["name"] == "kto" and m["shape"] == "preference" for m in data["methods"])
    assert any(r["name"] == "politeness" for r in data["rewards"])


def test_kto_trains_on_the_embedded_data_and_saves_a_model(kto, easyrlhf_cli, tiny_causal_lm, tmp_path):
    out = tmp_path / "kto"
    result = easyrlhf_cli(
        "run",
        "--method",
        "kto",
        "--model",
        str(tiny_causal_lm),
        "--max-steps",
        "2",
        "--output-dir",
        str(out),
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=2",
        "--set",
        "max_length=128",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "save_steps=0",
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (out / "model" / "config.json").is_file() and (out / "COMPLETE").is_file()
    # the shared data options reached the plugin's run: 8 pairs, unpaired by KTO
    assert "8 train / 2 eval examples" in result.stderr


def test_kto_options_are_checked_with_the_file_or_flag(kto, easyrlhf_cli, tmp_path):
    result = easyrlhf_cli("run", "--method", "kto", "--set", "beta=0", "--output-dir", str(tmp_path / "x"))
    assert result.exit_code == 2 and result.stderr.strip() == "Error: --set beta: 'beta' must be > 0"
    listed = easyrlhf_cli("run", "--method", "kto", "--help")
    assert "desirable_weight: 1.0" in listed.stdout and "learning_rate: 5.0e-07" in listed.stdout


def test_politeness_reward_and_its_options(kto):
    from easyrlhf_core.kit.errors import ConfigError
    from easyrlhf_core.kit.rewards import make_reward

    reward = make_reward(kto, None, "politeness", {"weight": 0.5, "words": ["please", "thank you"]})
    assert reward.score([[]] * 2, ["Please, thank you, please!", "No."]) == [1.5, 0.0]
    with pytest.raises(ConfigError, match="unknown option\\(s\\) wieght \\(did you mean 'weight'\\?\\)"):
        make_reward(kto, None, "politeness", {"wieght": 2})
