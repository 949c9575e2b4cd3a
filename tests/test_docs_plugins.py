"""docs/plugins.md is a contract: its method, dataset and reward snippets, pasted as a stranger would paste
them, register and run through `easyrlhf run` on a tiny model."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from easyrlhf_core import hookimpl
from tests.data_helpers import hh_row, write_jsonl

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _snippets() -> dict[str, str]:
    """The python blocks of sections 2 (method), 3 (dataset) and 4 (reward)."""
    text = DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    found = {}
    for section in sections:
        key = section.split("\n", 1)[0]
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        if key.startswith(("2.", "3.", "4.")) and blocks:
            found[key[:2]] = blocks[0]
    return found


@pytest.fixture(scope="module")
def doc_plugin() -> types.ModuleType:
    module = types.ModuleType("doc_plugin")
    module.__doc__ = "The snippets of docs/plugins.md."
    sys.modules["doc_plugin"] = module  # as a pasted module would be (dataclasses look it up)
    for code in _snippets().values():
        exec(compile(code, str(DOC), "exec"), module.__dict__)

    @hookimpl
    def register_methods(register):
        register(module.SimPO)

    @hookimpl
    def register_datasets(register):
        register(module.Questions)

    @hookimpl
    def register_rewards(register):
        register(module.Brevity)

    module.register_methods, module.register_datasets, module.register_rewards = (
        register_methods, register_datasets, register_rewards)
    yield module
    sys.modules.pop("doc_plugin", None)


def test_the_documented_method_trains(doc_plugin, easyrlhf_plugin, easyrlhf_cli, tiny_model_dir, tmp_path):
    easyrlhf_plugin("doc", doc_plugin)
    out = tmp_path / "simpo"
    # Short pairs: hh-rlhf prompts fill max_length 128 of the tiny tokenizer, leaving empty completions whose
    # mean log-prob is NaN (the divergence check stops such a run at step 1).
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [hh_row(f"What is {i} plus {i}?", f"It is {2 * i}.",
                                                          rejected_last="No idea.") for i in range(8)])
    result = easyrlhf_cli("run", "--method", "simpo", "--model", str(tiny_model_dir), "--max-steps", "2",
                          "--dataset", "hh-rlhf", "--data-files", str(pairs),
                          "--output-dir", str(out), "--set", "max_train_samples=8", "--set", "max_eval_samples=0",
                          "--set", "max_length=128", "--set", "save_steps=0")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in rows if "loss" in r)
    assert (out / "model" / "config.json").is_file()


def test_the_documented_dataset_and_reward_work_in_ppo(doc_plugin, easyrlhf_plugin, easyrlhf_cli, tiny_model_dir,
                                                        tmp_path):
    easyrlhf_plugin("doc", doc_plugin)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(8)) + "not json\n")
    args = ["run", "--method", "ppo", "--model", str(tiny_model_dir), "--dataset", "questions", "--data-files",
            str(data), "--reward", "brevity", "--set", "reward_options.target=3", "--max-steps", "1",
            "--set", "max_new_tokens=4", "--set", "rollout_batch_size=4", "--set", "per_device_train_batch_size=4",
            "--set", "eval_fraction=0", "--set", "save_steps=0"]
    strict = easyrlhf_cli(*args, "--output-dir", str(tmp_path / "strict"))
    assert strict.exit_code == 2 and strict.stderr.startswith(f"Error: {data}:9: ")
    out = tmp_path / "ppo"
    result = easyrlhf_cli(*args, "--skip-bad-rows", "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert "8 train / 0 eval examples" in result.stderr and "skipped 1 bad row" in result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["score"] <= 0  # brevity scores are -|words - target| / target
    typo = easyrlhf_cli(*args, "--set", "reward_options.targte=3", "--output-dir", str(tmp_path / "typo"))
    assert typo.exit_code == 2
    assert "unknown option(s) targte (did you mean 'target'?); known: target, weight" in typo.stderr


def _core_imports_of_the_built_ins() -> dict[tuple[str, str], str]:
    """``(module, name)`` -> the first built-in file that imports it from ``easyrlhf_core``."""
    import ast

    found: dict[tuple[str, str], str] = {}
    for path in sorted((DOC.parents[1] / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("easyrlhf_core"):
                for alias in node.names:
                    found.setdefault((node.module, alias.name), path.name)
    return found


def test_every_core_name_a_built_in_imports_is_documented_and_public():
    """The built-ins use only what docs/plugins.md names: each such name is in section 6, under its
    module's bullet, exists and has a docstring (a constant or a module excepted)."""
    import importlib
    import inspect

    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 6. "):]
    bullets: dict[str, str] = {}  # module -> the text of the bullets that name it
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        modules = set(re.findall(r"`(easyrlhf_core(?:\.[a-z_]+)?)`", bullet))
        modules |= {f"easyrlhf_core.{m}" for m in re.findall(r"`\.([a-z_]+)`", bullet)}
        for module in modules:
            bullets[module] = bullets.get(module, "") + bullet
    imports = _core_imports_of_the_built_ins()
    assert len(imports) > 50  # the walk found the plugins
    missing = [f"{module}.{name} ({where})" for (module, name), where in imports.items()
               if f"`{name}`" not in bullets.get(module, "") and f"`{name}(" not in bullets.get(module, "")]
    assert not missing, f"imported by a built-in but not in docs/plugins.md section 6: {missing}"
    undocumented = []
    for module, name in imports:
        value = getattr(importlib.import_module(module), name)
        if (inspect.isclass(value) or inspect.isfunction(value)) and not inspect.getdoc(value):
            undocumented.append(f"{module}.{name}")
    assert not undocumented, f"public kit names without a docstring: {undocumented}"
