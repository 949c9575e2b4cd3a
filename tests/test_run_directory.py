"""The output directory: one writer at a time (two real processes on one directory), a failure before
training leaves it as it was found (so the corrected command just works), a finished run resumed changes
nothing, and library failures reach the user as one line naming the option or file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from easyrlhf_core.runtime.run_directory import LOCK_FILE, DirectoryInUse, RunDirectory
from tests.subprocess_runs import RunningProcess, read_metrics, run_easyrlhf, tiny_sft_args, toy_pair, write_rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", [toy_pair(i) for i in range(24)])


def sft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_sft_args(model, data, out, "--set", "save_steps=0", *extra)


def _snapshot(path: Path) -> dict:
    return {p.relative_to(path): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


# --------------------------------------------------------------------------------------------------
# One writer


def test_a_second_run_into_a_live_directory_is_refused(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "live"
    first = RunningProcess(sft_args(tiny_model_dir, pairs, out, "--max-steps", "200"))  # outlives three refusals
    try:
        first.wait_for_step(1)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = run_easyrlhf(sft_args(tiny_model_dir, pairs, out, "--max-steps", "40", *extra))
            assert second.returncode == 2, second.stderr
            lines = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
            assert len(lines) == 1 and "Traceback" not in second.stderr
            assert "another easyrlhf run is writing to this output directory" in lines[0]
            assert f"pid {first.process.pid}" in lines[0], lines[0]
        done = first.wait()
    finally:
        first.kill()
    assert done.returncode == 0, done.stderr
    steps = [row["step"] for row in read_metrics(out) if "loss" in row]
    assert steps == sorted(set(steps)) and steps[-1] == 200  # every step exactly once: one writer
    assert not (out / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "easyrlhf run"})
    )
    notes: list[str] = []
    directory = RunDirectory(out, log=notes.append).lock()
    assert any(
        "taking over the lock" in n and f"pid {int(dead.stdout)}" in n and "no longer running" in n for n in notes
    ), notes
    directory.release()
    assert not (out / LOCK_FILE).exists()


def test_ranks_keep_the_directory_taken_after_their_launcher_died(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    RunDirectory(out).lock().announce_ranks()  # the launcher named itself, then died without releasing
    (out / LOCK_FILE).unlink()
    rank = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from easyrlhf_core.runtime.run_directory import hold_for_rank\n"
            f"assert hold_for_rank(Path({str(out)!r}))\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rank.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUse, match="the ranks of another easyrlhf run are still writing"):
            RunDirectory(out).lock()
    finally:
        rank.kill()
        rank.wait()
    RunDirectory(out).lock().release()  # free again once the rank is gone


# --------------------------------------------------------------------------------------------------
# Failures before training


@pytest.fixture
def damaged_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return out


@pytest.mark.parametrize("case", ["missing-model", "damaged-weights", "lora-targets"])
def test_a_failure_before_training_leaves_the_directory_as_it_was(
    case, cli_run, tiny_model_dir, damaged_model, pairs, tmp_path
):
    out = tmp_path / "run"
    bad = {
        "missing-model": ["--model", str(tmp_path / "no" / "such-model")],
        "damaged-weights": ["--model", str(damaged_model)],
        "lora-targets": ["--lora", "--set", "lora.target_modules=[qkv_proj]"],
    }[case]
    args = sft_args(tiny_model_dir, pairs, out, "--max-steps", "1")
    result = cli_run(*args, *bad)
    assert result.exit_code != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {
        "missing-model": "model path not found",
        "damaged-weights": f"Error: {damaged_model / 'model.safetensors'}: damaged weights file: it is truncated",
        "lora-targets": "Error: lora.target_modules: 'qkv_proj' matches no module",
    }[case]
    assert expected in error[0], error[0]
    if case == "lora-targets":
        assert "q_proj" in error[0] and "down_proj" in error[0]  # the names LoRA could target
    assert not out.exists()
    # the corrected command just works
    assert cli_run(*args).exit_code == 0
    assert (out / "model").is_dir()


def test_overwrite_restores_the_old_run_when_the_new_one_fails_before_training(
    cli_run, tiny_model_dir, damaged_model, pairs, tmp_path
):
    out = tmp_path / "run"
    assert cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "1")).exit_code == 0
    before = _snapshot(out)
    failed = cli_run(*sft_args(damaged_model, pairs, out, "--max-steps", "1", "--overwrite"))
    assert failed.exit_code != 0 and "damaged weights file" in failed.stderr
    assert _snapshot(out) == before  # the previous run is back, byte for byte
    assert not (out / ".easyrlhf.replaced").exists()
    assert cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "2", "--overwrite")).exit_code == 0
    assert not (out / ".easyrlhf.replaced").exists()
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]


def test_leftovers_of_a_run_killed_before_training_are_cleared(cli_run, tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("method: sft\n")  # what a start killed by the OOM killer left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout)}))
    result = cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "1"))
    assert result.exit_code == 0, result.stderr
    assert "died before training; removed what it left (config.yaml)" in result.stderr


# --------------------------------------------------------------------------------------------------
# A finished run resumed


def test_resume_of_a_finished_trainer_run_changes_nothing_unless_max_steps_rises(
    cli_run, tiny_model_dir, pairs, tmp_path
):
    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, pairs, out, "--set", "save_steps=2")
    assert cli_run(*args, "--max-steps", "2").exit_code == 0
    before = _snapshot(out)
    again = cli_run(*args, "--max-steps", "2", "--resume")
    assert again.exit_code == 0 and "is complete; nothing to do" in again.stderr, again.stderr
    assert _snapshot(out) == before
    more = cli_run(*args, "--max-steps", "4", "--resume")
    assert more.exit_code == 0, more.stderr
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3, 4]
    assert "max_steps: 4" in (out / "config.yaml").read_text()


def test_resume_of_a_finished_ppo_run_without_checkpoints(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "ppo"
    args = [
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--reward",
        "length",
        "--output-dir",
        str(out),
        "--set",
        "max_new_tokens=4",
        "--set",
        "rollout_batch_size=4",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=0",
        "--set",
        "save_steps=100",
    ]
    assert cli_run(*args, "--max-steps", "1").exit_code == 0
    before = _snapshot(out)
    again = cli_run(*args, "--max-steps", "1", "--resume")
    assert again.exit_code == 0 and "is complete; nothing to do" in again.stderr
    more = cli_run(*args, "--max-steps", "3", "--resume")
    assert more.exit_code == 2 and "no complete checkpoint to continue from (save_steps=100)" in more.stderr
    assert _snapshot(out) == before


def test_a_killed_overwrite_gets_the_old_contents_back(tmp_path):
    out = tmp_path / "run"
    (out / ".easyrlhf.replaced").mkdir(parents=True)
    (out / ".easyrlhf.replaced" / "config.yaml").write_text("the old run\n")
    (out / "config.yaml").write_text("the killed new run\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout)}))
    notes: list[str] = []
    RunDirectory(out, log=notes.append).lock().release()
    assert (out / "config.yaml").read_text() == "the old run\n" and not (out / ".easyrlhf.replaced").exists()
    assert any("restored the contents" in n for n in notes), notes
