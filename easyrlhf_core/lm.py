"""Causal-LM helpers shared by evaluation, rrhf and ppo: token log-probs from logits, padding, stop ids,
generation settings and the batched ``generate`` call.

Importing this module is cheap: torch and transformers load when a function runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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


def response_log_probs(logits: torch.Tensor, input_ids: torch.Tensor,
                       response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


#: Output-changing settings pinned in every config, so a model's own ``generation_config`` never applies them.
NEUTRAL_SETTINGS = {"min_new_tokens": 0, "repetition_penalty": 1.0, "num_beams": 1, "use_cache": True}
#: Sampling from the model's own distribution; ``sampling`` overrides these.
UNMODIFIED_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def generation_config(max_new_tokens: int, stop_ids: int | list[int] | None, pad_token_id: int | None,
                      sampling: dict[str, Any] | None = None, **settings: Any) -> Any:
    """A complete ``GenerationConfig``: greedy (``sampling`` None), or sampling with ``sampling`` on top of
    :data:`UNMODIFIED_SAMPLING`. :data:`NEUTRAL_SETTINGS` are pinned too, so ``generate`` fills nothing that
    changes the output from the model's own ``generation_config``; ``settings`` add or override fields.
    """
    from transformers import GenerationConfig

    sampled = {**UNMODIFIED_SAMPLING, **sampling} if sampling is not None else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling is not None, eos_token_id=stop_ids,
                            pad_token_id=pad_token_id, **{**NEUTRAL_SETTINGS, **sampled, **settings})


def generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: Any) -> torch.Tensor:
    """The new token ids ``(rows, new_tokens)`` of one batched ``generate`` call on left-padded prompts
    (``config.num_return_sequences`` consecutive rows per prompt)."""
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return output[:, input_ids.shape[1]:]
