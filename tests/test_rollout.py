"""The rollout layer (easyrlhf_core.kit.rollout) with the transformers engine: the log-probs it reports are the
sampling distribution's (checked against a rescoring forward pass), masks stop at the first stop token, seeds
repeat, LoRA weights are merged for an engine push exactly as peft merges them, and a run that asks for vLLM
where it is not installed stops with one line before any model loads. The vLLM engine's own tests are in
tests/vllm/ (run in their own venv)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from easyrlhf_core.kit.causal_lm import logprobs_from_logits
from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer
from easyrlhf_core.kit.rollout import (
    RolloutOptions,
    Sampling,
    TransformersEngine,
    _response_mask,
    logprob_agreement,
    policy_weights,
)

PROMPTS = [[{"role": "user", "content": f"Tell me about {w}."}] for w in ("rivers", "a very long road", "tea")]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir), padding_side="left")


def _prompt_ids(tokenizer):
    from easyrlhf_core.kit.chat_template import prompt_ids

    return [prompt_ids(tokenizer, p) for p in PROMPTS]


def _rescored(model, out, temperature):
    """The trainer's view: a forward pass over prompt + response, log softmax(logits / temperature)."""
    ids = torch.cat([out.prompt_ids, out.response_ids], 1)
    att = torch.cat([out.prompt_mask, out.response_mask], 1)
    positions = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att, position_ids=positions).logits
    logits = logits[:, out.prompt_ids.shape[1] - 1 : -1]
    return logprobs_from_logits(logits, out.response_ids, temperature) * out.response_mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_transformers_engine_logprobs_are_the_sampling_distributions(model_and_tokenizer, temperature):
    model, tokenizer = model_and_tokenizer
    sampling = Sampling(12, [tokenizer.eos_token_id], tokenizer.pad_token_id, temperature=temperature, seed=3)
    out = TransformersEngine(model, tokenizer).generate(_prompt_ids(tokenizer), sampling, logprobs=True)
    assert out.logprobs is not None and out.logprobs.shape == out.response_ids.shape
    agreement = logprob_agreement(out.logprobs, _rescored(model, out, temperature), out.response_mask)
    assert agreement["rollout/logprob_diff_max"] < 1e-4
    assert (out.logprobs * (1 - out.response_mask)).abs().sum() == 0  # nothing after the stop
    assert len(out.texts) == 3


def test_transformers_engine_repeats_under_one_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = TransformersEngine(model, tokenizer)
    sampling = Sampling(10, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=11)
    first, second = (engine.generate(_prompt_ids(tokenizer), sampling).response_ids for _ in range(2))
    assert torch.equal(first, second)
    other = engine.generate(
        _prompt_ids(tokenizer), Sampling(10, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=12)
    )
    assert not torch.equal(first, other.response_ids)


def test_transformers_engine_applies_min_p_and_the_repetition_penalty(model_and_tokenizer):
    """min_p 1 keeps only the likeliest token, so sampling is greedy decoding; the repetition penalty changes
    greedy answers too; left at their defaults (the training paths), neither reaches ``generate``."""
    model, tokenizer = model_and_tokenizer
    engine = TransformersEngine(model, tokenizer)
    ids, stop, pad = _prompt_ids(tokenizer), [tokenizer.eos_token_id], tokenizer.pad_token_id

    def responses(**fields):
        return engine.generate(ids, Sampling(10, stop, pad, seed=5, **fields)).response_ids

    greedy = responses(greedy=True)
    assert not torch.equal(responses(), greedy)
    assert torch.equal(responses(min_p=1.0), greedy)
    assert not torch.equal(responses(greedy=True, repetition_penalty=50.0), greedy)
    assert Sampling(10, stop, pad).settings() == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert Sampling(10, stop, pad).penalties() == {}


def test_response_mask_ends_at_the_first_stop_token():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [9, 9, 9, 3]])
    assert _response_mask(responses, [2, 3]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_policy_weights_merge_lora_as_peft_does(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_causal_lm(str(tiny_model_dir)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # adapters that change something (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    pushed = dict(policy_weights(model))
    assert not any("lora_" in n or "base_layer" in n or n.startswith("base_model") for n in pushed)
    merged = model.merge_and_unload().state_dict()
    assert set(pushed) == set(merged)
    assert max((pushed[n] - merged[n]).abs().max().item() for n in merged) < 1e-6
    assert (
        pushed["model.layers.0.self_attn.q_proj.weight"]
        - load_causal_lm(str(tiny_model_dir)).state_dict()["model.layers.0.self_attn.q_proj.weight"]
    ).abs().max() > 1e-3  # the adapters are in the pushed weights


def test_policy_weights_of_a_plain_model_are_its_state_dict(model_and_tokenizer):
    model, _ = model_and_tokenizer
    pushed = dict(policy_weights(model))
    assert set(pushed) == set(model.state_dict())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_is_one_line_before_models_load(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "easyrlhf_core.commands.cli",
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
    ]
    args += ["--reward", "keyword", "--set", "reward_options={pattern: e}", "--set", "rollout_engine=vllm"]
    args += ["--output-dir", str(out), "--max-steps", "1"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert lines and "rollout_engine" in lines[0] and "vLLM is not installed" in lines[0]
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing written: checked before the output dir is claimed


def test_rollout_options_check_their_values():
    from easyrlhf_core.kit.errors import ConfigError

    with pytest.raises(ConfigError, match="vllm_kv_cache_gib"):
        RolloutOptions(vllm_kv_cache_gib=-1)
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        RolloutOptions(vllm_gpu_memory_utilization=0)


def test_engine_sync_pushes_once_per_step_and_seeds_every_call_apart():
    from easyrlhf_core.kit.rollout import EngineSync

    class Engine:
        name = "vllm"
        pushed: list[object] = []

        def sync_weights(self, model):
            self.pushed.append(model)

    engine = Engine()
    sync = EngineSync(engine, seed=7, rank=0)
    seeds = [sync.before_rollout("w0", 0), sync.before_rollout("w0", 0), sync.before_rollout("w1", 1)]
    assert engine.pushed == ["w0", "w1"]  # a step's weights are pushed once, before its first rollout call
    other_rank = EngineSync(Engine(), seed=7, rank=1)
    seeds += [other_rank.before_rollout("w0", 0), EngineSync(Engine(), seed=8, rank=0).before_rollout("w0", 0)]
    assert len(set(seeds)) == len(seeds)  # calls, steps, processes and run seeds all sample apart
    resumed = EngineSync(Engine(), seed=7, rank=0)
    assert resumed.before_rollout("w1", 1) == seeds[2]  # a resumed run samples what the uninterrupted one did

    class Transformers:
        name = "transformers"

        def sync_weights(self, model):
            raise AssertionError("the transformers engine samples from the model itself")

    assert EngineSync(Transformers(), seed=7, rank=0).before_rollout("w0", 0) is None
