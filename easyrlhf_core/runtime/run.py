"""A run in progress (:class:`Run`, what a method's ``train`` gets as its
:class:`~easyrlhf_core.kit.context.RunContext`), what the user asked for (:class:`RunRequest`), and the names of
the files in a run directory. The steps that drive a run are :mod:`easyrlhf_core.runtime.lifecycle`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.checkpoints import COMPLETE_MARKER
from easyrlhf_core.kit.config import BaseConfig
from easyrlhf_core.kit.distributed import is_main_process
from easyrlhf_core.kit.metrics import METRICS_FILE
from easyrlhf_core.kit.shapes import DataSplits
from easyrlhf_core.runtime.progress import ProgressReporter
from easyrlhf_core.runtime.registry import Registry
from easyrlhf_core.runtime.tracking import LOGS_DIR

__all__ = [
    "RunRequest",
    "Run",
    "RunComplete",
    "jsonable",
    "CONFIG_FILE",
    "MODEL_DIR",
    "CHECKPOINTS_DIR",
    "COMPLETE_FILE",
]

CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
#: Written by :func:`execute` once training and the saving of outputs succeeded (the name checkpoints use too).
COMPLETE_FILE = COMPLETE_MARKER


@dataclass
class RunRequest:
    """What the user asked for on the command line."""

    method: str | None
    config_file: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # config key -> value, from dedicated flags
    set_options: list[str] = field(default_factory=list)
    overwrite: bool = False
    resume: bool = False
    num_machines: int = 1  # multi-node runs: only machine 0 checks and claims the output dir
    machine_rank: int = 0


class Run:
    """A run in progress: what a method's ``train`` gets."""

    def __init__(
        self,
        method: Method,
        config: BaseConfig,
        output_dir: Path,
        data: DataSplits | None,
        registry: Registry,
        resume: bool = False,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.method = method
        self.config = config
        self.output_dir = output_dir
        self.data = data
        self.registry = registry
        self.resume = resume
        self.is_main_process = is_main_process()
        self.progress = progress or ProgressReporter(enabled=self.is_main_process)
        self.started = time.time()
        self.logs_dir = output_dir / LOGS_DIR  # where local trackers write (a pipeline's stages: below its own)
        self.trackers: Any = None  # easyrlhf_core.runtime.tracking.Trackers while execute() runs, on the main process
        self.directory: Any = None  # the RunDirectory held by the process that claimed the output dir
        self.rank_lock: Any = None  # a launched rank's shared hold on it
        #: How many training examples the method really trains on, when it drops some (too long for
        #: max_length, say); the summary says "N of M". None: all of ``data.train``.
        self.train_examples_used: int | None = None
        #: Whether the saved model trained LoRA adapters, read from the model ``save_model`` was given (a
        #: pipeline: its last stage's); the summary and model card claim LoRA only when True. None: not saved.
        self.lora_applied: bool | None = None
        #: Runs a method as one stage of this run (set by the lifecycle, which owns how a run executes).
        self.stage_runner: Callable[[Run, Any, BaseConfig, Any, Path], Path] | None = None

    # -- paths -------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @property
    def model_dir(self) -> Path:
        return self.output_dir / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    # -- reporting ---------------------------------------------------------------------------------
    def run_stage(self, method: Any, config: BaseConfig, data: Any, output_dir: Path) -> Path:
        """Run ``method`` as one stage of this run (a pipeline) into ``output_dir``: skipped when complete,
        resumed when started, else new; returns the stage's ``model/``."""
        if self.stage_runner is None:
            raise RuntimeError("this run cannot run stages: it was not started by the run lifecycle")
        return self.stage_runner(self, method, config, data, output_dir)

    def log(self, message: str) -> None:
        """A line in the run log (stderr), on the main process only."""
        if self.is_main_process:
            print(f"[easyrlhf] {message}", file=sys.stderr, flush=True)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one JSON object to ``metrics.jsonl`` and show it in the progress display."""
        if not self.is_main_process:
            return
        clean = {k: jsonable(v) for k, v in metrics.items()}
        record = {"step": int(step), **{k: v for k, v in clean.items() if k != "step"}}
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log_row(int(step), record)
        self.progress.update(step, record)

    # -- outputs -----------------------------------------------------------------------------------
    def save_model(self, model: Any, tokenizer: Any) -> Path:
        """Save the trained model (merged LoRA unless ``save_adapter_only``) and tokenizer to ``model/``."""
        from easyrlhf_core.kit.model_loading import is_peft_model, save_model
        from easyrlhf_core.kit.zero import gathered

        self.lora_applied = is_peft_model(model)
        with gathered(model):  # ZeRO-3: the partitions made whole on every rank (collective), rank 0 writes
            if self.is_main_process:
                try:
                    save_model(model, tokenizer, self.model_dir, merge_lora=not self.config.save_adapter_only)
                except Exception as exc:
                    from easyrlhf_core.kit.faults import disk_full_error, is_disk_full, model_bytes

                    if not is_disk_full(exc):
                        raise
                    raise disk_full_error(self, exc, writing=self.model_dir, needed=model_bytes(model)) from exc
                self.log(f"saved model to {self.model_dir}")
        return self.model_dir


class RunComplete(Exception):
    """``--resume`` on a run that finished and asks for nothing more: the CLI says so and exits 0."""


# --------------------------------------------------------------------------------------------------
# Steps of a run


def jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)
