"""``RRHFTrainer``: a transformers ``Trainer`` whose loss is RRHF's, with its metrics in the logs.

Checkpoints, resume, DDP / DeepSpeed, mixed precision and the optimizer come from ``Trainer``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from easyrlhf_core.kit.causal_lm import response_log_probs
from easyrlhf_core.kit.shared_prefix_packing import SHARED_PREFIX_KEY

from .loss import RRHFTerms, rrhf_terms

#: Running sums per logging window: rank loss, ft loss, queries, correct pairs, pairs, p best, p worst.
_SUM_FIELDS = ("rank_loss", "ft_loss", "queries", "correct_pairs", "pairs", "p_best", "p_worst")


class RRHFTrainer(Trainer):
    """All candidates of the batch's queries go through the model in one forward pass."""

    def __init__(
        self,
        *args: Any,
        rank_weight: float = 1.0,
        length_penalty: float = 1.0,
        ft_normalization: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rank_weight = rank_weight
        self.length_penalty = length_penalty
        self.ft_normalization = ft_normalization
        self.model_accepts_loss_kwargs = False  # our loss is already per batch: Trainer scales it for accumulation
        self._window: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._total_train_tokens = 0  # non-padding tokens of every candidate row trained on (all processes)

    def rrhf_forward(self, model: Any, inputs: dict[str, torch.Tensor]) -> RRHFTerms:
        """One forward pass over every candidate row (or over the packed shared-prefix form of the batch,
        each query's prompt once), then the RRHF terms."""
        if SHARED_PREFIX_KEY in inputs:
            labels = inputs["input_ids"].masked_fill(inputs["response_mask"] == 0, -100)
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                shared_prefix=inputs[SHARED_PREFIX_KEY],
                use_cache=False,
            )
            logp_sum, num_tokens = outputs.log_probs.sum(dim=-1), outputs.label_mask.sum(dim=-1)
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logp_sum, num_tokens = response_log_probs(outputs.logits, inputs["input_ids"], inputs["response_mask"])
        query_index = inputs["query_index"]
        num_queries = int(query_index.max().item()) + 1
        return rrhf_terms(
            logp_sum,
            num_tokens,
            inputs["rewards"],
            query_index,
            num_queries,
            rank_weight=self.rank_weight,
            length_penalty=self.length_penalty,
            ft_normalization=self.ft_normalization,
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        terms = self.rrhf_forward(model, inputs)
        self._accumulate("train" if model.training else "eval", terms)
        if model.training:  # counted as TRL's trainers count their logged `num_tokens`
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += int(tokens)
        return (terms.loss, {"p": terms.p.detach()}) if return_outputs else terms.loss

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[Any, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _accumulate(self, mode: str, terms: RRHFTerms) -> None:
        """Add this batch's sums (summed over processes) to the current logging window."""
        with torch.no_grad():
            sums = torch.stack(
                [
                    terms.rank_loss.sum(),
                    terms.ft_loss.sum(),
                    torch.tensor(float(terms.rank_loss.numel()), device=terms.p.device),
                    terms.correct_pairs.float(),
                    terms.total_pairs.float(),
                    terms.p_best.sum(),
                    terms.p_worst.sum(),
                ]
            ).float()
            sums = self.accelerator.reduce(sums, reduction="sum")
            previous = self._window[mode]
            self._window[mode] = sums if previous is None else previous + sums

    def _flush(self, mode: str) -> dict[str, float]:
        sums = self._window[mode]
        self._window[mode] = None
        if sums is None:
            return {}
        s = dict(zip(_SUM_FIELDS, sums.tolist()))
        queries = max(s["queries"], 1.0)
        metrics = {
            "rank_loss": s["rank_loss"] / queries,
            "ft_loss": s["ft_loss"] / queries,
            "p_best": s["p_best"] / queries,
            "p_worst": s["p_worst"] / queries,
            "p_margin": (s["p_best"] - s["p_worst"]) / queries,
        }
        if s["pairs"] > 0:
            metrics["ranking_accuracy"] = s["correct_pairs"] / s["pairs"]
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{k}": v for k, v in self._flush("eval").items()})
        elif "loss" in logs:
            logs.update(self._flush("train"))
            logs["num_tokens"] = float(self._total_train_tokens)
        super().log(logs, start_time)
