"""The data shapes that datasets yield and methods consume.

Every record is a plain dict in TRL's *conversational* format, so it can be handed to TRL trainers as is.
A message is ``{"role": "system" | "user" | "assistant", "content": str}``.

=============  ==================================================================================
shape          record
=============  ==================================================================================
preference     ``{"prompt": [msg, ...], "chosen": [assistant msg], "rejected": [assistant msg]}``
ranked         ``{"prompt": [msg, ...], "responses": [str, ...], "scores": [float, ...]}``
conversation   ``{"messages": [msg, ...]}`` (ends with an assistant message)
prompt         ``{"prompt": [msg, ...]}`` (ends with a user message)
=============  ==================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from easyrlhf_core.kit.rows import BadRows
from easyrlhf_core.kit.rows import Message as Message  # re-exported: the shapes are made of messages

__all__ = ["Shape", "DataSplits", "DataOptions", "Record", "Message"]

#: One training example: a plain dict in TRL's conversational format (the keys depend on the :class:`Shape`).
Record = dict[str, Any]


class Shape(str, Enum):
    """A kind of training example."""

    PREFERENCE = "preference"
    RANKED = "ranked"
    CONVERSATION = "conversation"
    PROMPT = "prompt"

    def __str__(self) -> str:
        return self.value


SHAPE_DESCRIPTIONS: dict[Shape, str] = {
    Shape.PREFERENCE: "preference pairs (prompt, chosen, rejected)",
    Shape.RANKED: "ranked candidates (prompt, responses, scores)",
    Shape.CONVERSATION: "conversations (messages) for SFT",
    Shape.PROMPT: "prompts for online generation",
}


@dataclass
class DataOptions:
    """What a method asks of a dataset plugin; built from the run config."""

    shape: Shape
    data_files: list[str] = field(default_factory=list)
    eval_fraction: float = 0.05
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    skip_bad_rows: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    seed: int = 42
    #: Where a dataset reports bad rows (:class:`easyrlhf_core.kit.rows.BadRows`): raised at once, or counted
    #: and skipped with ``skip_bad_rows``. Made from ``skip_bad_rows`` when not given.
    bad_rows: Any = None

    def __post_init__(self) -> None:
        if self.bad_rows is None:
            self.bad_rows = BadRows(skip=self.skip_bad_rows)


@dataclass
class DataSplits:
    """A loaded dataset: train and eval records of one shape, plus notes to report once per run."""

    shape: Shape
    train: list[Record]
    eval: list[Record]
    notes: list[str] = field(default_factory=list)
