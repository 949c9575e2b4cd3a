"""RRHF loss math on flattened candidates (all candidates of all queries in a batch, one row each).

For a query with candidates y_1..y_k and rewards r_1..r_k:

    p_i    = sum_t log P(y_i,t | x, y_i,<t) / |y_i| ** length_penalty
    L_rank = sum over pairs with r_i < r_j of max(0, p_i - p_j)        (ties contribute nothing)
    L_ft   = -(1/|y_b|) sum_t log P(y_b,t | x, y_b,<t),  b = argmax_i r_i (first one on ties)
             (ft_normalization="mean"; "sum", the paper's: without the 1/|y_b|)
    L      = rank_weight * L_rank + L_ft,                              averaged over the batch's queries

The per-candidate log-prob sums come from :func:`easyrlhf_core.kit.causal_lm.response_log_probs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RRHFTerms:
    """The loss and the per-batch sums behind the logged metrics."""

    loss: torch.Tensor  # scalar to backpropagate
    p: torch.Tensor  # [N] length-normalised log-prob of each candidate
    rank_loss: torch.Tensor  # [Q] per query
    ft_loss: torch.Tensor  # [Q] per query
    correct_pairs: torch.Tensor  # scalar: ordered pairs (r_i < r_j) with p_i < p_j
    total_pairs: torch.Tensor  # scalar: ordered pairs (r_i < r_j)
    p_best: torch.Tensor  # [Q] p of the best-rewarded candidate
    p_worst: torch.Tensor  # [Q] p of the worst-rewarded candidate


def rrhf_terms(
    logp_sum: torch.Tensor,
    num_tokens: torch.Tensor,
    rewards: torch.Tensor,
    query_index: torch.Tensor,
    num_queries: int,
    rank_weight: float = 1.0,
    length_penalty: float = 1.0,
    ft_normalization: str = "mean",
) -> RRHFTerms:
    """The RRHF loss for ``N`` flattened candidates belonging to ``num_queries`` queries.

    ``query_index[n]`` is the query of candidate ``n`` (any k per query, candidates of a query in any
    order); ``rewards`` are the reward scores (higher is better). ``ft_normalization``: ``mean`` divides the
    best candidate's log-likelihood by its token count, ``sum`` (the paper's L_ft) does not.
    """
    if ft_normalization not in ("mean", "sum"):
        raise ValueError(f"ft_normalization must be 'mean' or 'sum', got {ft_normalization!r}")
    lengths = num_tokens.clamp(min=1).to(logp_sum.dtype)
    p = logp_sum / lengths.pow(length_penalty)
    rewards = rewards.to(p.dtype)

    same_query = query_index.unsqueeze(1) == query_index.unsqueeze(0)
    ordered = same_query & (rewards.unsqueeze(1) < rewards.unsqueeze(0))  # [i, j]: i ranked below j
    hinge = torch.relu(p.unsqueeze(1) - p.unsqueeze(0)) * ordered
    rank_loss = torch.zeros(num_queries, dtype=p.dtype, device=p.device).index_add(0, query_index, hinge.sum(1))

    best = _first_extreme(rewards, query_index, num_queries, largest=True)
    worst = _first_extreme(rewards, query_index, num_queries, largest=False)
    ft_loss = -logp_sum[best] / lengths[best] if ft_normalization == "mean" else -logp_sum[best]

    loss = (rank_weight * rank_loss + ft_loss).mean()
    with torch.no_grad():
        correct = (ordered & (p.unsqueeze(1) < p.unsqueeze(0))).sum()
    return RRHFTerms(
        loss=loss,
        p=p,
        rank_loss=rank_loss,
        ft_loss=ft_loss,
        correct_pairs=correct,
        total_pairs=ordered.sum(),
        p_best=p[best],
        p_worst=p[worst],
    )


def _first_extreme(values: torch.Tensor, group: torch.Tensor, num_groups: int, largest: bool) -> torch.Tensor:
    """Per group, the index of the first row holding the group's max (or min) value."""
    reduce = "amax" if largest else "amin"
    fill = float("-inf") if largest else float("inf")
    extreme = torch.full((num_groups,), fill, dtype=values.dtype, device=values.device)
    extreme = extreme.scatter_reduce(0, group, values, reduce=reduce, include_self=True)
    rows = torch.arange(values.shape[0], device=values.device)
    holders = torch.where(values == extreme[group], rows, values.shape[0])
    first = torch.full((num_groups,), values.shape[0], dtype=rows.dtype, device=values.device)
    return first.scatter_reduce(0, group, holders, reduce="amin", include_self=True)
