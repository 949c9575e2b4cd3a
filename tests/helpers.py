"""Builders for tiny test models and a CLI runner (used by conftest and by tests directly)."""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, let it rise, then bake it.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road? To get to the other side!",
    "Human: Can you help me with my homework? Assistant: Sure, what subject is it?",
    "You are a helpful assistant. Please answer the question below with care and detail.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


#: A chat template whose rendered text ends with the eos token (= pad), as Llama-3-Instruct's ends with
#: ``<|eot_id|>`` and Mistral's with ``</s>``: no newline after the last end-of-turn.
PAD_TERMINATED_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with SmolLM2's special tokens and template
    (or ``chat_template``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from easyrlhf_core.models import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def build_tiny_causal_lm(tokenizer: Any, seed: int = 0) -> Any:
    """A random 2-layer Llama sized to ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the ``easyrlhf`` CLI in-process; a fresh plugin registry each call (the public helper)."""
    from easyrlhf_core.testing import run_cli as run

    return run(*args, env=env)
