"""Train/eval splitting and sample limits: deterministic for a given seed, stable across runs."""

from __future__ import annotations

import random
from typing import TypeVar

from easyrlhf_core.shapes import DataOptions, DataSplits, Record

T = TypeVar("T")


def shuffled(items: list[T], seed: int) -> list[T]:
    """A copy of ``items`` in a seeded random order (the same on every run)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def carve_eval(records: list[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``seed`` and hold out ``round(len * eval_fraction)`` records (at least one when the
    fraction is positive and two or more records exist) for evaluation."""
    order = shuffled(records, seed)
    if eval_fraction <= 0 or len(order) < 2:
        return order, []
    n_eval = min(max(1, round(len(order) * eval_fraction)), len(order) - 1)
    return order[n_eval:], order[:n_eval]


def limit(records: list[T], maximum: int | None) -> list[T]:
    return records if maximum is None else records[:max(0, maximum)]


def make_splits(options: DataOptions, train: list[Record], eval_: list[Record] | None,
                notes: list[str]) -> DataSplits:
    """``DataSplits`` from the training records and, when the source has one, its own eval split; without
    one, eval is carved out of ``train`` by ``options.eval_fraction``. Limits apply last."""
    if eval_ is None:
        train, eval_ = carve_eval(train, options.eval_fraction, options.seed)
    else:
        train, eval_ = shuffled(train, options.seed), shuffled(eval_, options.seed)
    return DataSplits(options.shape, limit(train, options.max_train_samples),
                      limit(eval_, options.max_eval_samples), notes)
