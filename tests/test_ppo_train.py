"""PPO end to end on the tiny Llama: KL starts at 0, a rule-based reward is learned, a large beta holds the
policy near the reference, resume matches an uninterrupted run, third-party rewards plug in, bad configs
fail before anything loads."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset, RewardFunction
from easyrlhf_core.kit.shapes import DataSplits, Shape
from easyrlhf_core.runtime.registry import register_plugin, unregister_plugin

DOCUMENTED_METRICS = {
    "score",
    "kl",
    "non_score_reward",
    "reward",
    "entropy",
    "policy_loss",
    "value_loss",
    "clipfrac",
    "value_clipfrac",
    "approx_kl",
    "ratio_mean",
    "response_length",
    "eos_fraction",
    "beta",
    "learning_rate",
    "value_mean",
    "return_mean",
    "epoch",
    "time/generate",
    "time/score",
    "time/forward",
    "time/update",
    "time/iteration",
    "tokens",
}
QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help me?"]


class PPOTestPrompts(Dataset):
    name = "ppo-test-prompts"
    description = "32 short prompts (4 held out)"
    shapes = frozenset({Shape.PROMPT})

    def load(self, options):
        records = [{"prompt": [{"role": "user", "content": f"{q} ({i})"}]} for i in range(9) for q in QUESTIONS]
        return DataSplits(options.shape, records[:32], records[32:])


class ConstantHalf(RewardFunction):
    """A third-party-style reward: always 0.5."""

    name = "constant-half"
    description = "always 0.5"

    def score(self, prompts, completions):
        assert len(prompts) == len(completions) and all(isinstance(c, str) for c in completions)
        return [0.5] * len(completions)


class PPOTestPlugin:
    """Test plugin: prompts and a reward function, registered like a third-party package."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(PPOTestPrompts)

    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(ConstantHalf)


@pytest.fixture(autouse=True)
def _test_plugin():
    register_plugin("ppo-test", PPOTestPlugin)
    yield
    unregister_plugin("ppo-test")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread (conftest's one_torch_thread)."""


SMALL = [
    "--set",
    "max_new_tokens=8",
    "--set",
    "rollout_batch_size=16",
    "--set",
    "per_device_train_batch_size=8",
    "--set",
    "learning_rate=1e-2",
    "--set",
    "save_steps=0",
]


def ppo(cli_run, model_dir: Path, out: Path, *args: str):
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(model_dir),
        "--dataset",
        "ppo-test-prompts",
        "--output-dir",
        str(out),
        *SMALL,
        *args,
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return result


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_rows(out: Path) -> list[dict]:
    return [row for row in metrics(out) if "score" in row]


# --------------------------------------------------------------------------------------------------


def test_third_party_reward_kl_starts_at_zero_and_run_dir_is_complete(cli_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "run"
    ppo(
        cli_run,
        tiny_model_dir,
        out,
        "--reward",
        "constant-half",
        "--max-steps",
        "2",
        "--set",
        "missing_eos_penalty=null",
        "--set",
        "eval_steps=2",
    )
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert DOCUMENTED_METRICS <= set(rows[0])
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before the first update
    assert rows[0]["approx_kl"] > 0  # ...and the update moved the policy
    assert rows[1]["kl"] != 0
    assert all(r["score"] == pytest.approx(0.5) for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in DOCUMENTED_METRICS)
    evals = [r for r in metrics(out) if "eval/score" in r]
    assert evals and evals[0]["eval/score"] == pytest.approx(0.5)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 and {"step", "prompt", "completion", "rewards"} <= set(samples[0])
    policy = AutoModelForCausalLM.from_pretrained(out / "model")
    assert policy.config.vocab_size == 400
    AutoModelForSequenceClassification.from_pretrained(out / "value_model")


def test_forward_logprobs_match_the_sampling_distribution(tiny_model_dir):
    """The log-probs PPO records equal those generate sampled from (left padding, temperature)."""
    import torch
    from easyrlhf_plugins.methods.ppo import core, rollout
    from easyrlhf_plugins.methods.ppo.config import PPOConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from easyrlhf_core.kit import causal_lm as lm
    from easyrlhf_core.kit.online import encode_prompts
    from easyrlhf_core.runtime.config_layers import resolve_config

    config = resolve_config(PPOConfig, [])
    config.temperature, config.max_new_tokens = 0.7, 6
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    kept, ids = encode_prompts(
        tokenizer,
        [{"prompt": [{"role": "user", "content": q}]} for q in ("hi", QUESTIONS[0] + " " + QUESTIONS[1])],
        100,
    )
    assert kept == [0, 1] and len(ids[0]) != len(ids[1])
    queries, query_mask = lm.left_pad(ids, tokenizer.pad_token_id)
    gen_config = rollout.generation_config(config, tokenizer, [tokenizer.eos_token_id])
    gen_config.output_scores, gen_config.return_dict_in_generate = True, True
    torch.manual_seed(0)
    out = model.generate(input_ids=queries, attention_mask=query_mask, generation_config=gen_config)
    responses = out.sequences[:, queries.shape[1] :]
    sampled = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    mask, _ = core.response_mask(responses, [tokenizer.eos_token_id])
    with torch.no_grad():
        logits = rollout.policy_response_logits(
            model, torch.cat([queries, responses], 1), torch.cat([query_mask, mask], 1), queries.shape[1]
        )
    recorded = lm.logprobs_from_logits(logits, responses, temperature=0.7)
    assert torch.allclose(recorded * mask, sampled * mask, atol=1e-4)


def test_rule_based_reward_is_learned_and_large_beta_stays_near_reference(cli_run, tiny_model_dir, tmp_path):
    reward = [
        "--reward",
        "keyword",
        "--set",
        "reward_options={pattern: e}",
        "--set",
        "missing_eos_penalty=null",
        "--max-steps",
        "20",
    ]
    free = tmp_path / "free"
    ppo(cli_run, tiny_model_dir, free, *reward, "--set", "beta=0.05")
    rows = train_rows(free)
    first = sum(r["score"] for r in rows[:5]) / 5
    last = sum(r["score"] for r in rows[-5:]) / 5
    assert last > first + 1.0, (first, last)  # about 0.6 -> 5 'e's per 8-token response
    assert all(math.isfinite(r["kl"]) for r in rows)
    assert rows[-1]["kl"] > 1.0

    held = tmp_path / "held"
    ppo(cli_run, tiny_model_dir, held, *reward, "--set", "beta=1.0")
    held_rows = train_rows(held)
    held_kl = sum(r["kl"] for r in held_rows[-5:]) / 5
    free_kl = sum(r["kl"] for r in rows[-5:]) / 5
    assert held_kl < 0.25 * free_kl, (held_kl, free_kl)
    assert held_rows[-1]["entropy"] > rows[-1]["entropy"]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for want, have in zip(expected, rows):
        assert _comparable(have) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_resume_continues_exactly_and_skips_a_corrupt_checkpoint(cli_run, tiny_model_dir, tmp_path):
    common = [
        "--reward",
        "keyword",
        "--set",
        "reward_options={pattern: e}",
        "--set",
        "save_steps=2",
        "--set",
        "lr_scheduler_type=constant",
        "--set",
        "save_total_limit=2",
    ]
    whole = tmp_path / "whole"
    ppo(cli_run, tiny_model_dir, whole, *common, "--max-steps", "4")
    halves = tmp_path / "halves"
    ppo(cli_run, tiny_model_dir, halves, *common, "--max-steps", "2")
    assert (halves / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
    resumed = ppo(cli_run, tiny_model_dir, halves, *common, "--max-steps", "4", "--resume")
    assert "continuing from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    expected = [_comparable(r) for r in train_rows(whole)]
    assert_same_rows(train_rows(halves), expected)
    assert sorted(p.name for p in (halves / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    # A damaged newest checkpoint: resume warns, falls back to checkpoint-2, and redoes iterations 3-4.
    newest = halves / "checkpoints" / "checkpoint-4"
    for weights in newest.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    for finished in ("COMPLETE", "model", "value_model"):  # as if killed before the run's end
        shutil.rmtree(halves / finished) if (halves / finished).is_dir() else (halves / finished).unlink()
    again = ppo(cli_run, tiny_model_dir, halves, *common, "--max-steps", "4", "--resume")
    assert "warning: skipping checkpoint" in again.stderr and "checkpoint-4" in again.stderr
    assert_same_rows(train_rows(halves), expected)


def test_lora_reference_and_the_optional_knobs(cli_run, tiny_model_dir, tmp_path):
    """LoRA's reference is the adapter-disabled base (KL 0 at first); k3, adaptive beta, reward
    normalisation/clipping and gradient accumulation run too."""
    out = tmp_path / "lora"
    ppo(
        cli_run,
        tiny_model_dir,
        out,
        "--lora",
        "--reward",
        "keyword",
        "--set",
        "reward_options={pattern: e}",
        "--max-steps",
        "3",
        "--set",
        "lora.r=4",
        "--set",
        "lora.dropout=0.0",
        "--set",
        "kl_estimator=k3",
        "--set",
        "adaptive_kl=true",
        "--set",
        "target_kl=0.01",
        "--set",
        "kl_horizon=100",
        "--set",
        "normalize_reward=true",
        "--set",
        "reward_clip=3",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "gradient_accumulation_steps=2",
    )
    rows = train_rows(out)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert rows[1]["kl"] > 0  # k3 is positive once the adapters moved the policy
    assert rows[0]["beta"] == pytest.approx(0.05) and rows[2]["beta"] > rows[1]["beta"]  # KL above target
    assert (out / "model" / "config.json").is_file() and not (out / "model" / "adapter_config.json").exists()


def test_reward_model_scores_and_initialises_the_value_model(cli_run, tiny_model_dir, tmp_path):
    import torch

    from easyrlhf_core.kit.model_loading import load_sequence_classifier

    torch.manual_seed(3)
    rm_dir = tmp_path / "rm"
    load_sequence_classifier(str(tiny_model_dir), pad_token_id=2).save_pretrained(rm_dir)
    shutil.copy(tiny_model_dir / "tokenizer.json", rm_dir)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", rm_dir)
    out = tmp_path / "run"
    result = ppo(cli_run, tiny_model_dir, out, "--reward-model", str(rm_dir), "--max-steps", "1")
    assert "value model: initialised from the reward model" in result.stderr
    row = train_rows(out)[0]
    assert math.isfinite(row["score"]) and row["score"] != 0


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "PPO needs a reward"),
        (["--reward", "keyword", "--reward-model", "/x"], "give only one"),
        (["--reward", "keywrod"], "did you mean 'keyword'"),
        (["--reward", "keyword", "--set", "reward_options={colour: red}"], "reward_options"),
        (["--reward", "length", "--set", "rollout_engine=vllm"], "vLLM is not installed"),
        (["--reward", "length", "--set", "rollout_batch_size=10"], "multiple of the minibatch size"),
        (["--reward-model", "/no/such/rm"], "--reward-model: 'reward_model' is not a transformers model directory"),
        (["--reward", "length", "--set", "value_model=/no/such/vm"], "'value_model' is not a transformers model"),
        (["--reward", "length", "--set", "ppo_epochs=0"], "--set ppo_epochs: 'ppo_epochs' must be a positive integer"),
    ],
)
def test_bad_ppo_configs_fail_before_anything_is_written(cli_run, tiny_model_dir, tmp_path, args, message):
    out = tmp_path / "never"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "ppo-test-prompts",
        "--output-dir",
        str(out),
        *args,
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("Error:") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
