"""Generation that reads each distinct prompt once.

GRPO and RLOO sample ``num_generations`` completions of every prompt, RRHF several candidates: ``generate``
gets the same left-padded prompt on several rows and, left alone, runs the model over it once per row before
the first new token. :func:`generate_sharing_prompts` runs the prompts' first ``n - 1`` tokens once per distinct
prompt, copies that KV cache to every row of the prompt's group, and lets ``generate`` go on from there (it
feeds only the uncached last token). The tokens are the same as without sharing (greedy: equal; sampled: the
same random draws, so equal up to the float rounding of a differently batched prefill).

It applies to decoder-only models whose cache can select batch rows (transformers' ``DynamicCache``), with
greedy or sampled decoding (no beam search), and falls back to plain ``generate`` otherwise, or when no two
rows share a prompt.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any, Callable

from easyrlhf_core.kit.shared_prefix_packing import prompt_groups

if TYPE_CHECKING:
    import torch

__all__ = ["generate_sharing_prompts", "shared_prompt_cache"]

#: Keyword arguments that make ``generate`` run plain: a cache the caller gives, settings outside the config.
OVERRIDES = frozenset({"cache", "past_key_values", "cache_params", "num_return_sequences", "num_beams"})


def _forward_parameters(model: Any) -> Any:
    """The parameters of the forward under ``model`` (a PEFT wrapper's base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(type(base).forward).parameters


def shared_prompt_cache(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: Any
) -> tuple[str, Any] | None:
    """``(keyword, cache)`` for ``generate``: the KV cache of ``input_ids[:, :-1]`` computed once per distinct
    prompt and copied to every row; None where sharing does not apply (see the module)."""
    import torch

    if input_ids.size(1) < 2 or getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    if (getattr(config, "num_beams", 1) or 1) > 1 or getattr(config, "cache_implementation", None) not in (
        None,
        "dynamic",
    ):
        return None
    if getattr(config, "num_return_sequences", 1) not in (None, 1):
        return None
    groups = prompt_groups(input_ids, attention_mask)
    if len(groups) == input_ids.size(0):
        return None  # every row a prompt of its own
    first = torch.tensor([rows[0] for rows in groups], device=input_ids.device)
    group = torch.empty(input_ids.size(0), dtype=torch.long, device=input_ids.device)
    for number, rows in enumerate(groups):
        group[rows] = number
    ids, mask = input_ids[first, :-1], attention_mask[first, :-1]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # generate's own rule for left padding
    parameters = _forward_parameters(model)
    name = "cache" if "cache" in parameters else "past_key_values"  # transformers renamed it
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(group)
    return name, cache


def generate_sharing_prompts(generate: Callable[..., Any], model: Any, **kwargs: Any) -> Any:
    """``generate(**kwargs)`` (the model's ``generate``, called with keyword arguments), each distinct prompt of
    ``input_ids`` prefilled once; ``generation_config.num_return_sequences`` rows per prompt are expanded here
    first so that their prompt is shared too. Without a ``generation_config``, plain ``generate``."""
    input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    config = kwargs.get("generation_config")
    if input_ids is None or attention_mask is None or config is None or set(kwargs) & OVERRIDES:
        return generate(**kwargs)  # a cache given, or settings outside the config: generate's own way
    repeats = getattr(config, "num_return_sequences", 1) or 1
    if repeats > 1 and (getattr(config, "num_beams", 1) or 1) == 1:
        config = copy.copy(config)
        config.num_return_sequences = 1
        input_ids = input_ids.repeat_interleave(repeats, dim=0)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    shared = shared_prompt_cache(model, input_ids, attention_mask, config)
    if shared is not None:
        kwargs[shared[0]] = shared[1]
    return generate(**kwargs)
