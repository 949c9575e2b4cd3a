"""Evaluation records from a dataset plugin: which shape, which split, how many."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from easyrlhf_core.kit.data_loading import load_dataset
from easyrlhf_core.kit.errors import ConfigError, DataError
from easyrlhf_core.kit.shapes import SHAPE_DESCRIPTIONS, DataOptions, Record, Shape
from easyrlhf_core.runtime.registry import Registry

Split = Literal["eval", "all"]

#: Held-out fraction asked of plugins that split one source themselves; the training default, so that with
#: the same --seed the eval split is the one a training run held out.
EVAL_FRACTION = 0.05


@dataclass
class EvalData:
    """Records of one shape, and notes for the report (split used, rows dropped by the plugin)."""

    shape: Shape
    records: list[Record]
    notes: list[str] = field(default_factory=list)

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        """The prompt of each record (preference and prompt records both have one)."""
        return [record["prompt"] for record in self.records]


def pick_shape(registry: Registry, dataset: str, wanted: list[Shape]) -> Shape:
    """The first of ``wanted`` that ``dataset`` yields, or a ConfigError naming the datasets that would do."""
    dataset_cls = registry.get("datasets", dataset)
    for shape in wanted:
        if shape in dataset_cls.shapes:
            return shape
    offers = ", ".join(SHAPE_DESCRIPTIONS[s] for s in sorted(dataset_cls.shapes, key=str)) or "nothing"
    needs = sorted(name for name, e in registry.datasets.items() if set(wanted) & set(e.obj.shapes))
    wants = " or ".join(SHAPE_DESCRIPTIONS[s] for s in wanted)
    raise ConfigError(
        f"this evaluation needs {wants}, but dataset '{dataset}' yields {offers}; use one of: "
        f"{', '.join(needs) or 'none installed'}",
        where="--dataset",
    )


def load_eval_data(
    registry: Registry, dataset: str, shape: Shape, data_files: list[str], split: Split, limit: int | None, seed: int
) -> EvalData:
    """Load ``shape`` records with the dataset plugin.

    ``split="eval"``: the plugin's eval rows (its own test split, or the ``EVAL_FRACTION`` it holds out with
    ``seed``); when it gives none, every row, with a note. ``split="all"``: train and eval rows together (for
    files that no training run saw). ``limit`` keeps the first N.
    """
    dataset_cls = registry.get("datasets", dataset)
    options = DataOptions(
        shape=shape,
        data_files=list(data_files),
        eval_fraction=EVAL_FRACTION,
        max_train_samples=None,
        max_eval_samples=None,
        seed=seed,
    )
    splits = load_dataset(dataset_cls, options)
    notes = list(splits.notes)
    if split == "all":
        records = list(splits.train) + list(splits.eval)
        notes.append(f"split: all {len(records)} rows of '{dataset}' (train + eval)")
    elif splits.eval:
        records = list(splits.eval)
        notes.append(f"split: the {len(records)} eval rows of '{dataset}' (seed {seed})")
    else:
        records = list(splits.train)
        notes.append(f"split: '{dataset}' has no eval rows; using all {len(records)} rows")
    if limit is not None and limit < len(records):
        notes.append(f"limit: first {limit} of {len(records)} rows")
        records = records[:limit]
    if not records:
        raise DataError(f"dataset '{dataset}' gave no {SHAPE_DESCRIPTIONS[shape]} to evaluate", where="--dataset")
    return EvalData(shape=shape, records=records, notes=notes)
