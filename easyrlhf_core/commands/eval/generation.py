"""Batched answers to prompts: greedy, or sampled from the model's unmodified distribution (temperature 1,
no top-k / top-p), which is what the KL estimate needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easyrlhf_core.kit.causal_lm import decode_response, generate, generation_config, left_pad, stop_token_ids
from easyrlhf_core.kit.chat_template import keep_last
from easyrlhf_core.kit.completion_logprobs import batches_by_length


@dataclass
class Answer:
    """A generated answer: its token ids (through the first end-of-turn, if any) and its text (as a reward
    sees it: :func:`easyrlhf_core.kit.causal_lm.decode_response`)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool  # stopped at an end-of-turn token rather than at max_new_tokens


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 8,
    sample: bool = False,
    seed: int = 42,
    max_length: int = 1024,
) -> list[Answer]:
    """One :class:`Answer` per prompt (token ids from :func:`easyrlhf_core.kit.chat_template.prompt_ids`), in input
    order.

    Prompts keep their last ``max_length - max_new_tokens`` tokens. Sampling is seeded once with ``seed``.
    """
    import torch

    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = generation_config(max_new_tokens, stops, pad, {} if sample else None)  # {}: the model's own distribution
    room = max(1, max_length - max_new_tokens)
    trimmed = [keep_last(list(p), room) for p in prompts]
    answers: list[Answer | None] = [None] * len(prompts)
    if sample:
        torch.manual_seed(seed)
    with torch.inference_mode():
        for batch in batches_by_length([len(p) for p in trimmed], batch_size):
            input_ids, attention = left_pad([trimmed[i] for i in batch], pad)
            output = generate(model, input_ids.to(device), attention.to(device), config)
            for row, i in enumerate(batch):
                new = output[row].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), None)
                kept = new if end is None else new[: end + 1]
                text_ids = kept if end is None else kept[:-1]
                answers[i] = Answer(
                    prompt_ids=trimmed[i],
                    completion_ids=kept,
                    text=decode_response(tokenizer, text_ids),
                    finished=end is not None,
                )
    return [a for a in answers if a is not None]
