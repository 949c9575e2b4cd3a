"""Batched answers to prompts: greedy, or sampled from the model's unmodified distribution (temperature 1,
no top-k / top-p), which is what the KL estimate needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..chat import keep_last
from .logprobs import batches_by_length


@dataclass
class Answer:
    """A generated answer: its token ids (through the first end-of-turn, if any) and its text."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool  # stopped at an end-of-turn token rather than at max_new_tokens


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the model's generation config's eos ids plus the tokenizer's eos."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int = 8, sample: bool = False, seed: int = 42,
                     max_length: int = 1024) -> list[Answer]:
    """One :class:`Answer` per prompt (token ids from :func:`easyrlhf_core.chat.prompt_ids`), in input order.

    Prompts keep their last ``max_length - max_new_tokens`` tokens. Sampling is seeded once with ``seed``.
    """
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    settings: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=stops,
                                    pad_token_id=pad)
    if sample:
        settings.update(temperature=1.0, top_k=0, top_p=1.0)
    config = GenerationConfig(**settings)
    room = max(1, max_length - max_new_tokens)
    trimmed = [keep_last(list(p), room) for p in prompts]
    answers: list[Answer | None] = [None] * len(prompts)
    if sample:
        torch.manual_seed(seed)
    with torch.inference_mode():
        for batch in batches_by_length([len(p) for p in trimmed], batch_size):
            width = max(len(trimmed[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                ids = trimmed[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    generation_config=config)
            for row, i in enumerate(batch):
                new = output[row, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), None)
                kept = new if end is None else new[:end + 1]
                text_ids = kept if end is None else kept[:-1]
                answers[i] = Answer(prompt_ids=trimmed[i], completion_ids=kept,
                                    text=tokenizer.decode(text_ids, skip_special_tokens=True),
                                    finished=end is not None)
    return [a for a in answers if a is not None]
