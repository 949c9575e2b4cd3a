"""The example third-party package (examples/easyrlhf-plugin-kto) found through its entry point and run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from easyrlhf_core.runtime import registry
from tests.plugin_fixtures import write_fake_distribution

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "easyrlhf-plugin-kto"


@pytest.fixture
def kto_installed(tmp_path, monkeypatch):
    """What `pip install examples/easyrlhf-plugin-kto` leaves: its module and a dist-info with the entry point."""
    entry_points = {}
    for line in (EXAMPLE / "pyproject.toml").read_text().split("[project.entry-points.easyrlhf]")[1].splitlines():
        if "=" in line and not line.startswith("["):
            key, value = (part.strip().strip('"') for part in line.split("=", 1))
            entry_points[key] = value
        elif line.startswith("["):
            break
    write_fake_distribution(tmp_path / "site", "easyrlhf-plugin-kto", "0.1.0", entry_points, {})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    sys.modules.pop("easyrlhf_plugin_kto", None)
    registry.reset_registry()
    yield
    sys.modules.pop("easyrlhf_plugin_kto", None)


def test_example_plugin_is_listed_with_its_package(kto_installed, cli_run):
    data = json.loads(cli_run("list-plugins", "--json").stdout)
    kto = next(m for m in data["methods"] if m["name"] == "kto")
    assert (kto["package"], kto["version"], kto["plugin"]) == ("easyrlhf-plugin-kto", "0.1.0", "kto")
    assert any(r["name"] == "politeness" and r["package"] == "easyrlhf-plugin-kto" for r in data["rewards"])


def test_example_plugin_trains_through_easyrlhf_run(kto_installed, cli_run, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "kto"
    result = cli_run(
        "run",
        "--method",
        "kto",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "hh-rlhf",
        "--max-steps",
        "2",
        "--output-dir",
        str(out),
        "--set",
        "max_train_samples=16",
        "--set",
        "max_eval_samples=4",
        "--set",
        "max_length=128",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "per_device_train_batch_size=4",
    )
    assert result.exit_code == 0, result.stderr
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    changed = any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert changed
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses and all(loss == loss for loss in losses)  # logged and finite (not NaN)


def test_example_reward_scores_politeness(kto_installed):
    cls = registry.get_registry().get("rewards", "politeness")
    assert cls().score([[], []], ["Thanks, glad to help!", "No."]) == [2.0, 0.0]
