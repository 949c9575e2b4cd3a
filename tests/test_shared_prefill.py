"""Generation that reads each distinct prompt once (easyrlhf_core.kit.shared_prefill): the same tokens as plain
``generate`` (greedy, sampled with a seed, several return sequences), the prompt run once per group (counted at
the model's forward), the scores the rollout layer reads within float rounding, and the fallbacks."""

from __future__ import annotations

import pytest
import torch

from easyrlhf_core.kit.causal_lm import generate, generation_config, left_pad
from easyrlhf_core.kit.shared_prefill import generate_sharing_prompts
from tests.helpers import build_tiny_causal_lm, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_causal_lm(tokenizer, seed=3).eval()


def _batch(tokenizer, texts: list[str], repeats: int):
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts for _ in range(repeats)]
    return left_pad(ids, tokenizer.pad_token_id)


TEXTS = ["What is the capital of France?", "Tell me a joke about bread.", "Can you help me?"]


class Counter:
    """Rows x tokens of every forward of the decoder (the prefill is the first)."""

    def __init__(self, model) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        self.shapes.append(tuple(ids.shape))

    def close(self) -> None:
        self.handle.remove()


@pytest.mark.parametrize("sampled", [False, True])
def test_the_same_tokens_as_plain_generate_with_each_prompt_read_once(tokenizer, model, sampled):
    queries, mask = _batch(tokenizer, TEXTS, repeats=4)
    config = generation_config(12, [tokenizer.eos_token_id], tokenizer.pad_token_id, {} if sampled else None)
    config.min_new_tokens = 12  # every row decodes all 12 steps: the comparison covers them all
    counter = Counter(model)
    try:
        torch.manual_seed(7)
        plain = model.generate(input_ids=queries, attention_mask=mask, generation_config=config)
        plain_shapes, counter.shapes = counter.shapes, []
        torch.manual_seed(7)
        shared = generate_sharing_prompts(
            model.generate, model, input_ids=queries, attention_mask=mask, generation_config=config
        )
        shared_shapes = counter.shapes
    finally:
        counter.close()
    assert torch.equal(plain, shared)
    rows, length = queries.shape
    assert plain_shapes[0] == (rows, length)  # plain: every row's prompt
    assert shared_shapes[0] == (len(TEXTS), length - 1)  # shared: each prompt once (its last token decodes)
    assert shared_shapes[1] == (rows, 1) and len(shared_shapes) == len(plain_shapes) + 1
    assert sum(r * n for r, n in shared_shapes) < sum(r * n for r, n in plain_shapes)


def test_several_return_sequences_share_their_prompt(tokenizer, model):
    queries, mask = _batch(tokenizer, TEXTS, repeats=1)
    config = generation_config(8, [tokenizer.eos_token_id], tokenizer.pad_token_id, {})
    config.num_return_sequences = 3
    torch.manual_seed(11)
    plain = model.generate(input_ids=queries, attention_mask=mask, generation_config=config)
    torch.manual_seed(11)
    ours = generate(model, queries, mask, config)  # the kit's generate shares
    assert ours.shape[0] == 3 * len(TEXTS)
    assert torch.equal(plain[:, queries.shape[1] :], ours)
    assert config.num_return_sequences == 3  # the caller's config untouched


def test_the_sampling_scores_match_plain_generate(tokenizer, model):
    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS for _ in range(3)]
    engine = TransformersEngine(model, tokenizer)
    sampling = Sampling(10, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=5)
    shared = engine.generate(prompts, sampling, logprobs=True)
    config = generation_config(10, [tokenizer.eos_token_id], tokenizer.pad_token_id, sampling.settings())
    config.output_scores = config.return_dict_in_generate = True
    queries, mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(5)
    with torch.no_grad():
        out = model.generate(input_ids=queries, attention_mask=mask, generation_config=config)
    assert torch.equal(
        out.sequences[:, queries.shape[1] :][shared.response_mask.bool()],
        shared.response_ids[shared.response_mask.bool()],
    )
    scores = torch.stack(out.scores, dim=1).log_softmax(-1)
    plain = scores.gather(-1, shared.response_ids.unsqueeze(-1)).squeeze(-1) * shared.response_mask
    assert torch.allclose(plain, shared.logprobs, atol=1e-5)


def test_nothing_to_share_or_a_cache_given_runs_plain_generate(tokenizer, model):
    queries, mask = _batch(tokenizer, TEXTS, repeats=1)
    config = generation_config(4, [tokenizer.eos_token_id], tokenizer.pad_token_id, None)
    calls = []

    def spy(**kwargs):
        calls.append(sorted(kwargs))
        return model.generate(**kwargs)

    generate_sharing_prompts(spy, model, input_ids=queries, attention_mask=mask, generation_config=config)
    repeated, repeated_mask = _batch(tokenizer, TEXTS, repeats=2)
    config.num_beams = 2
    generate_sharing_prompts(spy, model, input_ids=repeated, attention_mask=repeated_mask, generation_config=config)
    assert calls == [["attention_mask", "generation_config", "input_ids"]] * 2


@pytest.mark.parametrize("share", [True, False])
def test_the_kits_generate_shares_unless_told_not_to(tokenizer, model, share):
    queries, mask = _batch(tokenizer, TEXTS, repeats=2)
    config = generation_config(3, [tokenizer.eos_token_id], tokenizer.pad_token_id, None)
    counter = Counter(model)
    try:
        generate(model, queries, mask, config, share_prompts=share)
    finally:
        counter.close()
    rows, length = queries.shape
    assert counter.shapes[0] == ((len(TEXTS), length - 1) if share else (rows, length))


def test_a_recurrent_cache_falls_back_to_plain_generate_once_and_for_all(tokenizer):
    """A hybrid model (LFM2: convolution layers hold a recurrent state, not rows of keys and values) cannot have
    its cache copied to rows: the first call finds that out, generates plainly, and the model is not tried again."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Lfm2Config"):
        pytest.skip("this transformers has no LFM2")
    from easyrlhf_core.kit.shared_prefill import NOT_SHAREABLE
    from easyrlhf_core.kit.tiny_models import tiny_config_fields

    fields = {k: v for k, v in tiny_config_fields(tokenizer).items() if k != "max_position_embeddings"}
    torch.manual_seed(0)
    model = transformers.Lfm2ForCausalLM(transformers.Lfm2Config(**fields, layer_types=["conv", "full_attention"]))
    model.eval()
    queries, mask = _batch(tokenizer, TEXTS, repeats=2)
    config = generation_config(4, [tokenizer.eos_token_id], tokenizer.pad_token_id, None)
    plain = model.generate(input_ids=queries, attention_mask=mask, generation_config=config)
    for _ in range(2):
        ours = generate_sharing_prompts(
            model.generate, model, input_ids=queries, attention_mask=mask, generation_config=config
        )
        assert torch.equal(plain, ours) and getattr(model, NOT_SHAREABLE)


def test_a_forward_that_hides_position_ids_gets_the_positions_generate_uses(tokenizer):
    """``generate`` gives position ids only to a forward whose signature names them (a ``**kwargs`` wrapper's
    does not: the model then counts positions from the cache, padding included); the shared prefill follows the
    same rule, or a left-padded row's prompt and its new tokens would sit at inconsistent positions."""
    import types

    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    wrapped = build_tiny_causal_lm(tokenizer, seed=3).eval()
    original = wrapped.forward
    wrapped.forward = types.MethodType(lambda self, *args, **kwargs: original(*args, **kwargs), wrapped)
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS for _ in range(2)]
    sampling = Sampling(6, [tokenizer.eos_token_id], tokenizer.pad_token_id, greedy=True)
    shared = TransformersEngine(wrapped, tokenizer).generate(prompts, sampling, logprobs=True)
    plain = TransformersEngine(wrapped, tokenizer, share_prompts=False).generate(prompts, sampling, logprobs=True)
    assert torch.equal(shared.response_ids, plain.response_ids)
    assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5)


def test_the_shared_prefix_patch_keeps_the_forward_signature(tiny_model_dir):
    """The shared-prefix patch (grpo/rloo log-prob forwards) shows the original parameters plus shared_prefix, so
    generate keeps passing position ids to the patched model."""
    import inspect

    from easyrlhf_core.kit.model_loading import load_causal_lm
    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

    model = load_causal_lm(str(tiny_model_dir))
    assert enable_shared_prefix(model, "causal_lm", online=True) is None
    parameters = inspect.signature(model.forward).parameters
    assert {"input_ids", "attention_mask", "position_ids", "shared_prefix"} <= set(parameters)
