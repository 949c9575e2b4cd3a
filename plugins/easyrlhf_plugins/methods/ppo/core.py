"""PPO's own tensor steps around the shared RL maths: entropy, response masks, score post-processing, the
per-token rewards, PPO's choice of KL estimator and controller, reward normalisation (token log-probs:
:func:`easyrlhf_core.kit.causal_lm.logprobs_from_logits`; GAE, whitening, KL estimators, controllers and the clipped
losses: :mod:`easyrlhf_core.kit.rl_math`).

Conventions: response tensors are ``(batch, response_len)``; ``mask`` is 1 on the real response tokens
(up to and including the first stop token) and 0 on padding, which never enters a mean.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from easyrlhf_core.kit import rl_math

#: PPO's ``kl_estimator`` choices
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": rl_math.kl_k1,
    "k3": rl_math.kl_k3,
}

# --------------------------------------------------------------------------------------------------
# Entropy and masks


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of ``softmax(logits / temperature)``."""
    logits = logits.float() / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return log_z - (probs * logits).sum(-1)


def response_mask(responses: torch.Tensor, stop_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, has_stop)``: 1 up to and including the first stop token (everything when there is none).

    Built from positions, never from ``token == pad``: pad may equal the stop token (SmolLM2).
    """
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for token_id in stop_token_ids:
        is_stop |= responses == token_id
    has_stop = is_stop.any(dim=1)
    length = responses.shape[1]
    positions = torch.arange(length, device=responses.device).expand_as(responses)
    first = torch.where(
        has_stop, is_stop.float().argmax(dim=1), torch.full_like(has_stop, length - 1, dtype=torch.long)
    )
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, has_stop


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (0 for a row without one): a prefix mask's last real token, an
    episode's last model token."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return ((mask.long() * positions).max(dim=1).values - 1).clamp(min=0)


# --------------------------------------------------------------------------------------------------
# Scores, KL and rewards


def postprocess_scores(
    scores: torch.Tensor, has_stop: torch.Tensor, missing_eos_penalty: float | None, clip: float | None
) -> torch.Tensor:
    """Subtract the missing-EOS penalty from responses without a stop token, then clip."""
    scores = scores.float()
    if missing_eos_penalty:
        scores = scores - missing_eos_penalty * (~has_stop).float()
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """KL(policy || reference) per sampled token by PPO's ``kl_estimator`` (k1 or k3, from ``rl_math``)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards, non_score_rewards)``: ``-beta * kl`` on every real token, plus the score on the last one."""
    non_score = -beta * kl * mask.to(kl.dtype)
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


# --------------------------------------------------------------------------------------------------
# KL coefficient and reward normalisation (both checkpointed)


def kl_controller(
    beta: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000
) -> rl_math.FixedKLController | rl_math.AdaptiveKLController:
    """PPO's ``adaptive_kl`` option: beta adapted towards ``target_kl`` over ``kl_horizon`` samples, or fixed."""
    if adaptive:
        return rl_math.AdaptiveKLController(beta, target, horizon)
    return rl_math.FixedKLController(beta)


class RunningMoments:
    """Running mean and standard deviation of scores (parallel-variance update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor) -> None:
        values = values.double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_var = values.var(unbiased=False).item() if n > 1 else 0.0
        total = self.count + n
        delta = batch_mean - self.mean
        old_m2 = self.var * self.count
        new_m2 = old_m2 + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = new_m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 1.0

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / (self.std + 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
