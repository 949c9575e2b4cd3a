"""The built-in reward functions: rule-based ones on fixed texts, the reward-model wrapper on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyrlhf_core.errors import ConfigError
from easyrlhf_core.registry import get_registry
from easyrlhf_plugins.rewards import KeywordReward, LengthReward, RewardModelReward

PROMPTS = [[{"role": "user", "content": "Say something."}]] * 3


def test_builtin_rewards_are_registered():
    rewards = get_registry().rewards
    assert {"reward-model", "length", "keyword"} <= set(rewards)
    assert rewards["keyword"].plugin.name == "rewards"


def test_length_reward_peaks_at_the_target():
    words = LengthReward(target=4)
    assert words.score(PROMPTS, ["one two three four", "one two", "a b c d e f g h"]) == [0.0, -0.5, -1.0]
    chars = LengthReward(target=5, unit="characters")
    assert chars.score(PROMPTS[:2], ["abcde", "abcdefghij"]) == [0.0, -1.0]


def test_keyword_reward_counts_presence_and_regex():
    count = KeywordReward(keywords=["paris", "France"])
    assert count.score(PROMPTS, ["Paris is in France. paris!", "London", "francE"]) == [3.0, 0.0, 1.0]
    presence = KeywordReward(keywords="paris", mode="presence", weight=2.0)
    assert presence.score(PROMPTS[:2], ["Paris paris", "Rome"]) == [2.0, 0.0]
    regex = KeywordReward(pattern=r"\d+", case_sensitive=True)
    assert regex.score(PROMPTS[:2], ["1 and 22 and 333", "none"]) == [3.0, 0.0]
    strict = KeywordReward(keywords=["Paris"], case_sensitive=True)
    assert strict.score(PROMPTS[:1], ["paris Paris"]) == [1.0]


@pytest.mark.parametrize("cls, options, message", [
    (KeywordReward, {}, "exactly one of 'keywords'"),
    (KeywordReward, {"keywords": ["a"], "pattern": "b"}, "exactly one of 'keywords'"),
    (KeywordReward, {"pattern": "("}, "not a valid regular expression"),
    (KeywordReward, {"keywords": "a", "mode": "sum"}, "'mode' must be"),
    (KeywordReward, {"keywords": "a", "colour": "red"}, "unknown option(s) colour"),
    (LengthReward, {"target": 0}, "'target' must be a positive integer"),
    (LengthReward, {"unit": "tokens"}, "'unit' must be"),
    (RewardModelReward, {}, "needs option 'path'"),
    (RewardModelReward, {"path": "/nonexistent/rm"}, "no config.json"),
])
def test_bad_reward_options_name_reward_options(cls, options, message):
    with pytest.raises(ConfigError) as info:
        cls(**options)
    assert message in str(info.value)
    assert "reward_options" in str(info.value)


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label sequence classifier on the tiny Llama (random head), saved like `--method rm` output."""
    import torch

    from easyrlhf_core.models import load_sequence_classifier
    from tests.helpers import build_tiny_causal_lm, build_tiny_tokenizer

    base = tmp_path_factory.mktemp("tiny-base")
    tokenizer = build_tiny_tokenizer()
    build_tiny_causal_lm(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    torch.manual_seed(1)
    model = load_sequence_classifier(str(base), pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_reward_model_scores_the_last_real_token_independent_of_batching(tiny_reward_model_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    completions = ["Paris.", "The capital of France is Paris, a large city.", ""]
    batched = RewardModelReward(path=str(tiny_reward_model_dir), batch_size=3).score(PROMPTS, completions)
    one_by_one = RewardModelReward(path=str(tiny_reward_model_dir), batch_size=1).score(PROMPTS, completions)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == 3  # different texts, different scores

    # Same number as the model's own forward on the unpadded chat-template text.
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_dir).eval()
    text = tokenizer.apply_chat_template(PROMPTS[1] + [{"role": "assistant", "content": completions[1]}],
                                         tokenize=False)
    assert text.endswith("<|im_end|>\n")
    with torch.no_grad():
        reference = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert batched[1] == pytest.approx(reference, abs=1e-5)
