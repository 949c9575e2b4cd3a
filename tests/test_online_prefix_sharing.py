"""Prefix sharing in GRPO and RLOO (easyrlhf_core.kit.online_prefix_sharing): TRL's online rows pack with
each prompt once and every token where the padded forward has it; the shared log-probs, entropies and
gradients equal TRL's own path (groups in shuffled order, uneven prompts and completions, a group cut by
TRL's chunking, a prompt with one completion); one training step's loss and gradients are the same with
prefix_sharing on and off for grpo and rloo, with and without beta; a batch with nothing to share takes
TRL's path and says so once; a model that numbers a left-padded row's positions its own way stays off."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from easyrlhf_core.kit.shared_prefix_packing import pack_prompt_groups, prompt_groups

QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help me?"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread (conftest's one_torch_thread)."""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """Prompts of uneven length (1 to 3 repeats of a question)."""
    rows = [{"prompt": f"{q} ({i}) " * (1 + i % 3), "answer": str(i)} for i in range(8) for q in QUESTIONS]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(method: str, model_dir: Path, data: Path, out: Path, *options: str):
    """The trainer ``easyrlhf run`` would train (not trained), and its log lines."""
    from easyrlhf_plugins.methods.grpo import GRPOMethod, RLOOMethod

    from easyrlhf_core.runtime.lifecycle import prepare
    from easyrlhf_core.runtime.run import RunRequest

    request = RunRequest(
        method=method,
        flags={
            "model": str(model_dir),
            "dataset": "jsonl",
            "data_files": [str(data)],
            "output_dir": str(out),
            "reward": "length",
        },
        set_options=[
            "eval_fraction=0",
            "max_completion_length=12",
            "per_device_train_batch_size=8",
            "num_generations=4",
            "save_steps=0",
            "temperature=0.7",  # TRL's fused head divides the logits by it: the shared head must too
            *options,
        ],
    )
    run = prepare(request)
    lines: list[str] = []
    logged = run.log
    run.log = lambda message: (lines.append(message), logged(message))  # type: ignore[method-assign]
    trainer = (GRPOMethod() if method == "grpo" else RLOOMethod()).build_trainer(run)[0]
    trainer._prompt_sharing_log = lines.append
    return trainer, lines


def _perturb(model) -> None:
    """Move the policy away from its reference (the same way on every call)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _online_rows(vocab: int, pad: int, seed: int = 0):
    """TRL's layout: 4 prompts of uneven length (left-padded), 4 + 4 + 3 + 1 completions of 1 to 14 tokens
    (right-padded), rows shuffled."""
    import torch

    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.choice([t for t in range(3, vocab) if t != pad]) for _ in range(n)]

    prompts = [tokens(n) for n in (3, 17, 8, 11)]
    rows = []
    for p, count in zip(prompts, (4, 4, 3, 1)):
        for _ in range(count):
            rows.append((p, tokens(rng.randrange(1, 15))))
    rng.shuffle(rows)
    prompt_width, completion_width = 17, max(len(c) for _, c in rows)
    ids = torch.full((len(rows), prompt_width + completion_width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (p, c) in enumerate(rows):
        span = slice(prompt_width - len(p), prompt_width + len(c))
        ids[r, span] = torch.tensor(p + c)
        mask[r, span] = 1
    return ids, mask, completion_width


# --------------------------------------------------------------------------------------------------
# Packing


def test_each_prompt_is_packed_once_and_every_token_keeps_its_column():
    ids, mask, completion_width = _online_rows(vocab=60, pad=0)
    prompt_width = ids.shape[1] - completion_width
    groups = prompt_groups(ids[:, :prompt_width], mask[:, :prompt_width])
    assert sorted(len(g) for g in groups) == [1, 3, 4, 4]
    packed = pack_prompt_groups(ids, mask, groups, pad_token_id=0)
    flat_ids, flat_pos = packed["input_ids"].reshape(-1), packed["position_ids"].reshape(-1)
    for row in range(ids.shape[0]):
        columns = mask[row].nonzero().squeeze(1)
        here = packed["token_index"][row, columns]
        assert (packed["token_index"][row][mask[row] == 0] == -1).all()
        assert flat_ids[here].tolist() == ids[row, columns].tolist()
        assert flat_pos[here].tolist() == columns.tolist()  # the padded forward's positions: the columns
    real = int((packed["segment_ids"] >= 0).sum())
    prompts_once = sum(int(mask[g[0], :prompt_width].sum()) * (len(g) - 1) for g in groups)
    assert real == int(mask.sum()) - prompts_once  # each prompt once, no padding between
    longest = max(int(mask[g].sum()) for g in groups)
    assert packed["input_ids"].shape[1] <= longest  # default budget: about one group per packed row


def test_rows_of_a_group_must_start_at_one_column():
    import torch

    ids = torch.tensor([[0, 5, 6, 7], [5, 6, 7, 8]])
    with pytest.raises(ValueError, match="same column"):
        pack_prompt_groups(ids, (ids > 0).long(), [[0, 1]], pad_token_id=0)
    with pytest.raises(ValueError, match="one run"):
        pack_prompt_groups(torch.tensor([[5, 0, 6]]), torch.tensor([[1, 0, 1]]), [[0]], pad_token_id=0)


def test_the_online_probe_catches_positions_counted_from_the_mask():
    """GPT-2 (absolute positions) passes both probes; counting a padded row's positions over its real
    tokens, as generate does, passes the plain probe (right padding) but not TRL's left-padded rows."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from easyrlhf_core.kit.shared_prefix_forward import packing_unsupported

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)
    config.bos_token_id = config.eos_token_id = 1
    model = GPT2LMHeadModel(config)
    assert packing_unsupported(model, online=True) is None
    inner = model.transformer.forward

    def positions_from_mask(*args, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return inner(*args, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    model.transformer.forward = positions_from_mask
    assert packing_unsupported(model) is None
    assert "numbers the positions of a left-padded row" in packing_unsupported(model, online=True)


# --------------------------------------------------------------------------------------------------
# The shared path against TRL's


def test_shared_log_probs_entropies_and_gradients_equal_trls(tiny_model_dir, prompts, tmp_path):
    import torch

    trainer, lines = build("grpo", tiny_model_dir, prompts, tmp_path / "out")
    assert trainer.prompt_sharing and any(line.startswith("prefix sharing: on") for line in lines)
    _perturb(trainer.model)
    ids, mask, width = _online_rows(trainer.model.config.vocab_size, trainer.processing_class.pad_token_id)
    read = mask[:, -width:].bool()
    calls = []
    hook = trainer.model.register_forward_pre_hook(lambda *_: calls.append(1))
    results = []
    for share in (True, False):
        trainer.prompt_sharing = share
        trainer.model.zero_grad()
        calls.clear()
        log_probs, entropy, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, width, batch_size=5, compute_entropy=True
        )
        assert len(calls) == 3  # TRL's chunks of batch_size rows: the same model calls on both paths
        weights = torch.linspace(1, 2, log_probs.numel()).reshape(log_probs.shape)
        (log_probs * weights * read).sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        results.append((log_probs.detach(), entropy, grads))
    hook.remove()
    (lp_on, ent_on, g_on), (lp_off, ent_off, g_off) = results
    assert lp_on.shape == lp_off.shape == ent_on.shape == (ids.shape[0], width)
    assert torch.allclose(lp_on[read], lp_off[read], rtol=1e-5, atol=1e-6), (lp_on - lp_off)[read].abs().max()
    assert torch.allclose(ent_on[read], ent_off[read], rtol=1e-5, atol=1e-6)
    assert (lp_on[~read] == 0).all()
    for name, grad in g_off.items():
        difference, scale = float((g_on[name] - grad).abs().max()), float(grad.abs().max())
        assert difference <= 1e-4 * scale + 1e-7, (name, difference, scale)
    with torch.no_grad():  # the no-grad passes (old policy, reference): one call, no chunking
        trainer.prompt_sharing = True
        shared = trainer._get_per_token_logps_and_entropies(trainer.ref_model or trainer.model, ids, mask, width)[0]
    assert torch.allclose(shared[read], lp_on[read], rtol=1e-5, atol=1e-6)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method, beta", [("grpo", 0.0), ("grpo", 0.1), ("rloo", 0.0), ("rloo", 0.05)])
def test_one_step_has_the_same_loss_and_gradients_with_prefix_sharing_on_and_off(
    method, beta, tiny_model_dir, prompts, tmp_path
):
    """steps_per_generation 2: GRPO computes old log-probs too, and TRL shuffles the 16 rows into two
    micro-batches of 8, so the policy's batch holds parts of groups."""
    import torch

    losses, grads = {}, {}
    for share in ("true", "false"):
        options = (f"beta={beta}", "steps_per_generation=2", f"prefix_sharing={share}")
        trainer, lines = build(method, tiny_model_dir, prompts, tmp_path / share, *options)
        assert getattr(trainer, "prompt_sharing", False) == (share == "true")
        assert any("prefix sharing" in line for line in lines) == (share == "true")
        _perturb(trainer.model)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert (trainer.ref_model is not None) == bool(beta)  # rloo folds the KL into its advantages
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        losses[share], grads[share] = loss.detach(), _grads(trainer.model)
        assert not any("TRL's padded forward" in line for line in lines)  # every forward shared (or off)
    assert abs(float(losses["true"] - losses["false"])) <= 1e-5 * abs(float(losses["false"])) + 1e-8, losses
    assert float(losses["false"]) != 0.0
    for name, grad in grads["false"].items():
        difference, scale = float((grads["true"][name] - grad).abs().max()), float(grad.abs().max())
        assert difference <= 1e-4 * scale + 1e-7, (name, difference, scale)


def test_a_batch_with_nothing_to_share_takes_trls_path_and_says_so_once(tiny_model_dir, prompts, tmp_path):
    import torch

    trainer, lines = build("rloo", tiny_model_dir, prompts, tmp_path / "out")
    ids, mask, width = _online_rows(trainer.model.config.vocab_size, trainer.processing_class.pad_token_id)
    prompt_width = ids.shape[1] - width
    singles = [g[0] for g in prompt_groups(ids[:, :prompt_width], mask[:, :prompt_width])]
    ids, mask = ids[singles], mask[singles]
    with torch.no_grad():
        shared = [trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)[0] for _ in range(2)]
        trainer.prompt_sharing = False
        plain = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)[0]
    assert torch.equal(shared[0], plain) and torch.equal(shared[1], plain)  # TRL's own path, bit for bit
    fallbacks = [line for line in lines if "no two rows of a batch share a prompt" in line]
    assert len(fallbacks) == 1 and "TRL's padded forward" in fallbacks[0]


def test_a_model_that_cannot_take_the_mask_stays_on_trls_path_and_says_why(tiny_tokenizer_dir, prompts, tmp_path):
    from tests.helpers import save_tiny_sliding_window_lm

    model_dir = save_tiny_sliding_window_lm(tiny_tokenizer_dir, tmp_path / "tiny-mistral")
    trainer, lines = build("grpo", model_dir, prompts, tmp_path / "out")
    assert not trainer.prompt_sharing
    assert any(line.startswith("prefix sharing: off (sliding-window attention") for line in lines)


def test_grpo_trains_with_prefix_sharing_through_the_cli(cli_run, tiny_model_dir, prompts, tmp_path):
    from tests.subprocess_runs import train_rows

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
        str(tmp_path / "out"),
        "--reward",
        "length",
        "--max-steps",
        "2",
        "--set",
        "eval_fraction=0",
        "--set",
        "max_completion_length=8",
        "--set",
        "save_steps=0",
        "--set",
        "per_device_train_batch_size=8",
        "--set",
        "steps_per_generation=2",
        "--set",
        "beta=0.1",
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    assert "prefix sharing: on" in result.stderr
    assert len(train_rows(tmp_path / "out")) == 2


@pytest.mark.parametrize("sharing", ["true", "false"])
def test_trls_generation_reads_each_prompt_once_with_prefix_sharing(tiny_model_dir, prompts, tmp_path, sharing):
    """TRL's own generate call (the transformers path of grpo and rloo) on a group's repeated prompt: with
    prefix_sharing the prompt is run once per group before decoding, off it is run on every row; the same
    tokens either way."""
    import torch

    trainer, _ = build("grpo", tiny_model_dir, prompts, tmp_path / "out", f"prefix_sharing={sharing}")
    tokenizer = trainer.processing_class
    rows = [tokenizer.encode(q, add_special_tokens=False) for q in QUESTIONS[:2] for _ in range(4)]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    model = trainer.accelerator.unwrap_model(trainer.model)
    seen: list[tuple[int, ...]] = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=trainer.generation_config)
    finally:
        hook.remove()
    assert seen[0] == ((2, width - 1) if sharing == "true" else (8, width))
    torch.manual_seed(0)
    with torch.no_grad():
        plain = type(model).generate(
            model, input_ids=ids, attention_mask=mask, generation_config=trainer.generation_config
        )
    assert out.shape[0] == 8 and torch.equal(out, plain)
