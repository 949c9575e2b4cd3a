"""Pairwise outcomes, accuracy with ties counted as half, Wilson score intervals for shares, seeded bootstrap
intervals for means, the length baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

__all__ = [
    "TIE_TOLERANCE",
    "BOOTSTRAP_SAMPLES",
    "PairwiseResult",
    "outcomes",
    "bootstrap_interval",
    "wilson_interval",
    "pairwise",
    "length_baseline",
    "mean",
]

#: Two scores closer than this are a tie (absorbs float noise between batches of different shapes).
TIE_TOLERANCE = 1e-6
#: Resamples of a seeded bootstrap interval.
BOOTSTRAP_SAMPLES = 1000


@dataclass
class PairwiseResult:
    """How often the first of each pair wins: a point estimate, its 95% interval and the tie count."""

    accuracy: float
    ci95: tuple[float, float]
    ties: int
    count: int


def outcomes(first: Sequence[float], second: Sequence[float], tolerance: float = TIE_TOLERANCE) -> list[float]:
    """1.0 where ``first`` wins, 0.0 where it loses, 0.5 for a tie (``|difference| <= tolerance``)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} scores against {len(second)}")
    result = []
    for a, b in zip(first, second):
        diff = a - b
        result.append(0.5 if abs(diff) <= tolerance else (1.0 if diff > 0 else 0.0))
    return result


def bootstrap_interval(
    values: Sequence[float], seed: int, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded)."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=np.float64)
    chunk = max(1, 2_000_000 // data.size)  # bound memory: resample a few hundred means at a time
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def wilson_interval(successes: float, count: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share: ``successes`` of ``count`` (a tie may count half a success).

    Unlike a bootstrap of 0/1 outcomes it stays honest at the edges: 8 of 8 gives [0.68, 1.00], not [1, 1].
    No trials: ``(nan, nan)``.
    """
    if count <= 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    share = successes / count
    denominator = 1 + z * z / count
    centre = (share + z * z / (2 * count)) / denominator
    half = z / denominator * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    return (max(0.0, centre - half), min(1.0, centre + half))


def pairwise(first: Sequence[float], second: Sequence[float]) -> PairwiseResult:
    """Win rate of ``first`` over ``second`` (ties half) with its Wilson 95% interval."""
    values = outcomes(first, second)
    count = len(values)
    accuracy = sum(values) / count if count else float("nan")
    return PairwiseResult(
        accuracy=accuracy,
        ci95=wilson_interval(sum(values), count),
        ties=sum(1 for v in values if v == 0.5),
        count=count,
    )


def length_baseline(chosen: Sequence[str], rejected: Sequence[str]) -> PairwiseResult:
    """The "longer response wins" predictor: accuracy of picking the answer with more characters.

    Equal lengths are ties (half a point). Characters, not tokens, so the figure does not depend on a
    tokenizer (on hh-rlhf helpful-base test it is 0.599).
    """
    return pairwise([float(len(c)) for c in chosen], [float(len(r)) for r in rejected])


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return sum(values) / len(values) if values else float("nan")
