"""Rollouts: prompt positions, the sampling settings of the batched ``generate`` call
(:func:`easyrlhf_core.kit.causal_lm.generate`: left padding, KV cache), and record what the update needs (log-probs,
reference log-probs, values, scores) without gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from easyrlhf_core.kit import causal_lm as lm

from . import core

if TYPE_CHECKING:
    from .config import PPOConfig


# --------------------------------------------------------------------------------------------------
# Positions


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (what ``generate`` uses with left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# --------------------------------------------------------------------------------------------------
# Generation


def generation_config(config: PPOConfig, tokenizer: Any, stop_ids: list[int]) -> Any:
    """Sampling settings, complete, so the model's own ``generation_config`` defaults never leak in."""
    return lm.generation_config(
        config.max_new_tokens,
        stop_ids,
        tokenizer.pad_token_id,
        config.sampling_settings(),
        bos_token_id=tokenizer.bos_token_id,
    )


# --------------------------------------------------------------------------------------------------
# Forward passes over prompt + response


def policy_response_logits(
    policy: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Logits that predicted each response token (positions ``n_query - 1 .. end - 1``), with positions
    counted as ``generate`` counts them; the LM head runs on those positions only."""
    keep = input_ids.shape[1] - n_query + 1
    out = policy(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        logits_to_keep=keep,
    )
    return out.logits[:, :-1]


def value_response_outputs(
    value_model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Value estimates for the states before each response token (same positions as the logits)."""
    from easyrlhf_core.kit.model_loading import scalar_head_outputs

    values = scalar_head_outputs(value_model, input_ids, attention_mask, position_ids(attention_mask))
    return values[:, n_query - 1 : -1].float()


@dataclass
class Rollout:
    """One rollout batch on this process; every ``(batch, response_len)`` tensor aligns with ``responses``."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    has_stop: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor  # raw scores from the reward function, one per sample
    #: Every real response token, the environment's too (an episode); None: the same as ``mask``. ``mask`` is what
    #: trains: the model's own tokens.
    attention: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.queries, self.responses], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.mask if self.attention is None else self.attention], dim=1)


def chunks(n: int, size: int | None) -> list[slice]:
    size = size or n
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


@torch.no_grad()
def record_rollout(
    policy: Any,
    reference: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    value_model: Any,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    responses: torch.Tensor,
    stop_ids: list[int],
    temperature: float,
    forward_batch_size: int | None,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    episode_masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Rollout:
    """Everything the update needs about sampled ``responses``: masks, log-probs (policy and reference,
    both with ``logits / temperature``), entropy, values and scores. ``episode_masks``: an environment episode's
    ``(trained mask, attention, finished)``: the environment's tokens are attended to, never trained on."""
    if episode_masks is None:
        mask, has_stop = core.response_mask(responses, stop_ids)
        attention = mask
    else:
        mask, attention, has_stop = episode_masks
    n_query = queries.shape[1]
    input_ids = torch.cat([queries, responses], dim=1)
    attention_mask = torch.cat([query_mask, attention], dim=1)
    logprobs, ref_logprobs, values, entropy = [], [], [], []
    for part in chunks(len(queries), forward_batch_size):
        ids, att, resp = input_ids[part], attention_mask[part], responses[part]
        logits = policy_response_logits(policy, ids, att, n_query)
        logprobs.append(lm.logprobs_from_logits(logits, resp, temperature))
        entropy.append(core.entropy_from_logits(logits, temperature))
        del logits
        ref_logprobs.append(lm.logprobs_from_logits(reference(ids, att, n_query), resp, temperature))
        values.append(value_response_outputs(value_model, ids, att, n_query))
    scores = score_fn(responses, mask)
    return Rollout(
        queries=queries,
        query_mask=query_mask,
        responses=responses,
        mask=mask,
        has_stop=has_stop,
        logprobs=torch.cat(logprobs),
        ref_logprobs=torch.cat(ref_logprobs),
        values=torch.cat(values),
        entropy=torch.cat(entropy),
        scores=scores.float(),
        attention=None if episode_masks is None else attention,
    )
