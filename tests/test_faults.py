"""The ways a long run dies (docs/faults.md), each ending with one ``Error:`` line that says what happened and
what to do, the newest complete checkpoint intact: a full disk (a real small tmpfs when the machine lets us
mount one; safetensors' own exception otherwise), out of memory, a reward plugin that raises, a pickled
weights file, a rank killed; and ``--resume`` refused for another model or dataset, or one changed on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction
from easyrlhf_core.kit.checkpoints import COMPLETE_MARKER, checkpoint_problem, latest_checkpoint
from tests.plugin_fixtures import EchoMethod, EchoPlugin
from tests.subprocess_runs import read_metrics, tiny_sft_args, toy_pair, toy_prompt, write_rows


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", [toy_pair(i) for i in range(24)])


def sft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_sft_args(model, data, out, "--set", "final_eval=false", "--seed", "3", *extra)


def error_lines(result) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines


# --------------------------------------------------------------------------------------------------
# Out of disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs at ``tmp_path/disk`` (needs root and permission to mount; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_on_a_real_small_disk(small_disk, cli_run, tiny_model_dir, pairs):
    """A checkpoint of the tiny model takes ~0.45 MB: two fit on 1 MB (save_total_limit=2), the third does not."""
    out = small_disk / "run"
    args = sft_args(tiny_model_dir, pairs, out, "--max-steps", "10", "--set", "save_steps=2")
    result = cli_run(*args)
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    kept = latest_checkpoint(out / "checkpoints")
    assert kept is not None and checkpoint_problem(kept) is None
    failed = f"checkpoint-{int(kept.name.split('-')[1]) + 2}"
    assert line.startswith(
        f"Error: {out / 'checkpoints'}: the disk is full: writing {failed} ran out of space "
        f"(a checkpoint of this run takes about "
    ), line
    assert f"KB (the size of {kept.name}), " in line and " KB free there) (the partial one was removed)" in line
    assert f"the newest complete checkpoint, {kept}, is intact" in line and line.endswith("continue with --resume")
    assert not (out / "checkpoints" / failed).exists() and not (out / "COMPLETE").exists()
    # more room, and --resume finishes the run from the kept checkpoint
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_disk)], check=True)
    resumed = cli_run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"--resume: continuing from {kept}" in resumed.stderr
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 11))


def _no_space(*_args, **_kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("where", ["checkpoint", "final model"])
def test_a_full_disk_reported_by_safetensors_is_one_line(where, cli_run, tiny_model_dir, pairs, tmp_path, monkeypatch):
    """The library's exception type and text, raised where the real save raises it (always runs)."""
    from transformers import modeling_utils

    calls = []
    real = modeling_utils.safe_save_file

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first save (checkpoint-2, or the model when there are no checkpoints) fits
            return _no_space()
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)
    out = tmp_path / "run"
    save_steps = "2" if where == "checkpoint" else "0"
    if where == "final model":
        calls.append(1)  # the model save is the first
    result = cli_run(*sft_args(tiny_model_dir, pairs, out, "--max-steps", "4", "--set", f"save_steps={save_steps}"))
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    assert "SafetensorError" not in line
    if where == "checkpoint":
        kept = out / "checkpoints" / "checkpoint-2"
        assert line.startswith(
            f"Error: {out / 'checkpoints'}: the disk is full: writing checkpoint-4 ran out of "
            f"space (a checkpoint of this run takes about "
        ), line
        assert f"the newest complete checkpoint, {kept}, is intact" in line
        assert checkpoint_problem(kept) is None and not (out / "checkpoints" / "checkpoint-4").exists()
    else:
        assert line.startswith(f"Error: {out}: the disk is full: writing model ran out of space (it needs about "), line
        assert "KB" in line and "no checkpoint was saved yet" in line
        assert not (out / "model").exists() and not list(out.glob(".model.tmp-*"))
    assert not (out / "COMPLETE").exists()


# --------------------------------------------------------------------------------------------------
# Out of memory, a reward that raises: test methods and rewards that fail at a given step


class BoomMethod(EchoMethod):
    """Saves a complete checkpoint at step 1, then fails at step 2 as ``mode`` says: memory (MemoryError) or
    cuda (torch.OutOfMemoryError)."""

    name = "boom"
    description = "test method: fails at step 2"

    def train(self, run) -> None:
        import torch
        from safetensors.torch import save_file

        run.log_metrics(1, {"loss": 1.0})
        checkpoint = run.checkpoints_dir / "checkpoint-1"
        checkpoint.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
        (checkpoint / COMPLETE_MARKER).write_text("step 1\n")
        if run.config.mode == "memory":
            raise MemoryError()
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)\nmore")


class BoomPlugin:
    @staticmethod
    @hookimpl
    def register_methods(register):
        register(BoomMethod)


@pytest.mark.parametrize(
    "mode, cause",
    [("memory", "MemoryError"), ("cuda", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")],
)
def test_out_of_memory_names_the_levers_and_the_checkpoint(mode, cause, cli_run, easyrlhf_plugin, tmp_path):
    easyrlhf_plugin("echo-test", EchoPlugin)
    easyrlhf_plugin("boom-test", BoomPlugin)
    out = tmp_path / "run"
    result = cli_run(
        "run", "--method", "boom", "--dataset", "test-prompts", "--output-dir", str(out), "--set", f"mode={mode}"
    )
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    assert line.startswith(f"Error: out of memory during training ({cause}"), line
    for lever in (
        "a smaller per_device_train_batch_size (now 4; raise gradient_accumulation_steps",
        "a smaller max_length (now 512)",
        "--gradient-checkpointing",
        "--lora",
    ):
        assert lever in line, lever
    assert line.endswith(
        f"the newest complete checkpoint, {out / 'checkpoints' / 'checkpoint-1'}, is intact: "
        f"continue with --resume after the change"
    ), line


class FlakyReward(RewardFunction):
    """Scores fine the first time, then raises."""

    name = "flaky"
    description = "raises on its second call"
    calls = 0

    def score(self, prompts, completions):
        FlakyReward.calls += 1
        if FlakyReward.calls > 1:
            raise KeyError("judge-api-token")
        return [float(len(c)) for c in completions]


class FlakyPlugin:
    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(FlakyReward)


ONLINE_ARGS = {
    "ppo": [
        "--set",
        "rollout_batch_size=2",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "max_new_tokens=4",
        "--set",
        "max_length=64",
        "--set",
        "ppo_epochs=1",
        "--set",
        "max_eval_samples=0",
    ],
    "grpo": [
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "num_generations=4",
        "--set",
        "max_completion_length=4",
    ],
}


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_a_reward_that_raises_during_training_is_named(method, cli_run, easyrlhf_plugin, tiny_model_dir, tmp_path):
    easyrlhf_plugin("flaky-test", FlakyPlugin)
    FlakyReward.calls = 0
    prompts = write_rows(tmp_path / "prompts.jsonl", [toy_prompt(i) for i in range(8)])
    out = tmp_path / method
    result = cli_run(
        "run",
        "--method",
        method,
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "jsonl",
        "--data-files",
        str(prompts),
        "--output-dir",
        str(out),
        "--max-steps",
        "3",
        "--reward",
        "flaky",
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=1",
        *ONLINE_ARGS[method],
    )
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    kept = out / "checkpoints" / "checkpoint-1"
    assert line.startswith(
        "Error: --reward: reward 'flaky' (tests.test_faults.FlakyReward) raised KeyError: "
        "'judge-api-token' while scoring "
    ), line
    assert "completions; fix the reward plugin or its options; " in line
    assert line.endswith(
        f"the newest complete checkpoint, {kept}, is intact: continue with --resume once it is fixed"
    ), line
    assert checkpoint_problem(kept) is None and not (out / "COMPLETE").exists()


# --------------------------------------------------------------------------------------------------
# A pickled weights file


class Payload:
    """Stands for any object a pickle can carry (and run code when unpickled)."""


def test_a_pickled_weights_file_with_objects_is_refused_without_unsafe_advice(cli_run, tiny_model_dir, pairs, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, model)
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save({**state, "extra": Payload()}, model / "pytorch_model.bin")
    out = tmp_path / "run"
    result = cli_run(*sft_args(model, pairs, out, "--max-steps", "1"))
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    assert line == (
        f"Error: {model / 'pytorch_model.bin'}: this file holds more than tensors (pickled Python "
        f"objects), and loading it could run code, so the safe loader refused it; get a safetensors "
        f"copy of the model (model.safetensors) from a trusted source"
    )
    assert "weights_only" not in result.stderr and "UnpicklingError" not in result.stderr
    assert not out.exists()  # failed before training: left as found


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n",
            "this file is a git-lfs pointer, not the weights (the repository was cloned without git-lfs): run `git lfs "
            "pull` there, or download the file again",
        ),
        (
            bytes(range(7, 200)),
            "this file is not a valid PyTorch weights file (truncated or damaged): download it again",
        ),
    ],
    ids=["lfs-pointer", "random-bytes"],
)
def test_a_damaged_weights_file_is_not_called_dangerous(cli_run, tiny_model_dir, pairs, tmp_path, content, expected):
    model = tmp_path / "damaged-model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(content)
    result = cli_run(*sft_args(model, pairs, tmp_path / "run", "--max-steps", "1"))
    assert result.exit_code == 2, result.stderr
    assert error_lines(result)[0] == f"Error: {model / 'pytorch_model.bin'}: {expected}", result.stderr
    assert "could run code" not in result.stderr and "weights_only" not in result.stderr


# --------------------------------------------------------------------------------------------------
# A rank killed


def test_a_killed_rank_is_one_line_naming_it_and_the_likely_cause(tmp_path):
    from easyrlhf_core.runtime.rank_errors import LAUNCHER_FILE, first_failure

    (tmp_path / LAUNCHER_FILE).write_text(json.dumps([{"rank": 1, "exitcode": -9, "time": 1.0}]))
    assert first_failure(tmp_path) == ("rank 1: killed by SIGKILL (out of memory? see `dmesg`)", 137)


# --------------------------------------------------------------------------------------------------
# --resume with other inputs, or inputs changed on disk


@pytest.fixture
def echo(easyrlhf_plugin):
    easyrlhf_plugin("echo-test", EchoPlugin)


def echo_args(out: Path, *extra: str) -> list[str]:
    return ["run", "--method", "echo", "--output-dir", str(out), *extra]


def _snapshot(path: Path) -> dict:
    return {p.relative_to(path): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def _stopped_run(cli_run, out: Path, *args: str) -> dict:
    result = cli_run(*echo_args(out, *args))
    assert result.exit_code == 0, result.stderr
    (out / "COMPLETE").unlink()  # as if stopped before its end
    return _snapshot(out)


def test_resume_with_another_model_or_dataset_is_refused_naming_both(echo, cli_run, tiny_model_dir, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    out = tmp_path / "run"
    base = ["--model", str(tiny_model_dir), "--dataset", "test-prompts"]
    before = _stopped_run(cli_run, out, *base)
    cases = {
        "--model": (
            ["--model", str(other), "--dataset", "test-prompts"],
            (
                f"Error: --model: this run was started with model {tiny_model_dir}, this command gives {other}; "
                f"--resume continues the same run: pass --model {tiny_model_dir}, or start a new run in another "
                f"--output-dir"
            ),
        ),
        "--dataset": (
            ["--model", str(tiny_model_dir), "--dataset", "jsonl", "--data-files", str(tmp_path / "x")],
            "Error: --dataset: this run was started with dataset test-prompts, this command gives jsonl",
        ),
    }
    for flag, (args, expected) in cases.items():
        result = cli_run(*echo_args(out, *args, "--resume"))
        assert result.exit_code == 2, result.stderr
        assert error_lines(result)[0].startswith(expected), (flag, result.stderr)
        assert _snapshot(out) == before
    # the same inputs, more steps: allowed
    result = cli_run(*echo_args(out, *base, "--max-steps", "2", "--resume"))
    assert result.exit_code == 0, result.stderr


def test_resume_after_the_model_changed_on_disk_is_refused(echo, cli_run, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "run"
    before = _stopped_run(cli_run, out, "--model", str(model), "--dataset", "test-prompts")
    recorded = json.loads((out / "inputs.json").read_text())
    assert recorded["model_path"] == str(model.resolve()) and set(recorded["model_fingerprint"]) == {
        "config",
        "tokenizer",
        "weights",
    }
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = tokenizer["added_tokens"][:-1]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = cli_run(*echo_args(out, "--model", str(model), "--dataset", "test-prompts", "--resume"))
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    old = recorded["model_fingerprint"]["tokenizer"]
    assert line.startswith(f"Error: {model}: the model changed on disk since this run started ("), line
    assert f"its tokenizer ({old} at the start, " in line and "config (" not in line and "weights (" not in line
    assert line.endswith("put it back, or start a new run in another --output-dir")
    assert _snapshot(out) == before


def test_resume_after_a_data_file_changed_is_refused(echo, cli_run, tmp_path):
    data = write_rows(tmp_path / "prompts.jsonl", [toy_prompt(i) for i in range(3)])
    out = tmp_path / "run"
    args = ["--dataset", "jsonl", "--data-files", str(data), "--set", "eval_fraction=0"]
    before = _stopped_run(cli_run, out, *args)
    write_rows(data, [toy_prompt(i) for i in range(1, 4)])
    result = cli_run(*echo_args(out, *args, "--resume"))
    assert result.exit_code == 2, result.stderr
    line = error_lines(result)[0]
    assert line.startswith(f"Error: {data}: this data file changed since the run started ("), line
    assert "a resumed run must read the same rows in the same order" in line
    assert _snapshot(out) == before


def test_resume_of_a_run_without_inputs_file_checks_the_names_in_its_config(echo, cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _stopped_run(cli_run, out, "--dataset", "test-prompts")
    (out / "inputs.json").unlink()  # a run from before inputs.json
    assert cli_run(*echo_args(out, "--dataset", "test-prompts", "--resume")).exit_code == 0
    (out / "COMPLETE").unlink()
    result = cli_run(*echo_args(out, "--model", str(tiny_model_dir), "--dataset", "test-prompts", "--resume"))
    assert result.exit_code == 2
    assert error_lines(result)[0].startswith(
        f"Error: --model: this run was started with model (the default), this command gives {tiny_model_dir}"
    )


def test_resume_names_inputs_by_their_resolved_paths_in_order(echo, cli_run, tiny_model_dir, tmp_path, monkeypatch):
    model = tmp_path / "models" / "m"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "link").symlink_to(model)
    first = write_rows(tmp_path / "a.jsonl", [toy_prompt(i) for i in range(3)])
    second = write_rows(tmp_path / "b.jsonl", [toy_prompt(i) for i in range(3, 6)])
    out = tmp_path / "run"
    files = f"{first},{second}"
    monkeypatch.chdir(tmp_path)
    _stopped_run(
        cli_run, out, "--model", "models/m", "--dataset", "jsonl", "--data-files", files, "--set", "eval_fraction=0"
    )
    monkeypatch.chdir(tmp_path / "models")
    # the same model through ../ and through a symlink, the same files: one run
    for given in ("../models/m", str(tmp_path / "link")):
        result = cli_run(
            *echo_args(
                out,
                "--model",
                given,
                "--dataset",
                "jsonl",
                "--data-files",
                files,
                "--set",
                "eval_fraction=0",
                "--resume",
            )
        )
        assert result.exit_code == 0, (given, result.stderr)
        (out / "COMPLETE").unlink()
    # the same files in another order read other rows in another order: refused
    result = cli_run(
        *echo_args(
            out,
            "--model",
            str(model),
            "--dataset",
            "jsonl",
            "--data-files",
            f"{second},{first}",
            "--set",
            "eval_fraction=0",
            "--resume",
        )
    )
    assert result.exit_code == 2
    assert error_lines(result)[0].startswith("Error: --data-files: this run was started with data_files "), (
        result.stderr
    )
    # the same string from another directory names another model: refused
    elsewhere = tmp_path / "elsewhere" / "models" / "m"
    shutil.copytree(tiny_model_dir, elsewhere)
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = cli_run(
        *echo_args(
            out,
            "--model",
            "models/m",
            "--dataset",
            "jsonl",
            "--data-files",
            files,
            "--set",
            "eval_fraction=0",
            "--resume",
        )
    )
    assert result.exit_code == 2
    assert error_lines(result)[0].startswith("Error: --model: this run was started with model"), result.stderr
