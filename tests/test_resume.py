"""Checkpoints and ``--resume`` for the Trainer-based methods (sft, rm, dpo, ipo, rrhf): a run stopped by
SIGINT / SIGTERM (clean stop, checkpoint at the stop) or SIGKILL (between checkpoints) resumes to the same
metrics and weights as an uninterrupted run; a broken newest checkpoint is skipped with a warning;
checkpoints are marked complete only once written."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from easyrlhf_core.kit.checkpoints import COMPLETE_MARKER, checkpoint_problem, latest_checkpoint, prune_checkpoints
from tests.subprocess_runs import (
    RunningProcess,
    easyrlhf_command,
    last_step,
    model_tensors,
    read_metrics,
    subprocess_env,
    toy_pair,
    toy_ranked,
    train_rows,
    write_rows,
)

STEPS = 30
#: What each method's rows must reproduce after a resume.
COMPARED = ("loss", "grad_norm", "learning_rate", "num_tokens")


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "pairs": write_rows(root / "pairs.jsonl", [toy_pair(i) for i in range(24)]),
        "ranked": write_rows(root / "ranked.jsonl", [toy_ranked(i) for i in range(24)]),
    }


def run_args(method: str, model: Path, data_files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    data = data_files["ranked" if method == "rrhf" else "pairs"]
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
        str(STEPS),
        "--seed",
        "3",
        "--set",
        "max_length=64",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "logging_steps=1",
        "--set",
        "save_steps=5",
        "--set",
        "eval_fraction=0",
        *extra,
    ]


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    """Every training step logged once, with the uninterrupted run's values; the same final weights."""
    got, want = train_rows(resumed), train_rows(uninterrupted)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(got, want):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    final, expected = model_tensors(resumed / "model"), model_tensors(uninterrupted / "model")
    assert final.keys() == expected.keys()
    for name in final:
        assert (final[name] - expected[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    "method, stop", [("sft", signal.SIGINT), ("rm", signal.SIGTERM), ("dpo", signal.SIGKILL), ("rrhf", signal.SIGKILL)]
)
def test_a_stopped_run_resumes_to_the_uninterrupted_result(method, stop, tiny_model_dir, data_files, tmp_path, cli_run):
    whole = tmp_path / "whole"
    assert cli_run(*run_args(method, tiny_model_dir, data_files, whole)).exit_code == 0

    out = tmp_path / "stopped"
    running = RunningProcess(run_args(method, tiny_model_dir, data_files, out))
    checkpoints = out / "checkpoints"
    if stop == signal.SIGKILL:  # mid-step, after checkpoint-5 and a few more steps
        running.wait_until(
            lambda: (checkpoints / "checkpoint-5" / COMPLETE_MARKER).is_file() and last_step(out) >= 7,
            what="checkpoint-5 and step 7",
        )
        running.kill()
        kept = latest_checkpoint(checkpoints)
        # Usually steps after the checkpoint are lost and redone; on a fast machine the kill can land right after
        # the next checkpoint was completed (then nothing is redone, and the resume must still match).
        assert kept is not None and last_step(out) >= int(kept.name.split("-")[1])
        resumed = cli_run(*run_args(method, tiny_model_dir, data_files, out), "--resume")
        assert resumed.exit_code == 0, resumed.stderr
        assert f"--resume: continuing from {kept}" in resumed.stderr
    else:  # a clean stop: checkpoint at the current step, exit 128 + signal, the command that resumes
        running.wait_for_step(3)
        running.signal(stop)
        result = running.wait()
        assert result.returncode == 128 + stop, result.stderr
        name = signal.Signals(stop).name
        assert f"received {name}: stopping after this step and saving a checkpoint" in result.stderr
        stopped_at = last_step(out)
        assert (
            f"stopped at step {stopped_at}; checkpoint saved to {checkpoints / f'checkpoint-{stopped_at}'}"
            in result.stderr
        )
        assert (checkpoints / f"checkpoint-{stopped_at}" / COMPLETE_MARKER).is_file()
        assert not (out / "model").exists() and stopped_at < STEPS
        hint = result.stderr.split("Stopped. Resume with:\n", 1)[1].splitlines()[0].strip()
        command = shlex.split(hint)
        assert command[0] == "easyrlhf" and command[-3:] == ["--resume", "--output-dir", str(out)]
        resumed = subprocess.run(
            easyrlhf_command(*command[1:]), env=subprocess_env(), capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, whole)


# --------------------------------------------------------------------------------------------------
# A broken newest checkpoint


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "weights cut short": (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    "optimizer cut short": (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
    "marker missing": (lambda c: (c / COMPLETE_MARKER).unlink(), "no COMPLETE marker (its save did not finish)"),
    "state garbled": (
        lambda c: (c / "trainer_state.json").write_text('{"global_st'),
        "trainer_state.json does not parse",
    ),
}


@pytest.fixture(scope="module")
def finished_ipo_run(tiny_model_dir, data_files, tmp_path_factory) -> Path:
    """An ipo run of 6 steps with checkpoints 4 and 6 (save_steps=2, the default save_total_limit=2)."""
    from tests.helpers import run_cli

    out = tmp_path_factory.mktemp("ipo") / "run"
    result = run_cli(*ipo_args(tiny_model_dir, data_files, out))
    assert result.exit_code == 0, result.stderr
    return out


def ipo_args(model: Path, data_files: dict[str, Path], out: Path) -> list[str]:
    return [
        "run",
        "--method",
        "ipo",
        "--model",
        str(model),
        "--dataset",
        "jsonl",
        "--data-files",
        str(data_files["pairs"]),
        "--output-dir",
        str(out),
        "--max-steps",
        "6",
        "--seed",
        "5",
        "--set",
        "max_length=64",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "logging_steps=1",
        "--set",
        "save_steps=2",
        "--set",
        "eval_fraction=0",
    ]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_resume_skips_a_broken_newest_checkpoint(
    corruption, finished_ipo_run, tiny_model_dir, data_files, tmp_path, cli_run
):
    out = tmp_path / "run"
    shutil.copytree(finished_ipo_run, out)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    damage, problem = CORRUPTIONS[corruption]
    damage(checkpoints / "checkpoint-6")
    (out / "COMPLETE").unlink()  # as if killed after its last checkpoint, before the run's end
    shutil.rmtree(out / "model")

    result = cli_run(*ipo_args(tiny_model_dir, data_files, out), "--resume")
    assert result.exit_code == 0, result.stderr
    assert f"warning: skipping checkpoint {checkpoints / 'checkpoint-6'}: {problem}" in result.stderr
    assert f"--resume: continuing from {checkpoints / 'checkpoint-4'}" in result.stderr
    assert checkpoint_problem(checkpoints / "checkpoint-6") is None  # written again, whole
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]  # steps 5-6 redone, not repeated
    assert sum("train_runtime" in r for r in rows) == 1
    for got, want in zip(train_rows(out), train_rows(finished_ipo_run)):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


# --------------------------------------------------------------------------------------------------
# The pieces


def fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    import torch
    from safetensors.torch import save_file

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(path / "model.safetensors"))
    torch.save({"state": 1}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        (path / COMPLETE_MARKER).write_text("done\n")
    return path


def test_latest_checkpoint_wants_the_marker_and_intact_files(tmp_path):
    logged: list[str] = []
    good = fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, complete=False)
    cut = fake_checkpoint(tmp_path, 6)
    truncate(cut / "model.safetensors")
    assert checkpoint_problem(good) is None
    assert latest_checkpoint(tmp_path, log=logged.append) == good
    assert logged == [
        f"warning: skipping checkpoint {cut}: model.safetensors is truncated",
        f"warning: skipping checkpoint {tmp_path / 'checkpoint-4'}: no COMPLETE marker (its save did not finish)",
    ]
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_resume_drops_the_metrics_rows_it_will_log_again(tmp_path):
    from easyrlhf_core.kit.metrics import drop_rows_after

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0},
        {"step": 2, "eval_loss": 2.5},
        {"step": 3, "loss": 1.0},
        {"step": 3, "train_runtime": 1.0, "train_loss": 2.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # a row cut by a kill
    drop_rows_after(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]


def test_resume_hint_repeats_the_command_with_resume():
    from easyrlhf_core.commands.cli import resume_command

    argv = [
        "run",
        "--method",
        "dpo",
        "--overwrite",
        "-o",
        "old",
        "--set",
        "beta=0.2",
        "--num-processes",
        "2",
        "--data-files",
        "my data.jsonl",
    ]
    assert resume_command(argv, "runs/x y") == (
        "easyrlhf run --method dpo --set beta=0.2 --num-processes 2 "
        "--data-files 'my data.jsonl' --resume --output-dir 'runs/x y'"
    )


def test_stop_signals_ask_for_a_stop_and_restore_the_handlers():
    import os

    from easyrlhf_core.kit.stopping import RunInterrupted, StopSignals

    before = signal.getsignal(signal.SIGTERM)
    logged: list[str] = []
    with StopSignals(logged.append) as stop:
        assert stop.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat is ignored
        assert stop.requested() == signal.SIGTERM and stop.agreed == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert logged == ["received SIGTERM: stopping after this step and saving a checkpoint"]
    assert RunInterrupted(signal.SIGINT).exit_code == 130


def test_the_trainers_report_to_nothing_themselves(tmp_path):
    """report_to is ours (easyrlhf_core.runtime.tracking): every metrics.jsonl row goes to the trackers, so the
    HF integrations stay off and nothing lands under checkpoints/runs/."""
    from transformers import TrainingArguments

    from easyrlhf_core.kit.config import BaseConfig
    from easyrlhf_core.kit.trainer_run import training_arguments

    run = SimpleNamespace(checkpoints_dir=tmp_path / "checkpoints")
    args = TrainingArguments(**training_arguments(BaseConfig(report_to=["tensorboard"]), run, has_eval=False))
    assert args.report_to == []


def test_a_run_that_failed_after_its_last_step_resumes_without_training_further(
    tiny_model_dir, data_files, tmp_path, cli_run
):
    """Training reached max_steps and saved its checkpoint, then a later stage failed (the final eval, the save):
    --resume restores that checkpoint and goes on to the eval and the save, with no step past max_steps
    (transformers alone trains one more)."""
    out = tmp_path / "dpo"
    args = run_args("dpo", tiny_model_dir, data_files, out, "--max-steps", "4", "--set", "save_steps=2")
    first = cli_run(*args)
    assert first.exit_code == 0, first.stderr[-3000:]
    trained = model_tensors(out / "model")
    shutil.rmtree(out / "model")  # as if the run had died after its last checkpoint
    (out / "COMPLETE").unlink()
    resumed = cli_run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert "training is done, going on to the final eval and save" in resumed.stderr
    assert max(r["step"] for r in read_metrics(out)) == 4
    after = model_tensors(out / "model")
    assert after.keys() == trained.keys() and all((after[k] == trained[k]).all() for k in trained)
