"""The vLLM engine behind the rollout layer, on this CPU (fp32, eager): its log-probs are the trainer's, the same
seeds give the same rollouts, a pushed optimizer step changes its greedy answers exactly as it changes the
trainer's, and PPO, GRPO and eval run with ``rollout_engine: vllm``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from easyrlhf_core.kit.causal_lm import logprobs_from_logits
from easyrlhf_core.kit.chat_template import prompt_ids
from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer
from easyrlhf_core.kit.rollout import RolloutOptions, Sampling, TransformersEngine, VLLMEngine, logprob_agreement

#: fp32 engine vs fp32 trainer: different kernels, the same numbers to float rounding.
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def setup(vllm_tiny_model):
    tokenizer = load_tokenizer(str(vllm_tiny_model), padding_side="left")
    model = load_causal_lm(str(vllm_tiny_model)).eval()
    engine = VLLMEngine(vllm_tiny_model, tokenizer, RolloutOptions(rollout_engine="vllm"), max_model_len=256)
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(5)]
    yield model, tokenizer, engine, prompts
    engine.close()


def _rescored(model, out, temperature):
    ids = torch.cat([out.prompt_ids, out.response_ids], 1)
    att = torch.cat([out.prompt_mask, out.response_mask], 1)
    positions = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att, position_ids=positions).logits
    return logprobs_from_logits(logits[:, out.prompt_ids.shape[1] - 1 : -1], out.response_ids, temperature)


def test_engine_logprobs_agree_with_the_trainer(setup):
    model, tokenizer, engine, prompts = setup
    sampling = Sampling(16, [tokenizer.eos_token_id], tokenizer.pad_token_id, temperature=0.8, seed=1)
    out = engine.generate(prompts, sampling, logprobs=True)
    agreement = logprob_agreement(out.logprobs, _rescored(model, out, 0.8), out.response_mask)
    assert agreement["rollout/logprob_diff_max"] < LOGPROB_TOLERANCE, agreement
    assert out.response_mask.sum() > len(prompts)  # something was sampled


def test_same_seeds_same_rollouts(setup):
    _, tokenizer, engine, prompts = setup
    sampling = Sampling(16, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=7)
    first, second = engine.generate(prompts, sampling), engine.generate(prompts, sampling)
    assert torch.equal(first.response_ids, second.response_ids) and first.texts == second.texts
    sampling.seed = 8
    assert not torch.equal(first.response_ids, engine.generate(prompts, sampling).response_ids)


def test_a_pushed_step_changes_the_engine_as_it_changes_the_trainer(setup):
    model, tokenizer, engine, prompts = setup
    greedy = Sampling(8, [tokenizer.eos_token_id], tokenizer.pad_token_id, greedy=True)
    trainer_engine = TransformersEngine(model, tokenizer)
    engine.sync_weights(model)
    before = engine.generate(prompts, greedy).response_ids
    assert torch.equal(before, trainer_engine.generate(prompts, greedy).response_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)  # optimizer steps that teach one answer
    ids = torch.tensor([p + [42] * 8 for p in prompts[:1]])
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    trainer_after = trainer_engine.generate(prompts, greedy).response_ids
    assert not torch.equal(engine.generate(prompts, greedy).response_ids, trainer_after)  # not pushed yet
    engine.sync_weights(model)
    after = engine.generate(prompts, greedy).response_ids
    assert not torch.equal(after, before)
    assert torch.equal(after, trainer_after)


def _run(args, cwd):
    done = subprocess.run(
        [sys.executable, "-m", "easyrlhf_core.commands.cli", *args], capture_output=True, text=True, cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


COMMON = ["--reward", "keyword", "--seed", "3", "--set", "reward_options={pattern: e}", "--set", "eval_fraction=0"]


def test_ppo_trains_with_the_vllm_engine(vllm_tiny_model, vllm_prompts_file, tmp_path):
    out = tmp_path / "ppo"
    _run(
        ["run", "--method", "ppo", "--model", str(vllm_tiny_model), "--dataset", "jsonl", "--data-files",
         str(vllm_prompts_file), "--output-dir", str(out), "--max-steps", "3", *COMMON,
         "--set", "rollout_batch_size=4", "--set", "per_device_train_batch_size=2", "--set", "max_new_tokens=8",
         "--set", "max_length=64", "--set", "learning_rate=1e-3", "--set", "rollout_engine=vllm"],
        tmp_path,
    )  # fmt: skip
    rows = _metrics(out)
    assert len(rows) == 3
    for row in rows:  # after every step's push the engine samples what the trainer scores
        assert row["rollout/logprob_diff_max"] < LOGPROB_TOLERANCE, row
    start, trained = load_causal_lm(str(vllm_tiny_model)), load_causal_lm(str(out / "model"))
    moved = max((a - b).abs().max().item() for a, b in zip(start.parameters(), trained.parameters()))
    assert moved > 1e-4


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_grpo_and_rloo_train_with_the_vllm_engine(method, vllm_tiny_model, vllm_prompts_file, tmp_path):
    out = tmp_path / method
    done = _run(
        ["run", "--method", method, "--model", str(vllm_tiny_model), "--dataset", "jsonl", "--data-files",
         str(vllm_prompts_file), "--output-dir", str(out), "--max-steps", "2", *COMMON,
         "--set", "num_generations=2", "--set", "per_device_train_batch_size=4", "--set", "max_completion_length=8",
         "--set", "max_length=64", "--set", "rollout_engine=vllm"],
        tmp_path,
    )  # fmt: skip
    assert "vLLM engine" in done.stderr
    rows = [r for r in _metrics(out) if "rewards/keyword/mean" in r]
    assert len(rows) == 2 and all(r["completions/mean_length"] > 0 for r in rows)
    assert (out / "model" / "config.json").is_file()


def test_eval_answers_with_the_vllm_engine_as_with_transformers(vllm_tiny_model, tmp_path):
    args = ["eval", "--model", str(vllm_tiny_model), "--reward", "keyword", "--reward-option", "pattern=e",
            "--max-new-tokens", "8", "--limit", "4", "--no-sample", "--json"]  # fmt: skip
    reports = {
        engine: json.loads(_run([*args, "--rollout-engine", engine], tmp_path).stdout)["metrics"]
        for engine in ("transformers", "vllm")
    }
    assert reports["vllm"]["greedy_tokens_mean"] == reports["transformers"]["greedy_tokens_mean"]
    assert reports["vllm"]["reward_greedy_mean"] == reports["transformers"]["reward_greedy_mean"]


@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_environment_episodes_run_on_the_vllm_engine(method, vllm_tiny_model, tmp_path):
    out = tmp_path / f"{method}-env"
    sizes = (
        ["--set", "rollout_batch_size=2", "--set", "per_device_train_batch_size=2", "--set", "max_new_tokens=6"]
        if method == "ppo"
        else [
            "--set",
            "num_generations=2",
            "--set",
            "per_device_train_batch_size=2",
            "--set",
            "max_completion_length=6",
        ]
    )
    _run(
        ["run", "--method", method, "--model", str(vllm_tiny_model), "--env", "guess-number", "--output-dir", str(out),
         "--max-steps", "2", "--seed", "1", "--set", "eval_fraction=0", "--set", "max_turns=3",
         "--set", "max_episode_tokens=200", "--set", "max_length=512", "--set", "rollout_engine=vllm", *sizes],
        tmp_path,
    )  # fmt: skip
    rows = [r for r in _metrics(out) if "episodes/turns" in r]
    assert len(rows) == 2 and all(r["episodes/turns"] == 3 for r in rows)  # every cut message answered


@pytest.mark.parametrize("method, deepspeed", [("ppo", None), ("grpo", None), ("ppo", "zero3"), ("grpo", "zero3")])
def test_two_processes_each_own_an_engine_and_stay_in_sync(
    method, deepspeed, vllm_tiny_model, vllm_prompts_file, tmp_path
):
    """Two processes (DDP on gloo, or DeepSpeed ZeRO-3), one vLLM engine each laid over the training's process
    group: both ranks sample with their engine after every push, end with the same weights, and the training's
    collectives outlive the engines (the final save and checksum run after them). Under ZeRO-3 each rank holds a
    shard of every parameter: the push gathers them, or the engine's log-probs would not be the trainer's."""
    from tests.subprocess_runs import read_metrics, run_easyrlhf

    out = tmp_path / method
    args = ["run", "--method", method, "--model", str(vllm_tiny_model), "--dataset", "jsonl", "--data-files",
            str(vllm_prompts_file), "--output-dir", str(out), "--max-steps", "2", *COMMON,
            "--set", "max_length=64", "--set", "rollout_engine=vllm",
            "--set", "per_device_train_batch_size=2"]  # fmt: skip
    if method == "ppo":
        args += ["--set", "rollout_batch_size=2", "--set", "max_new_tokens=8"]
    else:
        args += ["--set", "num_generations=2", "--set", "max_completion_length=8"]
    args += ["--deepspeed", deepspeed] if deepspeed else []
    result = run_easyrlhf(args, num_processes=2, timeout=900, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("vLLM engine") >= 1
    if deepspeed is None:  # ZeRO-3: no rank holds whole parameters to checksum
        checksums = result.rank_checksums
        assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr[-3000:]
    rows = read_metrics(out)
    if method == "ppo":
        drift = [r["rollout/logprob_diff_max"] for r in rows if "rollout/logprob_diff_max" in r]
        assert len(drift) == 2 and max(drift) < LOGPROB_TOLERANCE, rows
    else:
        assert len([r for r in rows if "rewards/keyword/mean" in r]) == 2
    assert (out / "model" / "config.json").is_file() and (out / "COMPLETE").is_file()
