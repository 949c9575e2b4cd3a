"""Chat formatting into token ids, the way the sft/dpo/rm trainers (TRL, conversational format) do it;
shared by evaluation, rrhf and ppo. Needs only a tokenizer (no torch).

A prompt is rendered with the tokenizer's chat template and ``add_generation_prompt``; a completion is the
tail of the rendered ``prompt + [assistant message]`` after the prompt, so it ends with the template's
end-of-turn (``<|im_end|>`` for ChatML) exactly as in training. Where the two renderings diverge before the
prompt's end (tokens merging across the boundary), the completion starts at the divergence, as in TRL.
"""

from __future__ import annotations

from typing import Any

from easyrlhf_core.kit.shapes import Message

__all__ = ["encode", "prompt_ids", "prompt_text", "split_completion", "keep_last"]


def encode(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    ids = encoded["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def prompt_text(tokenizer: Any, prompt: list[Message]) -> str:
    """The prompt as the model sees it before answering, as text (generation prompt included)."""
    return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))


def prompt_ids(tokenizer: Any, prompt: list[Message]) -> list[int]:
    """The prompt as the model sees it before answering (generation prompt included)."""
    return encode(tokenizer, prompt, add_generation_prompt=True)


def common_prefix_ids(a: list[int], b: list[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_completion(tokenizer: Any, prompt: list[Message], completion: list[Message]) -> tuple[list[int], list[int]]:
    """``(prompt ids, completion ids)`` of a prompt and its assistant answer (end-of-turn included)."""
    prompt_only = prompt_ids(tokenizer, prompt)
    full = encode(tokenizer, prompt + completion)
    cut = common_prefix_ids(prompt_only, full)
    return full[:cut], full[cut:]


def as_completion(text: str) -> list[Message]:
    """``text`` as a completion: one assistant message."""
    return [{"role": "assistant", "content": text}]


def keep_last(ids: list[int], max_length: int) -> list[int]:
    """The last ``max_length`` tokens: drop the oldest prompt tokens, keep the answer (and its end-of-turn)."""
    return ids[-max_length:] if len(ids) > max_length else ids
