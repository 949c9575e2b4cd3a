"""PPO's lean forwards give the results of the plain ones: packed rows and the chunked LM head (log-probs,
entropy, values and their gradients) equal the padded rows' full logits; micro-batches give the parameters
of one big minibatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _rows(tokenizer_vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts of uneven length and responses that stop early (pad after the stop), as a
    rollout leaves them: ``(input_ids, attention_mask, responses, n_query)``."""
    from easyrlhf_plugins.methods.ppo import core

    from easyrlhf_core.kit import causal_lm as lm

    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, tokenizer_vocab, (n,), generator=generator).tolist() for n in (5, 11, 2, 8, 11)]
    queries, query_mask = lm.left_pad(prompts, pad)
    responses = torch.randint(3, tokenizer_vocab, (5, 7), generator=generator)
    responses[0, 3:] = pad  # stops at 3 (pad == eos), the rest is padding
    responses[2, 0:] = pad  # stops at once
    responses[4, 6] = pad  # stops on the last token
    mask, _ = core.response_mask(responses, [pad])
    input_ids = torch.cat([queries, responses], dim=1)
    return input_ids, torch.cat([query_mask, mask], dim=1), responses, queries.shape[1]


@pytest.fixture
def models(tiny_model_dir):
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_sequence_classifier

    torch.manual_seed(0)
    policy = load_causal_lm(str(tiny_model_dir))
    value_model = load_sequence_classifier(str(tiny_model_dir), pad_token_id=policy.config.pad_token_id)
    return policy, value_model


@pytest.mark.parametrize("chunk", [4, 512])
def test_lean_log_probs_entropy_values_and_gradients_equal_the_full_logits_ones(models, monkeypatch, chunk):
    """Packed rows + the chunked head (chunks of 4 positions: several checkpointed chunks; 512: one) against
    padded rows through the model's own forward with full logits, at temperature 0.7: log-probs and entropy
    to 1e-5, the values too, and the gradients of a loss on them into every parameter."""
    from easyrlhf_plugins.methods.ppo import forward

    from easyrlhf_core.kit import shared_prefix_forward

    monkeypatch.setattr(shared_prefix_forward, "CHUNK_TOKENS", chunk)
    policy, value_model = models
    pad = policy.config.pad_token_id
    input_ids, attention_mask, _, n_query = _rows(policy.config.vocab_size, pad)
    assert forward.lean_forward_unsupported([policy, value_model]) is None
    lean = forward.layout(input_ids, attention_mask, n_query, pad, pack=True)
    plain = forward.layout(input_ids, attention_mask, n_query, pad, pack=False)
    assert lean.packed is not None and lean.packed["input_ids"].numel() < input_ids.numel()  # padding gone
    weights = torch.linspace(-1.0, 1.0, lean.read.numel()).reshape(lean.read.shape)

    def run(batch):
        policy.zero_grad(set_to_none=True)
        value_model.zero_grad(set_to_none=True)
        logprobs, entropy = forward.policy_log_probs(policy, batch, 0.7, entropy=True)
        values = forward.response_values(value_model, batch)
        ((logprobs + values) * weights).sum().backward()
        grads = {n: p.grad.clone() for model in models for n, p in model.named_parameters() if p.grad is not None}
        return logprobs.detach(), entropy, values.detach(), grads

    got, want = run(lean), run(plain)
    read = lean.read
    assert read.sum() == 4 + 7 + 1 + 7 + 7  # the real response tokens: padding after each stop is not read
    for have, expected in zip(got[:3], want[:3]):
        assert torch.allclose(have[read], expected[read], atol=1e-5)
        assert (have[~read] == 0).all() and (expected[~read] == 0).all()
    assert got[3].keys() == want[3].keys() and len(got[3]) > 10
    for name, grad in want[3].items():
        assert torch.allclose(got[3][name], grad, atol=1e-5), name


def test_the_chunked_head_takes_the_temperature_and_can_skip_the_statistics():
    from easyrlhf_core.kit.shared_prefix_forward import chunked_token_log_probs

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden, labels = torch.randn(9, 8), torch.randint(0, 50, (9,))
    scaled = head(hidden) / 0.5
    expected = torch.log_softmax(scaled, -1).gather(-1, labels[:, None])[:, 0]
    log_probs, entropy, _, _ = chunked_token_log_probs(head, hidden, labels, chunk=4, temperature=0.5)
    assert torch.allclose(log_probs, expected, atol=1e-6)
    probs = torch.softmax(scaled, -1)
    assert torch.allclose(entropy, -(probs * probs.log()).sum(-1), atol=1e-5)
    only = chunked_token_log_probs(head, hidden, labels, chunk=4, temperature=0.5, stats=False)
    assert len(only) == 1 and torch.equal(only[0], log_probs)


def test_pack_rows_drops_left_and_right_padding_and_maps_every_token():
    from easyrlhf_core.kit.shared_prefix_packing import pack_rows

    input_ids = torch.tensor([[0, 0, 5, 6, 7, 0], [8, 9, 10, 11, 12, 13], [0, 14, 15, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    packed = pack_rows(input_ids, attention_mask, pad_token_id=0, budget=6)
    flat = packed["input_ids"].reshape(-1)
    index = packed["token_index"]
    assert torch.equal(flat[index[attention_mask.bool()]], input_ids[attention_mask.bool()])
    assert (index[~attention_mask.bool()] == -1).all()
    assert packed["input_ids"].shape == (2, 6)  # the 6-token row alone, then the 3- and 2-token rows together
    assert pack_rows(input_ids, attention_mask, pad_token_id=0)["input_ids"].shape == (1, 11)  # budget: 2 x 6
    positions = packed["position_ids"].reshape(-1)
    assert positions[index[0, 2:5]].tolist() == [0, 1, 2] and positions[index[2, 1:3]].tolist() == [0, 1]


# --------------------------------------------------------------------------------------------------
# End to end: the update


QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help me?"]


def _ppo(cli_run, model_dir: Path, out: Path, *sets: str) -> list[dict]:
    args = ["--set", "max_new_tokens=8", "--set", "rollout_batch_size=8", "--set", "learning_rate=1e-3"]
    args += ["--set", "save_steps=0", "--set", "ppo_epochs=3", "--set", "lr_scheduler_type=constant"]
    args += ["--set", "eval_fraction=0"]
    for item in sets:
        args += ["--set", item]
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(model_dir),
        "--dataset",
        "jsonl",
        "--data-files",
        str(out.parent / "prompts.jsonl"),
        "--output-dir",
        str(out),
        "--reward",
        "keyword",
        "--set",
        "reward_options={pattern: e}",
        "--max-steps",
        "1",
        *args,
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"score"' in line]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    found: dict[str, torch.Tensor] = {}
    for sub in ("model", "value_model"):
        for file in sorted((out / sub).glob("*.safetensors")):
            found.update({f"{sub}/{k}": v for k, v in load_file(file).items()})
    return found


@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"{q} ({i})"}]} for i in range(6) for q in QUESTIONS]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "prompts.jsonl"


def test_micro_batches_give_the_parameters_of_one_big_minibatch(cli_run, tiny_model_dir, tmp_path, prompts_file):
    """A minibatch of 8 in one pass, in 4 micro-batches of 2 and in 8 of 1: the same parameters after an
    iteration of 3 epochs (fp32, 1e-6) and the same logged losses; the plain forwards (padded rows, full logits)
    agree with the lean ones. (AdamW divides by sqrt(v) + 1e-8: an element whose gradient is ~0 turns rounding
    into a step of up to lr x 1e-4, hence the small learning rate.)"""
    whole = _ppo(cli_run, tiny_model_dir, tmp_path / "whole", "per_device_train_batch_size=8")
    split = _ppo(
        cli_run, tiny_model_dir, tmp_path / "split", "per_device_train_batch_size=2", "gradient_accumulation_steps=4"
    )
    ones = _ppo(
        cli_run, tiny_model_dir, tmp_path / "ones", "per_device_train_batch_size=1", "gradient_accumulation_steps=8"
    )
    plain = _ppo(cli_run, tiny_model_dir, tmp_path / "plain", "per_device_train_batch_size=8", "lean_forward=false")
    reference = _weights(tmp_path / "whole")
    start = _weights_of(tiny_model_dir)
    moved = max((reference[k] - start[k]).abs().max().item() for k in start if k in reference)
    assert moved > 1e-3  # the update did move the policy
    for other in ("split", "ones", "plain"):
        weights = _weights(tmp_path / other)
        assert weights.keys() == reference.keys()
        worst = max((weights[name] - tensor).abs().max().item() for name, tensor in reference.items())
        assert worst <= 1e-6, (other, worst)
    for rows in (split, ones, plain):
        for have, want in zip(rows, whole):
            for key in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "ratio_mean", "kl", "entropy"):
                assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def _weights_of(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"model/{k}": v for file in model_dir.glob("*.safetensors") for k, v in load_file(file).items()}
