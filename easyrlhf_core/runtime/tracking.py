"""Live tracking (``report_to``): the rows of ``metrics.jsonl``, at the same steps, to TensorBoard, W&B,
MLflow and the other trackers accelerate supports, for every method (its own loop or a Trainer) alike.

Local trackers write under ``OUTPUT_DIR/logs`` (a pipeline's stages under ``OUTPUT_DIR/logs/<stage>``), so
``tensorboard --logdir OUTPUT_DIR/logs`` shows a run, or a whole pipeline, live. The resolved config goes
in as the hyperparameters. A resumed run continues the same curves: TensorBoard hides the events the
interrupted run wrote after its checkpoint (``purge_step``), W&B resumes the run whose id is kept in
``OUTPUT_DIR/logs/wandb-run-id``.

Trackers open on the main process at the first logged row (after the trainer set up the processes), and
:func:`check_trackers` refuses, before any model loads, a tracker whose package is missing or that cannot
log in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = []

LOGS_DIR = "logs"
WANDB_ID_FILE = "wandb-run-id"


def hyperparameters(config: Any) -> dict[str, Any]:
    """The resolved config as flat ``key: scalar`` pairs (dotted keys for groups; lists and mappings as text)."""
    import dataclasses

    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + f.name] = value
            else:
                out[prefix + f.name] = "" if value is None else str(value)

    walk(config, "")
    return out


class Trackers:
    """The run's trackers: opened at the first row, each row logged at its step, closed at the end."""

    def __init__(
        self,
        names: list[str],
        logs_dir: Path,
        run_name: str,
        config: Any,
        resume: bool,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.names = [n for n in names if n != "none"]
        self.logs_dir, self.run_name, self.config, self.resume, self.log = logs_dir, run_name, config, resume, log
        self.trackers: list[Any] = []
        self.opened = False

    def _open(self, first_step: int) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.opened = True
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = cls("", str(self.logs_dir), purge_step=first_step if self.resume else None)
            elif name == "wandb":
                tracker = cls("easyrlhf", name=self.run_name, dir=str(self.logs_dir), **self._wandb_resume())
            elif getattr(cls, "requires_logging_directory", False):
                tracker = cls(self.run_name, str(self.logs_dir))
            else:
                tracker = cls(self.run_name)
            tracker.main_process_only = False  # opened on the main process only, without accelerate's state
            tracker.start()
            if name == "wandb":
                (self.logs_dir / WANDB_ID_FILE).write_text(tracker.run.id + "\n", encoding="utf-8")
            tracker.store_init_configuration(hyperparameters(self.config))
            self.trackers.append(tracker)
        self.log(
            f"tracking: {', '.join(self.names)} in {self.logs_dir} (watch live: tensorboard --logdir {self.logs_dir})"
            if "tensorboard" in self.names
            else f"tracking: {', '.join(self.names)}"
        )

    def _wandb_resume(self) -> dict[str, Any]:
        saved = self.logs_dir / WANDB_ID_FILE
        if self.resume and saved.is_file():
            return {"id": saved.read_text(encoding="utf-8").strip(), "resume": "allow"}
        return {}

    def log_row(self, step: int, row: dict[str, Any]) -> None:
        """The numbers of one ``metrics.jsonl`` row, at ``step``."""
        if not self.names:
            return
        if not self.opened:
            self._open(step)
        values = {
            k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception as exc:  # the run's own files are written; a tracker must not fail it
                self.log(f"warning: the {tracker.name} tracker did not close cleanly: {exc}")
        self.trackers = []
