"""The README's first run: DPO on the arithmetic dataset's preference pairs (the worked answer against what the
embedded model really answered, recorded and shipped), and the summary's ``beyond_noise`` verdict."""

from __future__ import annotations

import json
import re

import pytest


def _pairs(**options):
    from easyrlhf_plugins.data.arithmetic import ArithmeticDataset

    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.shapes import DataOptions, Shape

    return load_dataset(ArithmeticDataset, DataOptions(shape=Shape.PREFERENCE, **options))


def test_arithmetic_pairs_put_the_right_equation_against_the_recorded_answer():
    from easyrlhf_plugins.data.arithmetic_answers import recorded_answers

    answers = recorded_answers()
    splits = _pairs(max_eval_samples=16)
    pairs = splits.train + splits.eval
    assert len(splits.eval) == 16 and 300 < len(pairs) <= len(answers) == 400
    for pair in pairs:
        (asked,) = pair["prompt"]
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", asked["content"]).groups()
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen == f"{a} {op} {b} = {eval(f'{a} {op} {b}')}"  # the right result
        assert rejected == answers[asked["content"]] != chosen  # the model's own words, never the chosen answer
    held_out = {p["prompt"][0]["content"] for p in splits.eval}
    assert held_out.isdisjoint(p["prompt"][0]["content"] for p in splits.train)
    assert splits.eval == _pairs(max_eval_samples=16).eval  # the same held-out pairs on every machine


def test_arithmetic_pairs_refuse_data_files_in_one_line(tmp_path):
    from easyrlhf_core.kit.errors import EasyRLHFError

    with pytest.raises(EasyRLHFError, match="--dataset jsonl"):
        _pairs(data_files=[str(tmp_path / "mine.jsonl")])


@pytest.mark.parametrize(
    "moved, margin, expected",
    [
        ((0.3, 0.7), (-0.1, 0.2), False),  # both intervals hold "no change"
        ((0.55, 0.9), (-0.1, 0.2), True),  # the share of pairs that moved excludes 0.50
        ((0.3, 0.7), (0.01, 0.2), True),  # the margin rose
        ((0.1, 0.45), (-0.3, -0.01), True),  # the margin fell: a change too, the wrong way
    ],
)
def test_beyond_noise_is_the_verdict_the_words_give(moved, margin, expected):
    from easyrlhf_core.kit.findings import _verdict, beyond_noise

    assert beyond_noise(moved, margin) is expected
    assert ("within noise" in _verdict(moved, margin, 16) and "is not" not in _verdict(moved, margin, 16)) is (
        not expected
    )


def _quickstart(cli_run, model_dir, *options: str):
    """``easyrlhf run --config quickstart`` on ``model_dir``, with ``options``."""
    return cli_run("run", "--config", "quickstart", "--model", str(model_dir), *options)


def test_summary_json_carries_the_verdict_at_the_top(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _quickstart(
        cli_run, tiny_model_dir, "--output-dir", str(out), "--max-steps", "2", "--set", "summary_pairs=8"
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "arithmetic"
    (verdict,) = [f["figures"]["beyond_noise"] for f in summary["changed"] if "beyond_noise" in f["figures"]]
    assert summary["beyond_noise"] is verdict
    assert ("within noise" in result.stderr) is (not verdict) or "is not" in result.stderr
    assert "easyrlhf run --config quickstart-hh" in result.stderr  # the hh-rlhf DPO run is the next step


def test_a_run_without_held_out_pairs_has_no_verdict(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _quickstart(
        cli_run, tiny_model_dir, "--max-steps", "1", "--output-dir", str(out), "--set", "summary_pairs=0"
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["beyond_noise"] is None
