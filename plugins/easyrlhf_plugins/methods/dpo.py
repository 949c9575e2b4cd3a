"""Direct Preference Optimization (DPO) and IPO on TRL's DPOTrainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.errors import DataError
from easyrlhf_core.kit.findings import Finding, held_out_pairs_change, training_rows_finding
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.shared_prefix_packing import PREFIX_SHARING_HELP
from easyrlhf_core.kit.trainer_method import (
    TrainerConfig,
    TrainerMethod,
    data_splits,
    describe_trainable,
    lora_config,
    run_model_path,
    run_policy,
    run_tokenizer,
    trl_arguments,
)

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext


@dataclass
class DPOConfig(TrainerConfig):
    """Options of the dpo method (on top of the shared ones)."""

    learning_rate: float = option(1e-6, "Peak learning rate.")
    beta: float = option(0.1, "KL strength: higher keeps the policy closer to the reference model.")
    precompute_ref_log_probs: bool = option(
        False,
        "Compute the reference model's log-probs once before training (no reference forward per step, "
        "no reference copy in memory).",
    )
    summary_pairs: int = option(
        64,
        "Held-out pairs that the start model and the trained model both score at the end, for the run "
        "summary (summary.json: preference before -> after, with intervals); 0 skips it.",
    )
    prefix_sharing: bool = option(True, PREFIX_SHARING_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise invalid("beta", "must be > 0")
        if self.summary_pairs < 0:
            raise invalid("summary_pairs", "must be >= 0 (0: no before/after scoring)")


@dataclass
class IPOConfig(DPOConfig):
    """Options of the ipo method (on top of the shared ones)."""

    beta: float = option(0.1, "IPO's tau: the loss pulls the chosen-minus-rejected log-ratio towards 1/(2*tau).")
    log_ratio_normalization: Literal["mean", "sum"] = option(
        "mean",
        "mean: each completion's log-ratio is averaged over its tokens (TRL's IPO); sum: summed over "
        "tokens, as in the IPO paper's Eq. 17 and the reference DPO code (then 1/(2*tau) is a gap "
        "over the whole completion, not per token).",
    )


class DPOMethod(TrainerMethod):
    """DPO: the policy's log-ratio against a frozen reference, pushed up for chosen, down for rejected."""

    name = "dpo"
    description = "Direct Preference Optimization (TRL DPOTrainer, sigmoid loss) on preference pairs"
    config_class = DPOConfig
    shape = Shape.PREFERENCE
    loss_type = "sigmoid"

    def trainer_class(self, config: DPOConfig) -> type:
        from trl import DPOTrainer

        return DPOTrainer

    def build_trainer(self, run: RunContext) -> tuple[Any, Any]:
        from trl import DPOConfig as TRLDPOConfig

        config = run.config
        path = run_model_path(run)
        tokenizer = run_tokenizer(run, path)
        model = run_policy(run, path)
        train, evaluation = data_splits(run)
        args = trl_arguments(
            TRLDPOConfig,
            run,
            has_eval=evaluation is not None,
            beta=config.beta,
            loss_type=[self.loss_type],
            precompute_ref_log_probs=config.precompute_ref_log_probs,
        )
        trainer_class = self.trainer_class(config)
        collator = None
        if config.prefix_sharing:
            from .dpo_losses import shared_prefix_trainer

            trainer_class, collator = shared_prefix_trainer(trainer_class, args, tokenizer, run.log)
        trainer = trainer_class(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=lora_config(config, "CAUSAL_LM"),
            data_collator=collator,
        )
        if collator is not None:
            trainer.share_prefixes()
        run.log(f"{self.name}: reference = {describe_reference(trainer)}")
        run.train_examples_used = len(trainer.train_dataset)
        if run.train_examples_used == 0:
            raise DataError(
                f"every training pair's prompt alone fills max_length={config.max_length} tokens; raise max_length",
                where="max_length",
            )
        run.log(
            f"{self.name}: {len(trainer.train_dataset)} of {len(run.data.train)} training pairs kept "
            f"(pairs whose prompt alone fills max_length={config.max_length} are dropped)"
        )
        describe_trainable(run, trainer.model)
        return trainer, tokenizer

    def what_changed(self, run: RunContext) -> list[Finding]:
        return training_rows_finding(run, "rewards/accuracies", "rewards/margins") + held_out_pairs_change(
            run, run.config.summary_pairs
        )


class IPOMethod(DPOMethod):
    """IPO: a squared loss on the log-ratio gap, which does not saturate on deterministic preferences."""

    name = "ipo"
    description = "Identity Preference Optimization (TRL DPOTrainer, IPO loss) on preference pairs"
    config_class = IPOConfig
    loss_type = "ipo"

    def trainer_class(self, config: IPOConfig) -> type:  # type: ignore[override]
        if config.log_ratio_normalization == "sum":
            from .dpo_losses import SummedIPOTrainer

            return SummedIPOTrainer
        return super().trainer_class(config)


def describe_reference(trainer: Any) -> str:
    """Where the reference log-probs come from, for the run log."""
    from peft import PeftModel

    if trainer.precompute_ref_logps:
        return "log-probs precomputed before training (no reference model kept)"
    if trainer.ref_model is None and isinstance(trainer.model, PeftModel):
        return "the base model with the LoRA adapter disabled (no second copy)"
    return "a frozen copy of the starting model"


@hookimpl
def register_methods(register):
    register(DPOMethod)
    register(IPOMethod)
