"""Builders for tiny test models and a CLI runner (used by conftest and by tests directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The builders ship with EasyRLHF (the tiny_causal_lm / tiny_reward_model fixtures use them too).
from easyrlhf_core.kit.tiny_models import (  # noqa: F401
    SPECIAL_TOKENS,
    build_tiny_causal_lm,
    build_tiny_reward_model,
    build_tiny_tokenizer,
    tiny_config_fields,
)

#: A chat template whose rendered text ends with the eos token (= pad), as Llama-3-Instruct's ends with
#: ``<|eot_id|>`` and Mistral's with ``</s>``: no newline after the last end-of-turn.
PAD_TERMINATED_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the ``easyrlhf`` CLI in-process; a fresh plugin registry each call (the public helper)."""
    from easyrlhf_core.kit.testing import run_cli as run

    return run(*args, env=env)


def save_tiny_sliding_window_lm(tokenizer_dir: str | Path, directory: Path) -> Path:
    """A random 2-layer Mistral with sliding-window attention (a model prefix sharing cannot pack: its
    attention mask is not ours to give) and the tokenizer from ``tokenizer_dir``, saved in ``directory``."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**tiny_config_fields(tokenizer), sliding_window=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
