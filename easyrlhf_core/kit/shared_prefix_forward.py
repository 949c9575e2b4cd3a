"""Models that read a shared-prefix packed batch (:mod:`easyrlhf_core.kit.shared_prefix_packing`).

:func:`enable_shared_prefix` patches a causal LM or a one-label sequence classifier so that
``model(..., shared_prefix=packed, ...)`` runs the backbone once on the packed rows, with the block
attention mask and continued position ids, and then answers in the padded layout of the original rows:

- causal LM, called with ``labels`` (``-100`` where nothing is read): ``log_probs`` ``[rows, T-1]`` of
  each next-token label, plus ``entropy``, ``mean_logits`` and ``is_top1`` (no gradient), zero where the
  label is ``-100`` (the fields of TRL's fused LM head output), under ``softmax(logits / temperature)``
  when also called with ``temperature`` (as TRL's fused head divides them). The LM head runs on the
  labelled positions only, in chunks, each chunk recomputed in the backward: no ``[batch, length, vocab]``
  tensor exists.
- sequence classifier: ``logits`` ``[rows, num_labels]`` read at each row's last token that is not
  ``config.pad_token_id``, the readout of the classifier's own forward
  (:func:`easyrlhf_core.kit.model_loading.reward_scores`).

Without ``shared_prefix`` the model's previous forward runs unchanged. The call goes through the model
itself (and so through DDP / DeepSpeed / peft wrappers), which keeps gradient synchronisation intact.

:func:`enable_shared_prefix` first checks, on a small packed batch, that the patched path reproduces the
model's own forward; a model whose attention cannot take the mask (flash-attention kernels, sliding
windows, custom code) is left unpatched and the reason is returned for the run log.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

from easyrlhf_core.kit.shared_prefix_packing import (
    SHARED_PREFIX_KEY,
    block_attention_mask,
    pack_groups,
    pack_prompt_groups,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHUNK_TOKENS",
    "chunked_token_log_probs",
    "enable_shared_prefix",
    "packed_hidden_states",
    "packing_unsupported",
    "shared_prefix_unsupported",
    "share_prefixes",
]

#: LM-head positions per chunk: ``CHUNK_TOKENS x vocab`` fp32 logits exist at a time (100 MB for 49k vocab).
CHUNK_TOKENS = 512
#: Attention implementations whose mask argument we can build (transformers' names).
_MASKABLE = ("sdpa", "eager", "flex_attention")
_MARK = "_easyrlhf_shared_prefix"


def _base(model: Any) -> Any:
    """The transformers model under peft / accelerate wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def shared_prefix_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot take the shared-prefix path, or None when it (probably) can: the final word
    is :func:`enable_shared_prefix`'s numerical check."""
    base = _base(model)
    config = _text_config(base)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in _MASKABLE:
        return f"attention implementation {implementation!r} takes no block mask (sdpa, eager and flex do)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention would be replaced by the block mask"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models have no shared prefix"
    if not hasattr(base, getattr(base, "base_model_prefix", "") or "-"):
        return f"{type(base).__name__} exposes no backbone ({base.base_model_prefix!r})"
    return None


def _attention_mask(backbone: Any, packed: dict[str, torch.Tensor]) -> Any:
    """The block mask in the form the model's attention implementation takes."""
    import torch

    implementation = getattr(_text_config(backbone), "_attn_implementation", None) or "eager"
    segment_ids, branch_ids = packed["segment_ids"], packed["branch_ids"]
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def visible(b: Any, h: Any, q: Any, k: Any) -> Any:
            same = (segment_ids[b, q] == segment_ids[b, k]) & (segment_ids[b, q] >= 0)
            branch = (branch_ids[b, k] == 0) | (branch_ids[b, k] == branch_ids[b, q])
            return (same & (k <= q) & branch) | (q == k)

        rows, width = segment_ids.shape
        return create_block_mask(visible, rows, None, width, width, device=segment_ids.device)
    mask = block_attention_mask(segment_ids, branch_ids)
    if implementation == "sdpa":
        return mask
    dtype = next(backbone.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def packed_hidden_states(model: Any, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The backbone's last hidden states ``[packed_rows * width, hidden]`` (flattened) for a packed batch."""
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(
        input_ids=packed["input_ids"],
        attention_mask=_attention_mask(model, packed),
        position_ids=packed["position_ids"],
        use_cache=False,
    )
    hidden = out.last_hidden_state
    return cast("torch.Tensor", hidden.reshape(-1, hidden.shape[-1]))


def _head_chunk(
    head_forward: Callable[[Any], Any],
    softcap: float | None,
    temperature: float,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    metrics: list[tuple[torch.Tensor, ...]] | None,
) -> torch.Tensor:
    """log-prob of ``labels`` under ``softmax(logits / temperature)`` (with gradient) for one chunk; when
    ``metrics`` is an empty list, also its entropy, mean logit and top-1 hit (without gradient), appended to it
    (a checkpoint's recompute finds it filled and skips them). ``head_forward`` is the head's forward itself,
    not the module call (no hooks: see :func:`chunked_token_log_probs`)."""
    import torch

    logits = head_forward(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - normaliser
    if metrics is not None and not metrics:
        with torch.no_grad():
            probs = torch.exp(logits - normaliser.unsqueeze(-1))
            entropy = normaliser - (probs * logits).sum(dim=-1)
            metrics.append((entropy, logits.mean(dim=-1), logits.argmax(dim=-1) == labels))
    return cast("torch.Tensor", log_probs)


def _head_chunks(
    head_forward: Callable[[Any], Any],
    softcap: float | None,
    chunk: int,
    temperature: float,
    stats: bool,
    hidden: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The chunk loop of :func:`chunked_token_log_probs`, run as the head module's forward."""
    import torch
    from torch.utils.checkpoint import checkpoint

    log_probs, metrics = [], []
    starts = range(0, hidden.shape[0], chunk) or range(1)  # no position: one empty chunk, still a graph
    for start in starts:
        h, y = hidden[start : start + chunk], labels[start : start + chunk]
        found: list[tuple[torch.Tensor, ...]] | None = [] if stats else None
        args = (head_forward, softcap, temperature, h, y, found)
        if torch.is_grad_enabled() and h.requires_grad and start != starts[-1]:
            log_probs.append(checkpoint(_head_chunk, *args, use_reentrant=False))
        else:
            log_probs.append(_head_chunk(*args))
        if found:
            metrics.append(found[0])
    return (torch.cat(log_probs), *(torch.cat(column) for column in zip(*metrics)))


@contextlib.contextmanager
def _forward_replaced(module: Any, forward: Callable[..., Any]) -> Any:
    """``module(...)`` runs ``forward`` inside the block (the module's hooks still run around it)."""
    had_own = "forward" in vars(module)
    previous = vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


def chunked_token_log_probs(
    head: Any,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None = None,
    chunk: int | None = None,
    temperature: float = 1.0,
    stats: bool = True,
) -> tuple[torch.Tensor, ...]:
    """``(log_probs, entropy, mean_logits, is_top1)`` of ``labels`` ``[n]`` under
    ``softmax(head(hidden) / temperature)`` (``hidden`` ``[n, d]``), ``chunk`` positions at a time (default
    :data:`CHUNK_TOKENS`); ``stats=False``: ``(log_probs,)`` alone (no entropy pass over the vocabulary). With
    gradients on, each chunk but the last is checkpointed, so its logits are recomputed in the backward instead
    of kept (the last one's are used by the backward right away: at most two chunks' logits exist at a time,
    and a batch of one chunk is not recomputed at all). Entropy, mean logit and top-1 carry no gradient.

    The head module is called exactly once, whatever ``n``: the chunks run inside that call through the
    head's own forward. Under ZeRO-3 each module call is a collective (its parameters gathered from every
    rank, in the forward and again in the backward), so a chunk count that depends on the rank's batch
    would leave the ranks waiting for each other forever; one call per forward keeps them in step (and
    gathers the largest matrix once, not once per chunk)."""
    chunk = chunk or CHUNK_TOKENS
    head_forward = head.forward
    loop = functools.partial(_head_chunks, head_forward, softcap, chunk, temperature, stats)
    with _forward_replaced(head, loop):
        return tuple(head(hidden, labels))


@functools.cache
def _lm_output_class() -> type:
    """What the patched causal LM returns for a packed batch: a transformers ``ModelOutput`` (so DDP and
    DeepSpeed hooks walk it as they walk any model output) with the fields of TRL's fused LM head output."""
    from transformers.utils import ModelOutput  # type: ignore[attr-defined]

    @dataclass
    class SharedPrefixLMOutput(ModelOutput):
        loss: Any = None
        log_probs: Any = None
        entropy: Any = None
        mean_logits: Any = None
        is_top1: Any = None
        label_mask: Any = None
        log_sum_sq_probs: Any = None
        aux_loss: Any = None

    return SharedPrefixLMOutput


def _lm_forward(
    self: Any, packed: dict[str, torch.Tensor], labels: torch.Tensor | None, temperature: float = 1.0
) -> Any:
    if labels is None:
        raise ValueError("a shared-prefix forward of a causal LM needs labels (-100 where nothing is read)")
    hidden = packed_hidden_states(self, packed)
    targets = labels[:, 1:]
    read = targets != -100
    sources = packed["token_index"][:, :-1][read]
    head = self.get_output_embeddings()
    softcap = getattr(_text_config(self), "final_logit_softcapping", None)
    values = chunked_token_log_probs(
        head, hidden.index_select(0, sources), targets[read], softcap, temperature=temperature
    )
    log_probs, entropy, mean_logits, is_top1 = (v.new_zeros(read.shape).masked_scatter(read, v) for v in values)
    loss = -log_probs.sum() / read.sum().clamp(min=1)
    return _lm_output_class()(
        loss=loss, log_probs=log_probs, entropy=entropy, mean_logits=mean_logits, is_top1=is_top1, label_mask=read
    )


def _classifier_forward(self: Any, packed: dict[str, torch.Tensor]) -> Any:
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    hidden = packed_hidden_states(self, packed)
    index = packed["token_index"]
    valid = index >= 0
    tokens = packed["input_ids"].reshape(-1)[index.clamp(min=0)]
    pad = _text_config(self).pad_token_id
    not_pad = (valid & (tokens != pad)).to(torch.int32)
    positions = torch.arange(index.shape[1], device=index.device, dtype=torch.int32)
    last = (positions * not_pad).argmax(dim=-1)  # the classifier's own rule: last token that is not pad
    sources = index[torch.arange(index.shape[0], device=index.device), last].clamp(min=0)
    logits = self.score(hidden.index_select(0, sources))
    return SequenceClassifierOutputWithPast(logits=logits)


def _install(model: Any, kind: str, autocast: Callable[[], Any] | None) -> None:
    previous = model.forward
    if getattr(previous, _MARK, False):
        return

    def forward(self: Any, *args: Any, shared_prefix: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        if shared_prefix is None:
            return previous(*args, **kwargs)
        # ``previous`` may be a wrapper that sets the run's mixed precision (accelerate wraps a model it
        # prepared before this patch, as TRL's reference model is); the shared path bypasses it, so it enters
        # ``autocast`` itself: policy and reference then run in the same precision.
        with autocast() if autocast is not None else contextlib.nullcontext():
            if kind == "causal_lm":
                return _lm_forward(self, shared_prefix, kwargs.get("labels"), kwargs.get("temperature", 1.0))
            return _classifier_forward(self, shared_prefix)

    setattr(forward, _MARK, True)
    forward.__signature__ = _with_shared_prefix(previous)  # type: ignore[attr-defined]
    model.forward = types.MethodType(forward, model)


def _with_shared_prefix(previous: Any) -> inspect.Signature:
    """The patched forward's signature: ``self``, the original's parameters, and ``shared_prefix``. Code that
    reads a model's forward signature sees what it takes (``generate`` passes ``position_ids`` only to a forward
    that names them: hidden behind ``**kwargs``, left-padded rows would be generated with other positions)."""
    parameters = list(inspect.signature(previous).parameters.values())
    kept = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    extra = inspect.Parameter("shared_prefix", inspect.Parameter.KEYWORD_ONLY, default=None)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.name == "shared_prefix" for p in kept):
        return inspect.Signature([self_parameter, *parameters])
    return inspect.Signature([self_parameter, *kept, extra, *rest])


def _probe_batch(model: Any) -> dict[str, Any]:
    """Two groups of uneven rows (one pair sharing 5 tokens, one whose rows differ from the first token),
    packed into one row, as a padded batch would hold them."""
    import torch

    vocab = _text_config(model).vocab_size
    pad = _text_config(model).pad_token_id
    pad = 0 if pad is None else pad
    ids = [t for t in range(3, vocab) if t != pad][:40]
    rows = [ids[:5] + ids[5:8], ids[10:13] + ids[13:20], ids[:5] + ids[20:30], ids[30:32]]
    width = max(len(r) for r in rows)
    input_ids = torch.full((4, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((4, width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
    packed = pack_groups(input_ids, attention_mask, [[0, 2], [1, 3]], pad, budget=4 * width)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, SHARED_PREFIX_KEY: packed}


def _online_probe_batch(model: Any) -> dict[str, Any]:
    """TRL's online rows: two prompts, left-padded to one width, each followed by its completions
    (right-padded; two of one prompt's start alike), the prompts packed once into one row; labels on the
    completions only, as TRL reads them."""
    import torch

    vocab = _text_config(model).vocab_size
    pad = _text_config(model).pad_token_id
    pad = 0 if pad is None else pad
    ids = [t for t in range(3, vocab) if t != pad][:40]
    rows = [
        (ids[:6], ids[20:23]),
        (ids[10:12], ids[23:27]),
        (ids[:6], ids[20:22] + ids[27:32]),
        (ids[:6], ids[32:33]),
        (ids[10:12], ids[33:39]),
    ]
    prompt_width, completion_width = 6, max(len(c) for _, c in rows)
    input_ids = torch.full((len(rows), prompt_width + completion_width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for r, (prompt, completion) in enumerate(rows):
        span = slice(prompt_width - len(prompt), prompt_width + len(completion))
        input_ids[r, span] = torch.tensor(prompt + completion)
        attention_mask[r, span] = 1
    packed = pack_prompt_groups(input_ids, attention_mask, [[0, 2, 3], [1, 4]], pad, budget=4 * input_ids.shape[1])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt_width] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, SHARED_PREFIX_KEY: packed}


def _max_difference(model: Any, kind: str, probe: Callable[[Any], dict[str, Any]] = _probe_batch) -> float:
    """Largest absolute difference between the patched path and the model class's own forward on a probe,
    both in the weights' dtype without autocast (an instance's forward may carry wrappers: TRL's fused LM
    head, accelerate's mixed-precision autocast on a prepared reference model)."""
    import torch

    base = _base(model)
    own_forward = type(base).forward
    device = next(base.parameters()).device
    rows = probe(base)
    batch = {k: v.to(device) for k, v in rows.items() if k != SHARED_PREFIX_KEY}
    packed = {k: v.to(device) for k, v in rows[SHARED_PREFIX_KEY].items()}
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if kind == "causal_lm":
                labels = batch["labels"]
                shared = _lm_forward(base, packed, labels).log_probs
                logits = (
                    own_forward(
                        base, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                    )
                    .logits[:, :-1]
                    .float()
                )
                own = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1))
                own = torch.where(labels[:, 1:] != -100, own.squeeze(-1), 0.0)  # padding may read NaN
            else:
                shared = _classifier_forward(base, packed).logits.float()
                own = own_forward(
                    base, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                ).logits.float()
    finally:
        base.train(was_training)
    return float((shared - own).abs().max())


def packing_unsupported(
    model: Any, kind: str = "causal_lm", tolerance: float = 1e-3, online: bool = False
) -> str | None:
    """Why ``model`` (``kind``: ``"causal_lm"`` or ``"classifier"``) cannot read a packed batch
    (:func:`packed_hidden_states` with the block mask), or None when it can: the reasons of
    :func:`shared_prefix_unsupported`, then a probe batch run both ways, packed and the model's own padded
    forward, which must agree within ``tolerance`` (log-probs or scores; fp32 agrees to ~1e-6). ``online``
    (causal LMs): also a probe of TRL's online rows, left-padded prompts each followed by its completions
    (:func:`~easyrlhf_core.kit.shared_prefix_packing.pack_prompt_groups`), which a model that numbers the
    positions of a left-padded row its own way fails. The model is left as it was."""
    if kind not in ("causal_lm", "classifier"):
        raise ValueError(f"kind must be 'causal_lm' or 'classifier', got {kind!r}")
    reason = shared_prefix_unsupported(model)
    if reason is None and kind == "classifier" and not hasattr(_base(model), "score"):
        reason = f"{type(_base(model)).__name__} has no 'score' head"
    if reason is not None:
        return reason
    probes = [(_probe_batch, "its attention ignores the block mask")]
    if online and kind == "causal_lm":
        probes.append((_online_probe_batch, "it numbers the positions of a left-padded row its own way"))
    for probe, suspect in probes:
        try:
            difference = _max_difference(model, kind, probe)
        except Exception as error:  # noqa: BLE001  (a forward that rejects a 4D mask; ZeRO-3-sharded weights)
            return f"the packed forward failed on a probe batch ({type(error).__name__}: {error})"
        if not difference <= tolerance:
            return f"the packed forward differs from the model's own by {difference:.2g} on a probe batch ({suspect})"
    return None


def enable_shared_prefix(
    model: Any,
    kind: str = "causal_lm",
    tolerance: float = 1e-3,
    autocast: Callable[[], Any] | None = None,
    online: bool = False,
) -> str | None:
    """Patch ``model`` (``kind``: ``"causal_lm"`` or ``"classifier"``) to take ``shared_prefix=`` batches;
    ``autocast``: a context factory the shared path runs in (a trainer's ``accelerator.autocast``).

    Returns None when it is patched, else why not (for one log line; the model is left as it was): the
    check is :func:`packing_unsupported` (with its ``online`` probe too when ``online``).
    """
    reason = packing_unsupported(model, kind, tolerance, online)
    if reason is not None:
        return reason
    _install(_base(model), kind, autocast)
    return None


def share_prefixes(
    collator: Any, models: list[Any], kind: str, log: Any = print, autocast: Callable[[], Any] | None = None
) -> bool:
    """Turn the shared-prefix path on for a trainer: patch every model in ``models`` (policy, reference, ...)
    with :func:`enable_shared_prefix`; when one cannot take it, switch ``collator`` (a
    :class:`~easyrlhf_core.kit.shared_prefix_packing.SharedPrefixCollator`) off so batches stay padded rows, and say
    why in one ``log`` line. Returns whether the path is on. Pass the trainer's ``accelerator.autocast`` as
    ``autocast`` when a model was already prepared (TRL prepares its reference model in ``__init__``):
    without it that model's shared forward runs in fp32 under ``--precision bf16`` while the policy runs in
    bf16, and the two disagree from the first step."""
    for model in models:
        reason = enable_shared_prefix(model, kind, autocast=autocast)
        if reason is not None:
            collator.enabled = False
            log(f"prefix sharing: off ({reason}); training on padded rows as before")
            return False
    collator.enabled = True
    log(
        "prefix sharing: on (each group's shared prompt runs once, groups packed without padding, the LM head "
        "only where a loss reads it); prefix_sharing=false turns it off"
    )
    return True
