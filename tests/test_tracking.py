"""report_to for every method, PPO and the pipeline included: TensorBoard events under OUTPUT_DIR/logs hold
the same scalars per step as metrics.jsonl, and a resumed run continues the curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.subprocess_runs import toy_pair, toy_ranked, write_rows

TB = ["--set", "report_to=[tensorboard]"]


def events(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the TensorBoard event files directly in ``logs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logs))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def rows(out: Path, key: str) -> list[tuple[int, float]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if isinstance(r.get(key), (int, float))]


def assert_same(out: Path, logs: Path, *keys: str) -> None:
    logged = events(logs)
    for key in keys:
        want = rows(out, key)
        assert want, key
        got = logged[key]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "pairs": write_rows(root / "pairs.jsonl", [toy_pair(i) for i in range(12)]),
        "ranked": write_rows(root / "ranked.jsonl", [toy_ranked(i) for i in range(12)]),
    }


def common(model: Path, out: Path) -> list[str]:
    return [
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--set",
        "max_length=64",
        "--set",
        "save_steps=0",
        "--set",
        "eval_fraction=0",
        "--set",
        "per_device_train_batch_size=2",
        *TB,
    ]


@pytest.mark.parametrize("method", ["sft", "dpo", "rrhf"])
def test_trainer_methods_log_their_metrics_rows(method, cli_run, tiny_model_dir, data, tmp_path):
    out = tmp_path / method
    files = data["ranked" if method == "rrhf" else "pairs"]
    result = cli_run(
        "run",
        "--method",
        method,
        "--dataset",
        "jsonl",
        "--data-files",
        str(files),
        "--max-steps",
        "3",
        *common(tiny_model_dir, out),
    )
    assert result.exit_code == 0, result.stderr
    assert f"tracking: tensorboard in {out / 'logs'} (watch live: tensorboard --logdir {out / 'logs'})" in result.stderr
    assert_same(out, out / "logs", "loss", "learning_rate")
    assert not (out / "checkpoints" / "runs").exists()  # no second copy in transformers' default place


def test_ppo_logs_score_and_kl_per_iteration(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "ppo"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--reward",
        "length",
        "--max-steps",
        "2",
        "--set",
        "max_new_tokens=4",
        "--set",
        "rollout_batch_size=4",
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=0",
        *common(tiny_model_dir, out),
    )
    assert result.exit_code == 0, result.stderr
    assert_same(out, out / "logs", "score", "kl", "policy_loss")


def test_pipeline_stages_log_under_one_logs_dir(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "rlhf"
    result = cli_run(
        "run",
        "--method",
        "rlhf",
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=2",
        "--set",
        "sft.max_length=128",
        "--set",
        "rm.max_length=128",
        "--set",
        "ppo.max_length=128",
        "--set",
        "ppo.max_new_tokens=4",
        "--set",
        "ppo.rollout_batch_size=4",
        *TB,
    )
    assert result.exit_code == 0, result.stderr
    assert_same(out / "sft", out / "logs" / "sft", "loss")
    assert_same(out / "rm", out / "logs" / "rm", "loss")
    assert_same(out / "ppo", out / "logs" / "ppo", "score", "kl")


def test_a_resumed_run_continues_the_curves(cli_run, tiny_model_dir, data, tmp_path):
    out = tmp_path / "sft"
    args = [
        "run",
        "--method",
        "sft",
        "--dataset",
        "jsonl",
        "--data-files",
        str(data["pairs"]),
        *common(tiny_model_dir, out),
        "--set",
        "save_steps=2",
    ]
    assert cli_run(*args, "--max-steps", "2").exit_code == 0
    resumed = cli_run(*args, "--max-steps", "4", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert [step for step, _ in events(out / "logs")["loss"]] == [1, 2, 3, 4]  # no jump back to 0, no repeats
    assert_same(out, out / "logs", "loss")


@pytest.mark.parametrize(
    "name, message",
    [
        ("tensorbored", "unknown logger 'tensorbored'"),
        ("mlflow", "the 'mlflow' logger needs its package: pip install mlflow"),
    ],
)
def test_a_tracker_that_cannot_start_fails_before_anything_loads(cli_run, tmp_path, name, message):
    out = tmp_path / "never"
    result = cli_run("run", "--method", "sft", "--output-dir", str(out), "--set", f"report_to=[{name}]")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: report_to: {message}")
    assert not out.exists()


def test_wandb_without_a_login_is_refused(monkeypatch, tmp_path):
    from easyrlhf_core.kit.errors import ConfigError
    from easyrlhf_core.kit.trackers import _wandb_can_log, check_trackers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert not _wandb_can_log()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if wandb were installed
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        check_trackers(["wandb"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_trackers(["wandb"])
