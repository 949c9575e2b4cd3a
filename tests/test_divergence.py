"""A run whose loss or gradient norm turns NaN / inf stops at that step with one ``Error:`` line naming it and
the levers, keeps the newest checkpoint from before it, writes no ``COMPLETE`` and no ``model/``, and its
metrics show the NaN (never 0); a finished run trained further continues on a learning-rate schedule for the
new horizon (issue 26 items 6 and 7)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from easyrlhf_core.kit.checkpoints import checkpoint_problem, latest_checkpoint, list_checkpoints
from tests.subprocess_runs import (
    model_tensors,
    ppo_run_args,
    read_metrics,
    tiny_sft_args,
    toy_pair,
    toy_prompt,
    train_rows,
    write_rows,
)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", [toy_pair(i) for i in range(24)])


def sft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_sft_args(
        model, data, out, "--seed", "3", "--set", "logging_steps=1", "--set", "learning_rate=1e-3", *extra
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def assert_all_finite(tensors: dict) -> None:
    assert tensors
    for name, tensor in tensors.items():
        assert bool(tensor.float().isfinite().all()), name


def assert_stopped_at(result, out: Path, step: int, unit: str = "step") -> None:
    """Nonzero exit, one Error line naming the step and the levers, no COMPLETE, no model/, every
    checkpoint left from before the step, intact and finite."""
    assert result.exit_code != 0, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert f"training diverged at {unit} {step}: " in errors[0]
    assert "learning_rate" in errors[0] and "max_grad_norm" in errors[0]
    assert not (out / "COMPLETE").exists() and not (out / "model").exists()
    kept = latest_checkpoint(out / "checkpoints")
    assert kept is not None and int(kept.name.split("-")[1]) < step
    assert f"the newest complete checkpoint, {kept}, is intact" in errors[0]
    for checkpoint in list_checkpoints(out / "checkpoints"):
        assert int(checkpoint.name.split("-")[1]) < step and checkpoint_problem(checkpoint) is None
        assert_all_finite(model_tensors(checkpoint))


def test_a_trainer_run_whose_loss_turns_nan_stops_at_that_step(cli_run, tiny_model_dir, pairs, tmp_path, monkeypatch):
    """Deterministic: the SFT loss is NaN from step 3 on (compute_loss times NaN); save_steps=2."""
    from trl import SFTTrainer

    compute_loss = SFTTrainer.compute_loss

    def nan_from_step_3(self, model, inputs, *args, **kwargs):
        result = compute_loss(self, model, inputs, *args, **kwargs)
        if not model.training or self.state.global_step < 2:  # global_step counts the steps already done
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    monkeypatch.setattr(SFTTrainer, "compute_loss", nan_from_step_3)
    out = tmp_path / "run"
    result = cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "6", "--set", "save_steps=2"))
    assert_stopped_at(result, out, 3)
    assert "the loss is nan" in error_lines(result.stderr)[0]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["loss"] == "nan" and rows[2]["grad_norm"] == "nan"  # NaN shown as NaN, never as 0
    assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in rows[:2])
    # the kept checkpoint loads and resumes (to the same fault: the loss is still NaN from step 3)
    again = cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "6", "--set", "save_steps=2"), "--resume")
    assert f"--resume: continuing from {out / 'checkpoints' / 'checkpoint-2'}" in again.stderr
    assert_stopped_at(again, out, 3)


def test_a_trainer_run_that_blows_up_never_saves_nan_weights(cli_run, tiny_model_dir, pairs, tmp_path):
    """The fault of the issue: SFT at learning rate 1e6, a checkpoint at every step."""
    out = tmp_path / "run"
    result = cli_run(
        *sft_args(tiny_model_dir, pairs, out, "--max-steps", "8", "--set", "save_steps=1", "--set", "learning_rate=1e6")
    )
    step = next(
        r["step"]
        for r in train_rows(out)
        if not isinstance(r.get("grad_norm"), float) or not isinstance(r.get("loss"), float)
    )
    assert_stopped_at(result, out, step)
    assert "set a lower learning_rate (now 1e+06)" in error_lines(result.stderr)[0]
    assert all(r["loss"] != 0 for r in train_rows(out))


def test_a_ppo_run_whose_gradients_turn_nan_stops_at_that_iteration(cli_run, tiny_model_dir, tmp_path, monkeypatch):
    """Deterministic: iteration 3's backward pass gets a NaN loss (so NaN gradients); a checkpoint every
    iteration."""
    from easyrlhf_plugins.methods.ppo.trainer import PPOTrainer

    update = PPOTrainer.update

    def poisoned(self, ro, adv, iteration):
        if iteration != 3:
            return update(self, ro, adv, iteration)
        backward = self.accelerator.backward
        self.accelerator.backward = lambda loss, **kwargs: backward(loss * float("nan"), **kwargs)
        try:
            return update(self, ro, adv, iteration)
        finally:
            del self.accelerator.backward

    monkeypatch.setattr(PPOTrainer, "update", poisoned)
    prompts = write_rows(tmp_path / "prompts.jsonl", [toy_prompt(i) for i in range(16)])
    out = tmp_path / "ppo"
    result = cli_run(*ppo_run_args(tiny_model_dir, prompts, out, 5))
    assert_stopped_at(result, out, 3, unit="iteration")
    assert "the gradient norm is nan" in error_lines(result.stderr)[0]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "value_model").exists()
    rows = [r for r in read_metrics(out) if "policy_loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert isinstance(rows[1]["value_mean"], float) and rows[2]["policy_loss"] != 0


def test_metrics_rows_write_nan_and_inf_as_strings(tmp_path):
    from types import SimpleNamespace

    from easyrlhf_core.runtime.run import Run

    run = SimpleNamespace(
        is_main_process=True,
        metrics_path=tmp_path / "metrics.jsonl",
        trackers=None,
        progress=SimpleNamespace(update=lambda *a: None),
    )
    Run.log_metrics(run, 3, {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": 0.5})
    assert json.loads(run.metrics_path.read_text()) == {
        "step": 3,
        "loss": "nan",
        "grad_norm": "inf",
        "learning_rate": 0.5,
    }


# --------------------------------------------------------------------------------------------------
# Training a finished run further (item 6)


def linear_lr(peak: float, total: int, step: int) -> float:
    """The learning rate transformers' linear schedule (no warm-up) logs at ``step`` (1-based)."""
    return peak * (total - (step - 1)) / total


def test_a_finished_run_trained_further_continues_on_a_schedule_for_the_new_horizon(
    cli_run, tiny_model_dir, pairs, tmp_path
):
    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, pairs, out, "--set", "save_steps=2")
    assert cli_run(*args, "--max-steps", "4").exit_code == 0
    before = model_tensors(out / "model")
    more = cli_run(*args, "--max-steps", "8", "--resume")
    assert more.exit_code == 0, more.stderr
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows[:4]:
        assert row["learning_rate"] == pytest.approx(linear_lr(1e-3, 4, row["step"]))
    for row in rows[4:]:  # steps 5..8 at the 8-step schedule's rates: 5e-4, 3.75e-4, 2.5e-4, 1.25e-4
        assert row["learning_rate"] > 0
        assert row["learning_rate"] == pytest.approx(linear_lr(1e-3, 8, row["step"]))
    after = model_tensors(out / "model")
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 1e-5
    assert (
        "--resume: resuming at step 4 of 8 (was 4): learning-rate schedule rebuilt for the new horizon" in more.stderr
    )


def test_ppo_trained_further_continues_on_a_schedule_for_the_new_horizon(cli_run, tiny_model_dir, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [toy_prompt(i) for i in range(16)])
    out = tmp_path / "ppo"
    args = [*ppo_run_args(tiny_model_dir, prompts, out, 2), "--set", "save_total_limit=4"]
    first = cli_run(*args)
    assert first.exit_code == 0, first.stderr
    args[args.index("--max-steps") + 1] = "4"
    more = cli_run(*args, "--resume")
    assert more.exit_code == 0, more.stderr
    rates = {r["step"]: r["learning_rate"] for r in read_metrics(out) if "learning_rate" in r}
    # one optimizer step per iteration; the rate logged is the one after the iteration's step
    assert rates[1] == pytest.approx(linear_lr(1e-3, 2, 2)) and rates[2] == pytest.approx(0.0, abs=1e-12)
    assert rates[3] == pytest.approx(linear_lr(1e-3, 4, 4)) and rates[4] == pytest.approx(0.0, abs=1e-12)
    # iteration 3 ran at the new schedule's rate (5e-4), not at the old horizon's last one (0): it moved the weights
    at_2, at_3 = (model_tensors(out / "checkpoints" / f"checkpoint-{i}") for i in (2, 3))
    assert max(float((at_3[k] - at_2[k]).abs().max()) for k in at_2) > 1e-6
    assert (
        "--resume: resuming at iteration 2 of 4 (was 2): learning-rate schedule rebuilt for the new horizon"
        in more.stderr
    )


def test_resume_at_the_same_horizon_says_the_schedule_is_as_saved(cli_run, tiny_model_dir, pairs, tmp_path):
    """An interrupted run (COMPLETE and model/ gone after its checkpoint-2) resumed with the same max_steps."""
    import shutil

    whole = tmp_path / "whole"
    args = sft_args(tiny_model_dir, pairs, whole, "--set", "save_steps=2", "--max-steps", "4")
    assert cli_run(*args).exit_code == 0
    out = tmp_path / "cut"
    shutil.copytree(whole, out)
    for later in ("COMPLETE", "model", "checkpoints/checkpoint-4"):
        path = out / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = cli_run(*sft_args(tiny_model_dir, pairs, out, "--set", "save_steps=2", "--max-steps", "4"), "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "--resume: resuming at step 2 of 4: learning-rate schedule as saved" in resumed.stderr
    assert [r["learning_rate"] for r in train_rows(out)] == [r["learning_rate"] for r in train_rows(whole)]
    final, expected = model_tensors(out / "model"), model_tensors(whole / "model")
    assert all(bool((final[k] - expected[k]).abs().max() < 1e-6) for k in expected)


def test_resume_with_a_lower_learning_rate_continues_at_it(cli_run, tiny_model_dir, pairs, tmp_path):
    """The lever after a divergence: --resume from the kept checkpoint with a lower learning_rate (the
    checkpoint's scheduler holds the old peak; the run's config wins)."""
    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, pairs, out, "--set", "save_steps=2", "--max-steps", "4")
    assert cli_run(*args, "--set", "learning_rate=1e-2", "--max-steps", "2").exit_code == 0
    (out / "COMPLETE").unlink()  # as if it had diverged at step 3
    resumed = cli_run(*args, "--set", "learning_rate=1e-3", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    rows = train_rows(out)
    assert [r["learning_rate"] for r in rows[:2]] == pytest.approx([linear_lr(1e-2, 2, s) for s in (1, 2)])
    assert [r["learning_rate"] for r in rows[2:]] == pytest.approx([linear_lr(1e-3, 4, s) for s in (3, 4)])
    assert (
        "--resume: resuming at step 2 of 4 (was 2): learning-rate schedule rebuilt for the new horizon; peak "
        "learning rate 0.001 (was 0.01)" in resumed.stderr
    )


def test_under_fp16_loss_scaling_an_infinite_gradient_norm_is_a_skipped_step_not_divergence():
    import torch

    from easyrlhf_core.kit.trainer_run import DivergenceCallback

    class Accelerator:
        def __init__(self, scaler):
            self.scaler = scaler

        def clip_grad_norm_(self, *args, **kwargs):
            return torch.tensor(float("inf"))

    for scaler, expected in ((object(), []), (None, ["the gradient norm is inf"])):
        trainer = type("Trainer", (), {})()
        trainer.accelerator = Accelerator(scaler)
        trainer.training_step = lambda *a, **k: torch.tensor(0.5)
        callback = DivergenceCallback()
        callback.watch(trainer)
        trainer.training_step()
        trainer.accelerator.clip_grad_norm_([], 1.0)
        assert callback.values.check("cpu") == expected


def test_a_new_learning_rate_on_resume_keeps_the_ratios_of_parameter_groups():
    import torch

    from easyrlhf_core.kit.trainer_run import continue_schedule

    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 1e-3}, {"params": [weights[1]], "lr": 1e-2}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    logged = []
    run = type("Run", (), {"log": staticmethod(logged.append)})()
    continue_schedule(run, scheduler, step=2, total=4, was=4, peaks=2e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-2])
    continue_schedule(run, scheduler, step=2, total=4, was=4, peaks=2e-3)  # the same rate again: as saved
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-2])


RANK_1_LOSS_NAN = """
import os

if "RANK" in os.environ:  # a launched rank (not the parent, not the launcher)
    import easyrlhf_core.runtime.rank_errors as _ranks

    _record = _ranks.record_rank_error

    def _record_and_copy(message, code):  # the parent prints only the first rank's line: keep each for the test
        import time

        with open(os.path.join({copies!r}, "rank-" + os.environ["RANK"] + ".txt"), "w", encoding="utf-8") as f:
            f.write(message)
        deadline = time.monotonic() + 60  # the first rank to exit ends the other: wait until both wrote theirs
        while len(os.listdir({copies!r})) < int(os.environ["WORLD_SIZE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return _record(message, code)

    _ranks.record_rank_error = _record_and_copy

if os.environ.get("RANK") == "1":
    from trl import SFTTrainer

    _compute_loss = SFTTrainer.compute_loss

    def _nan_from_step_3(self, model, inputs, *args, **kwargs):
        result = _compute_loss(self, model, inputs, *args, **kwargs)
        if not model.training or self.state.global_step < 2:
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    SFTTrainer.compute_loss = _nan_from_step_3
"""


def test_a_loss_nan_on_one_rank_only_stops_both_ranks_at_that_step(tiny_model_dir, pairs, tmp_path):
    """Two processes (gloo): rank 1's loss is NaN from step 3 on, rank 0's stays finite. The check is agreed
    across ranks, so both stop at step 3 (no rank waits in a collective for the other: no hang), each with
    its own line (rank 0's: "not finite on another process"), and the parent prints one of them."""
    from tests.subprocess_runs import run_easyrlhf

    copies, site = tmp_path / "rank-errors", tmp_path / "site"
    copies.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(RANK_1_LOSS_NAN.format(copies=str(copies)), encoding="utf-8")
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    out = tmp_path / "run"
    result = run_easyrlhf(
        sft_args(tiny_model_dir, pairs, out, "--max-steps", "6", "--set", "save_steps=2"),
        num_processes=2,
        timeout=300,
        env={"PYTHONPATH": pythonpath},
    )
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("Error: rank "), result.stderr
    assert "training diverged at step 3: " in errors[0] and "Traceback" not in result.stderr
    lines = {path.name: path.read_text(encoding="utf-8") for path in copies.iterdir()}
    assert sorted(lines) == ["rank-0.txt", "rank-1.txt"], result.stderr
    assert lines["rank-1.txt"].startswith("training diverged at step 3: the loss is nan")
    assert lines["rank-0.txt"].startswith("training diverged at step 3: the loss is not finite on another process")
    assert errors[0].split(": ", 2)[2] in lines.values()
    assert not (out / "COMPLETE").exists() and not (out / "model").exists()
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]
    assert_all_finite(model_tensors(out / "checkpoints" / "checkpoint-2"))


# --------------------------------------------------------------------------------------------------
# continue_schedule with transformers' other schedules and a warm-up (as the Trainer builds and resumes them)

PEAK = 1e-3


def scheduler_for(name: str, warmup_ratio: float, total: int):
    """transformers' scheduler ``name`` for ``total`` steps over a tiny optimizer, with the warm-up steps the
    Trainer derives from ``warmup_ratio`` (easyrlhf passes it as ``warmup_steps``)."""
    from types import SimpleNamespace

    import torch
    from transformers import TrainingArguments, get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    warmup = TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=warmup_ratio), total)
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def rates(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate of each of the next ``steps`` optimizer steps."""
    found = []
    for _ in range(steps):
        found.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return found


def resumed_rates(name: str, warmup_ratio: float, stopped_at: int, was: int, total: int) -> tuple[list[float], str]:
    """The rates of steps ``stopped_at + 1 .. total`` after a run of ``was`` steps saved at ``stopped_at``
    is resumed for ``total`` steps as the Trainer does it (a new optimizer and scheduler for ``total``, the saved
    states loaded) and :func:`continue_schedule`; and its log line."""
    import copy

    from easyrlhf_core.kit.trainer_run import continue_schedule

    optimizer, scheduler = scheduler_for(name, warmup_ratio, was)
    rates(optimizer, scheduler, stopped_at)
    saved = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict()))
    optimizer, scheduler = scheduler_for(name, warmup_ratio, total)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    logged: list[str] = []
    run = type("Run", (), {"log": staticmethod(logged.append)})()
    continue_schedule(run, scheduler, step=stopped_at, total=total, was=was, peaks=PEAK)
    assert len(logged) == 1
    return rates(optimizer, scheduler, total - stopped_at), logged[0]


SCHEDULES = [("cosine", 0.0), ("cosine", 0.25), ("constant_with_warmup", 0.5), ("linear", 0.25)]


@pytest.mark.parametrize("name, warmup_ratio", SCHEDULES)
def test_resume_at_the_same_horizon_keeps_the_rates_of_the_uninterrupted_run(name, warmup_ratio):
    whole = rates(*scheduler_for(name, warmup_ratio, 8), 8)
    assert len(set(whole)) > 2  # a schedule that moves (a warm-up, a decay)
    for stopped_at in range(1, 8):
        after, line = resumed_rates(name, warmup_ratio, stopped_at, was=8, total=8)
        assert after == whole[stopped_at:]  # bit for bit: a resume stays exact
        assert line == f"--resume: resuming at step {stopped_at} of 8: learning-rate schedule as saved"


@pytest.mark.parametrize("name, warmup_ratio", SCHEDULES)
def test_resume_with_more_steps_follows_the_schedule_of_the_new_horizon(name, warmup_ratio):
    """A run of 4 steps (stopped or finished) resumed for 8: from the step it stopped at on, the rates of a run
    made for 8 steps (its warm-up too: a warm-up ratio counts steps of the new horizon), not the old ones."""
    for stopped_at in range(1, 5):
        after, line = resumed_rates(name, warmup_ratio, stopped_at, was=4, total=8)
        new = rates(*scheduler_for(name, warmup_ratio, 8), 8)
        assert after == pytest.approx(new[stopped_at:], rel=1e-12, abs=0)
        assert line == (
            f"--resume: resuming at step {stopped_at} of 8 (was 4): learning-rate schedule rebuilt for the new horizon"
        )
    old = rates(*scheduler_for(name, warmup_ratio, 4), 4)
    more, _ = resumed_rates(name, warmup_ratio, 2, was=4, total=8)
    assert more[:2] != old[2:]  # the old horizon's rates would differ: this schedule depends on it
