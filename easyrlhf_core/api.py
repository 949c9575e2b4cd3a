"""Base classes that plugins subclass: :class:`Method`, :class:`Dataset` and :class:`RewardFunction`.

Keep plugin modules light: import torch, transformers and TRL inside methods, never at module level,
so ``easyrlhf list-plugins`` stays instant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from .shapes import DataOptions, DataSplits, Message, Shape

if TYPE_CHECKING:
    from .config import BaseConfig
    from .registry import Registry
    from .run import Run


class Method(ABC):
    """An alignment method: a config dataclass and a ``train`` that builds and runs its trainer."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: A dataclass derived from :class:`easyrlhf_core.config.BaseConfig` (typed fields, ``help`` metadata,
    #: validation in ``__post_init__``).
    config_class: ClassVar[type[BaseConfig]]
    #: The data shape ``train`` consumes; the run loads it before any model does. ``None``: the method
    #: loads its own data (a pipeline of other methods, say).
    shape: ClassVar[Shape | None] = None

    def load_data(self, config: BaseConfig, registry: Registry) -> Any:
        """The data ``train`` gets as ``run.data``, read before any model loads and before the output
        dir is touched. Default: the configured dataset plugin's records of ``shape`` (a
        :class:`DataSplits`), or None when ``shape`` is None. Override to read several datasets."""
        from .run import load_shape_data

        return load_shape_data(self, config, registry)

    @abstractmethod
    def train(self, run: Run) -> None:
        """Train on ``run.data`` with ``run.config``; log with ``run.log_metrics``; save with ``run.save_model``."""


class Dataset(ABC):
    """A data loader that yields records of one or more :class:`Shape` s."""

    name: ClassVar[str]
    description: ClassVar[str]
    shapes: ClassVar[frozenset[Shape]]

    @abstractmethod
    def load(self, options: DataOptions) -> DataSplits:
        """Load ``options.shape`` records; raise :class:`~easyrlhf_core.errors.DataError` on bad input."""


class RewardFunction(ABC):
    """Scores completions to prompts. Options from the run config arrive as keyword arguments."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        """Return one float per (prompt, completion) pair; higher is better."""
