"""The IPO loss on per-sequence log-ratios, and a DPOTrainer whose IPO loss sums log-ratios over tokens.

TRL 1.16's ``loss_type="ipo"`` divides each completion's log-ratio by its token count (a per-token mean).
The IPO paper's Eq. 17 and the reference DPO implementation use the plain sum of token log-probs.
:class:`SummedIPOTrainer` is TRL's DPOTrainer with that summed form; everything else (data, reference
model or adapter-disabled reference, precomputed reference log-probs) stays TRL's.

:func:`shared_prefix_trainer` gives either trainer the shared-prefix forward
(:mod:`easyrlhf_core.kit.shared_prefix_packing`): TRL's loss code is kept, only the per-response log-probs come from
one packed forward per batch.

Imports torch and TRL at module level: import this module only inside ``Method.train`` or tests.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from easyrlhf_core.kit.shared_prefix_forward import share_prefixes
from easyrlhf_core.kit.shared_prefix_packing import SharedPrefixCollator


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    tau: float,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair IPO loss ``(h − 1/(2τ))²`` with ``h`` the chosen-minus-rejected log-ratio.

    With token counts, each log-ratio is first divided by its completion's length (TRL's "mean");
    without them the summed log-ratios are used as they are (the paper's "sum").
    """
    if chosen_tokens is not None and rejected_tokens is not None:
        chosen_logratios = chosen_logratios / chosen_tokens.clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_tokens.clamp(min=1)
    return (chosen_logratios - rejected_logratios - 1.0 / (2.0 * tau)) ** 2


_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


class SummedIPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with the IPO loss on token-summed log-ratios (IPO paper Eq. 17)."""

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        if return_outputs:  # only the deprecated compute_metrics path asks for outputs
            return super()._compute_loss(model, inputs, return_outputs)
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # TRL's reference pass: adapter disabled with LoRA, else the frozen reference copy
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        loss = ipo_loss(chosen_logratios, rejected_logratios, self.beta).mean()
        self._record_metrics(chosen_logps, rejected_logps, chosen_logratios, rejected_logratios)
        return loss

    def _record_metrics(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        chosen_logratios: torch.Tensor,
        rejected_logratios: torch.Tensor,
    ) -> None:
        """The same reward metrics TRL logs for its own losses (β · log-ratio)."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())


def shared_prefix_trainer(
    trainer_class: type, args: Any, tokenizer: Any, log: Any
) -> tuple[type, SharedPrefixCollator]:
    """``trainer_class`` (a DPOTrainer) whose batches carry the packed shared-prefix form, and its collator.

    TRL's own collator still builds the padded rows its loss reads (labels, completion masks); the models
    answer from the packed form. They are patched once TRL has added its fused LM head, before the
    reference log-probs are precomputed (``precompute_ref_log_probs``) and again after ``__init__``
    (``share_prefixes``, idempotent), so every forward pass of the run takes the shared path.
    """
    collator = SharedPrefixCollator(
        DataCollatorForPreference(
            pad_token_id=tokenizer.pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
        ),
        pad_token_id=tokenizer.pad_token_id,
        grouping="pairs",
    )

    class SharedPrefixDPOTrainer(trainer_class):  # type: ignore[misc, valid-type]
        _shared_prefix_decided = False

        def share_prefixes(self) -> bool:
            if not self._shared_prefix_decided:
                models = [self.model] + ([self.ref_model] if self.ref_model is not None else [])
                share_prefixes(collator, models, "causal_lm", log, autocast=self.accelerator.autocast)
                self._shared_prefix_decided = True
            return collator.enabled

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            self.share_prefixes()
            return super()._precompute_ref_logps(*args, **kwargs)

    SharedPrefixDPOTrainer.__name__ = f"SharedPrefix{trainer_class.__name__}"
    return SharedPrefixDPOTrainer, collator
