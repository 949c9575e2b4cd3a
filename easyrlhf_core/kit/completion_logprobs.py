"""Summed log-probabilities of completions given their prompts, batched, without gradients.

Only completion tokens count: prompt and padding positions are masked out. Sequences longer than
``max_length`` lose their oldest prompt tokens (:func:`truncated_sequences`), the same number for every
completion of one prompt, so the two answers of a pair are scored in the same context.

Completions of the same prompt (a pair's chosen and rejected answer) are scored on the shared-prefix path
when the model takes it (:mod:`easyrlhf_core.kit.shared_prefix_forward`): the prompt runs once per group, groups are
packed without padding and the LM head runs on completion tokens only. Same numbers as padded rows (to
fp32 noise), fewer tokens; a model that cannot take the block mask is scored on padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easyrlhf_core.kit.causal_lm import response_log_probs, right_pad, tail_mask
from easyrlhf_core.kit.chat_template import keep_last

__all__ = [
    "CompletionLogProb",
    "batches_by_length",
    "prompt_groups",
    "truncated_sequences",
    "groups_by_prompt",
    "completion_logprobs",
    "truncated_count",
    "pair_gaps",
    "pair_margins",
]


@dataclass
class CompletionLogProb:
    """``total``: sum of log p(token | earlier tokens) over the completion's ``tokens`` tokens."""

    total: float
    tokens: int


def batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); deterministic for equal inputs."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def prompt_groups(examples: list[tuple[list[int], list[int]]]) -> list[list[int]]:
    """Example indices grouped by identical prompt, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _completion) in enumerate(examples):
        groups.setdefault(tuple(prompt), []).append(i)
    return list(groups.values())


def truncated_sequences(examples: list[tuple[list[int], list[int]]], max_length: int) -> list[list[int]]:
    """``prompt + completion`` per example, at most ``max_length`` tokens: a prompt keeps its last tokens, as
    many as its longest completion leaves room for, for all of its completions; a completion longer than
    ``max_length`` alone keeps its last ``max_length`` tokens (:func:`easyrlhf_core.kit.chat_template.keep_last`)."""
    sequences: list[list[int]] = [[] for _ in examples]
    for group in prompt_groups(examples):
        prompt = list(examples[group[0]][0])
        room = max(max_length - max(len(examples[i][1]) for i in group), 0)
        kept = prompt[len(prompt) - room :] if room < len(prompt) else prompt
        for i in group:
            sequences[i] = keep_last(kept + list(examples[i][1]), max_length)
    return sequences


def groups_by_prompt(
    examples: list[tuple[list[int], list[int]]], lengths: list[int], batch_size: int
) -> list[list[list[int]]]:
    """Batches of prompt groups (:func:`prompt_groups`), the groups ordered by their longest sequence and cut
    into batches of at most ``batch_size`` examples (a larger group is a batch)."""
    ordered = sorted(prompt_groups(examples), key=lambda g: (max(lengths[i] for i in g), g[0]))
    batches: list[list[list[int]]] = []
    for group in ordered:
        if batches and sum(len(g) for g in batches[-1]) + len(group) <= batch_size:
            batches[-1].append(group)
        else:
            batches.append([group])
    return batches


def completion_logprobs(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    pad_token_id: int,
    batch_size: int = 8,
    max_length: int = 1024,
    share_prefixes: bool = True,
) -> list[CompletionLogProb]:
    """One :class:`CompletionLogProb` per ``(prompt_ids, completion_ids)``, in input order.
    ``share_prefixes``: use the shared-prefix path when ``model`` takes it (patching it, see
    :func:`easyrlhf_core.kit.shared_prefix_forward.enable_shared_prefix`); False: padded rows."""
    import torch

    from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix
    from easyrlhf_core.kit.shared_prefix_packing import pack_groups

    device = next(model.parameters()).device
    sequences = truncated_sequences(examples, max_length)
    # The completion is the tail of each sequence; its first token is predicted from the token before it.
    completion_lengths = [len(c) for _p, c in examples]
    lengths = [len(s) for s in sequences]
    shared = share_prefixes and enable_shared_prefix(model, "causal_lm") is None
    if shared:
        batches = groups_by_prompt(examples, lengths, batch_size)
    else:
        batches = [[[i] for i in batch] for batch in batches_by_length(lengths, batch_size)]
    results: list[CompletionLogProb | None] = [None] * len(examples)
    with torch.inference_mode():
        for groups in batches:
            batch = [i for group in groups for i in group]
            input_ids, attention = right_pad([sequences[i] for i in batch], pad_token_id)
            counted = tail_mask(attention, [completion_lengths[i] for i in batch])
            if shared:
                rows = {i: row for row, i in enumerate(batch)}
                packed = pack_groups(input_ids, attention, [[rows[i] for i in g] for g in groups], pad_token_id)
                labels = input_ids.masked_fill(~counted, -100).to(device)
                out = model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    labels=labels,
                    shared_prefix={k: v.to(device) for k, v in packed.items()},
                )
                sums, counts = out.log_probs.sum(dim=-1), out.label_mask.sum(dim=-1)
            else:
                input_ids, attention, counted = input_ids.to(device), attention.to(device), counted.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits
                sums, counts = response_log_probs(logits, input_ids, counted)
            for row, i in enumerate(batch):
                results[i] = CompletionLogProb(total=float(sums[row]), tokens=int(counts[row]))
    return [r for r in results if r is not None]


def truncated_count(examples: list[tuple[list[int], list[int]]], max_length: int) -> int:
    """How many examples :func:`completion_logprobs` shortens."""
    kept = truncated_sequences(examples, max_length)
    return sum(1 for (p, c), sequence in zip(examples, kept) if len(sequence) < len(p) + len(c))


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
