"""Rollouts: the sampling settings of the batched ``generate`` call (:func:`easyrlhf_core.kit.causal_lm.generate`:
left padding, KV cache), and record what the update needs (log-probs, reference log-probs, values, scores)
without gradients, once per rollout, through the lean forwards of :mod:`.forward`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from easyrlhf_core.kit import causal_lm as lm

from . import core
from .forward import Layout, layout, policy_log_probs, policy_response_logits, position_ids, response_values

__all__ = ["Rollout", "chunks", "generation_config", "policy_response_logits", "position_ids", "record_rollout"]

if TYPE_CHECKING:
    from .config import PPOConfig


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
    reference: Callable[[Layout, float], torch.Tensor],
    value_model: Any,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    responses: torch.Tensor,
    stop_ids: list[int],
    temperature: float,
    forward_batch_size: int | None,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    episode_masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    pack: bool = False,
    pad_token_id: int = 0,
) -> Rollout:
    """Everything the update needs about sampled ``responses``: masks, log-probs (policy and reference,
    both with ``logits / temperature``), entropy, values and scores. Rows are packed without padding when
    ``pack`` (``forward_batch_size`` rows at a time), and the three models read the same packed batch.
    ``episode_masks``: an environment episode's ``(trained mask, attention, finished)``: the environment's
    tokens are attended to, never trained on."""
    if episode_masks is None:
        mask, has_stop = core.response_mask(responses, stop_ids)
        attention = mask
    else:
        mask, attention, has_stop = episode_masks
    n_query = queries.shape[1]
    rows = layout(
        torch.cat([queries, responses], dim=1), torch.cat([query_mask, attention], dim=1), n_query, pad_token_id, False
    )
    logprobs, ref_logprobs, values, entropy = [], [], [], []
    for part in chunks(len(queries), forward_batch_size):
        batch = rows.select(part, pack, pad_token_id)
        own, spread = policy_log_probs(policy, batch, temperature, entropy=True)
        assert spread is not None
        logprobs.append(own)
        entropy.append(spread)
        ref_logprobs.append(reference(batch, temperature))
        values.append(response_values(value_model, batch))
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
