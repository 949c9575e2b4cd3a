"""Training progress for people: a rich bar (step, loss, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressReporter:
    """Shows how far training is. ``update(step, metrics)`` after each logged step; ``close()`` at the end."""

    KEY_METRICS = ("loss", "rewards/accuracies", "accuracy", "objective/scores", "score", "kl", "objective/kl")

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, force_plain: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and not force_plain and self.stream.isatty()
        self.console = Console(file=self.stream, force_terminal=self.interactive or None)
        self._bar: Progress | None = None
        self._task: Any = None
        self._total: int | None = None
        self._start = time.monotonic()

    def start(self, total_steps: int | None, description: str = "training") -> None:
        if not self.enabled:
            return
        self._total = total_steps if total_steps and total_steps > 0 else None
        self._start = time.monotonic()
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[summary]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=self._total, summary="")

    def advance_to(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = {k: v for k, v in metrics.items() if k in self.KEY_METRICS}
        summary = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, summary=summary)
            return
        total = f"/{self._total}" if self._total else ""
        eta = ""
        if self._total and step > 0:
            elapsed = time.monotonic() - self._start
            eta = f" eta={max(0.0, elapsed / step * (self._total - step)):.0f}s"
        rest = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k not in shown and k != "step")
        line = f"step {step}{total} {summary} {rest}{eta}".replace("  ", " ").strip()
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
