"""The online kit: one sampling options class, one samples.jsonl schema and one option name for it in every
online method (ppo, grpo, rloo), the former name num_sample_generations read with a one-line notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easyrlhf_core.kit.config import Layer
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.runtime.config_layers import config_to_yaml, parse_set_options, resolve_config
from tests.subprocess_runs import write_rows

NOTICE = "'num_sample_generations' is deprecated; use 'num_sample_completions'"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread (conftest's one_torch_thread)."""


def _ppo_config():
    from easyrlhf_plugins.methods.ppo.config import PPOConfig

    return PPOConfig


def test_the_former_option_name_is_read_with_one_notice(capsys, tmp_path):
    config = resolve_config(_ppo_config(), [parse_set_options(["num_sample_generations=2"])], "ppo")
    assert config.num_sample_completions == 2
    err = capsys.readouterr().err
    assert err.count(NOTICE) == 1 and "--set num_sample_generations" in err, err
    assert "num_sample_generations" not in config_to_yaml(config)  # show-config says the one name

    old = tmp_path / "old.yaml"
    old.write_text("max_steps: 3\nnum_sample_generations: 0\n")
    from easyrlhf_core.runtime.config_layers import load_yaml_layer

    config = resolve_config(_ppo_config(), [load_yaml_layer(old)], "ppo")
    assert config.num_sample_completions == 0
    assert f"{old}:2: {NOTICE}" in capsys.readouterr().err  # the file and line that used it

    from easyrlhf_plugins.methods.rlhf import RLHFConfig

    nested = resolve_config(RLHFConfig, [parse_set_options(["ppo.num_sample_generations=1"])], "rlhf")
    assert nested.ppo.num_sample_completions == 1
    assert "'ppo.num_sample_generations' is deprecated; use 'ppo.num_sample_completions'" in capsys.readouterr().err


def test_both_names_in_one_layer_is_an_error_and_a_bad_value_is_located():
    with pytest.raises(ConfigError, match="give only 'num_sample_completions'"):
        resolve_config(_ppo_config(), [parse_set_options(["num_sample_generations=2", "num_sample_completions=3"])])
    with pytest.raises(ConfigError, match="must be >= 0"):
        resolve_config(_ppo_config(), [parse_set_options(["num_sample_generations=-1"])])
    later = resolve_config(
        _ppo_config(),
        [Layer(values={"num_sample_generations": 5}, source="a"), parse_set_options(["num_sample_completions=1"])],
    )
    assert later.num_sample_completions == 1  # layers still stack: the later one wins


def test_the_run_command_logs_the_notice_once(cli_run):
    result = cli_run("show-config", "--method", "ppo", "--set", "num_sample_generations=7")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count(NOTICE) == 1, result.stderr
    assert "num_sample_completions: 7" in result.stdout


def test_every_online_method_declares_sampling_once():
    import dataclasses

    from easyrlhf_plugins.methods.grpo import GRPOConfig, RLOOConfig
    from easyrlhf_plugins.methods.rrhf.config import RRHFConfig

    from easyrlhf_core.kit.online import SamplingOptions, TokenSamplingOptions

    shared = {f.name: f.metadata["help"] for f in dataclasses.fields(SamplingOptions)}
    for cls in (_ppo_config(), GRPOConfig, RLOOConfig, RRHFConfig):
        fields = {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}
        names = [f.name for f in dataclasses.fields(TokenSamplingOptions)] + ["num_sample_completions"]
        for name in names:
            if name in fields:
                assert fields[name] == shared.get(name, fields[name]), (cls.__name__, name)
        assert issubclass(cls, TokenSamplingOptions)
    assert _ppo_config().full_softmax and GRPOConfig.full_softmax and not RRHFConfig.full_softmax
    with pytest.raises(ConfigError, match="'top_k' must be 0 for rloo"):
        RLOOConfig(top_k=5)
    assert RRHFConfig(top_k=5).top_k == 5  # rrhf's candidates may be sampled with top-k
    assert _ppo_config()().max_new_tokens == 64 and RRHFConfig().max_new_tokens == 128  # defaults kept


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_ppo_and_grpo_write_the_same_samples_schema(cli_run, tiny_model_dir, tmp_path):
    questions = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help me?"]
    data = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"{q} ({i})"} for i in range(4) for q in questions])
    common = [
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--reward",
        "length",
        "--max-steps",
        "1",
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=0",
        "--set",
        "max_length=128",
        "--set",
        "num_sample_completions=3",
    ]
    ppo, grpo = tmp_path / "ppo", tmp_path / "grpo"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--output-dir",
        str(ppo),
        *common,
        "--set",
        "max_new_tokens=4",
        "--set",
        "rollout_batch_size=4",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "ppo_epochs=1",
    )
    assert result.exit_code == 0, result.stderr
    result = cli_run(
        "run",
        "--method",
        "grpo",
        "--output-dir",
        str(grpo),
        *common,
        "--set",
        "max_completion_length=4",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "num_generations=2",
    )
    assert result.exit_code == 0, result.stderr
    for rows in (_rows(ppo), _rows(grpo)):
        assert len(rows) == 3
        for row in rows:
            assert set(row) == {"step", "prompt", "completion", "rewards"}
            assert row["step"] == 1 and isinstance(row["completion"], str)
            assert row["prompt"][-1]["role"] == "user" and isinstance(row["prompt"][-1]["content"], str)
            assert list(row["rewards"]) == ["length"] and isinstance(row["rewards"]["length"], float)
