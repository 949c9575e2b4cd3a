"""The built-in reward functions: rule-based ones on fixed texts, the reward-model wrapper on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from easyrlhf_plugins.rewards import KeywordReward, LengthReward, RewardModelReward

from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.runtime.registry import get_registry

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


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (KeywordReward, {}, "exactly one of 'keywords'"),
        (KeywordReward, {"keywords": ["a"], "pattern": "b"}, "exactly one of 'keywords'"),
        (KeywordReward, {"pattern": "("}, "not a valid regular expression"),
        (KeywordReward, {"keywords": "a", "mode": "sum"}, "'mode' must be"),
        (KeywordReward, {"keywords": "a", "colour": "red"}, "unknown option(s) colour"),
        (LengthReward, {"target": 0}, "'target' must be a positive integer"),
        (LengthReward, {"unit": "tokens"}, "'unit' must be"),
        (RewardModelReward, {}, "needs option 'path'"),
        (RewardModelReward, {"path": "/nonexistent/rm"}, "no config.json"),
    ],
)
def test_bad_reward_options_name_reward_options(cls, options, message):
    with pytest.raises(ConfigError) as info:
        cls(**options)
    assert message in str(info.value)
    assert "reward_options" in str(info.value)


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label sequence classifier on the tiny Llama (random head), saved like `--method rm` output."""
    import torch

    from easyrlhf_core.kit.model_loading import load_sequence_classifier
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
    text = tokenizer.apply_chat_template(
        PROMPTS[1] + [{"role": "assistant", "content": completions[1]}], tokenize=False
    )
    assert text.endswith("<|im_end|>\n")
    with torch.no_grad():
        reference = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert batched[1] == pytest.approx(reference, abs=1e-5)


@pytest.mark.parametrize(
    "completion, expected, score",
    [
        # existing behaviour: the last number counts, numbers compared as numbers, text compared without case
        ("The answer is 41, no, 42.", "42", 1.0),
        ("The answer is 42, no, 41.", "42", 0.0),
        ("It is 3.0", 3, 1.0),
        ("It is 3", "3.0", 1.0),
        ("about 0.1", 0.1, 1.0),
        ("0.3333333", "0.33333335", 1.0),  # decimals: within 1e-6
        ("0.333", "0.334", 0.0),
        ("no number", "1", 0.0),
        ("-.5 it is", "-0.5", 1.0),
        # thousands separators only in groups of three
        ("It is 1,234.", "1234", 1.0),
        ("It is 1234.", "1,234", 1.0),
        ("12,345,678", 12345678, 1.0),
        ("1,234.5", "1234.5", 1.0),
        ("3,4", "34", 0.0),
        ("3,4", "4", 1.0),
        ("1,2,3", "123", 0.0),
        ("1,2,3", "3", 1.0),
        ("1,2345", "12345", 0.0),
        ("1,234,5", "1234", 0.0),
        # integers exactly, however big
        ("99999999999999999999", "1e20", 0.0),
        ("99999999999999999999", 1e20, 0.0),
        ("99999999999999999999", "99999999999999999999", 1.0),
        ("123456789012345678901234567890", 123456789012345678901234567891, 0.0),
        ("100000000000000000000", "1e20", 1.0),
        # a minus only where it starts a number, ASCII or U+2212
        ("10-3", "-3", 0.0),
        ("10-3", "3", 1.0),
        ("x = -3", "-3", 1.0),
        ("\u22123", "-3", 1.0),
        ("\u22123", "3", 0.0),
        ("It is (\u22122.5)", "-2.5", 1.0),
        ("It is 7", "\u22127", 0.0),
        # exponents read on both sides; a huge one is text (never a 10**8-digit integer)
        ("It is 1e3", "1000", 1.0),
        ("1.5e3 of them", 1500, 1.0),
        ("1e99999999", "1", 0.0),
        ("1e99999999", "1e99999999", 1.0),
        # no number starts right after a digit or a dot: dotted versions are not decimals
        ("v1.2.3", "1.2", 1.0),
        ("v1.2.3", "0.3", 0.0),
        ("3.14.15", "3.14", 1.0),
        ("The value is 2.", "2", 1.0),
    ],
)
def test_match_reads_numbers_strictly(completion, expected, score):
    from easyrlhf_plugins.rewards import MatchReward

    assert MatchReward().score([[]], [completion], columns={"answer": [expected]}) == [score]


@pytest.mark.parametrize(
    "answer, expected, score",
    [
        ("3,4", "34", 0.0),
        ("3,4", "3,4", 1.0),  # not a number: compared as text
        ("1,234", 1234, 1.0),
        ("\u22124", -4, 1.0),
        ("Paris", "paris", 1.0),
    ],
)
def test_match_with_a_pattern_reads_the_group_with_the_same_rules(answer, expected, score):
    from easyrlhf_plugins.rewards import MatchReward

    tagged = MatchReward(pattern=r"<answer>(.*?)</answer>")
    assert tagged.score([[]], [f"<answer>{answer}</answer>"], columns={"answer": [expected]}) == [score]


# --------------------------------------------------------------------------------------------------
# A bad reward option names where it was set: the config file's line, --set, --reward-option


def test_a_bad_reward_option_in_a_config_file_names_its_line(easyrlhf_cli, tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text("method: ppo\nreward: keyword\nreward_options:\n  weight: lots\n  keywords: [thanks]\n")
    out = tmp_path / "never"
    result = easyrlhf_cli("run", "--config", str(config), "--output-dir", str(out))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {config}:4: reward 'keyword': 'weight' must be a number, got 'lots'"
    assert not out.exists()


def test_a_bad_option_of_one_of_several_rewards_names_its_line(easyrlhf_cli, tmp_path):
    config = tmp_path / "grpo.yaml"
    config.write_text(
        "method: grpo\nrewards:\n  - reward: length\n  - reward: keyword\n    options:\n"
        "      keywords: [thanks]\n      mode: sum\n"
    )
    result = easyrlhf_cli("run", "--config", str(config), "--output-dir", str(tmp_path / "never"))
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: {config}:7: reward 'keyword': 'mode' must be one of"), (
        result.stderr
    )


def test_a_bad_reward_option_from_set_names_set(easyrlhf_cli, tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text("method: ppo\nreward: keyword\nreward_options:\n  keywords: [thanks]\n")
    result = easyrlhf_cli(
        "run", "--config", str(config), "--set", "reward_options.weight=lots", "--output-dir", str(tmp_path / "never")
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --set reward_options.weight: reward 'keyword': 'weight' must be a number, got 'lots'"
    )


def test_a_list_of_strings_option_refuses_numbers(easyrlhf_cli, tiny_model_dir, tmp_path):
    """``keywords: [1, 2]`` was turned into ['1', '2'] without a word; the message reads naturally."""
    result = easyrlhf_cli(
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "1",
        "--reward",
        "keyword",
        "--set",
        "reward_options.keywords=[1, 2]",
        "--output-dir",
        str(tmp_path / "never"),
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --set reward_options.keywords: reward 'keyword': 'keywords' must be a "
        "list of strings or a string or empty (null), got [1, 2]"
    )
    with pytest.raises(ConfigError, match="must be a list of strings or a string"):
        KeywordReward(keywords=["thanks", 2])
    assert KeywordReward(keywords=["1", "2"]).score(PROMPTS[:1], ["1 and 2"]) == [2.0]


def test_a_list_of_strings_config_option_refuses_numbers(easyrlhf_cli, tmp_path):
    config = tmp_path / "dpo.yaml"
    config.write_text("method: dpo\nlora:\n  enabled: true\n  target_modules: [1, 2]\n")
    result = easyrlhf_cli("run", "--config", str(config), "--output-dir", str(tmp_path / "never"))
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: {config}:4: 'lora.target_modules' must be a list of strings, got [1, 2]")


def test_a_bad_eval_reward_option_names_the_flag(easyrlhf_cli, tiny_model_dir):
    result = easyrlhf_cli(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--reward",
        "keyword",
        "--reward-option",
        "keywords=thanks",
        "--reward-option",
        "weight=lots",
        "--dataset",
        "arithmetic",
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --reward-option: reward 'keyword': 'weight' must be a number, got 'lots'"
    listed = easyrlhf_cli(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--reward",
        "keyword",
        "--reward-option",
        "keywords=[1, 2]",
        "--dataset",
        "arithmetic",
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
    )
    assert listed.exit_code == 2
    assert listed.stderr.strip().startswith(
        "Error: --reward-option: reward 'keyword': 'keywords' must be a list of strings"
    ), listed.stderr


def test_reward_options_set_whole_with_set_name_set(easyrlhf_cli, tmp_path):
    result = easyrlhf_cli(
        "run",
        "--method",
        "ppo",
        "--reward",
        "keyword",
        "--set",
        "reward_options={colour: red}",
        "--output-dir",
        str(tmp_path / "never"),
    )
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("Error: --set reward_options: reward 'keyword': unknown option(s) colour")
