"""Batched answers to prompts through the rollout layer (:mod:`easyrlhf_core.kit.rollout`): greedy, or sampled
from the model's unmodified distribution (temperature 1, no top-k / top-p), which is what the KL estimate needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easyrlhf_core.kit.chat_template import keep_last
from easyrlhf_core.kit.completion_logprobs import batches_by_length
from easyrlhf_core.kit.rollout import RolloutEngine, Sampling


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
    engine: RolloutEngine | None = None,
) -> list[Answer]:
    """One :class:`Answer` per prompt (token ids from :func:`easyrlhf_core.kit.chat_template.prompt_ids`), in
    input order, from ``engine`` (default: the transformers engine on ``model``).

    Prompts keep their last ``max_length - max_new_tokens`` tokens. Sampling is seeded once with ``seed`` (the
    transformers engine: torch's generator before the first batch; vllm: each batch's rows from it)."""
    import torch

    from easyrlhf_core.kit.causal_lm import stop_token_ids
    from easyrlhf_core.kit.rollout import TransformersEngine

    engine = engine or TransformersEngine(model, tokenizer)
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    room = max(1, max_length - max_new_tokens)
    trimmed = [keep_last(list(p), room) for p in prompts]
    answers: list[Answer | None] = [None] * len(prompts)
    if sample and engine.name == "transformers":
        torch.manual_seed(seed)
    for number, batch in enumerate(batches_by_length([len(p) for p in trimmed], batch_size)):
        per_call_seed = seed + number if sample and engine.name != "transformers" else None
        sampling = Sampling(max_new_tokens, stops, pad, greedy=not sample, seed=per_call_seed)
        out = engine.generate([trimmed[i] for i in batch], sampling)
        lengths = out.response_mask.sum(dim=1).tolist()
        for row, i in enumerate(batch):
            kept = out.response_ids[row, : lengths[row]].tolist()
            finished = bool(kept) and kept[-1] in stops
            answers[i] = Answer(prompt_ids=trimmed[i], completion_ids=kept, text=out.texts[row], finished=finished)
    return [a for a in answers if a is not None]


def answer_engine(model: Any, tokenizer: Any, model_dir: str, rollout_engine: str, seed: int, max_length: int) -> Any:
    """The rollout engine eval samples ``model`` with (``model_dir``: where vllm loads it from)."""
    from easyrlhf_core.kit.rollout import RolloutOptions, build_engine

    options = RolloutOptions(rollout_engine=rollout_engine)  # type: ignore[arg-type]
    return build_engine(options, model, tokenizer, model_dir=model_dir, seed=seed, max_model_len=max_length)
