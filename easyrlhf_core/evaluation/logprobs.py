"""Summed log-probabilities of completions given their prompts, batched, without gradients.

Only completion tokens count: prompt and padding positions are masked out. Sequences longer than
``max_length`` lose their oldest prompt tokens (see :func:`easyrlhf_core.chat.keep_last`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..chat import keep_last
from ..lm import response_log_probs, right_pad, tail_mask


@dataclass
class CompletionLogProb:
    """``total``: sum of log p(token | earlier tokens) over the completion's ``tokens`` tokens."""

    total: float
    tokens: int


def batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); deterministic for equal inputs."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def completion_logprobs(model: Any, examples: list[tuple[list[int], list[int]]], pad_token_id: int,
                        batch_size: int = 8, max_length: int = 1024) -> list[CompletionLogProb]:
    """One :class:`CompletionLogProb` per ``(prompt_ids, completion_ids)``, in input order."""
    import torch

    device = next(model.parameters()).device
    sequences = [keep_last(list(p) + list(c), max_length) for p, c in examples]
    # The completion is the tail of each sequence; its first token is predicted from the token before it.
    completion_lengths = [len(c) for _p, c in examples]
    results: list[CompletionLogProb | None] = [None] * len(examples)
    with torch.inference_mode():
        for batch in batches_by_length([len(s) for s in sequences], batch_size):
            input_ids, attention = right_pad([sequences[i] for i in batch], pad_token_id)
            counted = tail_mask(attention, [completion_lengths[i] for i in batch])
            input_ids, attention, counted = input_ids.to(device), attention.to(device), counted.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            sums, counts = response_log_probs(logits, input_ids, counted)
            for row, i in enumerate(batch):
                results[i] = CompletionLogProb(total=float(sums[row]), tokens=int(counts[row]))
    return [r for r in results if r is not None]


def truncated_count(examples: list[tuple[list[int], list[int]]], max_length: int) -> int:
    """How many examples :func:`completion_logprobs` shortens."""
    return sum(1 for p, c in examples if len(p) + len(c) > max_length)


def pair_gaps(logps: list[CompletionLogProb]) -> list[float]:
    """Per pair, the chosen minus the rejected completion's mean log-prob per token; ``logps`` holds the
    chosen completions, then the rejected ones, in the same pair order."""
    n = len(logps) // 2
    per_token = [p.total / max(p.tokens, 1) for p in logps]
    return [per_token[i] - per_token[n + i] for i in range(n)]


def pair_margins(logps: list[CompletionLogProb]) -> list[float]:
    """Per pair, the chosen minus the rejected completion's summed log-prob (order as in :func:`pair_gaps`)."""
    n = len(logps) // 2
    return [logps[i].total - logps[n + i].total for i in range(n)]
