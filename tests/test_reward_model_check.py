"""A reward model that is not one (a causal LM, or a classifier checkpoint without its trained score head)
is refused before training, everywhere a reward model is loaded: ppo, rrhf candidates=generate, eval and
the rlhf pipeline's rm.model. The value model may still start from a fresh head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.data_helpers import write_jsonl
from tests.subprocess_runs import toy_pair


@pytest.fixture
def headless_rm(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A causal LM checkpoint whose config claims to be a one-label sequence classifier: no score weights."""
    out = tmp_path / "headless"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    (out / "config.json").write_text(json.dumps(config))
    return out


def _refused(result, out: Path, *phrases: str) -> None:
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error:") and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("which", ["causal-lm", "headless"])
def test_ppo_refuses_a_reward_model_that_is_not_one(cli_run, tiny_model_dir, headless_rm, tmp_path, which):
    rm = tiny_model_dir if which == "causal-lm" else headless_rm
    out = tmp_path / "ppo"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--reward-model",
        str(rm),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
    )
    expected = "(a causal LM)" if which == "causal-lm" else "no score head"
    _refused(result, out, "not a reward model", expected, str(rm))


def test_rrhf_generate_refuses_a_causal_lm_as_reward_model(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "rrhf"
    result = cli_run(
        "run",
        "--method",
        "rrhf",
        "--model",
        str(tiny_model_dir),
        "--set",
        "candidates=generate",
        "--reward-model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
    )
    _refused(result, out, "not a reward model", "LlamaForCausalLM")


def test_eval_refuses_a_classifier_without_its_head(cli_run, headless_rm, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [toy_pair(i) for i in range(4)])
    result = cli_run("eval", "--model", str(headless_rm), "--dataset", "jsonl", "--data-files", str(data))
    assert result.exit_code == 2, result.stderr
    assert "not a reward model" in result.stderr and "no score head" in result.stderr
    assert "Traceback" not in result.stderr


def test_rlhf_refuses_rm_model_that_is_not_one_before_sft_trains(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "rlhf"
    result = cli_run(
        "run",
        "--method",
        "rlhf",
        "--model",
        str(tiny_model_dir),
        "--set",
        f"rm.model={tiny_model_dir}",
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
    )
    _refused(result, out, "not a reward model")


def test_loading_a_classifier_whose_head_is_fresh_is_refused_when_a_reward_model_is_wanted(headless_rm):
    from easyrlhf_core.kit.errors import EasyRLHFError
    from easyrlhf_core.kit.model_loading import load_sequence_classifier

    load_sequence_classifier(str(headless_rm))  # a value model may start from a fresh head
    with pytest.raises(EasyRLHFError, match="no trained score head"):
        load_sequence_classifier(str(headless_rm), require_trained_head=True)
