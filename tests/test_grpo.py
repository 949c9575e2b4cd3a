"""GRPO and RLOO on the tiny Llama: a rule-based reward is learned, weighted rewards combine as
documented, third-party rewards with options and the `match` reward (reading a dataset column) plug in,
resume after SIGKILL continues exactly, two processes stay in sync, bad configs fail before anything loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction
from easyrlhf_core.kit.config import option
from tests.subprocess_runs import RunningProcess, model_tensors, read_metrics, run_easyrlhf, train_rows, write_rows

QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help me?"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": f"{q} ({i})", "answer": str(i)} for i in range(8) for q in QUESTIONS]
    return write_rows(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def args(method: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        "--set",
        "eval_fraction=0",
        "--set",
        "max_completion_length=8",
        "--set",
        "save_steps=0",
        "--set",
        "learning_rate=1e-2",
        "--set",
        "per_device_train_batch_size=8",
        "--set",
        "num_generations=4",
        "--seed",
        "3",
        *extra,
    ]


@dataclass
class CountOptions:
    letter: str = option("e", "The letter to count.")


class CountLetter(RewardFunction):
    """A third-party reward with options: how often a letter appears."""

    name = "count-letter"
    description = "counts one letter"
    options_class = CountOptions

    def score(self, prompts, completions):
        return [float(c.count(self.config.letter)) for c in completions]


class ThirdParty:
    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(CountLetter)


@pytest.fixture(autouse=True)
def _third_party(easyrlhf_plugin):
    easyrlhf_plugin("grpo-test", ThirdParty)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread (conftest's one_torch_thread)."""


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_a_rule_based_reward_is_learned(method, cli_run, tiny_model_dir, prompts, tmp_path):
    out = tmp_path / method
    result = cli_run(
        *args(
            method,
            tiny_model_dir,
            prompts,
            out,
            "--reward",
            "count-letter",
            "--set",
            "reward_options.letter=e",
            "--max-steps",
            "24",
        )
    )
    assert result.exit_code == 0, result.stderr
    rows = train_rows(out)
    key = "rewards/count-letter/mean"
    first = sum(r[key] for r in rows[:4]) / 4
    last = sum(r[key] for r in rows[-4:]) / 4
    assert last > first + 1.0, (first, last)
    assert (out / "model" / "config.json").is_file() and (out / "COMPLETE").is_file()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["step"] == 1 and set(samples[0]["rewards"]) == {"count-letter"}
    assert samples[-1]["rewards"]["count-letter"] == samples[-1]["completion"].count("e")


def test_weighted_rewards_combine_as_documented(cli_run, tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "weighted"
    config = tmp_path / "rewards.yaml"
    config.write_text(
        "rewards:\n  - {reward: count-letter, weight: 2.0, options: {letter: a}}\n"
        "  - {reward: length, weight: 0.5, options: {target: 3}}\n"
    )
    result = cli_run(*args("grpo", tiny_model_dir, prompts, out, "--config", str(config), "--max-steps", "2"))
    assert result.exit_code == 0, result.stderr
    assert "grpo: rewards count-letter x 2, length x 0.5" in result.stderr
    for row in train_rows(out):  # the logged reward is the weighted sum of the per-function means
        assert row["reward"] == pytest.approx(
            2.0 * row["rewards/count-letter/mean"] + 0.5 * row["rewards/length/mean"], rel=1e-4, abs=1e-5
        )
    several = cli_run(
        *args(
            "rloo",
            tiny_model_dir,
            prompts,
            tmp_path / "flags",
            "--reward",
            "count-letter",
            "--reward",
            "length",
            "--max-steps",
            "1",
        )
    )
    assert several.exit_code == 0, several.stderr
    assert {"rewards/count-letter/mean", "rewards/length/mean"} <= set(train_rows(tmp_path / "flags")[0])


def test_match_reads_the_dataset_column(cli_run, tiny_model_dir, prompts, tmp_path):
    from easyrlhf_plugins.rewards import MatchReward

    match = MatchReward()
    completions = ["The answer is 41, no, 42.", "I think 7", "no number", "It is 3.0"]
    columns = {"answer": ["42", "8", "1", 3]}
    assert match.score([[]] * 4, completions, columns=columns) == [1.0, 0.0, 0.0, 1.0]
    tagged = MatchReward(pattern=r"<answer>(.*?)</answer>")
    assert tagged.score([[]] * 2, ["<answer>Paris</answer>", "Paris"], columns={"answer": ["paris", "Paris"]}) == [
        1.0,
        0.0,
    ]
    out = tmp_path / "match"
    result = cli_run(*args("grpo", tiny_model_dir, prompts, out, "--reward", "match", "--max-steps", "1"))
    assert result.exit_code == 0, result.stderr
    assert "rewards/match/mean" in train_rows(out)[0]
    missing = cli_run(
        *args(
            "grpo",
            tiny_model_dir,
            prompts,
            tmp_path / "missing",
            "--reward",
            "match",
            "--set",
            "reward_options.column=solution",
            "--max-steps",
            "1",
        )
    )
    assert missing.exit_code != 0 and "no column 'solution'" in missing.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "num_generations=1"], "at least 2"),
        (["--set", "per_device_eval_batch_size=6"], "must be a multiple of num_generations (4)"),
        (["--set", "use_vllm=true"], "use_vllm needs"),
        (["--set", "loss_type=ppo"], "one of 'grpo', 'dr_grpo', 'dapo'"),
        (["--set", "reward_options.letter=e"], "a reward is needed"),
        (["--set", "rewards=[{reward: length, wieght: 2}]"], "unknown key(s) wieght"),
        (
            ["--reward", "count-letter", "--set", "reward_options.lettr=e"],
            "unknown option(s) lettr (did you mean 'letter'?)",
        ),
        (
            ["--reward", "count-letter", "--reward", "length", "--set", "reward_options.target=3"],
            "with several rewards",
        ),
    ],
)
def test_bad_configs_fail_before_anything_is_written(cli_run, tiny_model_dir, prompts, tmp_path, extra, message):
    out = tmp_path / "never"
    reward = (
        []
        if any(a.startswith(("--reward", "rewards=")) or "reward_options" in a for a in extra)
        else ["--reward", "length"]
    )
    result = cli_run(*args("grpo", tiny_model_dir, prompts, out, *reward, *extra))
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error:") and message in result.stderr, result.stderr
    assert not out.exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_model_dir, prompts, tmp_path):
    common = ["--reward", "length", "--max-steps", "6", "--set", "save_steps=2", "--set", "lr_scheduler_type=constant"]
    whole = run_easyrlhf(args("grpo", tiny_model_dir, prompts, tmp_path / "whole", *common))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    running = RunningProcess(args("grpo", tiny_model_dir, prompts, out, *common))
    running.wait_until(lambda: (out / "checkpoints" / "checkpoint-4" / "COMPLETE").is_file(), what="checkpoint-4")
    running.kill()
    resumed = run_easyrlhf(args("grpo", tiny_model_dir, prompts, out, *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    got, want = train_rows(out), train_rows(tmp_path / "whole")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 7))
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["rewards/length/mean"] == pytest.approx(b["rewards/length/mean"], rel=1e-5, abs=1e-6)
        assert a["num_tokens"] == b["num_tokens"]  # the trainer state carries the count: not added twice
    final, expected = model_tensors(out / "model"), model_tensors(tmp_path / "whole" / "model")
    assert all((final[k] - expected[k]).abs().max() < 1e-5 for k in final)


def test_two_processes_stay_in_sync(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "two"
    result = run_easyrlhf(
        args(
            "rloo",
            tiny_model_dir,
            prompts,
            out,
            "--reward",
            "length",
            "--max-steps",
            "2",
            "--set",
            "per_device_train_batch_size=4",
        ),
        num_processes=2,
    )
    assert result.returncode == 0, result.stderr
    checksums = result.rank_checksums
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]


def test_the_arithmetic_dataset_pairs_with_match(easyrlhf_cli):
    from easyrlhf_plugins.data.arithmetic import ArithmeticDataset
    from easyrlhf_plugins.rewards import MatchReward

    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.shapes import DataOptions, Shape

    splits = load_dataset(ArithmeticDataset, DataOptions(shape=Shape.PROMPT, max_eval_samples=50))
    assert len(splits.eval) == 50 and len(splits.train) == 1900
    again = load_dataset(ArithmeticDataset, DataOptions(shape=Shape.PROMPT, max_eval_samples=50))
    assert splits.eval == again.eval  # the same held-out problems on every machine
    row = splits.train[0]
    question = row["prompt"][0]["content"]
    a, op, b = question.split("?")[0].split()[-3:]
    assert row["answer"] == str(eval(f"{a} {op} {b}"))
    right = MatchReward().score([row["prompt"]], [f"It is {row['answer']}."], columns={"answer": [row["answer"]]})
    assert right == [1.0]
    listed = json.loads(easyrlhf_cli("list-plugins", "--json").stdout)
    assert any(d["name"] == "arithmetic" for d in listed["datasets"])


def test_ppo_reads_the_dataset_columns_too(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "ppo-match"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "arithmetic",
        "--reward",
        "match",
        "--max-steps",
        "1",
        "--output-dir",
        str(out),
        "--set",
        "max_new_tokens=4",
        "--set",
        "rollout_batch_size=4",
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=0",
        "--set",
        "save_steps=0",
    )
    assert result.exit_code == 0, result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 - 1.0 <= row["score"] <= 1.0  # match scores in {0, 1}, minus the missing-EOS penalty


def test_a_batch_that_does_not_split_into_groups_is_one_line_and_leaves_nothing(
    cli_run, tiny_model_dir, prompts, tmp_path
):
    out = tmp_path / "never"
    result = cli_run(*args("grpo", tiny_model_dir, prompts, out, "--reward", "length", "--set", "num_generations=3"))
    assert result.exit_code == 2  # TRL's check (it counts every process), in our voice
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert (
        len(errors) == 1
        and errors[0].startswith("Error: num_generations: ")
        and "multiple of num_generations" in errors[0]
    )
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_prompts_too_long_for_a_completion_are_dropped_and_counted(method, cli_run, tiny_model_dir, tmp_path):
    """The online methods share one rule (easyrlhf_core.kit.online.prompts_that_fit): a prompt that leaves no
    room for a completion is dropped, the log says how many, the summary trains on "N of M"."""
    rows = [{"prompt": q} for q in QUESTIONS] + [{"prompt": "word " * 200}]
    data = write_rows(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / method
    common = [
        "--set",
        "eval_fraction=0",
        "--set",
        "max_length=64",
        "--set",
        "save_steps=0",
        "--max-steps",
        "1",
        "--reward",
        "length",
        "--output-dir",
        str(out),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
    ]
    shape = (
        ["--set", "max_completion_length=8", "--set", "num_generations=4", "--set", "per_device_train_batch_size=4"]
        if method == "grpo"
        else ["--set", "max_new_tokens=8", "--set", "rollout_batch_size=4"]
    )
    result = cli_run("run", "--method", method, "--model", str(tiny_model_dir), *common, *shape)
    assert result.exit_code == 0, result.stderr
    assert "data: dropped 1 training prompts longer than max_length - " in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 5 and summary["train_examples_used"] == 4
    assert "on 4 of 5 jsonl examples (the rest too long for max_length)" in result.stderr


def test_no_prompt_that_fits_is_one_line_naming_max_length(cli_run, tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "long.jsonl", [{"prompt": "word " * 200}] * 4)
    out = tmp_path / "none-fit"
    result = cli_run(*args("grpo", tiny_model_dir, data, out, "--reward", "length", "--set", "max_length=64"))
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: max_length: every training prompt is longer than max_length - max_completion_length "
        "= 56 tokens; raise max_length"
    ], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_groups_larger_than_the_eval_batch_default_reach_the_final_eval(
    method, cli_run, tiny_model_dir, prompts, tmp_path
):
    """num_generations 8 (TRL's grpo default) with held-out prompts: the eval batch follows the group size (the
    old default of 4 split a group and the final eval failed after training, before the model was saved)."""
    out = tmp_path / method
    result = cli_run(
        *args(method, tiny_model_dir, prompts, out, "--reward", "length", "--max-steps", "1"),
        "--set", "num_generations=8", "--set", "eval_fraction=0.25", "--set", "max_eval_samples=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_reward" in row for row in rows), rows
    assert (out / "model" / "config.json").is_file()
