"""The end-of-run summary: its figures are what a hand computation and `easyrlhf eval` give on the same pairs,
and the README's quick start (`--config quickstart`) ends with one."""

from __future__ import annotations

import json

import pytest

from easyrlhf_core.kit.findings import PairScores, pair_findings
from easyrlhf_core.runtime import registry

from .test_methods_trl import ToyPlugin


@pytest.fixture(autouse=True)
def toy_plugin():
    registry.register_plugin("toy-prefs-summary", ToyPlugin)
    yield
    registry.unregister_plugin("toy-prefs-summary")


def test_pair_findings_match_a_hand_computation():
    scores = PairScores(
        before_gaps=[0.5, -0.2, 0.0, -1.0], after_gaps=[0.6, 0.3, -0.1, -0.5], margin_changes=[1.0, 2.0, -1.0, 0.0]
    )
    held, moved = pair_findings(scores, seed=0)
    assert held.figures["held_out_pairs"] == 4
    assert held.figures["logprob_accuracy_before"] == pytest.approx(1 / 4 + 0.5 / 4)  # one win, one tie
    assert held.figures["logprob_accuracy_after"] == pytest.approx(2 / 4)
    assert moved.figures["moved_towards_chosen"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert moved.figures["margin_change_mean"] == pytest.approx(0.5)
    low, high = moved.figures["margin_change_ci95"]
    assert -1.0 <= low <= 0.5 <= high <= 2.0
    assert "0.38 of 4 held-out pairs before -> 0.50 after" in held.text


def test_summary_shares_of_all_pairs_keep_an_honest_interval():
    """8 of 8 pairs preferred and moved: the shares' intervals are Wilson's [0.68, 1.00], never [1.00, 1.00];
    the mean margin change keeps its bootstrap interval."""
    scores = PairScores(before_gaps=[-0.1] * 8, after_gaps=[0.5] * 8, margin_changes=[1.0] * 8)
    held, moved = pair_findings(scores, seed=0)
    for low, high in (held.figures["logprob_accuracy_after_ci95"], moved.figures["moved_towards_chosen_ci95"]):
        assert low == pytest.approx(0.6756, abs=1e-4) and high == 1.0
    assert "1.00 after [0.68, 1.00]" in held.text
    assert "on 1.00 of them [0.68, 1.00]" in moved.text
    assert moved.figures["margin_change_ci95"] == [1.0, 1.0]  # every change is +1.0: a mean, bootstrapped
    assert "the margin rose" in moved.text


def _toy_dpo(cli_run, model_dir, out, *options: str):
    """``easyrlhf run --method dpo`` on the toy pairs into ``out``, with ``options``."""
    return cli_run(
        "run",
        "--method",
        "dpo",
        "--model",
        str(model_dir),
        "--dataset",
        "toy-prefs",
        "--output-dir",
        str(out),
        *options,
    )


def test_dpo_summary_agrees_with_eval_on_the_same_pairs(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "dpo"
    result = _toy_dpo(
        cli_run,
        tiny_model_dir,
        out,
        "--max-steps",
        "4",
        "--set",
        "max_length=128",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "learning_rate=1e-3",
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dpo" and summary["steps"] == 4 and summary["train_examples"] == 16
    assert summary["model_dir"] == str(out / "model")
    figures = {k: v for finding in summary["changed"] for k, v in finding["figures"].items()}
    assert figures["held_out_pairs"] == 8  # the toy dataset's eval split
    assert "train_accuracy" in figures
    assert any(
        c.startswith(f"easyrlhf chat {out / 'model'} --compare {tiny_model_dir}") for c in summary["next_commands"]
    )
    assert "Summary" in result.stderr and "moved towards the chosen answer" in result.stderr

    report = cli_run(
        "eval",
        "--model",
        str(out / "model"),
        "--reference",
        str(tiny_model_dir),
        "--dataset",
        "toy-prefs",
        "--split",
        "eval",
        "--max-length",
        "128",
        "--max-new-tokens",
        "8",
        "--json",
    )
    assert report.exit_code == 0, report.stderr[-3000:]
    metrics = json.loads(report.stdout)["metrics"]
    assert figures["margin_change_mean"] == pytest.approx(metrics["implicit_reward_mean_margin"], rel=1e-4, abs=1e-5)
    assert figures["moved_towards_chosen"] == pytest.approx(metrics["implicit_reward_accuracy"])
    assert figures["logprob_accuracy_after"] == pytest.approx(metrics["logprob_accuracy"])


def test_quick_start_settings_end_with_a_summary_of_what_changed(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "quickstart"
    result = cli_run(
        "run",
        "--config",
        "quickstart",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "toy-prefs",
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained"].startswith("dpo (LoRA r16) from ")
    assert summary["steps"] == 16
    assert summary["train_examples"] == 16 and summary["train_examples_used"] == 16  # every toy pair fits
    figures = {k: v for finding in summary["changed"] for k, v in finding["figures"].items()}
    assert figures["held_out_pairs"] == 8
    # The toy preference (chosen answers say "Paris") is learnable: the quick start's learning rate moves it.
    assert figures["margin_change_mean"] > 0 and figures["moved_towards_chosen"] > 0.5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval_loss" in row for row in rows)  # final_eval off: the summary is the eval
    assert (out / "COMPLETE").is_file()


def test_the_summary_counts_the_pairs_trained_on_when_some_are_too_long(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "short"
    result = _toy_dpo(
        cli_run, tiny_model_dir, out, "--max-steps", "1", "--set", "max_length=29", "--set", "summary_pairs=0"
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    kept = summary["train_examples_used"]
    assert 0 < kept < summary["train_examples"] == 16, summary
    assert f"on {kept} of 16 toy-prefs examples (the rest too long for max_length)" in result.stderr


def test_a_negative_summary_pairs_is_one_line_before_anything_is_written(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "bad"
    result = _toy_dpo(cli_run, tiny_model_dir, out, "--set", "summary_pairs=-1")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --set summary_pairs: 'summary_pairs' must be >= 0 (0: no before/after scoring)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "changes, words",
    [
        ([-1.0, -0.8, -1.2, -0.9, -1.1, -0.7], "the margin fell"),
        ([1.0, 0.8, 1.2, 0.9, 1.1, 0.7], "the margin rose"),
        ([1.0, -1.0, 0.5, -0.5, 0.1, -0.2], "within noise: 6 pairs"),
    ],
)
def test_the_summary_says_within_noise_only_when_no_interval_excludes_no_change(changes, words):
    scores = PairScores(before_gaps=[0.0] * 6, after_gaps=[0.0] * 6, margin_changes=changes)
    _held, moved = pair_findings(scores, seed=0)
    assert words in moved.text, moved.text
    assert ("within noise" in moved.text) == (words.startswith("within noise")), moved.text


def test_dpo_with_no_pair_that_fits_is_one_line_naming_max_length(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "none-fit"
    result = _toy_dpo(cli_run, tiny_model_dir, out, "--max-steps", "1", "--set", "max_length=20")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "Error: max_length: every training pair's prompt alone fills max_length=20 tokens; raise max_length"
        )
    )
    assert not out.exists()
