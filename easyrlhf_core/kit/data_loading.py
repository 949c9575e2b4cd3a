"""Loading a dataset plugin's records for a run: the framework applies the shared data options itself.

A dataset plugin only parses: its ``load(options)`` returns every record it read (and its own eval split,
when the source has one), reporting bad rows through ``options.bad_rows``. Then :func:`load_dataset` applies
what ``DataOptions`` asks for, the same way for every dataset, built-in or not:

- ``columns``: each mapped field must be one the dataset reads (its ``fields``), checked before it loads;
- eval split: without one from the source, ``eval_fraction`` of the records is held out (seeded);
- ``max_train_samples`` / ``max_eval_samples``: applied last, after a seeded shuffle;
- ``skip_bad_rows``: the skipped rows are counted in the run's data notes.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, TypeVar

from easyrlhf_core.kit.errors import ConfigError, DataError
from easyrlhf_core.kit.rows import check_columns
from easyrlhf_core.kit.shapes import SHAPE_DESCRIPTIONS, DataOptions, DataSplits, Shape

__all__ = ["shuffled", "carve_eval", "limit", "apply_options", "load_dataset", "data_options", "load_shape_data"]

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import PluginLookup

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
    """The first ``maximum`` records (all of them for None)."""
    return records if maximum is None else records[: max(0, maximum)]


def apply_options(options: DataOptions, loaded: DataSplits) -> DataSplits:
    """What every run does to a dataset's records: its own eval split shuffled with the train records, or
    ``eval_fraction`` carved out of them; then the sample limits; skipped bad rows added to the notes."""
    if loaded.eval:
        train, evaluation = shuffled(loaded.train, options.seed), shuffled(loaded.eval, options.seed)
    else:
        train, evaluation = carve_eval(loaded.train, options.eval_fraction, options.seed)
    return DataSplits(
        loaded.shape,
        limit(train, options.max_train_samples),
        limit(evaluation, options.max_eval_samples),
        list(loaded.notes) + options.bad_rows.notes(),
    )


def load_dataset(dataset_cls: Any, options: DataOptions) -> DataSplits:
    """Records of ``options.shape`` from the dataset plugin class ``dataset_cls``, with the shared data
    options applied (:func:`apply_options`); the ``columns`` mapping is checked against the dataset's
    ``fields`` before it loads."""
    fields = getattr(dataset_cls, "fields", None)
    if fields is not None:
        check_columns(options.columns, fields, dataset_cls.name)
    return apply_options(options, dataset_cls().load(options))


def data_options(config: Any, shape: Shape) -> DataOptions:
    """The ``DataOptions`` a run config asks for (its shared data options)."""
    return DataOptions(
        shape=shape,
        data_files=list(config.data_files),
        eval_fraction=config.eval_fraction,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        skip_bad_rows=config.skip_bad_rows,
        columns=dict(config.columns),
        seed=config.seed,
    )


def load_shape_data(method_name: str, shape: Shape, config: Any, registry: PluginLookup) -> DataSplits:
    """A method's data: the configured dataset plugin's records of ``shape`` (before any model loads), or a
    one-line error when the dataset does not yield that shape or gives no training records."""
    dataset_cls = registry.get("datasets", config.dataset)
    if shape not in dataset_cls.shapes:
        offers = ", ".join(SHAPE_DESCRIPTIONS[s] for s in sorted(dataset_cls.shapes, key=str)) or "nothing"
        needs = [name for name, e in registry.datasets.items() if shape in e.obj.shapes]
        raise ConfigError(
            f"method '{method_name}' needs {SHAPE_DESCRIPTIONS[shape]}, but dataset "
            f"'{config.dataset}' yields {offers}; use one of: {', '.join(sorted(needs))}",
            where="--dataset",
        )
    splits = load_dataset(dataset_cls, data_options(config, shape))
    if not splits.train:
        raise DataError(f"dataset '{config.dataset}' gave no training examples of shape '{shape}'", where="--dataset")
    return splits
