"""PPO as real subprocesses: two ranks (torchrun, gloo) stay in sync and rank 0 alone writes; Ctrl-C stops
at an iteration boundary with a checkpoint, and --resume finishes the run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.subprocess_runs import RunningProcess, ppo_run_args, read_metrics, run_easyrlhf, toy_prompt, write_rows


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "prompts.jsonl", [toy_prompt(i) for i in range(16)])


def ppo_args(model: Path, data: Path, out: Path, iterations: int) -> list[str]:
    return ppo_run_args(model, data, out, iterations)


def test_two_ranks_run_ppo_in_sync_and_rank0_writes(tiny_model_dir, prompts_file, shared_runs):
    result = shared_runs.get(
        "ppo-ddp", lambda out: ppo_args(tiny_model_dir, prompts_file, out, iterations=2), num_processes=2
    )  # tests/test_deepspeed.py compares ZeRO runs with it
    out = result.output_dir
    assert result.returncode == 0, result.stderr
    checksums = result.rank_checksums
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # each iteration logged once, by rank 0
    assert result.stderr.count("saved model to") == 1 and (out / "model" / "config.json").is_file()
    assert "4 prompts (global; 2 per process)" in result.stderr


def test_ctrl_c_stops_ppo_with_a_checkpoint_and_resume_finishes(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "ppo-stopped"
    args = ppo_args(tiny_model_dir, prompts_file, out, iterations=30)
    running = RunningProcess(args)
    running.wait_for_step(2)
    running.signal(signal.SIGINT)
    stopped = running.wait()
    assert stopped.returncode == 130, stopped.stderr
    assert "Stopped. Resume with:" in stopped.stderr and "Traceback" not in stopped.stderr
    last = max(r["step"] for r in read_metrics(out))
    assert (out / "checkpoints" / f"checkpoint-{last}" / "COMPLETE").is_file()
    assert not (out / "model").exists()

    resumed = run_easyrlhf([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 31))
    assert (out / "model" / "config.json").is_file()
