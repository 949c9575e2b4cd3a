"""`easyrlhf new-plugin NAME` writes a plugin package that installs, passes its own tests and trains; the
shipped tiny-model fixtures it relies on (tiny_causal_lm, tiny_reward_model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

FILES = ["README.md", "easyrlhf_plugin_demo/__init__.py", "pyproject.toml", "tests/test_plugin.py"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_new_plugin_writes_a_package_whose_plugin_registers(cli_run, easyrlhf_plugin, tmp_path, monkeypatch):
    result = cli_run("new-plugin", "demo", "--directory", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    root = tmp_path / "easyrlhf-plugin-demo"
    assert _files(root) == FILES
    assert f"pip install -e {root}" in result.stdout
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "easyrlhf-plugin-demo"' in pyproject and 'dependencies = ["easyrlhf"]' in pyproject
    assert '[project.entry-points.easyrlhf]\ndemo = "easyrlhf_plugin_demo"\n' in pyproject
    assert "import easyrlhf_plugin_demo" in (root / "tests" / "test_plugin.py").read_text()

    monkeypatch.syspath_prepend(str(root))
    import easyrlhf_plugin_demo

    try:
        registry = easyrlhf_plugin("demo", easyrlhf_plugin_demo)
        assert registry.get("methods", "demo").shape == "conversation"
        assert registry.get("rewards", "demo-length")(target=2).score([[]], ["a b c d"]) == [-1.0]
        listed = json.loads(cli_run("list-plugins", "--json").stdout)
        assert {m["name"]: m["plugin"] for m in listed["methods"]}["demo"] == "demo"
        assert "demo-jsonl" in [d["name"] for d in listed["datasets"]]
    finally:
        sys.modules.pop("easyrlhf_plugin_demo", None)


def test_a_dashed_name_gives_an_importable_module_and_class_names(cli_run, tmp_path):
    assert cli_run("new-plugin", "my-method2", "-d", str(tmp_path)).exit_code == 0
    module = tmp_path / "easyrlhf-plugin-my-method2" / "easyrlhf_plugin_my_method2" / "__init__.py"
    text = module.read_text()
    assert "class MyMethod2Method(TrainerMethod):" in text and 'name = "my-method2"' in text
    compile(text, str(module), "exec")  # valid Python once NAME is substituted
    assert "$" not in text


def test_an_existing_target_is_one_error_line_and_nothing_is_written(cli_run, tmp_path):
    existing = tmp_path / "easyrlhf-plugin-demo"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    result = cli_run("new-plugin", "demo", "--directory", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {existing}: already exists; choose another NAME or --directory (nothing was written)\n"
    )
    assert _files(existing) == ["mine.txt"]


@pytest.mark.parametrize("name", ["Demo", "1demo", "my--method", "demo-", "my method", "easyrlhf-plugin-demo"])
def test_an_invalid_name_is_one_error_line(cli_run, tmp_path, name):
    result = cli_run("new-plugin", name, "--directory", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: NAME: ") and result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, taken",
    [("ppo", "plugin 'ppo', method 'ppo'"), ("rewards", "plugin 'rewards'"), ("rlhf", "plugin 'rlhf', method 'rlhf'")],
)
def test_a_name_an_installed_plugin_has_is_one_error_line(cli_run, tmp_path, name, taken):
    result = cli_run("new-plugin", name, "--directory", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: NAME: an installed plugin already has {taken}; choose another NAME\n"
    assert list(tmp_path.iterdir()) == []


def test_new_plugin_does_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom easyrlhf_core.commands.cli import cli\n"
        "try:\n    cli(['new-plugin', 'demo'], prog_name='easyrlhf')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "HEAVY []" in out.stdout, out
    assert (tmp_path / "easyrlhf-plugin-demo" / "pyproject.toml").is_file()


def test_the_tiny_model_fixtures_are_a_causal_lm_and_a_reward_model(tiny_causal_lm, tiny_reward_model):
    from transformers import AutoConfig, AutoTokenizer

    from easyrlhf_core.kit.model_loading import check_reward_model

    lm, rm = AutoConfig.from_pretrained(tiny_causal_lm), AutoConfig.from_pretrained(tiny_reward_model)
    assert lm.architectures == ["LlamaForCausalLM"] and lm.num_hidden_layers == 2
    assert rm.architectures == ["LlamaForSequenceClassification"] and rm.num_labels == 1
    check_reward_model(tiny_reward_model, "--reward-model")  # accepted as --reward-model
    for path in (tiny_causal_lm, tiny_reward_model):
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
        )
        assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------
# End to end: pip install -e into a throwaway venv, the package's own tests, `easyrlhf run --method demo`


@pytest.fixture
def venv_python(tmp_path: Path) -> Path:
    """The python of a venv of its own whose site-packages also reads this venv's (a .pth line): the installed
    dependencies without reinstalling them, and installing into it leaves this venv untouched."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = sysconfig.get_path("purelib")
    Path(purelib, "_outer_venv.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    return python


def test_the_written_package_installs_passes_its_tests_and_trains(venv_python, tiny_causal_lm, tmp_path):
    python = str(venv_python)
    env = {**os.environ, "PYTHONPATH": ""}

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            list(args), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False
        )
        assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    run(python, "-m", "easyrlhf_core.commands.cli", "new-plugin", "demo")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-e",
        "./easyrlhf-plugin-demo",
    )
    tests = run(python, "-m", "pytest", "easyrlhf-plugin-demo", "-q", "-p", "no:cacheprovider")
    assert "3 passed" in tests.stdout, tests.stdout

    listed = json.loads(run(python, "-m", "easyrlhf_core.commands.cli", "list-plugins", "--json").stdout)
    demo = next(m for m in listed["methods"] if m["name"] == "demo")  # found through the entry point
    assert (demo["package"], demo["plugin"]) == ("easyrlhf-plugin-demo", "demo")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": f"{i}"}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    run(
        python,
        "-m",
        "easyrlhf_core.commands.cli",
        "run",
        "--method",
        "demo",
        "--dataset",
        "demo-jsonl",
        "--data-files",
        str(data),
        "--model",
        str(tiny_causal_lm),
        "--max-steps",
        "2",
        "--output-dir",
        str(out),
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=0",
    )
    assert (out / "model" / "config.json").is_file() and (out / "COMPLETE").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    # this venv is untouched: the package went into the throwaway one only
    code = "import importlib.util as u; print(u.find_spec('easyrlhf_plugin_demo'))"
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path.home(), check=False)
    assert mine.stdout.strip() == "None"
