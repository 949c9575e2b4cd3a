"""The plugin contract a third party relies on: the framework applies the shared data options to any
dataset, rewards declare checked options, dotted --set reaches mappings, the public testing fixtures work
with an installed plugin, list-plugins and run agree on collisions, run --method X --help lists options."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset, RewardFunction
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.kit.rows import RowProblem, get_field
from easyrlhf_core.kit.shapes import DataSplits, Shape
from tests.plugin_fixtures import EchoPlugin


class Questions(Dataset):
    """A third-party dataset that only parses: 20 prompts, row 7 bad; no limits, no split, no counting."""

    name = "questions"
    description = "twenty questions"
    shapes = frozenset({Shape.PROMPT})
    fields = ("question",)

    def load(self, options):
        records = []
        for line in range(1, 21):
            row = {"q": f"question {line}"} if line != 7 else {"other": 1}
            try:
                text = get_field(row, "question", {"question": "q", **options.columns})
            except RowProblem as problem:
                options.bad_rows.report(problem, file="questions.jsonl", line=line)
                continue
            records.append({"prompt": [{"role": "user", "content": text}]})
        return DataSplits(options.shape, records, [], notes=["questions: read 20 rows"])


@dataclass
class PolitenessOptions:
    weight: float = option(1.0, "Multiplies the score.")
    words: list[str] = option(["please"], "Words that count.")

    def __post_init__(self):
        if self.weight <= 0:
            raise invalid("weight", "must be > 0")


class Polite(RewardFunction):
    name = "polite"
    description = "counts polite words"
    options_class = PolitenessOptions

    def score(self, prompts, completions):
        return [self.config.weight * sum(c.count(w) for w in self.config.words) for c in completions]


class KitPlugin:
    """A third-party plugin: a dataset and a reward with options."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(Questions)

    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(Polite)


@pytest.fixture
def plugins(easyrlhf_plugin):
    easyrlhf_plugin("kit-test", KitPlugin)
    easyrlhf_plugin("echo-test", EchoPlugin)


def _steps(out: Path) -> int:
    return len((out / "metrics.jsonl").read_text().splitlines())


def test_shared_data_options_apply_to_a_third_party_dataset(plugins, easyrlhf_cli, tmp_path):
    base = ["run", "--method", "echo", "--dataset", "questions"]
    stopped = easyrlhf_cli(*base, "--output-dir", str(tmp_path / "strict"))
    assert stopped.exit_code == 2 and stopped.stderr.startswith("Error: questions.jsonl:7: ")
    assert not (tmp_path / "strict").exists()

    out = tmp_path / "limited"
    result = easyrlhf_cli(*base, "--skip-bad-rows", "--set", "max_train_samples=5", "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert _steps(out) == 5  # max_train_samples, applied by the framework
    assert "data: questions (prompt): 5 train / 0 eval examples" in result.stderr  # echo: eval_fraction 0
    assert "skipped 1 bad row (skip_bad_rows); first: questions.jsonl:7:" in result.stderr

    carved = tmp_path / "carved"
    result = easyrlhf_cli(*base, "--skip-bad-rows", "--set", "eval_fraction=0.2", "--output-dir", str(carved))
    assert result.exit_code == 0 and "15 train / 4 eval examples" in result.stderr  # 19 rows, 20% held out

    typo = easyrlhf_cli(*base, "--set", "columns.qestion=q", "--output-dir", str(tmp_path / "typo"))
    assert typo.exit_code == 2 and "dataset 'questions' has no field 'qestion' to map" in typo.stderr


def test_dotted_set_maps_a_column_of_the_jsonl_dataset(plugins, easyrlhf_cli, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?"}) + "\n" for i in range(4)))
    out = tmp_path / "run"
    result = easyrlhf_cli(
        "run",
        "--method",
        "echo",
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--set",
        "columns.prompt=question",
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 0, result.stderr
    assert _steps(out) == 4
    assert "columns: {prompt: question}" in (out / "config.yaml").read_text()


def test_reward_options_are_declared_and_checked(plugins, easyrlhf_cli, tmp_path):
    from easyrlhf_core.kit.rewards import make_reward
    from easyrlhf_core.runtime.registry import get_registry

    reward = make_reward(get_registry(), None, "polite", {"weight": 2})
    assert reward.score([[]], ["please, please"]) == [4.0]
    out = tmp_path / "never"
    args = ["run", "--method", "ppo", "--reward", "polite", "--output-dir", str(out)]
    for setting, message in [
        ("reward_options.wieght=2", "unknown option(s) wieght (did you mean 'weight'?)"),
        ("reward_options.weight=two", "'weight' must be a number, got 'two'"),
        ("reward_options.weight=-1", "'weight' must be > 0"),
    ]:
        result = easyrlhf_cli(*args, "--set", setting)
        assert result.exit_code == 2, result.stderr
        assert (
            result.stderr.strip() == f"Error: reward_options: reward 'polite': {message}" or message in result.stderr
        ), result.stderr
        assert not out.exists()
    with pytest.raises(ConfigError, match="reward 'length': unknown option"):
        make_reward(get_registry(), None, "length", {"targte": 3})


def test_registering_an_installed_plugin_by_hand_registers_it_once(easyrlhf_plugin, easyrlhf_cli):
    import easyrlhf_plugins.rewards as installed

    registry = easyrlhf_plugin("rewards", installed)  # what a plugin's own tests do when it is also installed
    assert [p.name for p in registry.plugins].count("rewards") == 1
    assert registry.rewards["length"].plugin.package == "easyrlhf"
    result = easyrlhf_cli("list-plugins", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)["rewards"]].count("length") == 1


def test_run_help_with_a_method_lists_its_options(easyrlhf_cli):
    result = easyrlhf_cli("run", "--method", "dpo", "--help")
    assert result.exit_code == 0
    assert "Usage: easyrlhf run" in result.stdout and "Options of method 'dpo'" in result.stdout
    assert "\nbeta: 0.1\n" in result.stdout and "loss_type" not in result.stdout.split("Options of method")[0]


def test_did_you_mean_names_the_method(easyrlhf_cli, tmp_path):
    result = easyrlhf_cli("run", "--method", "dpo", "--set", "bta=1", "--output-dir", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "(did you mean 'beta'?); `easyrlhf show-config --method dpo` lists the options" in result.stderr


def test_dotted_set_into_reward_options_is_written_back_as_yaml(easyrlhf_cli):
    result = easyrlhf_cli(
        "show-config",
        "--method",
        "ppo",
        "--no-comments",
        "--set",
        "reward_options.weight=2",
        "--set",
        "reward_options.words=[please, thanks]",
    )
    assert result.exit_code == 0, result.stderr
    assert "reward_options: {weight: 2, words: [please, thanks]}" in result.stdout
