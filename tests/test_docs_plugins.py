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
        register_methods,
        register_datasets,
        register_rewards,
    )
    yield module
    sys.modules.pop("doc_plugin", None)


def test_the_documented_method_trains(doc_plugin, easyrlhf_plugin, easyrlhf_cli, tiny_model_dir, tmp_path):
    easyrlhf_plugin("doc", doc_plugin)
    out = tmp_path / "simpo"
    # Short pairs: hh-rlhf prompts fill max_length 128 of the tiny tokenizer, leaving empty completions whose
    # mean log-prob is NaN (the divergence check stops such a run at step 1).
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [hh_row(f"What is {i} plus {i}?", f"It is {2 * i}.", rejected_last="No idea.") for i in range(8)],
    )
    result = easyrlhf_cli(
        "run",
        "--method",
        "simpo",
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "2",
        "--dataset",
        "hh-rlhf",
        "--data-files",
        str(pairs),
        "--output-dir",
        str(out),
        "--set",
        "max_train_samples=8",
        "--set",
        "max_eval_samples=0",
        "--set",
        "max_length=128",
        "--set",
        "save_steps=0",
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in rows if "loss" in r)
    assert (out / "model" / "config.json").is_file()


def test_the_documented_dataset_and_reward_work_in_ppo(
    doc_plugin, easyrlhf_plugin, easyrlhf_cli, tiny_model_dir, tmp_path
):
    easyrlhf_plugin("doc", doc_plugin)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(8)) + "not json\n")
    args = [
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "questions",
        "--data-files",
        str(data),
        "--reward",
        "brevity",
        "--set",
        "reward_options.target=3",
        "--max-steps",
        "1",
        "--set",
        "max_new_tokens=4",
        "--set",
        "rollout_batch_size=4",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=0",
    ]
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


def _best_of_k_snippet() -> str:
    """The custom-loop online method of section 2."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return next(b for b in blocks if "class BestOfK(Method)" in b)


def test_the_documented_custom_loop_method_trains(easyrlhf_plugin, easyrlhf_cli, tiny_model_dir, tmp_path):
    """Section 2's best-of-k method, pasted as is: samples k completions, scores them with a reward plugin, takes
    an SFT step on the best; the loss is finite and the saved weights differ from the start model's."""
    from safetensors.torch import load_file

    module = types.ModuleType("doc_best_of_k")
    module.__doc__ = "The custom-loop method of docs/plugins.md."
    sys.modules[module.__name__] = module
    try:
        exec(compile(_best_of_k_snippet(), str(DOC), "exec"), module.__dict__)
        module.register_methods = hookimpl(lambda register: register(module.BestOfK))
        easyrlhf_plugin("doc-best-of-k", module)
        out = tmp_path / "best"
        args = [
            "run",
            "--method",
            "best-of-k",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "arithmetic",
            "--reward",
            "length",
            "--max-steps",
            "2",
            "--set",
            "max_new_tokens=6",
            "--set",
            "k=3",
            "--set",
            "per_device_train_batch_size=2",
            "--set",
            "max_train_samples=8",
            "--set",
            "eval_fraction=0",
        ]
        help_text = easyrlhf_cli("run", "--method", "best-of-k", "--help")  # no reward yet: --help still works
        assert help_text.exit_code == 0 and "\nk: 4\n" in help_text.stdout, help_text.stderr
        no_reward = easyrlhf_cli(
            *[a for a in args if a not in ("--reward", "length")], "--output-dir", str(tmp_path / "none")
        )
        assert no_reward.exit_code == 2 and "reward" in no_reward.stderr
        result = easyrlhf_cli(*args, "--output-dir", str(out))
    finally:
        sys.modules.pop(module.__name__, None)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < float("inf") for r in steps)
    assert all(r["best_score"] >= r["score"] for r in steps)
    start, trained = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert any(not start[k].equal(trained[k]) for k in start)
