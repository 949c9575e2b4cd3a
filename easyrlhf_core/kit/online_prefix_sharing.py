"""Prefix sharing for TRL's online trainers (GRPO, RLOO): each prompt runs once for all of its completions.

TRL scores completions in ``_get_per_token_logps_and_entropies``: the policy (with gradient), the old
policy and the reference over padded ``prompt + completion`` rows, each prompt repeated once per
completion. :class:`SharedPromptLogProbs` replaces that method: the rows that carry the same prompt (ids and
mask) are packed as the prompt once, then each completion behind it, without padding
(:func:`~easyrlhf_core.kit.shared_prefix_packing.pack_prompt_groups`), and read through the shared-prefix
forward (:func:`~easyrlhf_core.kit.shared_prefix_forward.enable_shared_prefix`: a block attention mask, the
LM head on the completion tokens only, TRL's temperature). Log-probs and entropies come back in TRL's shapes
and row order; TRL's loss code reads them as before.

A call takes TRL's own path when its batch has nothing to share (no two rows with one prompt: a prompt's
completions split across micro-batches or processes), carries images or asks for the MoE load-balancing
loss; each such reason is logged once. Under several processes they agree on the path call by call (one
small all-gather), so every rank runs the same model calls, which ZeRO-3's gathers require.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

__all__ = ["SharedPromptLogProbs"]


def _runs(chunk: list[int], group_of: list[int]) -> list[list[int]]:
    """Positions in ``chunk`` grouped into runs of rows of one group (rows are in group order)."""
    runs: list[list[int]] = []
    for position, row in enumerate(chunk):
        if runs and group_of[chunk[runs[-1][0]]] == group_of[row]:
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


class SharedPromptLogProbs:
    """Mixed into TRL's GRPOTrainer / RLOOTrainer (before them): each prompt once in the log-prob forwards.

    :meth:`share_prompts` turns it on after ``__init__`` when every model passes the shared-prefix probe (with
    TRL's online layout) and logs one line either way; until then, and when off, TRL's own method runs."""

    prompt_sharing = False
    _prompt_sharing_log: Callable[[str], Any] = print
    _prompt_sharing_pad = 0
    _prompt_sharing_said: set[str] | None = None

    def share_prompts(self, log: Callable[[str], Any] = print) -> bool:
        """Patch the policy and the reference model for the shared path, or say why not; returns whether
        it is on."""
        from easyrlhf_core.kit.shared_prefix_forward import enable_shared_prefix

        trainer: Any = self
        self._prompt_sharing_log = log
        self._prompt_sharing_said = set()
        pad = getattr(trainer.processing_class, "pad_token_id", None)
        self._prompt_sharing_pad = 0 if pad is None else int(pad)
        reason = self._prompt_sharing_unsupported()
        models = [trainer.model] + ([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else [])
        for model in models if reason is None else []:
            reason = enable_shared_prefix(model, "causal_lm", autocast=trainer.accelerator.autocast, online=True)
            if reason is not None:
                break
        self.prompt_sharing = reason is None
        if reason is not None:
            log(f"prefix sharing: off ({reason}); log-probs on padded rows as TRL runs them")
        else:
            log(
                "prefix sharing: on (each prompt runs once for all of its completions in the policy, old-policy and "
                "reference forwards, packed without padding, the LM head on completion tokens only; and, with the "
                "transformers engine, once in generation, its KV cache copied to the group's rows); "
                "prefix_sharing=false turns it off"
            )
        return self.prompt_sharing

    def _prompt_sharing_unsupported(self) -> str | None:
        """Why the trainer's settings rule the shared path out, or None."""
        trainer: Any = self
        if getattr(trainer.args, "cast_lm_head_to_fp32", False):
            return "cast_lm_head_to_fp32 runs TRL's LM head outside autocast"
        if getattr(trainer, "_entropy_bonus_enabled", False):
            return "the entropy bonus needs the entropy's gradient, which the shared path does not give"
        if getattr(trainer, "aux_loss_enabled", False):
            return "the MoE load-balancing loss is read from padded rows"
        if hasattr(trainer.processing_class, "image_processor"):
            return "a multimodal processor: images are read with the prompt"
        return None

    def _say_once(self, reason: str) -> None:
        if self._prompt_sharing_said is None:
            self._prompt_sharing_said = set()
        if reason not in self._prompt_sharing_said:
            self._prompt_sharing_said.add(reason)
            self._prompt_sharing_log(f"prefix sharing: {reason}; TRL's padded forward for such batches (said once)")

    def _prompt_groups(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        compute_aux_loss: bool,
        extra: dict[str, Any],
    ) -> tuple[list[list[int]] | None, str | None]:
        """The rows grouped by prompt, or None and why this batch takes TRL's path (``extra``: TRL's
        multimodal arguments, None for text)."""
        from easyrlhf_core.kit.shared_prefix_packing import prompt_groups

        given = sorted(k for k, v in extra.items() if v is not None)
        if given:
            return None, f"a batch carries {', '.join(given)}"
        if compute_aux_loss:
            return None, "a batch asks for the MoE load-balancing loss"
        prompt_width = input_ids.shape[1] - logits_to_keep
        keep = attention_mask.bool()
        lengths = keep.sum(dim=1)
        first = keep.int().argmax(dim=1)
        last = keep.shape[1] - 1 - keep.flip(1).int().argmax(dim=1)
        if prompt_width < 1 or bool((first >= prompt_width).any()) or bool((last - first + 1 != lengths).any()):
            return None, "a batch's rows are not one prompt then one completion each"
        groups = prompt_groups(input_ids[:, :prompt_width], attention_mask[:, :prompt_width])
        if len(groups) == input_ids.shape[0]:
            return None, "no two rows of a batch share a prompt (a prompt's completions split across micro-batches)"
        return groups, None

    def _agreed(self, shared: bool) -> bool:
        """Whether every process takes the shared path for this call (one all-gather with several)."""
        import torch

        accelerator = self.accelerator  # type: ignore[attr-defined]
        if accelerator.num_processes == 1:
            return shared
        flags = accelerator.gather(torch.tensor([float(shared)], device=accelerator.device))
        return bool(flags.min() > 0)

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **extra: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        groups, reason = None, None
        if self.prompt_sharing:
            groups, reason = self._prompt_groups(input_ids, attention_mask, logits_to_keep, compute_aux_loss, extra)
            if not self._agreed(groups is not None):
                groups, reason = None, reason or "another process's batch takes TRL's path"
        if groups is None:
            if reason is not None:
                self._say_once(reason)
            return super()._get_per_token_logps_and_entropies(  # type: ignore[misc, no-any-return]
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        return self._shared_log_probs(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, groups
        )

    def _shared_log_probs(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None,
        compute_entropy: bool,
        groups: list[list[int]],
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """TRL's outputs from packed forwards: the rows in group order, cut into TRL's chunks of ``batch_size``
        rows (the same number of model calls as TRL's path), each chunk's groups packed once."""
        import torch

        from easyrlhf_core.kit.shared_prefix_packing import pack_prompt_groups

        trainer: Any = self
        rows, device = input_ids.shape[0], input_ids.device
        order = [row for group in groups for row in group]
        group_of = [0] * rows
        for number, group in enumerate(groups):
            for row in group:
                group_of[row] = number
        size = batch_size or rows
        log_probs, entropies = [], []
        for start in range(0, rows, size):
            chunk = order[start : start + size]
            index = torch.tensor(chunk, device=device)
            ids, mask = input_ids[index], attention_mask[index]
            packed = pack_prompt_groups(ids, mask, _runs(chunk, group_of), self._prompt_sharing_pad)
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with trainer.accelerator.autocast():
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    labels=labels,
                    shared_prefix=packed,
                    temperature=trainer.temperature,
                )
            log_probs.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(out.entropy[:, -logits_to_keep:])
        inverse = torch.empty(rows, dtype=torch.long, device=device)
        inverse[torch.tensor(order, device=device)] = torch.arange(rows, device=device)
        entropy = torch.cat(entropies)[inverse] if compute_entropy else None
        return torch.cat(log_probs)[inverse], entropy, None
