"""What a plugin is handed by the runtime, as interfaces: a run in progress and the plugin registry.

The base classes (:mod:`easyrlhf_core.kit.bases`), the summary and the model card are typed against these
protocols, not against the runtime's classes (:class:`easyrlhf_core.runtime.run.Run`,
:class:`easyrlhf_core.runtime.registry.Registry`), so the kit never imports the runtime that drives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    from easyrlhf_core.kit.config import BaseConfig

__all__ = ["RunContext", "PluginLookup", "installed_plugins", "provide_plugins"]


class PluginLookup(Protocol):
    """The registry as a plugin sees it: registered classes by kind and name."""

    @property
    def methods(self) -> Mapping[str, Any]:
        """Method name -> its entry (``entry.obj`` is the class, ``entry.plugin.package`` its distribution)."""
        ...

    @property
    def datasets(self) -> Mapping[str, Any]:
        """Dataset name -> its entry (``entry.obj`` is the class)."""
        ...

    @property
    def rewards(self) -> Mapping[str, Any]:
        """Reward name -> its entry (``entry.obj`` is the class)."""
        ...

    @property
    def environments(self) -> Mapping[str, Any]:
        """Environment name -> its entry (``entry.obj`` is the class)."""
        ...

    def get(self, kind: str, name: str) -> Any:
        """The class registered as ``name`` under ``kind`` (``"methods"``, ``"datasets"``, ``"rewards"``,
        ``"environments"``); an unknown name raises :class:`~easyrlhf_core.kit.errors.PluginError`
        with a did-you-mean."""
        ...


class RunContext(Protocol):
    """A run in progress, as a method's ``train`` and ``what_changed`` get it (read-only here: the runtime
    owns the run; ``train_examples_used`` is the one field a method sets)."""

    train_examples_used: int | None
    """How many training examples the method really trained on, when it dropped some; None: all."""

    @property
    def method(self) -> Any:
        """The :class:`~easyrlhf_core.kit.bases.Method` being trained (typed loosely: the base classes refer to this
        protocol, not the other way round)."""
        ...

    @property
    def config(self) -> BaseConfig:
        """The method's resolved config."""
        ...

    @property
    def output_dir(self) -> Path:
        """The run directory."""
        ...

    @property
    def data(self) -> Any:
        """What :meth:`Method.load_data` returned: a :class:`~easyrlhf_core.kit.shapes.DataSplits` for most methods."""
        ...

    @property
    def registry(self) -> PluginLookup:
        """The installed plugins."""
        ...

    @property
    def resume(self) -> bool:
        """True when the run continues from its newest complete checkpoint (``--resume``)."""
        ...

    @property
    def is_main_process(self) -> bool:
        """True on the process that writes outputs (rank 0, or a single process)."""
        ...

    @property
    def progress(self) -> Any:
        """The progress display (``progress.update(step, row)``), quiet on other ranks."""
        ...

    @property
    def started(self) -> float:
        """``time.time()`` when the run started."""
        ...

    @property
    def lora_applied(self) -> bool | None:
        """Whether the saved model has LoRA adapters (read from it by :meth:`save_model`); None before saving."""
        ...

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl`` of the run."""
        ...

    @property
    def model_dir(self) -> Path:
        """Where the trained model is saved (``model/``)."""
        ...

    @property
    def checkpoints_dir(self) -> Path:
        """Where checkpoints are written (``checkpoints/``)."""
        ...

    def log(self, message: str) -> None:
        """A line in the run log (stderr), on the main process only."""
        ...

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """One row of ``metrics.jsonl`` (and the trackers and the progress display)."""
        ...

    def run_stage(self, method: Any, config: BaseConfig, data: Any, output_dir: Path) -> Path:
        """Run ``method`` (an instance) with ``config`` on ``data`` as one stage of this run, into ``output_dir``
        (a pipeline's stage directory): skipped when complete there, resumed when started, else new; returns the
        stage's ``model/``."""
        ...

    def save_model(self, model: Any, tokenizer: Any) -> Path:
        """Save the trained model and tokenizer to ``model/``; returns the directory."""
        ...


_plugin_source: Callable[[], PluginLookup] | None = None


def provide_plugins(source: Callable[[], PluginLookup]) -> None:
    """Called by the runtime's registry when it loads: how the kit finds the installed plugins when a caller
    passes no registry (a config checking its rewards before the run starts)."""
    global _plugin_source
    _plugin_source = source


def installed_plugins() -> PluginLookup:
    """The installed plugins, from the runtime that loaded the kit (:func:`provide_plugins`)."""
    if _plugin_source is None:
        raise RuntimeError(
            "no plugin registry: import easyrlhf_core.runtime.registry (the runtime provides it) or pass a registry"
        )
    return _plugin_source()
