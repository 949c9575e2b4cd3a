"""Ranked records -> token ids (chat template), and the collator that flattens a batch of queries.

A response is tokenized as the assistant turn that follows the prompt rendered with
``add_generation_prompt``: for ChatML ``<|im_start|>assistant\\n`` belongs to the prompt and
``{content}<|im_end|>`` is the response, as the sft method formats an assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from easyrlhf_core.kit.causal_lm import right_pad, tail_mask
from easyrlhf_core.kit.chat_template import keep_last, prompt_ids, prompt_text
from easyrlhf_core.kit.shapes import Message, Record


@dataclass
class EncodedQuery:
    """One query's shared prompt tokens and its candidates' response tokens and rewards."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    scores: list[float]
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "response_ids": self.response_ids, "scores": self.scores}


def response_token_ids(tokenizer: Any, prompt: list[Message], rendered_prompt: str, response: str) -> list[int]:
    """The tokens of ``response`` as the assistant turn after ``prompt``, ending with EOS."""
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
    suffix = full[len(rendered_prompt) :] if full.startswith(rendered_prompt) else response
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        return ids[: ids.index(eos) + 1]  # drop what the template adds after the turn's end ("\n")
    return ids + [eos]


def encode_record(tokenizer: Any, record: Record, max_length: int) -> EncodedQuery:
    """Tokenize a ranked record; truncate the prompt from the left, then responses from the right."""
    rendered = prompt_text(tokenizer, record["prompt"])
    prompt = prompt_ids(tokenizer, record["prompt"])
    responses = [response_token_ids(tokenizer, record["prompt"], rendered, r) for r in record["responses"]]
    response_budget = max(max_length - len(prompt), max_length // 2)
    cut = [r[:response_budget] for r in responses]
    kept_prompt = keep_last(prompt, max_length - max(len(r) for r in cut))
    truncated = len(kept_prompt) < len(prompt) or any(len(c) < len(r) for c, r in zip(cut, responses))
    return EncodedQuery(kept_prompt, cut, [float(s) for s in record["scores"]], truncated)


class RankedDataset(torch.utils.data.Dataset):
    """Pre-tokenized queries, one item per query (with all its candidates)."""

    def __init__(self, queries: list[EncodedQuery]) -> None:
        self.queries = queries

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.queries[index].as_dict()


def encode_dataset(tokenizer: Any, records: list[Record], max_length: int) -> tuple[RankedDataset, int]:
    """The dataset and how many records were truncated to ``max_length``."""
    queries = [encode_record(tokenizer, record, max_length) for record in records]
    return RankedDataset(queries), sum(q.truncated for q in queries)


@dataclass
class RankedCollator:
    """Flattens a batch of queries into one row per candidate, right-padded, with each row's query index.

    Output: ``input_ids``, ``attention_mask``, ``response_mask`` (1 on response tokens only) of shape
    [N, L]; ``rewards`` and ``query_index`` of shape [N], where N is the total number of candidates.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows, response_lengths, query_index, rewards = [], [], [], []
        for q, feature in enumerate(features):
            for response, score in zip(feature["response_ids"], feature["scores"]):
                rows.append(feature["prompt_ids"] + response)
                response_lengths.append(len(response))
                query_index.append(q)
                rewards.append(score)
        input_ids, attention_mask = right_pad(rows, self.pad_token_id)
        response_mask = tail_mask(attention_mask, response_lengths).long()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "rewards": torch.tensor(rewards, dtype=torch.float32),
            "query_index": torch.tensor(query_index, dtype=torch.long),
        }
