"""Helpers shared by the benchmark scripts: the model to measure, hh-rlhf records, ``easyrlhf run`` command
lines, child processes with their peak RSS, and the metrics a run wrote.

Each measured run is a child process of the benchmark script, so its peak RSS is its own (``os.wait4``
rusage: the child alone, not the parent, not earlier children).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

#: Offline, no tokenizer threads, no progress bars: the same environment for every child.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

SEED = 42


@dataclass
class ChildResult:
    """What a finished child process left: its combined output, peak RSS and wall time."""

    output: str
    peak_rss_mib: float
    wall_seconds: float


def run_child(command: list[str]) -> ChildResult:
    """Run ``command`` to completion; raise with the tail of its output if it fails."""
    env = {**os.environ, **CHILD_ENV}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{output[-3000:]}")
    return ChildResult(output, usage.ru_maxrss / 1024, wall)  # ru_maxrss is in KiB on Linux


def benchmark_model(path: str | None) -> str:
    """``--model`` as a loadable directory; None: the embedded SmolLM2-135M-Instruct (converted once)."""
    from easyrlhf_core.kit.model_loading import resolve_model

    return resolve_model(path, log=lambda message: print(message, file=sys.stderr)).path


def load_records(shape: str, samples: int) -> list[dict[str, Any]]:
    """The hh-rlhf training records (embedded sample) that ``easyrlhf run --dataset hh-rlhf`` trains on with
    ``max_train_samples=samples``, ``eval_fraction=0``, ``max_eval_samples=0`` and seed 42."""
    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.shapes import DataOptions, Shape
    from easyrlhf_core.runtime.registry import get_registry

    dataset = get_registry().get("datasets", "hh-rlhf")
    options = DataOptions(
        shape=Shape(shape), max_train_samples=samples, eval_fraction=0.0, max_eval_samples=0, seed=SEED
    )
    return load_dataset(dataset, options).train


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def easyrlhf_command(
    method: str,
    model: str,
    out: Path,
    steps: int,
    settings: dict[str, Any],
    flags: Sequence[str] = (),
    data: Sequence[str] = ("--dataset", "hh-rlhf"),
) -> list[str]:
    """``easyrlhf run`` on hh-rlhf (or ``data``: the dataset flags) into ``out``: ``steps`` steps, no eval, no
    checkpoints, seed 42, one metrics row per step; ``settings`` become ``--set KEY=VALUE`` (after the
    defaults here, so they win)."""
    base = {"eval_fraction": 0.0, "max_eval_samples": 0, "save_steps": 0, "logging_steps": 1}
    sets = [item for key, value in {**base, **settings}.items() for item in ("--set", f"{key}={value}")]
    return [
        sys.executable,
        "-m",
        "easyrlhf_core.commands.cli",
        "run",
        "--method",
        method,
        "--model",
        model,
        *data,
        "--output-dir",
        str(out),
        "--overwrite",
        "--max-steps",
        str(steps),
        "--seed",
        str(SEED),
        *flags,
        *sets,
    ]


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.jsonl``."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def first(rows: list[dict[str, Any]], key: str) -> Any:
    """The first row's value of ``key`` (KeyError when no row has it)."""
    for row in rows:
        if key in row:
            return row[key]
    raise KeyError(f"no metrics row has {key!r}")


def last(rows: list[dict[str, Any]], key: str) -> Any:
    """The last row's value of ``key`` (KeyError when no row has it)."""
    return first(list(reversed(rows)), key)


def remove(path: Path) -> None:
    """Delete a finished run's directory (a saved model per run would fill the disk)."""
    shutil.rmtree(path, ignore_errors=True)
