"""PPO's tensor math, free of models and I/O: entropy, masks, KL estimators, per-token rewards, GAE,
masked statistics, the clipped losses and the KL controllers (token log-probs:
:func:`easyrlhf_core.lm.logprobs_from_logits`).

Conventions: response tensors are ``(batch, response_len)``; ``mask`` is 1 on the real response tokens
(up to and including the first stop token) and 0 on padding, which never enters a mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

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
    first = torch.where(has_stop, is_stop.float().argmax(dim=1), torch.full_like(has_stop, length - 1, dtype=torch.long))
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, has_stop


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row of a prefix ``mask``."""
    return mask.long().sum(dim=1).clamp(min=1) - 1


# --------------------------------------------------------------------------------------------------
# Masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the positions where ``mask`` is 1 (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless not ``shift_mean``), unit variance over the valid positions; padding stays 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# --------------------------------------------------------------------------------------------------
# Scores, KL and rewards


def postprocess_scores(scores: torch.Tensor, has_stop: torch.Tensor, missing_eos_penalty: float | None,
                       clip: float | None) -> torch.Tensor:
    """Subtract the missing-EOS penalty from responses without a stop token, then clip."""
    scores = scores.float()
    if missing_eos_penalty:
        scores = scores - missing_eos_penalty * (~has_stop).float()
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """KL(policy || reference) estimated per sampled token.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, >= 0, lower variance).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards, non_score_rewards)``: ``-beta * kl`` on every real token, plus the score on the last one."""
    non_score = -beta * kl * mask.to(kl.dtype)
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


# --------------------------------------------------------------------------------------------------
# Advantages


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; ``(advantages, returns = advantages + values)``.

    The value after the last real token is 0 (the episode ends there); padding gets 0 advantage.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    rewards = rewards * mask_f
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask_f[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask_f


# --------------------------------------------------------------------------------------------------
# Losses


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float) -> PolicyLoss:
    """PPO's clipped surrogate: mean over tokens of ``max(-A r, -A clip(r, 1-e, 1+e))``."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approx_kl, ratio_mean)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, clipfrac)``: ``0.5 * max((v - R)^2, (v_clipped - R)^2)`` with ``v`` kept near the rollout's."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac


# --------------------------------------------------------------------------------------------------
# KL coefficient and reward normalisation (both checkpointed)


class KLController:
    """The KL coefficient beta: fixed, or adapted towards ``target`` (Ziegler et al. 2019)."""

    def __init__(self, beta: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000) -> None:
        self.value = beta
        self.adaptive, self.target, self.horizon = adaptive, target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        """After an iteration with mean per-response KL ``current_kl`` over ``n_samples`` samples."""
        if not self.adaptive:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


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
        new_m2 = old_m2 + batch_var * n + delta ** 2 * self.count * n / total
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
