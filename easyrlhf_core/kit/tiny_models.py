"""Tiny random models for tests, built locally in a second (never downloaded).

The tokenizer is a byte-level BPE (~400 tokens) trained on a few sentences, with SmolLM2's special tokens,
the ChatML template :data:`easyrlhf_core.kit.model_loading.DEFAULT_CHAT_TEMPLATE`, and pad == eos (``<|im_end|>``). The
models are 2-layer Llamas (hidden size 32) sized to it. The pytest fixtures ``tiny_causal_lm`` and
``tiny_reward_model`` (:mod:`easyrlhf_core.kit.testing`) save them once per session::

    def test_my_method_trains(easyrlhf_cli, tiny_causal_lm, tmp_path):
        easyrlhf_cli("run", "--method", "my-method", "--model", str(tiny_causal_lm), ...)

tokenizers, transformers and torch are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "SPECIAL_TOKENS",
    "build_tiny_causal_lm",
    "build_tiny_reward_model",
    "build_tiny_tokenizer",
    "save_tiny_causal_lm",
    "save_tiny_reward_model",
    "tiny_config_fields",
]

#: The special tokens (SmolLM2's): unk, bos and eos (= pad).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, let it rise, then bake it.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road? To get to the other side!",
    "Human: Can you help me with my homework? Assistant: Sure, what subject is it?",
    "You are a helpful assistant. Please answer the question below with care and detail.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


def build_tiny_tokenizer(chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with SmolLM2's special tokens, pad == eos, and
    the ChatML template (or ``chat_template``): a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from easyrlhf_core.kit.model_loading import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def _tiny_llama_config(tokenizer: Any, **fields: Any) -> Any:
    """The 2-layer, hidden-32 Llama config sized to ``tokenizer`` (its bos, eos and pad ids)."""
    from transformers import LlamaConfig

    return LlamaConfig(**tiny_config_fields(tokenizer), **fields)


def tiny_config_fields(tokenizer: Any) -> dict[str, Any]:
    """The tiny models' config fields, sized to ``tokenizer`` (its bos, eos and pad ids): for building another
    architecture the same size (a Mistral with ``sliding_window``, say)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_tiny_causal_lm(tokenizer: Any, seed: int = 0, **fields: Any) -> Any:
    """A random 2-layer ``LlamaForCausalLM`` sized to ``tokenizer`` (tied embeddings), seeded; ``fields``
    change the config (``head_dim=32`` for engines whose kernels need a wider head, such as vLLM on CPU)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_llama_config(tokenizer, **{"tie_word_embeddings": True, **fields}))


def build_tiny_reward_model(tokenizer: Any, seed: int = 0) -> Any:
    """A random 2-layer ``LlamaForSequenceClassification`` with one label (a reward model's scalar head)
    sized to ``tokenizer``, seeded."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_tiny_llama_config(tokenizer, num_labels=1))


def save_tiny_causal_lm(directory: str | Path, seed: int = 0, **fields: Any) -> Path:
    """:func:`build_tiny_causal_lm` (``fields`` change its config) and its tokenizer saved in ``directory`` like a
    Hub model; the path."""
    tokenizer = build_tiny_tokenizer()
    return _save(build_tiny_causal_lm(tokenizer, seed=seed, **fields), tokenizer, Path(directory))


def save_tiny_reward_model(directory: str | Path, seed: int = 0) -> Path:
    """:func:`build_tiny_reward_model` and its tokenizer saved in ``directory`` (as ``--method rm`` saves
    ``model/``); the path."""
    tokenizer = build_tiny_tokenizer()
    return _save(build_tiny_reward_model(tokenizer, seed=seed), tokenizer, Path(directory))


def _save(model: Any, tokenizer: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
