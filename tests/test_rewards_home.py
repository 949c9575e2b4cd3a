"""Rewards have one home (easyrlhf_core.kit.rewards): a reward model's metrics label is its own directory's name
(a run's model/: the run's), one "exactly one reward" rule worded the same for every method and eval, the
reward-model reward found by what it declares, and the rewards built once per run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.errors import ConfigError, PluginError
from easyrlhf_core.kit.rewards import (
    OneRewardOptions,
    WeightedRewardsOptions,
    one_reward_error,
    reward_label,
    reward_model_reward,
)
from easyrlhf_core.runtime.registry import get_registry
from tests.subprocess_runs import train_rows, write_rows


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny models are faster on one thread."""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": f"Say something ({i})."} for i in range(8)]
    return write_rows(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


@pytest.fixture(scope="module")
def reward_dirs(tiny_reward_model: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny reward model as a plain directory (``runs/judges/rm-v2``) and as a run's ``model/``."""
    root = tmp_path_factory.mktemp("runs")
    plain = root / "judges" / "rm-v2"
    in_run = root / "rm-v3" / "model"
    shutil.copytree(tiny_reward_model, plain)
    shutil.copytree(tiny_reward_model, in_run)
    return {"plain": plain, "run_model": in_run}


def test_a_reward_models_label_is_its_own_directorys_name(reward_dirs):
    assert reward_label({"reward_model": "runs/judges/rm-v2"}) == "rm-v2"
    assert reward_label({"reward_model": "runs/judges/rm-v2/"}) == "rm-v2"
    assert reward_label({"reward_model": "runs/rm/model"}) == "rm"
    assert reward_label({"reward_model": "org/model"}) == "model"  # a Hub id: never taken for a run's model/
    assert reward_label({"reward_model": "OpenAssistant/reward-model-deberta"}) == "reward-model-deberta"
    assert reward_label({"reward": "length", "reward_model": None}) == "length"
    config = WeightedRewardsOptions(
        reward_model=str(reward_dirs["plain"]),
        rewards=[{"reward_model": str(reward_dirs["run_model"]), "weight": 0.5}, {"reward": "length"}],
    )
    assert [r.label for r in config.build_rewards()] == ["rm-v2", "rm-v3", "length"]


def test_grpo_logs_a_reward_model_under_its_own_name(cli_run, tiny_model_dir, prompts, reward_dirs, tmp_path):
    out = tmp_path / "grpo"
    result = cli_run(
        "run",
        "--method",
        "grpo",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "jsonl",
        "--data-files",
        str(prompts),
        "--output-dir",
        str(out),
        "--reward-model",
        str(reward_dirs["plain"]),
        "--max-steps",
        "1",
        "--set",
        "eval_fraction=0",
        "--set",
        "max_completion_length=4",
        "--set",
        "save_steps=0",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "num_generations=2",
    )
    assert result.exit_code == 0, result.stderr
    row = train_rows(out)[0]
    assert "rewards/rm-v2/mean" in row and "rewards/judges/mean" not in row
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample["rewards"]) == {"rm-v2"}


def _run(cli_run, method: str, model: Path, data: Path, out: Path, *extra: str):
    return cli_run(
        "run",
        "--method",
        method,
        "--model",
        str(model),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--output-dir",
        str(out),
        *extra,
    )


NONE = "a reward is needed: {who} needs a reward model or a reward function"
BOTH = (
    "{who} takes one reward, but reward and reward_model are both set; give only one: --reward-model PATH or "
    "--reward NAME"
)


@pytest.mark.parametrize(
    "method, extra, where, message",
    [
        ("ppo", [], "--reward-model", NONE.format(who="PPO")),
        ("grpo", [], "--reward", NONE.format(who="GRPO")),
        ("rrhf", ["--set", "candidates=generate"], "--set candidates", NONE.format(who="RRHF")),
        ("ppo", ["--reward", "length", "--reward-model", "{rm}"], "--reward", BOTH.format(who="PPO")),
        ("grpo", ["--reward", "length", "--reward-model", "{rm}"], "--reward", BOTH.format(who="GRPO")),
        (
            "rrhf",
            ["--set", "candidates=generate", "--reward", "length", "--reward-model", "{rm}"],
            "--reward",
            BOTH.format(who="RRHF"),
        ),
        (
            "ppo",
            ["--reward", "length", "--reward", "keyword"],
            "--reward",
            "PPO takes one reward, but --reward is given 2 times; give only one: --reward-model PATH or --reward NAME",
        ),
    ],
)
def test_one_reward_rule_one_message(
    cli_run, tiny_model_dir, prompts, reward_dirs, tmp_path, method, extra, where, message
):
    out = tmp_path / "never"
    extra = [a.format(rm=reward_dirs["plain"]) for a in extra]
    result = _run(cli_run, method, tiny_model_dir, prompts, out, *extra)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"Error: {where}: ") and message in result.stderr, result.stderr
    assert not out.exists()


def test_eval_and_the_rewards_list_use_the_same_rule(cli_run, tiny_model_dir, prompts, reward_dirs):
    result = cli_run(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--reward",
        "length",
        "--reward-model",
        str(reward_dirs["plain"]),
        "--dataset",
        "jsonl",
        "--data-files",
        str(prompts),
    )
    assert result.exit_code == 2
    assert (
        "Error: --reward: easyrlhf eval takes one reward, but --reward-model and --reward are both given; give "
        "only one: --reward-model PATH or --reward NAME" in result.stderr
    ), result.stderr
    with pytest.raises(ConfigError) as info:
        WeightedRewardsOptions(rewards=[{"reward": "length", "reward_model": "x"}])
    assert info.value.message == one_reward_error(2, "rewards[0]", forms=("reward_model: PATH", "reward: NAME")).message
    assert info.value.message.startswith("rewards[0] takes one reward, but reward and reward_model are both set")


def test_rewards_are_built_once_and_kept_on_the_config(reward_dirs):
    config = WeightedRewardsOptions(reward="length", rewards=[{"reward_model": str(reward_dirs["plain"])}])
    first = config.build_rewards()
    assert [r.reward for r in config.build_rewards()] == [r.reward for r in first]
    assert all(a.reward is b.reward for a, b in zip(config.build_rewards(), first))
    one = OneRewardOptions(reward="keyword", reward_options={"keywords": "a"})
    assert one.build_reward() is one.build_reward()


class ModelReward:
    """A third-party reward that also reads a model directory."""

    @staticmethod
    @hookimpl
    def register_rewards(register):
        from easyrlhf_plugins.rewards import RewardModelReward

        class Other(RewardModelReward):
            name = "other-rm"

        register(Other)


def test_the_reward_model_reward_is_found_by_what_it_declares(easyrlhf_plugin):
    from easyrlhf_plugins.rewards import RewardModelReward

    assert RewardModelReward.model_option == "path"
    assert reward_model_reward(get_registry()) is RewardModelReward
    easyrlhf_plugin("second-model-reward", ModelReward)
    assert reward_model_reward(get_registry()) is RewardModelReward  # the built-in wins a tie

    registry = get_registry()
    registry.rewards = {k: v for k, v in registry.rewards.items() if not getattr(v.obj, "model_option", None)}
    with pytest.raises(PluginError, match="no installed reward reads a reward-model directory"):
        reward_model_reward(registry)
