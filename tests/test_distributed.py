"""``easyrlhf run --num-processes 2`` on CPU (torchrun, gloo) for the Trainer-based methods: both ranks
train, their parameters stay identical (gradients are synchronised), each rank sees different data (two
ranks x 2 examples train exactly like one process x 4, and not like one process x 2), and only rank 0
writes the run directory."""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from tests.subprocess_runs import (
    RunningProcess,
    easyrlhf_command,
    last_step,
    max_difference,
    model_tensors,
    subprocess_env,
    toy_pair,
    train_rows,
    trainer_run_args,
    write_rows,
)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", [toy_pair(i) for i in range(24)])


def run_args(method: str, model: Path, data: Path, out: Path, per_device: int, steps: int = 3) -> list[str]:
    return trainer_run_args(method, model, data, out, per_device, steps)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_ranks_train_in_sync_on_different_data_and_rank0_writes(
    method, tiny_model_dir, pairs_file, tmp_path, cli_run, shared_runs
):
    result = shared_runs.get(
        f"{method}-ddp", lambda out: run_args(method, tiny_model_dir, pairs_file, out, per_device=2), num_processes=2
    )  # tests/test_deepspeed.py compares ZeRO runs with it
    two = result.output_dir
    assert result.returncode == 0, result.stderr

    assert (
        "batch: 2 per device x 1 accumulation steps x 2 processes = 4 examples per optimizer step (global)"
        in result.stderr
    )
    checksums = result.rank_checksums
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr
    assert "find_unused_parameters=True" not in result.stderr

    # Rank 0 alone wrote: every step once in metrics.jsonl, one model, each log line once.
    assert [r["step"] for r in train_rows(two)] == [1, 2, 3]
    assert sum("train_runtime" in r for r in result.metrics) == 1
    assert sum("eval_loss" in r for r in result.metrics) == 1
    assert sorted(p.name for p in two.iterdir()) == [
        "COMPLETE",
        "README.md",
        "checkpoints",
        "config.yaml",
        "inputs.json",
        "metrics.jsonl",
        "model",
        "plots",
        "report.html",
        "summary.json",
    ]
    assert sorted(p.name for p in (two / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert all((p / "COMPLETE").is_file() for p in (two / "checkpoints").glob("checkpoint-*"))
    assert result.stderr.count("saved model to") == 1

    # The ranks saw different halves of each global batch: same as one process with 4, unlike one with 2.
    whole = tmp_path / "one-process-x4"
    assert cli_run(*run_args(method, tiny_model_dir, pairs_file, whole, per_device=4)).exit_code == 0
    half = tmp_path / "one-process-x2"
    assert cli_run(*run_args(method, tiny_model_dir, pairs_file, half, per_device=2)).exit_code == 0
    two_ranks, one_x4, one_x2 = (model_tensors(d / "model") for d in (two, whole, half))
    moved = max_difference(one_x4, model_tensors(tiny_model_dir))
    assert moved > 1e-3
    assert max_difference(two_ranks, one_x4) < 1e-3 * moved
    assert max_difference(two_ranks, one_x2) > 0.05 * moved
    for got, want in zip(train_rows(two), train_rows(whole)):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_ctrl_c_stops_both_ranks_at_one_checkpoint_and_the_hint_resumes(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "stopped"
    running = RunningProcess(run_args("sft", tiny_model_dir, pairs_file, out, per_device=2, steps=40), num_processes=2)
    running.wait_for_step(2)
    running.signal(signal.SIGINT)  # what Ctrl-C in a terminal sends (the launcher is in its own session)
    result = running.wait()
    assert result.returncode == 130, result.stderr
    stopped_at = last_step(out)
    checkpoint = out / "checkpoints" / f"checkpoint-{stopped_at}"
    assert f"stopped at step {stopped_at}; checkpoint saved to {checkpoint}" in result.stderr
    assert {"COMPLETE", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    assert "Traceback" not in result.stderr and not (out / "model").exists()

    hint = result.stderr.split("Stopped. Resume with:\n", 1)[1].splitlines()[0].strip()
    command = shlex.split(hint)
    assert "--num-processes" in command and command[-3:] == ["--resume", "--output-dir", str(out)]
    resumed = subprocess.run(
        easyrlhf_command(*command[1:]), env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"--resume: continuing from {checkpoint}" in resumed.stderr
    assert [r["step"] for r in train_rows(out)] == list(range(1, 41))
    assert "identical" in resumed.stderr and (out / "model" / "model.safetensors").is_file()


def test_several_machines_share_one_output_dir_claimed_by_the_first(tiny_model_dir, pairs_file, tmp_path, cli_run):
    from easyrlhf_core.runtime.lifecycle import prepare
    from easyrlhf_core.runtime.run import RunRequest

    args = [
        "run",
        "--method",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "jsonl",
        "--data-files",
        str(pairs_file),
        "--num-machines",
        "2",
    ]
    result = cli_run(*args)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --output-dir: a run on several machines needs --output-dir: the same "
        "path on every machine, on a filesystem they all see"
    )

    out = tmp_path / "shared"
    out.mkdir()
    (out / "config.yaml").write_text("written by machine 0\n")
    flags = {"model": str(tiny_model_dir), "dataset": "jsonl", "data_files": [str(pairs_file)], "output_dir": str(out)}
    run = prepare(RunRequest(method="sft", flags=flags, num_machines=2, machine_rank=1))
    assert run.output_dir == out and (out / "config.yaml").read_text() == "written by machine 0\n"
