"""Stopping a run on a signal: the first Ctrl-C/SIGTERM asks for a checkpoint at the next step, a second one
ends the run at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.kit.distributed import SIGNAL_REPEAT_WINDOW, STOP_SIGNALS, is_launched

__all__ = ["RunInterrupted", "StopSignals", "stopped_at_once_message"]


class RunInterrupted(Exception):
    """Training stopped early on SIGINT/SIGTERM, after saving the checkpoint ``checkpoint``; the CLI
    prints how to resume and exits with ``128 + signal_number`` (130 for Ctrl-C)."""

    def __init__(self, signal_number: int, checkpoint: Path | None = None) -> None:
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM as a request to stop at the next step boundary, so a training loop can
    save a checkpoint and stop cleanly. Use around the loop and call :meth:`requested` once per step on
    every rank (it agrees across ranks, so all stop at the same step)::

        with StopSignals(run.log) as stop:
            for step in ...:
                ...
                if stop.requested():
                    save a checkpoint; raise RunInterrupted(stop.requested(), path)

    A second Ctrl-C or SIGTERM more than a second after the first ends the process at once, even while the
    step is blocked (in a collective, a C call that never returns to Python), with exit code
    ``128 + signal`` and one line (:func:`stopped_at_once_message`; a launched rank leaves the line to the
    process that launched it); the newest complete checkpoint is never touched. Repeats within that
    second (one signal delivered twice, by a scheduler and by our launcher) count once. Python runs signal
    handlers in the main thread only, between bytecodes, so the signals are also read by a watcher thread
    from :func:`signal.set_wakeup_fd`, which the C-level handler writes to at once. Handlers are installed
    only in the main thread and restored on exit. ``checkpoints``: the run's checkpoints folder (named in
    the line).
    """

    #: Seconds within which a repeated signal counts as the same one.
    REPEAT_WINDOW = SIGNAL_REPEAT_WINDOW

    def __init__(self, log: Callable[[str], None], checkpoints: Path | None = None) -> None:
        self.log = log
        self.checkpoints = checkpoints
        self.received: int | None = None
        self._received_at = 0.0
        self._announced = False
        self._agreed: int | None = None
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[Any, Any] | None = None
        self._previous_wakeup = -1

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            import socket

            reader, writer = socket.socketpair()
            writer.setblocking(False)
            self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._wakeup = (reader, writer)
            threading.Thread(target=self._watch, args=(reader,), name="easyrlhf-stop-signals", daemon=True).start()
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            writer = self._wakeup[1]  # the watcher closes the reader
            self._wakeup = None
            try:
                writer.send(b"\0")  # ends the watcher
            except OSError:
                pass
            writer.close()

    def _handle(self, signum: int, frame: Any) -> None:  # no I/O here: the handler may interrupt a write
        if self.received is None:  # the request, at once; only the watcher counts and times signals (one clock:
            self.received = signum  # the same signal seen here and there late is never taken for a second one)

    def _note(self, signum: int) -> bool:
        """The watcher's record of a stop signal; True when it is a second one (not a repeat of the first)."""
        now = time.monotonic()
        if not self._received_at:
            if self.received is None:
                self.received = signum
            self._received_at = now
            return False
        return now - self._received_at > self.REPEAT_WINDOW

    def _watch(self, reader: Any) -> None:
        """The watcher thread: each signal's number as the C-level handler wrote it; a second one ends the
        process at once."""
        with reader:
            while True:
                try:
                    data = reader.recv(64)
                except OSError:
                    return
                if not data or 0 in data:
                    return
                for signum in data:
                    if signum in STOP_SIGNALS and self._note(signum):
                        self._stop_at_once(signum)

    def _stop_at_once(self, signum: int) -> None:
        code = 128 + signum
        if not is_launched():  # a launched rank: the launching process says it (it got both signals too)
            print(f"Error: {stopped_at_once_message(signum, self.checkpoints)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)

    @property
    def agreed(self) -> int | None:
        """The signal the last :meth:`requested` call acted on (no collective), else None."""
        return self._agreed

    def requested(self, device: Any = None) -> int | None:
        """The stop signal (a number) once any rank got one, else None. Collective when distributed:
        every rank must call it at the same points; ``device`` is where the flag tensor lives (the
        training device, for NCCL)."""
        if self._agreed:
            return self._agreed
        signum = self.received or 0
        if "torch" in sys.modules:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                flag = torch.tensor([signum], dtype=torch.int64, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag.item())
        if signum and not self._announced:
            self._announced = True
            again = " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""
            self.log(f"received {signal.Signals(signum).name}: stopping after this step and saving a checkpoint{again}")
        self._agreed = signum or None
        return self._agreed


def stopped_at_once_message(signum: int, checkpoints: Path | None) -> str:
    """The line a run stopped at once by a second Ctrl-C / SIGTERM ends with: what was lost, what is kept."""
    from easyrlhf_core.kit.checkpoints import latest_checkpoint
    from easyrlhf_core.kit.faults import checkpoint_note, resume_advice

    name = signal.Signals(signum).name
    kept = latest_checkpoint(checkpoints) if checkpoints is not None and checkpoints.is_dir() else None
    if kept is None:
        return (
            f"{name}: stopped at once by a second signal, without a checkpoint (none was saved yet); "
            f"run the command again to start over"
        )
    return (
        f"{name}: stopped at once by a second signal (the step in progress is lost); {checkpoint_note(kept)}: "
        f"{resume_advice(kept)}"
    )
