"""Running ``easyrlhf`` as a real subprocess (one process or ``--num-processes N`` ranks), for the
multi-process, signal and kill/resume tests: the command, data files the ``jsonl`` dataset plugin reads
(in-process test plugins do not exist in a subprocess), and readers for what a run left behind.

    result = run_easyrlhf(["run", "--method", "dpo", ...], num_processes=2)
    result.returncode, result.stderr, result.rank_checksums   # one parameter checksum per rank

Subprocesses inherit the test session's environment (offline Hub, ``EASYRLHF_CACHE`` from conftest).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TOPICS = ["bread", "France", "jokes", "homework", "the road", "yeast", "salt", "a chicken"]
_CHECKSUMS = re.compile(r"ranks: parameter checksum per rank \[([^\]]*)\]")


def easyrlhf_command(*args: str) -> list[str]:
    """``easyrlhf <args>`` with this interpreter (the venv the tests run in)."""
    return [sys.executable, "-m", "easyrlhf_core.cli", *args]


def subprocess_env() -> dict[str, str]:
    """The test environment for a child run: offline, one thread per process (two ranks share two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    """A free TCP port for the ranks' rendezvous (tests may run next to other 2-process runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_args(num_processes: int) -> list[str]:
    if num_processes <= 1:
        return []
    return ["--num-processes", str(num_processes), "--main-process-port", str(free_port())]


@dataclass
class ProcessRun:
    """What a finished ``easyrlhf run`` subprocess left: exit code, its log, its output dir."""

    returncode: int
    stderr: str
    output_dir: Path | None

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.output_dir) if self.output_dir else []

    @property
    def rank_checksums(self) -> list[float]:
        """Each rank's parameter checksum after training, as rank 0 logged them (multi-process runs)."""
        found = _CHECKSUMS.findall(self.stderr)
        return [float(v) for v in found[-1].split(",")] if found else []


def output_dir_of(args: list[str]) -> Path | None:
    for flag in ("--output-dir", "-o"):
        if flag in args:
            return Path(args[args.index(flag) + 1])
    return None


def run_easyrlhf(args: list[str], num_processes: int = 1, timeout: float = 300) -> ProcessRun:
    """Run ``easyrlhf <args>`` (with ``--num-processes N`` when N > 1) to the end."""
    done = subprocess.run(easyrlhf_command(*args, *launch_args(num_processes)), env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    return ProcessRun(done.returncode, done.stderr, output_dir_of(args))


class RunningProcess:
    """An ``easyrlhf`` subprocess in its own session (as a shell runs it), to signal while it trains."""

    def __init__(self, args: list[str], num_processes: int = 1, log_path: Path | None = None) -> None:
        self.output_dir = output_dir_of(args)
        self.log_path = log_path or Path(f"{self.output_dir}.log")
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(easyrlhf_command(*args, *launch_args(num_processes)), env=subprocess_env(),
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 240, what: str = "condition") -> None:
        """Poll ``condition`` every 20 ms; fail if the process ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.process.returncode}) before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")
            time.sleep(0.02)

    def wait_for_step(self, step: int, timeout: float = 240) -> None:
        """Until ``metrics.jsonl`` has a row of ``step`` (or later)."""
        self.wait_until(lambda: last_step(self.output_dir) >= step, timeout, f"step {step} in metrics.jsonl")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole session (all ranks of a multi-process run too)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def wait(self, timeout: float = 240) -> ProcessRun:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return ProcessRun(code, self.log(), self.output_dir)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------
# Reading a run directory


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a row being written right now
            pass
    return rows


def last_step(output_dir: Path | None) -> int:
    rows = read_metrics(output_dir) if output_dir else []
    return max((r["step"] for r in rows), default=0)


def train_rows(output_dir: Path) -> list[dict[str, Any]]:
    """The per-step training rows (those with a ``loss``)."""
    return [r for r in read_metrics(output_dir) if "loss" in r]


def model_tensors(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


# --------------------------------------------------------------------------------------------------
# Data files for the jsonl dataset plugin


def toy_pair(i: int) -> dict[str, Any]:
    """Chosen answers say 'Paris', rejected ones 'bread' (a preference a tiny model can pick up)."""
    topic = TOPICS[i % len(TOPICS)]
    return {"prompt": [{"role": "user", "content": f"Tell me about {topic}, please ({i})."}],
            "chosen": [{"role": "assistant", "content": f"Here is what I know about {topic}: Paris."}],
            "rejected": [{"role": "assistant", "content": f"Here is what I know about {topic}: bread."}]}


def toy_ranked(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {"prompt": [{"role": "user", "content": f"Tell me about {topic} ({i})."}],
            "responses": [f"{topic}: Paris.", f"{topic}: bread.", f"{topic}."], "scores": [2.0, 0.0, 1.0]}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
