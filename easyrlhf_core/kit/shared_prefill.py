"""Generation that reads each distinct prompt once.

GRPO and RLOO sample ``num_generations`` completions of every prompt, RRHF several candidates: ``generate``
gets the same left-padded prompt on several rows and, left alone, runs the model over it once per row before
the first new token. :func:`generate_sharing_prompts` runs the prompts' first ``n - 1`` tokens once per distinct
prompt, copies that KV cache to every row of the prompt's group, and lets ``generate`` go on from there (it
feeds only the uncached last token). The tokens are the same as without sharing (greedy: equal; sampled: the
same random draws, so equal up to the float rounding of a differently batched prefill).

It applies to decoder-only models whose cache layers are plain keys and values (transformers' dynamic layers,
full or sliding-window; not recurrent or hybrid ones), with greedy or sampled decoding (no beam search, no
cache settings or images), and falls back to plain ``generate`` otherwise, or when no two rows share a prompt.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any, Callable

from easyrlhf_core.kit.shared_prefix_packing import prompt_groups

if TYPE_CHECKING:
    import torch

__all__ = ["generate_sharing_prompts", "shared_prompt_cache"]

#: The ``generate`` keyword arguments the shared path takes; any other (a cache, settings outside the config,
#: images) makes it run plain.
TAKEN = frozenset({"input_ids", "attention_mask", "generation_config", "streamer"})
#: Cache layers whose state is per-row keys and values only.
SELECTABLE_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer"})
#: Set on a model whose cache cannot be shared (found at its first prefill).
NOT_SHAREABLE = "_easyrlhf_prompts_not_shareable"


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
    if getattr(model, NOT_SHAREABLE, False) or getattr(config, "use_cache", True) is False:
        return None
    if (getattr(config, "num_beams", 1) or 1) > 1 or getattr(config, "cache_implementation", None) is not None:
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
    parameters = _forward_parameters(model)
    name = "cache" if "cache" in parameters else "past_key_values"  # transformers renamed it
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    if "position_ids" in inspect.signature(model.forward).parameters:  # as generate decides: the same positions
        extra["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # its left-padding rule
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **extra)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    if not _selectable(cache):  # recurrent or hybrid layers: their state is not rows of keys and values
        setattr(model, NOT_SHAREABLE, True)  # not tried again on this model
        return None
    cache.batch_select_indices(group)
    return name, cache


def _selectable(cache: Any) -> bool:
    """Whether every layer of ``cache`` holds plain per-row keys and values (transformers' dynamic layers, full
    or sliding-window), which selecting batch rows copies whole."""
    layers = getattr(cache, "layers", None)
    if cache is None or not hasattr(cache, "batch_select_indices") or not layers:
        return False
    return all(type(layer).__name__ in SELECTABLE_LAYERS for layer in layers)


def generate_sharing_prompts(generate: Callable[..., Any], model: Any, **kwargs: Any) -> Any:
    """``generate(**kwargs)`` (the model's ``generate``, called with keyword arguments), each distinct prompt of
    ``input_ids`` prefilled once; ``generation_config.num_return_sequences`` rows per prompt are expanded here
    first so that their prompt is shared too. Without a ``generation_config``, plain ``generate``."""
    input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    config = kwargs.get("generation_config")
    if input_ids is None or attention_mask is None or config is None or set(kwargs) - TAKEN:
        return generate(**kwargs)  # a cache given, settings outside the config, images: generate's own way
    repeats = getattr(config, "num_return_sequences", 1) or 1
    if repeats > 1 and (getattr(config, "num_beams", 1) or 1) == 1 and getattr(config, "do_sample", False):
        config = copy.copy(config)
        config.num_return_sequences = 1
        input_ids = input_ids.repeat_interleave(repeats, dim=0)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    shared = shared_prompt_cache(model, input_ids, attention_mask, config)
    if shared is not None:
        kwargs[shared[0]] = shared[1]
    return generate(**kwargs)
