"""RL maths for online methods, as small named functions (verl ``core_algos`` style), free of models and I/O.

Conventions: token tensors are ``(batch, response_len)``; ``mask`` is 1 on the real response tokens and 0 on
padding, which never enters a mean; a 0 in ``mask`` ends the episode (the value after it is 0). Group
tensors are 1-D scores with each prompt's ``group_size`` samples next to each other. torch is imported inside
the functions, so importing this module stays instant.

- masked statistics: :func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten`
- advantages and returns: :func:`gae_advantages`, :func:`discounted_returns`
- per-token KL estimators (Schulman's k1, k2, k3): :func:`kl_k1`, :func:`kl_k2`, :func:`kl_k3`
- the KL coefficient (Ziegler et al. 2019): :class:`FixedKLController`, :class:`AdaptiveKLController`
- PPO's clipped losses: :func:`clipped_policy_loss`, :func:`clipped_value_loss`
- baselines without a value model: :func:`grpo_group_advantages`, :func:`rloo_advantages`,
  :func:`reinforce_pp_advantages`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PolicyLoss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "discounted_returns",
    "gae_advantages",
    "grpo_group_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "reinforce_pp_advantages",
    "rloo_advantages",
]

# --------------------------------------------------------------------------------------------------
# Masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(values * mask) / max(sum(mask), 1)``, over everything or along ``dim``."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """``masked_mean((values - masked_mean(values))^2)``, times ``n / (n - 1)`` when ``unbiased`` and n > 1."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(values - mean) / sqrt(var + 1e-8)`` over the valid positions (mean added back unless
    ``shift_mean``); padding is 0."""
    import torch

    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# --------------------------------------------------------------------------------------------------
# Advantages and returns


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE: ``A_t = delta_t + gamma * lam * A_{t+1}``, ``delta_t = r_t + gamma * V_{t+1} - V_t``; returns
    ``(advantages, returns = advantages + values)``, 0 where ``mask`` is 0. Positions where ``mask`` is 0 are
    skipped, not ends: ``t + 1`` is the next position with mask 1 (padding after a response changes nothing; in a
    multi-turn episode the environment's tokens sit between two of the model's, and neither their values nor
    their rewards are read)."""
    import torch

    mask_b = mask.bool()
    mask_f = mask.to(values.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(mask_b[:, t], delta + gamma * lam * running, running)
        next_value = torch.where(mask_b[:, t], values[:, t], next_value)
        advantages[:, t] = running * mask_f[:, t]
    return advantages, (advantages + values) * mask_f


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``G_t = r_t + gamma * G_{t+1}`` within each episode; 0 on padding."""
    import torch

    mask_f = mask.to(rewards.dtype)
    rewards = rewards * mask_f
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask_f[:, t]
        returns[:, t] = running
    return returns


# --------------------------------------------------------------------------------------------------
# KL estimators: KL(policy || reference) per sampled token, from log p (policy) and log q (reference)


def kl_k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """k1 = ``log p - log q`` (unbiased, can be negative)."""
    return logprob - ref_logprob


def kl_k2(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """k2 = ``0.5 * (log p - log q)^2`` (biased, >= 0, low variance)."""
    return 0.5 * (logprob - ref_logprob) ** 2


def kl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """k3 = ``(q/p - 1) - log(q/p)`` (unbiased, >= 0, lower variance than k1)."""
    import torch

    log_ratio = logprob - ref_logprob
    return torch.expm1(-log_ratio) + log_ratio


# --------------------------------------------------------------------------------------------------
# The KL coefficient (checkpointable: ``state_dict`` / ``load_state_dict``)


class FixedKLController:
    """A constant KL coefficient: ``value = beta`` forever."""

    def __init__(self, beta: float) -> None:
        self.value = beta

    def update(self, current_kl: float, n_samples: int) -> None:
        """Nothing to do: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        """``{"value": beta}``."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``value`` from :meth:`state_dict`."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """KL coefficient adapted towards ``target`` (Ziegler et al. 2019):
    ``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_samples / horizon``."""

    def __init__(self, beta: float, target: float = 6.0, horizon: int = 10000) -> None:
        self.value = beta
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        """After an iteration with mean per-response KL ``current_kl`` over ``n_samples`` samples."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """``{"value": beta}`` (target and horizon come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``value`` from :meth:`state_dict`."""
        self.value = float(state["value"])


# --------------------------------------------------------------------------------------------------
# PPO's clipped losses


@dataclass
class PolicyLoss:
    """:func:`clipped_policy_loss`'s result: the loss and, without gradient, its diagnostics."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def _token_mean(values: torch.Tensor, mask: torch.Tensor, total: float | torch.Tensor | None) -> torch.Tensor:
    """:func:`masked_mean`, or with ``total``: the masked sum over ``total`` tokens."""
    if total is None:
        return masked_mean(values, mask)
    summed: torch.Tensor = (values * mask.to(values.dtype)).sum()
    return summed / total


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    total: float | torch.Tensor | None = None,
) -> PolicyLoss:
    """PPO clip: masked mean of ``max(-A r, -A clip(r, 1-e, 1+e))``, ``r = exp(logp - logp_old)``; plus the
    clip fraction, ``approx_kl = 0.5 * mean(log r ^ 2)`` and ``mean(r)``. ``total``: the token sums are divided
    by it instead of the mask's count, so the losses and diagnostics of a batch's micro-batches, each given the
    whole batch's token count, add up to the batch's own (gradient accumulation equal to one big batch)."""
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = _token_mean(torch.maximum(unclipped, clipped), mask, total)
    with torch.no_grad():
        clipfrac = _token_mean((clipped > unclipped).float(), mask, total)
        approx_kl = 0.5 * _token_mean(log_ratio**2, mask, total)
        ratio_mean = _token_mean(ratio, mask, total)
    return PolicyLoss(loss, clipfrac, approx_kl, ratio_mean)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    total: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, clipfrac)``: ``0.5 * max((v - R)^2, (v_old + clip(v - v_old, -e, e) - R)^2)``, masked mean;
    ``total`` as in :func:`clipped_policy_loss`."""
    import torch

    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(unclipped_loss, clipped_loss), mask, total)
    with torch.no_grad():
        clipfrac = _token_mean((clipped_loss > unclipped_loss).float(), mask, total)
    return loss, clipfrac


# --------------------------------------------------------------------------------------------------
# Baselines without a value model


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """1-D ``scores`` as ``(n_groups, group_size)``; a ``ValueError`` unless they split into groups of >= 2."""
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (got {group_size}): a baseline needs the others")
    if scores.dim() != 1 or scores.numel() % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    return scores.reshape(-1, group_size)


def grpo_group_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: ``A_i = (r_i - mean(group)) / (std(group) + eps)`` (unbiased std); ``r_i - mean(group)`` when
    not ``scale_by_std`` (Dr. GRPO)."""
    groups = _groups(scores, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(scores.shape)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: ``A_i = r_i - mean_{j != i}(r_j)``, the leave-one-out mean of the group as the baseline."""
    groups = _groups(scores, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(scores.shape)


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: ``(masked_whiten(G), G)`` with ``G = discounted_returns(rewards, mask, gamma)``,
    normalised over the whole batch."""
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask), returns
