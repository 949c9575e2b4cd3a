"""Base classes that plugins subclass: :class:`Method`, :class:`Dataset` and :class:`RewardFunction`.

Keep plugin modules light: import torch, transformers and TRL inside methods, never at module level,
so ``easyrlhf list-plugins`` stays instant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Message, Shape

if TYPE_CHECKING:
    from easyrlhf_core.kit.config import BaseConfig
    from easyrlhf_core.kit.context import PluginLookup, RunContext
    from easyrlhf_core.kit.findings import Finding

__all__ = ["Method", "Dataset", "RewardFunction"]


class Method(ABC):
    """An alignment method: a config dataclass and a ``train`` that builds and runs its trainer."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: A dataclass derived from :class:`easyrlhf_core.kit.config.BaseConfig` (typed fields, ``help`` metadata,
    #: validation in ``__post_init__``).
    config_class: ClassVar[type[BaseConfig]]
    #: The data shape ``train`` consumes; the run loads it before any model does. ``None``: the method
    #: loads its own data (a pipeline of other methods, say).
    shape: ClassVar[Shape | None] = None
    #: True for a pipeline that runs other methods as stages (:func:`easyrlhf_core.runtime.lifecycle.run_stage`): the
    #: stages log and track themselves.
    runs_stages: ClassVar[bool] = False
    #: True when ``train`` honours ``--lora`` (hands ``lora_config`` to its trainer, or wraps its model with
    #: :func:`easyrlhf_core.kit.model_loading.apply_lora`); ``--lora`` for a method without it is refused in one line.
    #: Every :class:`~easyrlhf_core.kit.trainer_method.TrainerMethod` has it: the kit adds the adapters to its trainer.
    supports_lora: ClassVar[bool] = False

    def load_data(self, config: BaseConfig, registry: PluginLookup) -> Any:
        """The data ``train`` gets as ``run.data``, read before any model loads and before the output
        dir is touched. Default: the configured dataset plugin's records of ``shape`` (a
        :class:`DataSplits`), or None when ``shape`` is None. Override to read several datasets."""
        from easyrlhf_core.kit.data_loading import load_shape_data

        return None if self.shape is None else load_shape_data(self.name, self.shape, config, registry)

    @abstractmethod
    def train(self, run: RunContext) -> None:
        """Train on ``run.data`` with ``run.config``; log with ``run.log_metrics``; save with ``run.save_model``."""

    def what_changed(self, run: RunContext) -> list[Finding]:
        """What training changed, for the end-of-run summary (``summary.json``): called on the main process
        after ``train`` saved ``model/``. Default: nothing. A policy trained on preference pairs can return
        :func:`easyrlhf_core.kit.findings.held_out_pairs_change`."""
        return []


class Dataset(ABC):
    """A data loader that yields records of one or more :class:`Shape` s. It only parses: the framework
    checks ``columns`` against :attr:`fields`, carves the eval split, applies the sample limits and counts
    skipped bad rows (:mod:`easyrlhf_core.kit.data_loading`)."""

    name: ClassVar[str]
    description: ClassVar[str]
    shapes: ClassVar[frozenset[Shape]]
    #: The field names the dataset reads, which ``columns`` may map to the file's own names; None: any.
    fields: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def load(self, options: DataOptions) -> DataSplits:
        """Every ``options.shape`` record read (``eval``: the source's own eval split, else empty). Report a
        bad row with ``options.bad_rows.report(problem, file=..., line=...)``; raise
        :class:`~easyrlhf_core.kit.errors.DataError` for input that cannot be read at all."""


class RewardFunction(ABC):
    """Scores completions to prompts. Options from the run config (``reward_options``) arrive as keyword
    arguments: declare them as a dataclass in :attr:`options_class` and they are checked (names with a
    did-you-mean, types, its ``__post_init__``) before any model loads, then given as ``self.config``."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: A dataclass of the options (``option(default, help)`` fields). None: options are not checked and
    #: reach the reward only as the ``self.options`` mapping (declare them instead).
    options_class: ClassVar[type | None] = None
    #: The option that takes a reward model directory, for a reward that scores with one: ``--reward-model PATH``
    #: builds the registered reward that declares it (the built-in ``reward-model``: ``"path"``). None: not one.
    model_option: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        from easyrlhf_core.kit.config import build_options

        self.options = options
        self.config: Any = None
        if self.options_class is not None:
            self.config = build_options(self.options_class, options, f"reward '{self.name}'", "reward_options")

    @abstractmethod
    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        """Return one float per (prompt, completion) pair; higher is better."""
