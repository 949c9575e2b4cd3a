"""The plugin's own tests, written as a third party writes them: the fixtures EasyRLHF ships
(easyrlhf_plugin, easyrlhf_cli) and a tiny random model built here, never downloaded."""

from __future__ import annotations

import json

import pytest

import easyrlhf_plugin_kto


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with a byte-level tokenizer and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Paris is the capital of France. Bread needs flour and water."] * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        unk_token="<|endoftext|>")
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                               "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                               "{{ '<|im_start|>assistant\n' }}{% endif %}")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def kto(easyrlhf_plugin):
    return easyrlhf_plugin("kto", easyrlhf_plugin_kto)


def test_listed_with_its_method_and_reward(kto, easyrlhf_cli):
    data = json.loads(easyrlhf_cli("list-plugins", "--json").stdout)
    assert any(m["name"] == "kto" and m["shape"] == "preference" for m in data["methods"])
    assert any(r["name"] == "politeness" for r in data["rewards"])


def test_kto_trains_on_the_embedded_data_and_saves_a_model(kto, easyrlhf_cli, tiny_model, tmp_path):
    out = tmp_path / "kto"
    result = easyrlhf_cli("run", "--method", "kto", "--model", str(tiny_model), "--max-steps", "2",
                          "--output-dir", str(out), "--set", "max_train_samples=8", "--set", "max_eval_samples=2",
                          "--set", "max_length=128", "--set", "learning_rate=1e-3", "--set", "save_steps=0")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (out / "model" / "config.json").is_file() and (out / "COMPLETE").is_file()
    # the shared data options reached the plugin's run: 8 pairs, unpaired by KTO
    assert "8 train / 2 eval examples" in result.stderr


def test_kto_options_are_checked_with_the_file_or_flag(kto, easyrlhf_cli, tmp_path):
    result = easyrlhf_cli("run", "--method", "kto", "--set", "beta=0", "--output-dir", str(tmp_path / "x"))
    assert result.exit_code == 2 and result.stderr.strip() == "Error: --set beta: 'beta' must be > 0"
    listed = easyrlhf_cli("run", "--method", "kto", "--help")
    assert "desirable_weight: 1.0" in listed.stdout and "learning_rate: 5.0e-07" in listed.stdout


def test_politeness_reward_and_its_options(kto):
    from easyrlhf_core.errors import ConfigError
    from easyrlhf_core.reward_choice import make_reward

    reward = make_reward(kto, None, "politeness", {"weight": 0.5, "words": ["please", "thank you"]})
    assert reward.score([[]] * 2, ["Please, thank you, please!", "No."]) == [1.5, 0.0]
    with pytest.raises(ConfigError, match="unknown option\\(s\\) wieght \\(did you mean 'weight'\\?\\)"):
        make_reward(kto, None, "politeness", {"wieght": 2})
