"""Issue 26 items 1, 2, 4: every sampling path builds its generation config from our options alone (a model's
generation_config.json never applies), grpo/rloo refuse top_k/top_p as ppo does, and every path hands a
reward the same response text."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

#: What the leaky model's generation_config.json sets: every one of these would change the sampled tokens.
LEAKY_SETTINGS = {
    "do_sample": True,
    "temperature": 0.5,
    "top_k": 3,
    "top_p": 0.8,
    "min_p": 0.2,
    "no_repeat_ngram_size": 2,
    "repetition_penalty": 1.5,
    "typical_p": 0.9,
}
PROMPTS = [[{"role": "user", "content": "Hi there, how are you?"}], [{"role": "user", "content": "What is 2 + 2?"}]]


@pytest.fixture(scope="module")
def leaky_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, same weights, with a generation_config.json that sets min_p, no_repeat_ngram_size,
    repetition_penalty, bad_words_ids, suppress_tokens (every token but eos and two more), ..."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    keep = {eos, 100, 101}
    model.generation_config = GenerationConfig(
        **LEAKY_SETTINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bad_words_ids=[[100, 101]],
        suppress_tokens=[i for i in range(len(tokenizer)) if i not in keep],
    )
    out = tmp_path_factory.mktemp("leaky-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _load(path: Path) -> tuple[object, object]:
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer

    return load_causal_lm(str(path)), load_tokenizer(str(path))


def _queries(tokenizer: object) -> tuple[object, object]:
    from easyrlhf_core.kit.causal_lm import left_pad
    from easyrlhf_core.kit.chat_template import prompt_ids

    return left_pad([prompt_ids(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id)


def _ppo_sample(model: object, tokenizer: object, seed: int = 3) -> list[list[int]]:
    """PPO's rollout sampling: its generation config and the shared batched ``generate``."""
    import torch
    from easyrlhf_plugins.methods.ppo.config import PPOConfig
    from easyrlhf_plugins.methods.ppo.rollout import generation_config

    from easyrlhf_core.kit import causal_lm as lm

    config = generation_config(
        PPOConfig(max_new_tokens=8, temperature=0.9), tokenizer, lm.stop_token_ids(tokenizer, model)
    )
    ids, mask = _queries(tokenizer)
    torch.manual_seed(seed)
    with torch.no_grad():
        return lm.generate(model, ids, mask, config).tolist()


def test_the_leaky_file_would_change_generation(leaky_model_dir):
    """Sanity of the fixture: transformers itself merges the file into a config that leaves fields unset."""
    from transformers import GenerationConfig

    model, tokenizer = _load(leaky_model_dir)
    assert model.generation_config.min_p == 0.2 and model.generation_config.no_repeat_ngram_size == 2
    ids, mask = _queries(tokenizer)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(max_new_tokens=4))
    assert set(out[:, ids.shape[1] :].flatten().tolist()) <= {tokenizer.eos_token_id, 100, 101}


def test_ppo_rollout_uses_our_settings_alone(tiny_model_dir, leaky_model_dir, monkeypatch):
    """The config ``generate`` actually runs with has none of the file's settings, and the sampled tokens are
    those of the same weights without the file (same seed), so the sampled and scored distributions agree."""
    from transformers import GenerationMixin

    clean_model, tokenizer = _load(tiny_model_dir)
    leaky_model, _ = _load(leaky_model_dir)
    used = []
    prepare = GenerationMixin._prepare_generation_config

    def recording(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        used.append(result[0])
        return result

    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", recording)
    sampled = _ppo_sample(leaky_model, tokenizer)
    config = used[-1]
    assert (config.min_p, config.no_repeat_ngram_size, config.repetition_penalty, config.typical_p) == (
        None,
        0,
        1.0,
        1.0,
    )
    assert (config.bad_words_ids, config.suppress_tokens, config.top_k, config.top_p) == (None, None, 0, 1.0)
    assert config.temperature == 0.9
    assert sampled == _ppo_sample(clean_model, tokenizer)
    assert leaky_model.generation_config.min_p == 0.2  # the model keeps its own file (what a saved model carries)


def test_ppo_sampled_log_probs_are_the_scored_ones(leaky_model_dir):
    """Log-probs of the sampled tokens under softmax(logits / T) from a forward pass: finite (no token the file
    bans or filters was picked against the full softmax) and, as sampling saw them, equal to generate's scores."""
    import torch
    from easyrlhf_plugins.methods.ppo.config import PPOConfig
    from easyrlhf_plugins.methods.ppo.rollout import generation_config

    from easyrlhf_core.kit import causal_lm as lm

    model, tokenizer = _load(leaky_model_dir)
    config = generation_config(PPOConfig(max_new_tokens=6, temperature=0.9), tokenizer, [tokenizer.eos_token_id])
    config.output_scores, config.return_dict_in_generate = True, True
    ids, mask = _queries(tokenizer)
    torch.manual_seed(0)
    with torch.no_grad(), lm.model_defaults_hidden(model):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out.sequences[:, ids.shape[1] :]
        full = torch.cat([ids, new], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        logits = model(
            input_ids=full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits[:, ids.shape[1] - 1 : -1]
    scored = lm.logprobs_from_logits(logits, new, temperature=0.9)
    sampled = lm.logprobs_from_logits(torch.stack(out.scores, dim=1), new)  # the processed scores sampling used
    live = new != tokenizer.eos_token_id
    live[:, 0] = True
    assert torch.allclose(scored[live], sampled[live], atol=1e-4)


def test_eval_answers_use_our_settings_alone(tiny_model_dir, leaky_model_dir):
    from easyrlhf_core.commands.eval.generation import generate_answers
    from easyrlhf_core.kit.chat_template import prompt_ids

    for sample in (False, True):
        answers = []
        for path in (tiny_model_dir, leaky_model_dir):
            model, tokenizer = _load(path)
            prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
            answers.append([a.completion_ids for a in generate_answers(model, tokenizer, prompts, 8, sample=sample)])
        assert answers[0] == answers[1], f"sample={sample}"


def test_rrhf_generated_candidates_use_our_settings_alone(tiny_model_dir, leaky_model_dir):
    from easyrlhf_plugins.methods.rrhf.candidates import sample_responses
    from easyrlhf_plugins.methods.rrhf.config import RRHFConfig

    config = RRHFConfig(candidates="generate", reward="length", num_generations=2, max_new_tokens=8)
    texts = []
    for path in (tiny_model_dir, leaky_model_dir):
        model, tokenizer = _load(path)
        texts.append(sample_responses(model, tokenizer, PROMPTS, config))
    assert texts[0] == texts[1] and any(t for row in texts[0] for t in row)


def test_chat_reply_uses_our_settings_alone(tiny_model_dir, leaky_model_dir):
    from easyrlhf_core.commands.chat import ChatModel, ChatSettings, Conversation, reply
    from easyrlhf_core.kit.causal_lm import stop_token_ids

    answers = []
    for path in (tiny_model_dir, leaky_model_dir):
        model, tokenizer = _load(path)
        bot = ChatModel("m", model, tokenizer, stop_token_ids(tokenizer, model), tokenizer.pad_token_id)
        answers.append(reply(bot, Conversation(), "Hi there", ChatSettings(max_new_tokens=8)))
    assert answers[0] == answers[1] and answers[0]


@pytest.mark.parametrize("wrap_in_lora", [False, True])
def test_pinned_model_ignores_its_file_in_generate_calls_we_do_not_own(tiny_model_dir, leaky_model_dir, wrap_in_lora):
    """What grpo/rloo do to TRL's ``generate`` calls (TRL passes a config that leaves min_p etc. unset)."""
    from transformers import GenerationConfig

    from easyrlhf_core.kit.causal_lm import pin_generation

    trl_like = GenerationConfig(
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=[2],
        pad_token_id=2,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        repetition_penalty=1.0,
    )
    outputs = []
    for path in (tiny_model_dir, leaky_model_dir):
        model, tokenizer = _load(path)
        if wrap_in_lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        pin_generation(model)
        ids, mask = _queries(tokenizer)
        outputs.append(model.generate(input_ids=ids, attention_mask=mask, generation_config=trl_like).tolist())
    assert outputs[0] == outputs[1]


# --------------------------------------------------------------------------------------------------
# Item 2: grpo / rloo sample from the distribution they score


@pytest.mark.parametrize("method", ["grpo", "rloo"])
@pytest.mark.parametrize("setting", ["top_k=20", "top_p=0.9"])
def test_grpo_and_rloo_refuse_filtered_sampling(cli_run, tiny_model_dir, tmp_path, method, setting):
    out = tmp_path / "never"
    result = cli_run(
        "run",
        "--method",
        method,
        "--model",
        str(tiny_model_dir),
        "--reward",
        "length",
        "--set",
        setting,
        "--output-dir",
        str(out),
    )
    key = setting.split("=")[0]
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: --set {key}: ") and "must be" in result.stderr
    assert f"for {method}:" in result.stderr
    assert "off-policy" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_grpo_help_and_show_config_still_work(cli_run):
    assert cli_run("show-config", "--method", "grpo").exit_code == 0
    shown = cli_run("show-config", "--method", "rloo")
    assert shown.exit_code == 0 and "top_k: 0" in shown.stdout
    assert cli_run("run", "--method", "grpo", "--help").exit_code == 0


# --------------------------------------------------------------------------------------------------
# Item 4: one response text for every reward


def test_decode_response_skips_special_tokens_and_strips(tiny_model_dir):
    from easyrlhf_core.kit.causal_lm import decode_response, response_text
    from easyrlhf_core.kit.model_loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = tokenizer.encode(" 4\n", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " 4\n"
    assert decode_response(tokenizer, ids) == "4"
    assert response_text(" 4\n") == "4"


class Recording:
    """A reward plugin that records the completions it is handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, prompts, completions, columns=None):
        self.seen += [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0] * len(completions)


def test_ppo_grpo_and_eval_hand_the_reward_the_same_text(tiny_model_dir, monkeypatch):
    import torch
    from easyrlhf_plugins.methods.ppo.trainer import PPOTrainer

    from easyrlhf_core.commands.eval import generation
    from easyrlhf_core.kit import causal_lm
    from easyrlhf_core.kit.chat_template import as_completion
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer
    from easyrlhf_core.kit.online_trl import TRLRewardFunc
    from easyrlhf_core.kit.rewards import WeightedReward, score_with_columns

    tokenizer = load_tokenizer(str(tiny_model_dir))
    body = tokenizer.encode(" 4\n", add_special_tokens=False)
    response = torch.tensor([body + [tokenizer.eos_token_id]])
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    reward = Recording()

    # ppo: the rollout's texts, scored as the trainer scores them
    ppo_texts = PPOTrainer._texts(SimpleNamespace(tokenizer=tokenizer), response, torch.ones_like(response))
    score_with_columns(reward, [prompt], ppo_texts, {})
    # grpo / rloo: TRL decodes the completion (special tokens skipped) and calls our reward function
    TRLRewardFunc(WeightedReward(reward, 1.0, "rec"))([prompt], [[{"role": "assistant", "content": " 4\n"}]])
    # eval: the generated answer's text, scored as a completion
    monkeypatch.setattr(causal_lm, "generate", lambda *args, **kwargs: response)  # what eval's engine calls
    (answer,) = generation.generate_answers(
        load_causal_lm(str(tiny_model_dir)), tokenizer, [tokenizer.encode("What is 2 + 2?")], 4
    )
    reward.score([prompt], [as_completion(answer.text)])

    assert reward.seen == ["4", "4", "4"]
