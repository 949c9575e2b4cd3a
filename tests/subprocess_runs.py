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
    return [sys.executable, "-m", "easyrlhf_core.commands.cli", *args]


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


def run_easyrlhf(
    args: list[str], num_processes: int = 1, timeout: float = 300, env: dict[str, str] | None = None
) -> ProcessRun:
    """Run ``easyrlhf <args>`` (with ``--num-processes N`` when N > 1) to the end; ``env``: extra variables.
    Past ``timeout`` seconds the run and every process under it (launcher, ranks) are killed and the test
    fails with its log (a hung run must not outlive the test)."""
    process = subprocess.Popen(
        easyrlhf_command(*args, *launch_args(num_processes)),
        env={**subprocess_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        _, stderr = process.communicate()
        raise AssertionError(f"easyrlhf {' '.join(args[:3])} ran past {timeout}s (hung?):\n{stderr}") from None
    return ProcessRun(process.returncode, stderr, output_dir_of(args))


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (also those in sessions of their own, like the launcher)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def head_chunk_env(folder: Path, tokens: int) -> dict[str, str]:
    """Variables that make every process of a child run (ranks included) compute the chunked LM head
    (:func:`easyrlhf_core.kit.shared_prefix_forward.chunked_token_log_probs`) ``tokens`` positions at a time: a
    ``sitecustomize`` module in ``folder``, put first on ``PYTHONPATH``. Small chunks make ranks with
    different batches run different numbers of chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import easyrlhf_core.kit.shared_prefix_forward as _shared\n_shared.CHUNK_TOKENS = {int(tokens)}\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)}


class SharedRuns:
    """Subprocess runs that several tests compare against (the 2-rank DDP runs: the rank tests check them, the
    DeepSpeed tests compare their weights), each run once per session under its name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, ProcessRun] = {}

    def get(
        self,
        name: str,
        args_for: Callable[[Path], list[str]],
        num_processes: int = 1,
        env: dict[str, str] | None = None,
    ) -> ProcessRun:
        """The run ``name`` (``args_for(output_dir)``, extra variables ``env``), started on first use."""
        if name not in self._done:
            self._done[name] = run_easyrlhf(args_for(self.root / name), num_processes=num_processes, env=env)
        return self._done[name]


class RunningProcess:
    """An ``easyrlhf`` subprocess in its own session (as a shell runs it), to signal while it trains."""

    def __init__(self, args: list[str], num_processes: int = 1, log_path: Path | None = None) -> None:
        self.output_dir = output_dir_of(args)
        self.log_path = log_path or Path(f"{self.output_dir}.log")
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            easyrlhf_command(*args, *launch_args(num_processes)),
            env=subprocess_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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


def tiny_sft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``easyrlhf run`` of sft on a ``jsonl`` file with the small shapes the single-process fault tests share
    (max_length 64, 2 rows a device, no eval split); ``extra`` adds or overrides options."""
    return [
        "run",
        "--method",
        "sft",
        "--model",
        str(model),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--output-dir",
        str(out),
        "--set",
        "max_length=64",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "eval_fraction=0",
        *extra,
    ]


# --------------------------------------------------------------------------------------------------
# The small runs the multi-process tests share (3 steps, tiny model, fixed seed)


def trainer_run_args(method: str, model: Path, data: Path, out: Path, per_device: int, steps: int = 3) -> list[str]:
    """A Trainer-based method (sft, dpo, ...) on a ``jsonl`` file: 3 steps at lr 1e-3, constant schedule."""
    return [
        "run",
        "--method",
        method,
        "--model",
        str(model),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        str(steps),
        "--seed",
        "7",
        "--set",
        "max_length=64",
        "--set",
        f"per_device_train_batch_size={per_device}",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "lr_scheduler_type=constant",
        "--set",
        "logging_steps=1",
        "--set",
        "save_steps=2",
        "--set",
        "eval_fraction=0.2",
        "--set",
        "per_device_eval_batch_size=2",
    ]


def ppo_run_args(model: Path, data: Path, out: Path, iterations: int) -> list[str]:
    """PPO on a ``jsonl`` prompts file with the keyword reward: 2 prompts per process, 6 new tokens."""
    return [
        "run",
        "--method",
        "ppo",
        "--model",
        str(model),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        str(iterations),
        "--reward",
        "keyword",
        "--seed",
        "3",
        "--set",
        "reward_options={pattern: e}",
        "--set",
        "rollout_batch_size=2",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "max_new_tokens=6",
        "--set",
        "max_length=64",
        "--set",
        "ppo_epochs=1",
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=1",
        "--set",
        "learning_rate=1e-3",
    ]


def toy_prompt(i: int) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": f"Say something nice about topic {i}."}]}


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


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest elementwise difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


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
    return {
        "prompt": [{"role": "user", "content": f"Tell me about {topic}, please ({i})."}],
        "chosen": [{"role": "assistant", "content": f"Here is what I know about {topic}: Paris."}],
        "rejected": [{"role": "assistant", "content": f"Here is what I know about {topic}: bread."}],
    }


def uneven_pair(i: int) -> dict[str, Any]:
    """A pair like :func:`toy_pair` whose chosen answer has 0-6 extra words and whose rejected one is short:
    batches of them differ in how many completion tokens a loss reads (so ranks differ in LM-head chunks)."""
    topic = TOPICS[i % len(TOPICS)]
    extra = " and more" * ((i * 5) % 7)
    return {
        "prompt": [{"role": "user", "content": f"Tell me about {topic}, please ({i})."}],
        "chosen": [{"role": "assistant", "content": f"Here is what I know about {topic}{extra}: Paris."}],
        "rejected": [{"role": "assistant", "content": f"About {topic}: bread."}],
    }


def toy_ranked(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "prompt": [{"role": "user", "content": f"Tell me about {topic} ({i})."}],
        "responses": [f"{topic}: Paris.", f"{topic}: bread.", f"{topic}."],
        "scores": [2.0, 0.0, 1.0],
    }


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
