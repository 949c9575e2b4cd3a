"""PPO's forwards over prompt + response rows, lean: every row's padding taken out and the rows packed
(:func:`easyrlhf_core.kit.shared_prefix_packing.pack_rows`, a block attention mask keeps them apart), each
model's hidden states computed once, and then only the positions that predict a response token read: the
LM head on those alone, in chunks, each chunk's log-softmax recomputed in the backward instead of kept
(:func:`easyrlhf_core.kit.shared_prefix_forward.chunked_token_log_probs`), so no ``(batch, length, vocab)``
tensor exists; the value model's scalar head on the same positions.

A model whose attention cannot take the block mask (flash-attention kernels, sliding windows, custom code:
:func:`easyrlhf_core.kit.shared_prefix_forward.packing_unsupported` checks on a probe batch) takes the plain
path instead: padded rows through the model's own forward, its logits at the response positions only.

Response tensors are ``(batch, response_len)``, 0 where ``read`` is False (padding after the stop token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from easyrlhf_core.kit import causal_lm as lm

from .core import entropy_from_logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (what ``generate`` uses with left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Layout:
    """One batch of rows ``[left-padded prompt | response | padding]`` as the models read it."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_query: int
    #: the packed batch (``pack_rows``); None: the plain path over the padded rows
    packed: dict[str, torch.Tensor] | None = None

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.n_query :]

    @property
    def read(self) -> torch.Tensor:
        """``(batch, response_len)`` bool: the real response tokens, the ones a log-prob or value is read for."""
        return self.attention_mask[:, self.n_query :].bool()

    def sources(self) -> torch.Tensor:
        """Flat index (into the packed batch's hidden states) of the position before each real response
        token, in ``read``'s row-major order."""
        assert self.packed is not None
        rows, columns = self.read.nonzero(as_tuple=True)
        return self.packed["token_index"][rows, columns + self.n_query - 1]

    def select(self, rows: torch.Tensor | slice, pack: bool, pad_token_id: int) -> Layout:
        """The layout of some of the rows (packed anew when ``pack``)."""
        return layout(self.input_ids[rows], self.attention_mask[rows], self.n_query, pad_token_id, pack)


def layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int, pad_token_id: int, pack: bool
) -> Layout:
    """The rows of ``input_ids`` (prompt ``n_query`` wide, then response) packed without padding when
    ``pack``, else as they are."""
    from easyrlhf_core.kit.shared_prefix_packing import pack_rows

    packed = pack_rows(input_ids, attention_mask, pad_token_id) if pack else None
    return Layout(input_ids, attention_mask, n_query, packed)


def _base(model: Any) -> Any:
    """The transformers model under accelerate/DDP and peft wrappers (peft's adapters stay in its modules)."""
    from easyrlhf_core.kit.model_loading import unwrap

    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _scatter(values: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """``values`` ``[n]`` (one per True of ``read``) laid out as ``read``, 0 elsewhere."""
    return values.new_zeros(read.shape).masked_scatter(read, values)


def _response_hidden(model: Any, batch: Layout) -> torch.Tensor:
    """``[n, hidden]``: the last hidden state before each real response token, from one packed backbone pass."""
    from easyrlhf_core.kit.shared_prefix_forward import packed_hidden_states

    assert batch.packed is not None
    return packed_hidden_states(_base(model), batch.packed).index_select(0, batch.sources())


def policy_log_probs(
    policy: Any, batch: Layout, temperature: float, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log_probs, entropy or None)`` ``(batch, response_len)`` in float32 of the response tokens under
    ``softmax(logits / temperature)``; log-probs carry gradients when enabled, entropy never does."""
    if batch.packed is None:
        logits = policy_response_logits(policy, batch.input_ids, batch.attention_mask, batch.n_query)
        read = batch.read.to(logits.dtype)
        logprobs = lm.logprobs_from_logits(logits, batch.responses, temperature) * read
        return logprobs, entropy_from_logits(logits, temperature) * read if entropy else None
    from easyrlhf_core.kit.shared_prefix_forward import chunked_token_log_probs

    base = _base(policy)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    softcap = getattr(config, "final_logit_softcapping", None)
    labels = batch.responses[batch.read]
    out = chunked_token_log_probs(
        base.get_output_embeddings(),
        _response_hidden(policy, batch),
        labels,
        softcap,
        temperature=temperature,
        stats=entropy,
    )
    return _scatter(out[0], batch.read), _scatter(out[1], batch.read) if entropy else None


def response_values(value_model: Any, batch: Layout) -> torch.Tensor:
    """Value estimates ``(batch, response_len)`` for the states before each response token, float32."""
    if batch.packed is None:
        values = value_response_outputs(value_model, batch.input_ids, batch.attention_mask, batch.n_query)
        return values * batch.read
    head = _base(value_model).score
    values = head(_response_hidden(value_model, batch)).squeeze(-1).float()
    return _scatter(values, batch.read)


# --------------------------------------------------------------------------------------------------
# The plain path: padded rows through the model's own forward


def policy_response_logits(
    policy: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Logits that predicted each response token (positions ``n_query - 1 .. end - 1``), with positions
    counted as ``generate`` counts them; the LM head runs on those positions only (all rows, padding too)."""
    keep = input_ids.shape[1] - n_query + 1
    out = policy(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        logits_to_keep=keep,
    )
    return out.logits[:, :-1]


def value_response_outputs(
    value_model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Value estimates for the states before each response token (same positions as the logits)."""
    from easyrlhf_core.kit.model_loading import scalar_head_outputs

    values = scalar_head_outputs(value_model, input_ids, attention_mask, position_ids(attention_mask))
    return values[:, n_query - 1 : -1].float()


def lean_forward_unsupported(models: list[Any]) -> str | None:
    """Why the lean path cannot run on these models (policy and reference as causal LMs, then the value
    model as a classifier), or None: each must read a packed probe batch as its own forward reads it."""
    from easyrlhf_core.kit.shared_prefix_forward import packing_unsupported

    *causal_lms, value_model = models
    for model, kind in [*((m, "causal_lm") for m in causal_lms), (value_model, "classifier")]:
        reason = packing_unsupported(model, kind)
        if reason is not None:
            return f"{type(_base(model)).__name__}: {reason}"
    return None
