"""The run lifecycle through the CLI: outputs, one-line errors, output-dir safety, show-config."""

from __future__ import annotations

import json

import pytest
import yaml

from easyrlhf_core.runtime import registry
from tests.plugin_fixtures import EchoPlugin


@pytest.fixture(autouse=True)
def echo_plugin():
    registry.register_plugin("echo-test", EchoPlugin)
    yield
    registry.unregister_plugin("echo-test")


def _run(cli_run, out, *extra):
    return cli_run("run", "--method", "echo", "--dataset", "test-prompts", "--output-dir", str(out), *extra)


def test_run_writes_config_and_metrics(cli_run, tmp_path):
    out = tmp_path / "run"
    result = _run(cli_run, out, "--set", "beta=0.5", "--max-steps", "3")
    assert result.exit_code == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "echo" and config["beta"] == 0.5 and config["max_steps"] == 3
    assert config["output_dir"] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["beta"] == 0.5
    assert "test note: 0 rows dropped" in result.stderr  # dataset notes are reported once


def test_config_file_then_flags_then_set(cli_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: echo\nbeta: 0.2\nmax_steps: 9\nseed: 1\n", encoding="utf-8")
    out = tmp_path / "run"
    result = cli_run(
        "run",
        "--config",
        str(cfg),
        "--dataset",
        "test-prompts",
        "--output-dir",
        str(out),
        "--max-steps",
        "5",
        "--set",
        "max_steps=4",
    )
    assert result.exit_code == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["beta"], config["max_steps"], config["seed"]) == (0.2, 4, 1)


def test_non_empty_output_dir_is_refused_and_untouched(cli_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = _run(cli_run, out)
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: {out}: output directory is not empty; pass --overwrite to replace it, --resume to continue "
        "its run, or choose another --output-dir"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    result = _run(cli_run, out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not (out / "precious.txt").exists() and (out / "metrics.jsonl").exists()


def test_resume_keeps_existing_files(cli_run, tmp_path):
    out = tmp_path / "run"
    assert _run(cli_run, out).exit_code == 0
    (out / "COMPLETE").unlink()  # as if the run had stopped before its end
    result = _run(cli_run, out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # appended, nothing lost
    assert _run(cli_run, tmp_path / "nothing-here", "--resume").exit_code != 0
    assert not (tmp_path / "nothing-here").exists()


def _snapshot(path):
    return {p.relative_to(path): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_resume_of_a_complete_run_changes_nothing(cli_run, tmp_path):
    out = tmp_path / "run"
    assert _run(cli_run, out, "--max-steps", "3").exit_code == 0
    before = _snapshot(out)
    result = _run(cli_run, out, "--max-steps", "3", "--resume")
    assert result.exit_code == 0, result.stderr
    assert "is complete; nothing to do" in result.stderr and "--max-steps (max_steps was 3)" in result.stderr
    assert _snapshot(out) == before
    # more steps need a checkpoint to continue from; echo saves none
    more = _run(cli_run, out, "--max-steps", "6", "--resume")
    assert more.exit_code == 2 and "no complete checkpoint to continue from" in more.stderr
    assert f"--model {out / 'model'}" in more.stderr
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--method", "ecko"], "Error: --method: unknown method 'ecko' (did you mean 'echo'?)"),
        (["--method", "echo", "--set", "bta=1"], "Error: --set bta: unknown option 'bta' (did you mean 'beta'?)"),
        (["--method", "echo", "--set", "beta=0"], "Error: --set beta: 'beta' must be > 0"),
        (["--method", "echo", "--reward", "x"], "Error: --reward: method 'echo' has no option 'reward'"),
        (
            ["--method", "echo", "--dataset", "tset-prompts"],
            "Error: --dataset: unknown dataset 'tset-prompts' (did you mean 'test-prompts'?)",
        ),
        (["--method", "echo", "--max-steps", "0"], "Error: --max-steps: 'max_steps' must be a positive integer"),
        ([], "Error: --method: no method given"),
    ],
)
def test_bad_input_gives_one_error_line_and_writes_nothing(cli_run, tmp_path, args, expected):
    out = tmp_path / "run"
    result = cli_run(
        "run", "--output-dir", str(out), *(args if "--dataset" in args else args + ["--dataset", "test-prompts"])
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not out.exists()


def test_config_file_error_names_file_and_line(cli_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: 0.2\nmax_steps: many\n", encoding="utf-8")
    result = cli_run("run", "--method", "echo", "--config", str(cfg), "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {cfg}:2: 'max_steps' must be an integer, got 'many'"


def test_debug_shows_the_traceback(cli_run, tmp_path):
    from easyrlhf_core.kit.errors import PluginError

    with pytest.raises(PluginError):
        cli_run("run", "--method", "ecko", "--debug", "--output-dir", str(tmp_path / "o"))


def test_show_config_prints_effective_yaml(cli_run):
    result = cli_run("show-config", "--method", "echo", "--set", "beta=0.7")
    assert result.exit_code == 0, result.stderr
    assert "# A positive strength." in result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["method"] == "echo" and data["beta"] == 0.7 and data["lora"]["r"] == 16


def test_run_dir_has_model_card_and_plots(cli_run, tmp_path):
    out = tmp_path / "run"
    assert _run(cli_run, out, "--set", "beta=0.25").exit_code == 0
    png = out / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "method **echo**" in card and "| `beta` | 0.25 |" in card and "| loss | 0.3333 |" in card
    assert "test note: 0 rows dropped" in card
    png.unlink()
    result = cli_run("plot", str(out))
    assert result.exit_code == 0 and png.is_file() and str(png) in result.stdout


def test_plot_names_the_bad_metrics_line(cli_run, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    result = cli_run("plot", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {tmp_path / 'metrics.jsonl'}:2: invalid JSON")


def test_batch_sizes_are_stated_per_device_and_global(cli_run, tmp_path):
    result = _run(
        cli_run, tmp_path / "run", "--set", "per_device_train_batch_size=3", "--set", "gradient_accumulation_steps=2"
    )
    assert "batch: 3 per device x 2 accumulation steps x 1 process = 6 examples per optimizer step" in result.stderr


def test_a_config_file_for_another_method_conflicts_with_method(cli_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: 0.2\nmethod: echo\n", encoding="utf-8")
    out = tmp_path / "o"
    result = cli_run("run", "--method", "dpo", "--config", str(cfg), "--output-dir", str(out))
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: {cfg}:2: this file is a 'echo' config but --method says 'dpo'")
    assert not out.exists()
    same = cli_run(
        "run", "--method", "echo", "--config", str(cfg), "--dataset", "test-prompts", "--output-dir", str(out)
    )
    assert same.exit_code == 0, same.stderr


def test_overwrite_of_the_current_directory(cli_run, tmp_path, monkeypatch):
    (tmp_path / "precious.txt").write_text("old run")
    monkeypatch.chdir(tmp_path)
    result = cli_run("run", "--method", "echo", "--dataset", "test-prompts", "--output-dir", ".", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "precious.txt").exists() and (tmp_path / "metrics.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    lower = cli_run(
        "run", "--method", "echo", "--dataset", "test-prompts", "--output-dir", ".", "--resume", "--max-steps", "1"
    )
    assert lower.exit_code == 0 and "is complete; nothing to do" in lower.stderr
