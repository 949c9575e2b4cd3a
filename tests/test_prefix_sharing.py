"""The shared-prefix path (easyrlhf_core.kit.shared_prefix_packing, easyrlhf_core.kit.shared_prefix_forward):
packing keeps every row recoverable, the block mask is the right one, and for dpo, ipo (both normalisations), rm
and rrhf the packed forward gives the padded path's log-probs / scores, losses and gradients, and the same
weights after a few steps. The test batch has uneven prompts and responses, multi-turn prompts, a pair whose
responses differ 10x in length, an identical pair, a pair truncated by max_length and a group longer than the
budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from easyrlhf_core.kit.shared_prefix_packing import (
    SHARED_PREFIX_KEY,
    block_attention_mask,
    common_prefix_length,
    pack_groups,
    pair_groups,
    query_groups,
)
from easyrlhf_core.runtime import registry

from . import test_methods_trl, test_rrhf
from .test_methods_trl import prepared_run, run_method


@pytest.fixture(autouse=True)
def toy_datasets():
    """The toy preference pairs ("toy-prefs") and ranked queries ("rrhf-toy-ranked") of the method tests."""
    registry.register_plugin("toy-prefs-test", test_methods_trl.ToyPlugin)
    registry.register_plugin("rrhf-toy", test_rrhf.ToyPlugin)
    yield
    registry.unregister_plugin("toy-prefs-test")
    registry.unregister_plugin("rrhf-toy")


# --------------------------------------------------------------------------------------------------
# Packing


def _padded(rows: list[list[int]], pad: int = 0):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6], [5, 6]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
    assert query_groups([0, 0, 1, 0, 1]) == [[0, 1, 3], [2, 4]]
    assert pair_groups(4) == [[0, 2], [1, 3]]


def test_every_row_is_recoverable_from_the_packed_batch():
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 50) for _ in range(n)] for n in (3, 30, 1, 12)]
    tails = [(2, 20), (5, 5), (1, 10), (7, 0)]
    chosen = [p + [rng.randrange(1, 50) for _ in range(a)] for p, (a, _) in zip(prompts, tails)]
    rejected = [p + [rng.randrange(1, 50) for _ in range(b)] for p, (_, b) in zip(prompts, tails)]
    rejected[1] = list(chosen[1])  # an identical pair: stored once
    ids, mask = _padded(chosen + rejected)
    packed = pack_groups(ids, mask, pair_groups(8), pad_token_id=0, budget=16)
    flat_ids, flat_pos = packed["input_ids"].reshape(-1), packed["position_ids"].reshape(-1)
    flat_branch = packed["branch_ids"].reshape(-1)
    for row, tokens in enumerate(chosen + rejected):
        index = packed["token_index"][row]
        assert (index[len(tokens) :] == -1).all()
        here = index[: len(tokens)]
        assert flat_ids[here].tolist() == tokens
        assert flat_pos[here].tolist() == list(range(len(tokens)))  # positions continue from the prefix
        assert set(flat_branch[here].tolist()) <= {0, 1 if row < 4 else 2}
    real = int((packed["segment_ids"] >= 0).sum())
    shared = sum(common_prefix_length([c, r]) for c, r in zip(chosen, rejected))
    assert real == sum(map(len, chosen + rejected)) - shared  # each prefix once, no padding inside
    assert packed["input_ids"].shape[0] >= 3  # budget 16: the 30-token prompt's group has a row of its own


def test_by_default_a_batch_shares_one_row_up_to_row_tokens(monkeypatch):
    from easyrlhf_core.kit import shared_prefix_packing as prefix_sharing

    rows = [[1] * 10 + [2] * n for n in (3, 9, 1, 4)] + [[1] * 10 + [3] * n for n in (5, 2, 8, 6)]
    ids, mask = _padded(rows)
    packed = pack_groups(ids, mask, pair_groups(8), pad_token_id=0)
    assert packed["input_ids"].shape == (1, 4 * 10 + 3 + 9 + 1 + 4 + 5 + 2 + 8 + 6)  # no padding slot
    monkeypatch.setattr(prefix_sharing, "ROW_TOKENS", 40)
    packed = pack_groups(ids, mask, pair_groups(8), pad_token_id=0)
    assert packed["input_ids"].shape[0] == 2 and packed["input_ids"].shape[1] <= 40


def test_block_mask_sees_the_prefix_and_its_own_tail_only():
    import torch

    # one row: group 0 = prefix [a b] + tail1 [c] + tail2 [d e], then group 1 = [f], then one pad
    segment = torch.tensor([[0, 0, 0, 0, 0, 1, -1]])
    branch = torch.tensor([[0, 0, 1, 2, 2, 0, 0]])
    mask = block_attention_mask(segment, branch)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # c: prefix + itself
        [1, 1, 0, 1, 0, 0, 0],  # d: prefix, not c
        [1, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # f: its own group only
        [0, 0, 0, 0, 0, 0, 1],  # pad: itself (no empty attention row)
    ]


# --------------------------------------------------------------------------------------------------
# The packed forward against the model's own


def _tiny_models(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    return lm, classifier


def _uneven_batch(vocab: int, pad: int):
    rng = random.Random(1)

    def tokens(n: int) -> list[int]:
        return [rng.choice([t for t in range(3, vocab) if t != pad]) for _ in range(n)]

    prompts = [tokens(n) for n in (4, 25, 9)]
    chosen = [prompts[0] + tokens(3), prompts[1] + tokens(40), prompts[2] + tokens(6)]
    rejected = [prompts[0] + tokens(30), prompts[1] + tokens(4), tokens(5)]  # last: no common prefix
    return _padded(chosen + rejected, pad)


def test_packed_log_probs_and_gradients_equal_the_padded_forward(tiny_model_dir):
    import torch

    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    lm, _ = _tiny_models(tiny_model_dir)
    pad = lm.config.pad_token_id
    ids, mask = _uneven_batch(lm.config.vocab_size, pad)
    labels = ids.masked_fill(mask == 0, -100)
    packed = pack_groups(ids, mask, pair_groups(6), pad, budget=40)
    assert enable_shared_prefix(lm) is None

    def plain() -> torch.Tensor:
        logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
        picked = torch.log_softmax(logits.float(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
        return picked * (labels[:, 1:] != -100)

    def shared() -> torch.Tensor:
        return lm(input_ids=ids, attention_mask=mask, labels=labels, shared_prefix=packed).log_probs

    results = []
    for forward in (plain, shared):
        lm.zero_grad()
        log_probs = forward()
        (log_probs.sum(dim=1) * torch.linspace(1, 2, 6)).sum().backward()
        results.append((log_probs.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}))
    (lp_plain, g_plain), (lp_shared, g_shared) = results
    sums_plain, sums_shared = lp_plain.sum(1), lp_shared.sum(1)
    assert torch.allclose(sums_shared, sums_plain, rtol=1e-5, atol=1e-5), (sums_shared - sums_plain).abs().max()
    for name, grad in g_plain.items():
        assert torch.allclose(g_shared[name], grad, rtol=1e-4, atol=1e-6), name


def test_packed_scores_are_read_where_the_classifier_reads_them(tiny_model_dir):
    import torch

    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    _, classifier = _tiny_models(tiny_model_dir)
    pad = classifier.config.pad_token_id
    ids, mask = _uneven_batch(classifier.config.vocab_size, pad)
    # rows ending with the pad token (= eos in the tiny tokenizer): the readout is the token before it
    for row in range(ids.shape[0]):
        ids[row, int(mask[row].sum()) - 1] = pad
    packed = pack_groups(ids, mask, pair_groups(6), pad)
    assert enable_shared_prefix(classifier, "classifier") is None
    plain = classifier(input_ids=ids, attention_mask=mask).logits
    shared = classifier(input_ids=ids, attention_mask=mask, shared_prefix=packed).logits
    assert torch.allclose(shared, plain, rtol=1e-5, atol=1e-6)
    plain.sum().backward()
    g_plain = {n: p.grad.clone() for n, p in classifier.named_parameters()}
    classifier.zero_grad()
    shared.sum().backward()
    for name, param in classifier.named_parameters():
        assert torch.allclose(param.grad, g_plain[name], rtol=1e-4, atol=1e-6), name


def test_a_model_whose_attention_ignores_the_mask_is_left_on_padded_rows(tiny_model_dir):
    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    lm, _ = _tiny_models(tiny_model_dir)
    backbone_forward = lm.model.forward
    lm.model.forward = lambda **kw: backbone_forward(**{**kw, "attention_mask": None})  # plain causal attention
    reason = enable_shared_prefix(lm)
    assert reason is not None and "differs from the model's own" in reason
    assert not getattr(lm.forward, "_easyrlhf_shared_prefix", False)
    lm.config._attn_implementation = "flash_attention_2"
    assert "takes no block mask" in enable_shared_prefix(lm)


# --------------------------------------------------------------------------------------------------
# Each method's trainer: shared path == padded path


def _dpo_features(tokenizer) -> list[dict]:
    """Multi-turn prompts of uneven length; responses 10x apart; an identical pair; one cut by max_length."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def prompt(*turns: str) -> list[int]:
        roles = ["user", "assistant"]
        messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]

    long_answer = "Mix flour, water, yeast and salt, let it rise, then bake it. " * 6
    return [
        {"prompt_ids": prompt("How do I bake bread?"), "chosen_ids": ids("Sure."), "rejected_ids": ids(long_answer)},
        {
            "prompt_ids": prompt("Tell me a joke.", "Why did the chicken cross the road?", "Why?"),
            "chosen_ids": ids("To get to the other side!"),
            "rejected_ids": ids("No idea."),
        },
        {
            "prompt_ids": prompt("What is the capital of France?"),
            "chosen_ids": ids("Paris."),
            "rejected_ids": ids("Paris."),
        },
        {
            "prompt_ids": prompt("You are a helpful assistant. " * 8, "Fine.", "Help me with my homework."),
            "chosen_ids": ids("Sure, what subject is it?"),
            "rejected_ids": ids(long_answer),
        },
    ]


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(on, off, loss_on, loss_off):
    import torch

    assert torch.allclose(loss_on, loss_off, rtol=1e-4, atol=1e-6), (float(loss_on), float(loss_off))
    loss_on.backward()
    loss_off.backward()
    g_on, g_off = _grads(on), _grads(off)
    assert g_on.keys() == g_off.keys() and g_on
    for name in g_off:  # to 1e-4 of each gradient's scale (elementwise, fp32 sums in another order differ more)
        difference, scale = float((g_on[name] - g_off[name]).abs().max()), float(g_off[name].abs().max())
        assert difference <= 1e-4 * scale + 1e-6, (name, difference, scale)


def _perturb(*models) -> None:
    """Move policies away from their references (the same way for both)."""
    import torch

    for model in models:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize(
    "method, options",
    [
        ("dpo", []),
        ("ipo", ["log_ratio_normalization=mean"]),
        ("ipo", ["log_ratio_normalization=sum"]),
    ],
)
def test_dpo_and_ipo_shared_path_equals_the_padded_path(tiny_model_dir, tmp_path, method, options):
    import torch
    from easyrlhf_plugins.methods.dpo import DPOMethod, IPOMethod

    builder = DPOMethod() if method == "dpo" else IPOMethod()
    on, _ = builder.build_trainer(prepared_run(method, tiny_model_dir, tmp_path / "on", "max_length=64", *options))
    off, _ = builder.build_trainer(
        prepared_run(method, tiny_model_dir, tmp_path / "off", "max_length=64", "prefix_sharing=false", *options)
    )
    _perturb(on.model, off.model)
    features = _dpo_features(on.processing_class)
    on.data_collator.budget = 48  # the long multi-turn prompt's group is longer than the budget
    batch_on, batch_off = on.data_collator(features), off.data_collator(features)
    assert SHARED_PREFIX_KEY in batch_on and SHARED_PREFIX_KEY not in batch_off
    assert batch_on["completion_mask"].sum() < batch_on["completion_mask"].numel()
    assert (batch_on["input_ids"] == batch_off["input_ids"]).all()  # max_length truncation is TRL's, unchanged

    labels = batch_off["input_ids"].masked_fill(batch_off["completion_mask"] == 0, -100)
    with torch.no_grad():
        kwargs = {
            "input_ids": batch_off["input_ids"],
            "attention_mask": batch_off["attention_mask"],
            "labels": labels,
            "fused_lm_head": True,
        }
        logps_off = off.model(**kwargs).log_probs.sum(1)
        logps_on = on.model(**kwargs, shared_prefix=batch_on[SHARED_PREFIX_KEY]).log_probs.sum(1)
    assert torch.allclose(logps_on, logps_off, rtol=1e-5, atol=1e-5), (logps_on - logps_off).abs().max()
    on.model.train()
    off.model.train()
    _assert_same_step(on.model, off.model, on.compute_loss(on.model, batch_on), off.compute_loss(off.model, batch_off))


def test_rm_shared_path_equals_the_padded_path(tiny_model_dir, tmp_path):
    import torch
    from easyrlhf_plugins.methods.rm import RMMethod

    on, _ = RMMethod().build_trainer(prepared_run("rm", tiny_model_dir, tmp_path / "on"))
    off, _ = RMMethod().build_trainer(prepared_run("rm", tiny_model_dir, tmp_path / "off", "prefix_sharing=false"))
    features = [
        {"chosen_ids": f["prompt_ids"] + f["chosen_ids"], "rejected_ids": f["prompt_ids"] + f["rejected_ids"]}
        for f in _dpo_features(on.processing_class)
    ]
    batch_on, batch_off = on.data_collator(features), off.data_collator(features)
    assert SHARED_PREFIX_KEY in batch_on and SHARED_PREFIX_KEY not in batch_off
    with torch.no_grad():
        scores_off = off.model(input_ids=batch_off["input_ids"], attention_mask=batch_off["attention_mask"]).logits
        scores_on = on.model(
            input_ids=batch_on["input_ids"],
            attention_mask=batch_on["attention_mask"],
            shared_prefix=batch_on[SHARED_PREFIX_KEY],
        ).logits
    assert torch.allclose(scores_on, scores_off, rtol=1e-5, atol=1e-6)
    assert scores_off[2] == pytest.approx(float(scores_off[6]), abs=1e-6)  # the identical pair
    _assert_same_step(on.model, off.model, on.compute_loss(on.model, batch_on), off.compute_loss(off.model, batch_off))


def test_rrhf_shared_path_equals_the_padded_path(tiny_model_dir, tmp_path):
    import torch
    from easyrlhf_plugins.methods.rrhf import build_trainer

    def trainer(name: str, *options: str):
        from easyrlhf_core.runtime.lifecycle import prepare
        from easyrlhf_core.runtime.run import RunRequest

        request = RunRequest(
            method="rrhf",
            flags={"model": str(tiny_model_dir), "dataset": "rrhf-toy-ranked", "output_dir": str(tmp_path / name)},
            set_options=["max_length=128", *options],
        )
        return build_trainer(prepare(request))[0]

    on, off = trainer("on"), trainer("off", "prefix_sharing=false")
    features = [on.train_dataset[i] for i in range(3)]
    features[0] = {
        **features[0],
        "response_ids": [r * 10 for r in features[0]["response_ids"][:1]] + features[0]["response_ids"][1:],
    }  # one candidate 10x longer
    batch_on, batch_off = on.data_collator(features), off.data_collator(features)
    assert SHARED_PREFIX_KEY in batch_on
    terms_on, terms_off = on.rrhf_forward(on.model, batch_on), off.rrhf_forward(off.model, batch_off)
    assert torch.allclose(terms_on.p, terms_off.p, rtol=1e-5, atol=1e-6)
    _assert_same_step(on.model, off.model, terms_on.loss, terms_off.loss)


# --------------------------------------------------------------------------------------------------
# A few steps on and off: the same weights


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("method, dataset", [("dpo", "hh-rlhf"), ("rm", "hh-rlhf"), ("rrhf", "rrhf-toy-ranked")])
def test_a_few_steps_with_and_without_prefix_sharing_end_with_the_same_weights(
    cli_run, tiny_model_dir, tmp_path, method, dataset
):
    import torch

    common = (
        "--set",
        "max_train_samples=12",
        "--set",
        "max_eval_samples=0",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "per_device_train_batch_size=4",
    )
    on = run_method(cli_run, method, tiny_model_dir, tmp_path / "on", *common, dataset=dataset)
    off = run_method(
        cli_run, method, tiny_model_dir, tmp_path / "off", *common, "--set", "prefix_sharing=false", dataset=dataset
    )
    assert "prefix sharing: on" in on.stderr and "prefix sharing" not in off.stderr
    start, w_on, w_off = (
        _weights(tiny_model_dir),
        _weights(tmp_path / "on" / "model"),
        _weights(tmp_path / "off" / "model"),
    )
    moved = max(float((w_off[k] - start[k]).abs().max()) for k in start if k in w_off)
    assert moved > 1e-3
    for name, value in w_off.items():
        assert torch.allclose(w_on[name], value, atol=2e-5), (name, float((w_on[name] - value).abs().max()))


def test_a_model_that_cannot_take_the_mask_trains_on_padded_rows_and_says_why(cli_run, tiny_tokenizer_dir, tmp_path):
    from tests.helpers import save_tiny_sliding_window_lm

    model_dir = save_tiny_sliding_window_lm(tiny_tokenizer_dir, tmp_path / "tiny-mistral")
    result = run_method(cli_run, "dpo", model_dir, tmp_path / "out", "--set", "max_eval_samples=0", steps=1)
    assert "prefix sharing: off (sliding-window attention" in result.stderr
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_the_probe_ignores_an_autocast_wrapper_on_the_model(tiny_model_dir):
    """accelerate wraps a prepared frozen reference's forward in bf16 autocast (TRL's DPO reference under
    --precision bf16); the probe compares the packed path with the model class's own forward in the same
    precision, so such a model keeps prefix sharing (the training step itself runs under the trainer's
    autocast either way)."""
    import types

    import torch

    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    lm, _ = _tiny_models(tiny_model_dir)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(40)  # large logits: bf16 and fp32 log-probs differ visibly
    inner = lm.forward.__func__

    def autocast_forward(self, *args, **kwargs):  # what Accelerator(mixed_precision="bf16").prepare_model does
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return inner(self, *args, **kwargs)

    lm.forward = types.MethodType(autocast_forward, lm)
    assert enable_shared_prefix(lm) is None


def test_held_out_scoring_on_the_shared_path_equals_padded_rows(tiny_model_dir):
    """easyrlhf eval's and the run summary's completion log-probs: pairs of one prompt (uneven lengths, one
    pair truncated by max_length, a prompt with a single completion) score the same on both paths."""
    from easyrlhf_core.kit.completion_logprobs import completion_logprobs
    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    lm, _ = _tiny_models(tiny_model_dir)
    pad = lm.config.pad_token_id
    rng = random.Random(3)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, lm.config.vocab_size) for _ in range(n)]

    prompts = [tokens(n) for n in (12, 3, 30, 7)]
    examples = [
        (prompts[0], tokens(4)),
        (prompts[1], tokens(20)),
        (prompts[2], tokens(9)),
        (prompts[3], tokens(2)),
        (prompts[0], tokens(40)),
        (prompts[1], tokens(2)),
        (prompts[2], tokens(11)),
    ]
    padded = completion_logprobs(lm, examples, pad, batch_size=3, max_length=42, share_prefixes=False)
    assert not getattr(lm.forward, "_easyrlhf_shared_prefix", False)
    shared = completion_logprobs(lm, examples, pad, batch_size=3, max_length=42)
    assert getattr(lm.forward, "_easyrlhf_shared_prefix", False)  # the shared path really ran
    assert [s.tokens for s in shared] == [p.tokens for p in padded] == [4, 20, 9, 2, 40, 2, 11]
    for s, p in zip(shared, padded):
        assert abs(s.total - p.total) <= 1e-5 * abs(p.total) + 1e-5, (s.total, p.total)
    assert enable_shared_prefix(lm) is None


def test_a_long_pair_is_truncated_to_the_same_context_for_both_answers():
    from easyrlhf_core.kit.completion_logprobs import truncated_count, truncated_sequences

    prompt, short, long = list(range(10)), [20, 21], [30, 31, 32, 33, 34, 35]
    kept = truncated_sequences([(prompt, short), (prompt, long), ([1, 2], list(range(40, 50)))], max_length=8)
    assert kept[0] == [8, 9, 20, 21] and kept[1] == [8, 9, 30, 31, 32, 33, 34, 35]  # the same 2 prompt tokens
    assert kept[2] == list(range(42, 50))  # a completion longer than max_length keeps its end
    assert truncated_count([(prompt, short), (prompt, long), ([1], [2])], max_length=8) == 2


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_the_chunked_head_gives_the_full_head_values_and_gradients(chunk):
    """Log-probs (and their gradients into the hidden states and the head), entropy, mean logit and top-1 of
    the chunked head (checkpointed chunks, the last one kept) equal a plain log-softmax over all positions."""
    import torch

    from easyrlhf_core.kit.shared_prefix_forward import chunked_token_log_probs

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(17, 8, requires_grad=True)
    labels = torch.randint(0, 50, (17,))
    logits = head(hidden)
    plain = torch.log_softmax(logits, -1).gather(-1, labels[:, None])[:, 0]
    (plain * torch.arange(17.0)).sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    log_probs, entropy, mean_logits, is_top1 = chunked_token_log_probs(head, hidden, labels, chunk=chunk)
    (log_probs * torch.arange(17.0)).sum().backward()
    assert torch.allclose(log_probs, plain, atol=1e-6)
    assert torch.allclose(hidden.grad, expected[0], atol=1e-6)
    assert torch.allclose(head.weight.grad, expected[1], atol=1e-6)
    probs = torch.softmax(logits.detach(), -1)
    assert torch.allclose(entropy, -(probs * probs.log()).sum(-1), atol=1e-5)
    assert torch.allclose(mean_logits, logits.detach().mean(-1), atol=1e-6)
    assert torch.equal(is_top1, logits.detach().argmax(-1) == labels)


def test_under_bf16_the_reference_runs_in_the_policys_precision(cli_run, tiny_model_dir, tmp_path):
    """TRL prepares its reference model (accelerate's autocast wrapper) before the shared path is patched in;
    the patch must keep that precision. At step 1 policy and reference are the same weights, so in bf16 as in
    fp32 every implicit reward is exactly 0 and the loss is ln 2 (it was not: the reference ran in fp32)."""
    import json
    import math

    out = tmp_path / "bf16"
    result = run_method(
        cli_run,
        "dpo",
        tiny_model_dir,
        out,
        "--precision",
        "bf16",
        "--set",
        "max_eval_samples=0",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "summary_pairs=0",
        steps=1,
    )
    assert "prefix sharing: on" in result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["logps/chosen"] != 0.0 and row["rewards/chosen"] == 0.0 and row["rewards/rejected"] == 0.0, row
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-7), row
