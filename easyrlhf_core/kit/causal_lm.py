"""Causal-LM helpers shared by evaluation, rrhf, ppo, grpo/rloo and chat: token log-probs from logits,
padding, stop ids, generation settings, the batched ``generate`` call and the response text a reward sees.

Importing this module is cheap: torch and transformers load when a function runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch

__all__ = [
    "logprobs_from_logits",
    "response_log_probs",
    "left_pad",
    "right_pad",
    "tail_mask",
    "stop_token_ids",
    "generation_config",
    "generate",
    "pin_generation",
    "decode_response",
    "response_text",
]


# --------------------------------------------------------------------------------------------------
# Log-probs


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` at ``tokens``, in float32: the sampling distribution's log-probs."""
    import torch

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_log_probs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log-probs of the response tokens and how many there are.

    ``response_mask[n, t]`` is nonzero where ``input_ids[n, t]`` is a response token; the logits at position
    t - 1 predict it. Only those positions are read and upcast: prompt and padding logits never enter the sums.
    """
    import torch

    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].bool()
    token_logp = logprobs_from_logits(logits[:, :-1][mask], targets[mask])  # [T]: response positions only
    per_position = torch.zeros(targets.shape, dtype=token_logp.dtype, device=logits.device)
    return per_position.masked_scatter(mask, token_logp).sum(dim=-1), mask.sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Batches of token ids


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            where = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, where] = torch.tensor(seq, dtype=torch.long)
            mask[row, where] = 1
    return ids, mask


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with padding on the left, so every prompt ends at the same column."""
    return _pad(sequences, pad_id, left=True)


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with padding on the right, so every sequence starts at column 0."""
    return _pad(sequences, pad_id, left=False)


def tail_mask(attention_mask: torch.Tensor, tail_lengths: list[int]) -> torch.Tensor:
    """Of a right-padded batch, True on each row's last ``tail_lengths[row]`` real tokens (all of them when
    the row is shorter)."""
    import torch

    lengths = attention_mask.sum(dim=1, keepdim=True)
    tails = torch.tensor(tail_lengths, dtype=lengths.dtype, device=lengths.device).unsqueeze(1)
    positions = torch.arange(attention_mask.shape[1], device=lengths.device).unsqueeze(0)
    return (positions >= lengths - tails) & (positions < lengths)


# --------------------------------------------------------------------------------------------------
# Generation


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """End-of-turn ids: ``model``'s generation config's eos ids (when a model is given) plus the tokenizer's
    eos, without duplicates."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


#: Output-changing settings pinned in every config, so a model's own ``generation_config`` never applies them
#: (each at the value that leaves the distribution unchanged). Settings whose neutral value is None (min_p,
#: bad_words_ids, suppress_tokens, sequence_bias, ...) cannot be pinned in a config: transformers fills every None
#: field from the model's file, so :func:`generate` hides that file while it runs (:func:`model_defaults_hidden`).
NEUTRAL_SETTINGS = {
    "min_new_tokens": 0,  # transformers derives min_length from it (pinning both only draws a warning per call)
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "length_penalty": 1.0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "output_scores": False,
    "return_dict_in_generate": False,
    "use_cache": True,
}
#: Sampling from the model's own distribution; ``sampling`` overrides these.
UNMODIFIED_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def generation_config(
    max_new_tokens: int,
    stop_ids: int | list[int] | None,
    pad_token_id: int | None,
    sampling: dict[str, Any] | None = None,
    **settings: Any,
) -> Any:
    """A fresh, complete ``GenerationConfig`` built from our options alone: greedy (``sampling`` None), or
    sampling with ``sampling`` on top of :data:`UNMODIFIED_SAMPLING`. :data:`NEUTRAL_SETTINGS` are pinned too;
    ``settings`` add or override fields. Run it with :func:`generate` (or a model given :func:`pin_generation`),
    so ``generate`` fills nothing from the model's own ``generation_config``.
    """
    from transformers import GenerationConfig

    sampled = {**UNMODIFIED_SAMPLING, **sampling} if sampling is not None else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling is not None,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id,
        **{**NEUTRAL_SETTINGS, **sampled, **settings},
    )


def _configured_modules(model: Any) -> list[Any]:
    """``model`` and the modules inside it (a PEFT wrapper's base model, ...) that hold a generation config."""
    from transformers import GenerationConfig

    modules = list(model.modules()) if hasattr(model, "modules") else [model]
    return [m for m in modules if isinstance(vars(m).get("generation_config"), GenerationConfig)]


@contextmanager
def model_defaults_hidden(model: Any) -> Iterator[None]:
    """Inside: ``model`` (and every module in it) has a blank ``GenerationConfig``, so ``generate`` merges
    nothing from the model's ``generation_config.json`` (min_p, no_repeat_ngram_size, bad_words_ids, ...) into
    the config it is given; transformers' global defaults still fill what the config leaves unset. The model's
    own config is back on exit (it is what a saved model keeps)."""
    from transformers import GenerationConfig

    saved = [(m, m.generation_config) for m in _configured_modules(model)]
    try:
        for module, _ in saved:
            module.generation_config = GenerationConfig()
        yield
    finally:
        for module, config in saved:
            module.generation_config = config


def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: Any,
    share_prompts: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """The new token ids ``(rows, new_tokens)`` of one batched ``generate`` call on left-padded prompts
    (``config.num_return_sequences`` consecutive rows per prompt), with ``config`` alone deciding how tokens
    are picked (:func:`model_defaults_hidden`), rows with the same prompt reading it once unless
    ``share_prompts`` is off (:mod:`easyrlhf_core.kit.shared_prefill`); ``kwargs`` (a ``streamer``, ...) go to
    ``generate``."""
    from easyrlhf_core.kit.shared_prefill import generate_sharing_prompts

    run = functools.partial(generate_sharing_prompts, model.generate, model) if share_prompts else model.generate
    with model_defaults_hidden(model):
        output = run(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **kwargs)
    return cast("torch.Tensor", output[:, input_ids.shape[1] :])


def pin_generation(model: Any, share_prompts: bool = True) -> Any:
    """Make every later ``generate`` call on ``model`` (from code we do not own: TRL's online trainers) run
    under :func:`model_defaults_hidden`, so only the config passed to it applies; with ``share_prompts``, rows
    with the same prompt read it once (:mod:`easyrlhf_core.kit.shared_prefill`). Returns ``model``."""
    from easyrlhf_core.kit.shared_prefill import generate_sharing_prompts

    for module in _configured_modules(model):
        if "generate" in vars(module):  # pinned already
            continue
        original = module.generate

        @functools.wraps(original)
        def pinned(*args: Any, _original: Any = original, _module: Any = module, **kwargs: Any) -> Any:
            with model_defaults_hidden(_module):
                if share_prompts and not args:
                    return generate_sharing_prompts(_original, _module, **kwargs)
                return _original(*args, **kwargs)

        module.generate = pinned
    return model


# --------------------------------------------------------------------------------------------------
# Response text


def response_text(text: str) -> str:
    """The rule for the text of a sampled response that a reward (or judge) sees, on every path (ppo, rrhf,
    grpo, rloo, eval): surrounding whitespace stripped. Decoded text already has special tokens skipped."""
    return text.strip()


def decode_response(tokenizer: Any, ids: Any) -> str:
    """Response token ids as the text a reward sees: special tokens skipped, then :func:`response_text`."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return response_text(tokenizer.decode(ids, skip_special_tokens=True))
