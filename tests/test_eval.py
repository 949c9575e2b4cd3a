"""`easyrlhf eval`: reward-model accuracy and its length baseline, policy metrics against a reference, JSON keys,
and one-line errors. Tiny models; a toy preference set whose chosen answers all name Paris."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.commands.eval.report import POLICY_METRICS, REWARD_MODEL_METRICS
from easyrlhf_core.kit.bases import Dataset, RewardFunction
from easyrlhf_core.kit.shapes import DataSplits, Shape
from easyrlhf_core.kit.stats import bootstrap_interval, outcomes, pairwise, wilson_interval
from easyrlhf_core.runtime.registry import register_plugin, unregister_plugin
from tests.helpers import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_tokenizer

MARKER = "Paris"


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


# Every chosen answer begins with the marker. Eval rows, chosen vs rejected length in characters: 15<23 (0),
# 25>5 (1), 6=6 (tie, 0.5), 24>10 (1) -> the longer-response-wins baseline is 2.5 / 4 = 0.625.
EVAL_PAIRS = [
    _pair("Where is the Eiffel tower?", "Paris, I think.", "It is in Rome, I think."),
    _pair("What is the capital of France?", "Paris, the city of light.", "Rome."),
    _pair("Name a city.", "Paris!", "Berlin"),
    _pair("Where should I travel?", "Paris. You will love it.", "Stay home."),
]
# Two more rows in the train split (chosen longer in both): with --split all the baseline is 4.5 / 6 = 0.75.
TRAIN_PAIRS = [
    _pair("Tell me a joke.", "Paris is always a good idea, they say.", "No."),
    _pair("Can you help me?", "Paris, I can tell you about it.", "Maybe."),
]


class ToyPreferences(Dataset):
    """Toy preference pairs whose chosen answer always begins with Paris."""

    name = "toy-prefs"
    description = "toy preference pairs (chosen begins with Paris)"
    shapes = frozenset({Shape.PREFERENCE, Shape.PROMPT})
    swap = False
    train_pairs, eval_pairs = TRAIN_PAIRS, EVAL_PAIRS

    def load(self, options):
        def shaped(records):
            if self.swap:
                records = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in records]
            if options.shape == Shape.PROMPT:
                return [{"prompt": r["prompt"]} for r in records]
            return records

        return DataSplits(options.shape, shaped(self.train_pairs), shaped(self.eval_pairs), notes=["toy data"])


class SwappedToyPreferences(ToyPreferences):
    """The same pairs with chosen and rejected swapped."""

    name = "toy-prefs-swapped"
    description = "toy preference pairs, chosen and rejected swapped"
    swap = True


class MarkerPreferences(ToyPreferences):
    """The eval prompts, chosen answer exactly the marker (what the marker policy learnt), rejected another."""

    name = "toy-marker-prefs"
    description = "toy pairs: chosen is exactly the marker"
    train_pairs = []
    eval_pairs = [{**r, "chosen": [{"role": "assistant", "content": MARKER}]} for r in EVAL_PAIRS]


class ToyPrompts(ToyPreferences):
    """Only the prompts."""

    name = "toy-prompts"
    description = "toy prompts"
    shapes = frozenset({Shape.PROMPT})


class MarkerReward(RewardFunction):
    """1 when the answer contains the marker word, else 0."""

    name = "marker"
    description = "1 if the answer contains the marker word (option word)"

    def score(self, prompts, completions):
        word = self.options.get("word", MARKER)
        return [1.0 if word in text else 0.0 for text in completions]


class ToyEvalPlugin:
    """Test plugin: toy preference data and a marker-word reward."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(ToyPreferences)
        register(SwappedToyPreferences)
        register(MarkerPreferences)
        register(ToyPrompts)

    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(MarkerReward)


@pytest.fixture(autouse=True)
def toy_plugin():
    register_plugin("toy-eval", ToyEvalPlugin)
    yield
    unregister_plugin("toy-eval")


# --------------------------------------------------------------------------------------------------
# Tiny models


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _conversation_ids(tokenizer, prompt, completion):
    from easyrlhf_core.kit.chat_template import split_completion

    p, c = split_completion(tokenizer, prompt, completion)
    return p, c


def _train_policy_to_say(model, tokenizer, prompts, answer: str, steps: int = 40) -> None:
    """A few full-batch Adam steps on ``prompt -> answer`` (loss on the answer tokens only)."""
    import torch

    from easyrlhf_core.kit.chat_template import as_completion

    rows = [_conversation_ids(tokenizer, p, as_completion(answer)) for p in prompts]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _train_rm_to_prefer_chosen(model, tokenizer, pairs, steps: int = 40) -> None:
    """Pairwise logistic loss on the pairs until chosen outscores rejected."""
    import torch

    from easyrlhf_core.kit.chat_template import encode

    texts = [encode(tokenizer, r["prompt"] + r[side]) for side in ("chosen", "rejected") for r in pairs]
    width = max(len(t) for t in texts)
    ids = torch.full((len(texts), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    n = len(pairs)
    model.train()
    for _ in range(steps):
        scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(scores[:n] - scores[n:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """policy (random), marker_policy (trained to answer "Paris", as every chosen answer begins), random_rm,
    zero_rm (all scores 0), marker_rm (trained to prefer the chosen answers)."""
    root = tmp_path_factory.mktemp("eval-models")
    tokenizer = build_tiny_tokenizer()
    out = {"policy": _save(build_tiny_causal_lm(tokenizer, seed=0), tokenizer, root / "policy")}
    marker_policy = build_tiny_causal_lm(tokenizer, seed=0)
    _train_policy_to_say(marker_policy, tokenizer, [r["prompt"] for r in EVAL_PAIRS + TRAIN_PAIRS], MARKER)
    out["marker_policy"] = _save(marker_policy, tokenizer, root / "marker-policy")
    out["random_rm"] = _save(build_tiny_reward_model(tokenizer, seed=1), tokenizer, root / "random-rm")
    zero = build_tiny_reward_model(tokenizer, seed=2)
    zero.score.weight.data.zero_()
    out["zero_rm"] = _save(zero, tokenizer, root / "zero-rm")
    marker_rm = build_tiny_reward_model(tokenizer, seed=3)
    _train_rm_to_prefer_chosen(marker_rm, tokenizer, EVAL_PAIRS + TRAIN_PAIRS)
    out["marker_rm"] = _save(marker_rm, tokenizer, root / "marker-rm")
    return out


def _eval_json(cli_run, *args: str) -> dict:
    result = cli_run("eval", *args, "--json", "--bootstrap-samples", "200")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------------
# Statistics


def test_outcomes_count_ties_as_half_and_bootstrap_is_seeded():
    assert outcomes([2.0, 1.0, 3.0], [1.0, 2.0, 3.0]) == [1.0, 0.0, 0.5]
    values = [1.0] * 30 + [0.0] * 10 + [0.5] * 5
    result = pairwise(values, [0.5] * len(values))
    point = (30 + 2.5) / 45
    assert result.accuracy == pytest.approx(point)
    assert result.ties == 5
    low, high = result.ci95
    assert 0.0 <= low < point < high <= 1.0
    assert result.ci95 == pytest.approx(wilson_interval(32.5, 45))  # a share: Wilson, ties half a win
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval([1.0] * 20, seed=1) == (1.0, 1.0)


@pytest.mark.parametrize(
    "successes, count, low, high",
    [
        (8, 8, 0.6756, 1.0),
        (0, 8, 0.0, 0.3244),
        (5, 10, 0.2366, 0.7634),
        (4, 4, 0.5101, 1.0),
        (1, 1, 0.2065, 1.0),
        (30, 100, 0.2189, 0.3958),
    ],
)
def test_wilson_interval_known_values(successes, count, low, high):
    assert wilson_interval(successes, count) == pytest.approx((low, high), abs=1e-4)


def test_a_share_of_all_wins_keeps_a_lower_bound_below_one():
    """8 wins of 8 once read [1.00, 1.00] (a bootstrap of eight 1s); a share's interval is Wilson's."""
    result = pairwise([1.0] * 8, [0.0] * 8)
    assert result.accuracy == 1.0
    assert result.ci95 == pytest.approx((0.6756, 1.0), abs=1e-4)
    none = pairwise([0.0] * 8, [1.0] * 8)
    assert none.ci95 == pytest.approx((0.0, 0.3244), abs=1e-4)
    empty = pairwise([], [])
    assert all(math.isnan(v) for v in empty.ci95)


# --------------------------------------------------------------------------------------------------
# Reward models


def test_trained_reward_model_accuracy_and_length_baseline(cli_run, models):
    report = _eval_json(cli_run, "--model", str(models["marker_rm"]), "--dataset", "toy-prefs")
    assert report["kind"] == "reward_model" and report["pairs"] == 4
    m = report["metrics"]
    assert m["accuracy"] == 1.0 and m["accuracy_ties"] == 0 and m["mean_margin"] > 0
    # 4 of 4 is not proof of a perfect model: the Wilson interval's lower bound stays below 1
    assert m["accuracy_ci95"] == pytest.approx([0.5101, 1.0], abs=1e-4) and m["accuracy_ci95"][0] < 1.0
    assert m["length_baseline_accuracy"] == 0.625 and m["length_baseline_ties"] == 1
    low, high = m["length_baseline_ci95"]
    assert 0.0 <= low <= 0.625 <= high <= 1.0

    swapped = _eval_json(cli_run, "--model", str(models["marker_rm"]), "--dataset", "toy-prefs-swapped")["metrics"]
    assert swapped["accuracy"] == 0.0 and swapped["mean_margin"] == pytest.approx(-m["mean_margin"], rel=1e-4)
    assert swapped["length_baseline_accuracy"] == 0.375


def test_split_all_and_limit(cli_run, models):
    everything = _eval_json(cli_run, "--model", str(models["zero_rm"]), "--dataset", "toy-prefs", "--split", "all")
    assert everything["pairs"] == 6 and everything["metrics"]["length_baseline_accuracy"] == 0.75
    from easyrlhf_core.kit.data_loading import shuffled
    from easyrlhf_core.kit.stats import length_baseline

    limited = _eval_json(cli_run, "--model", str(models["zero_rm"]), "--dataset", "toy-prefs", "--limit", "2")
    first_two = shuffled(EVAL_PAIRS, 42)[:2]  # the framework shuffles a dataset's eval split with the seed
    expected = length_baseline(
        [r["chosen"][-1]["content"] for r in first_two], [r["rejected"][-1]["content"] for r in first_two]
    ).accuracy
    assert limited["pairs"] == 2 and limited["metrics"]["length_baseline_accuracy"] == expected
    assert any("limit" in note for note in limited["notes"])


def test_hh_rlhf_files_through_the_dataset_plugin(cli_run, models, tmp_path):
    """Anthropic-format rows via the built-in hh-rlhf plugin; chosen longer, shorter, equal, longer -> 0.625."""

    def row(chosen: str, rejected: str) -> str:
        human = "\n\nHuman: Can you help me?\n\nAssistant: "
        return json.dumps({"chosen": human + chosen, "rejected": human + rejected})

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "\n".join(
            [
                row("Hello there, friend.", "Go away."),
                row("Sure.", "No, I will not."),
                row("Yes.", "Nope"),
                row("Of course I can.", "No."),
            ]
        )
        + "\n"
    )
    report = _eval_json(
        cli_run, "--model", str(models["zero_rm"]), "--dataset", "hh-rlhf", "--data-files", str(data), "--split", "all"
    )
    assert report["pairs"] == 4 and report["data_files"] == [str(data)]
    assert report["metrics"]["length_baseline_accuracy"] == 0.625 and report["metrics"]["accuracy"] == 0.5


def test_equal_scores_are_ties(cli_run, models):
    m = _eval_json(cli_run, "--model", str(models["zero_rm"]), "--dataset", "toy-prefs")["metrics"]
    assert m["accuracy"] == 0.5 and m["accuracy_ties"] == 4
    assert m["accuracy_ci95"] == pytest.approx(list(wilson_interval(2.0, 4)))  # 4 ties: 2 wins of 4, not [0.5, 0.5]


def test_batched_accuracy_matches_one_by_one_scoring(cli_run, models):
    """A random reward model: the batched, padded evaluation agrees with scoring each conversation alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from easyrlhf_core.kit.chat_template import encode

    path = models["random_rm"]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    wins = []
    with torch.no_grad():
        for record in EVAL_PAIRS:
            chosen, rejected = (
                float(model(torch.tensor([encode(tokenizer, record["prompt"] + record[s])])).logits)
                for s in ("chosen", "rejected")
            )
            wins.append(1.0 if chosen > rejected else 0.0)
    report = _eval_json(cli_run, "--model", str(path), "--dataset", "toy-prefs", "--batch-size", "3")
    assert report["metrics"]["accuracy"] == sum(wins) / len(wins)


# --------------------------------------------------------------------------------------------------
# Policies


def test_policy_against_itself(cli_run, models):
    policy = str(models["policy"])
    report = _eval_json(
        cli_run,
        "--model",
        policy,
        "--reference",
        policy,
        "--reward",
        "marker",
        "--dataset",
        "toy-prefs",
        "--max-new-tokens",
        "6",
    )
    m = report["metrics"]
    assert report["kind"] == "policy" and report["pairs"] == 4 and report["prompts"] == 4
    assert abs(m["kl_per_token"]) < 1e-5 and abs(m["kl_per_sequence"]) < 1e-5
    assert m["implicit_reward_accuracy"] == 0.5 and m["implicit_reward_ties"] == 4
    assert m["win_rate"] == 0.5 and m["win_rate_ties"] == 4
    assert m["reward_greedy_mean"] == m["reference_reward_greedy_mean"]
    assert report["skipped"] == {}


def test_policy_trained_on_the_marker_beats_its_reference(cli_run, models):
    report = _eval_json(
        cli_run,
        "--model",
        str(models["marker_policy"]),
        "--reference",
        str(models["policy"]),
        "--reward",
        "marker",
        "--dataset",
        "toy-prefs",
        "--max-new-tokens",
        "6",
    )
    m = report["metrics"]
    assert m["reward_greedy_mean"] == 1.0 and m["reference_reward_greedy_mean"] == 0.0
    assert m["win_rate"] == 1.0 and m["win_rate_ties"] == 0
    assert m["kl_per_token"] > 0.01

    # Its log-ratio to the reference rises for the answer it learnt and falls for the others.
    pairs = _eval_json(
        cli_run,
        "--model",
        str(models["marker_policy"]),
        "--reference",
        str(models["policy"]),
        "--reward",
        "marker",
        "--dataset",
        "toy-marker-prefs",
        "--max-new-tokens",
        "4",
        "--no-sample",
    )
    m = pairs["metrics"]
    assert m["implicit_reward_accuracy"] == 1.0 and m["implicit_reward_mean_margin"] > 0
    assert m["implicit_reward_ci95"][0] < 1.0 and m["implicit_reward_ci95"][1] == 1.0  # Wilson: never [1, 1]

    option = _eval_json(
        cli_run,
        "--model",
        str(models["marker_policy"]),
        "--reward",
        "marker",
        "--reward-option",
        "word=Rome",
        "--dataset",
        "toy-prefs",
        "--max-new-tokens",
        "6",
        "--no-sample",
    )
    assert option["metrics"]["reward_greedy_mean"] == 0.0


def test_logprob_accuracy_needs_no_reference(cli_run, models):
    """A policy alone on preference pairs: does it give the chosen answer more probability per token?"""
    learnt = _eval_json(cli_run, "--model", str(models["marker_policy"]), "--dataset", "toy-marker-prefs")
    m = learnt["metrics"]
    assert learnt["pairs"] == 4 and learnt["prompts"] == 0
    assert m["logprob_accuracy"] == 1.0 and m["logprob_mean_margin"] > 0 and m["logprob_ties"] == 0
    assert m["implicit_reward_accuracy"] is None and "--reference" in learnt["skipped"]["implicit_reward_accuracy"]
    start = _eval_json(cli_run, "--model", str(models["policy"]), "--dataset", "toy-marker-prefs")
    assert start["metrics"]["logprob_mean_margin"] < m["logprob_mean_margin"]


def test_reward_model_judges_policy_answers(cli_run, models):
    """--reward-model DIR scores the answers (a zero head: every answer 0, so every game a tie)."""
    report = _eval_json(
        cli_run,
        "--model",
        str(models["marker_policy"]),
        "--reference",
        str(models["policy"]),
        "--reward-model",
        str(models["zero_rm"]),
        "--dataset",
        "toy-prefs",
        "--max-new-tokens",
        "4",
        "--no-sample",
    )
    m = report["metrics"]
    assert report["judge"].startswith("reward model")
    assert m["reward_greedy_mean"] == 0.0 and m["win_rate"] == 0.5 and m["win_rate_ties"] == 4


def test_json_keys_are_stable_and_skips_are_explained(cli_run, models):
    top = {
        "kind",
        "model",
        "reference",
        "judge",
        "dataset",
        "data_files",
        "split",
        "seed",
        "pairs",
        "prompts",
        "metrics",
        "skipped",
        "notes",
    }
    rm = _eval_json(cli_run, "--model", str(models["zero_rm"]), "--dataset", "toy-prefs")
    assert set(rm) == top and set(rm["metrics"]) == set(REWARD_MODEL_METRICS)

    no_reference = _eval_json(
        cli_run,
        "--model",
        str(models["policy"]),
        "--reward",
        "marker",
        "--dataset",
        "toy-prompts",
        "--max-new-tokens",
        "4",
    )
    assert set(no_reference) == top and set(no_reference["metrics"]) == set(POLICY_METRICS)
    m, skipped = no_reference["metrics"], no_reference["skipped"]
    assert m["reward_greedy_mean"] is not None and m["reward_sampled_mean"] is not None
    for key in ("implicit_reward_accuracy", "win_rate", "kl_per_token", "reference_reward_greedy_mean"):
        assert m[key] is None and "--reference" in skipped[key]
    assert no_reference["pairs"] == 0 and no_reference["prompts"] == 4

    no_reward = _eval_json(
        cli_run,
        "--model",
        str(models["policy"]),
        "--reference",
        str(models["policy"]),
        "--dataset",
        "toy-prefs",
        "--max-new-tokens",
        "4",
    )
    assert no_reward["metrics"]["reward_greedy_mean"] is None and "reward" in no_reward["skipped"]["win_rate"]
    assert no_reward["metrics"]["kl_per_token"] is not None


def test_table_output(cli_run, models):
    result = cli_run("eval", "--model", str(models["zero_rm"]), "--dataset", "toy-prefs")
    assert result.exit_code == 0, result.stderr
    assert "pairwise accuracy" in result.stdout and "0.6250" in result.stdout


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "/no/such/dir"], "model path not found"),
        (["--model", "{policy}", "--reward-model", "{policy}"], "--reward-model must be a reward model"),
        (["--model", "{policy}", "--reference", "{zero_rm}"], "--reference must be a causal LM"),
        (["--model", "{policy}", "--dataset", "toy-prompts"], "nothing to measure"),
        (["--model", "{zero_rm}", "--reference", "{policy}"], "--reference is for evaluating a policy"),
        (["--model", "{zero_rm}", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["--model", "{zero_rm}", "--dataset", "toy-prompts"], "needs preference pairs"),
        (["--model", "{policy}", "--reward", "markr"], "did you mean 'marker'"),
        (["--model", "{zero_rm}", "--limit", "0"], "--limit: must be >= 1"),
    ],
)
def test_bad_input_is_one_line(cli_run, models, args, expected):
    result = cli_run("eval", *[a.format(**{k: str(v) for k, v in models.items()}) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
    assert result.stdout == ""


def test_eval_help_does_not_import_torch():
    code = (
        "import sys; from easyrlhf_core.commands.cli import cli\n"
        "try:\n    cli(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--reference" in result.stdout
