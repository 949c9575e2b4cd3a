"""Reward model (RM) training on preference pairs with TRL's RewardTrainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.errors import DataError
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.shared_prefix_packing import PREFIX_SHARING_HELP
from easyrlhf_core.kit.trainer_method import (
    TrainerConfig,
    TrainerMethod,
    as_dataset,
    describe_trainable,
    lora_config,
    run_model_path,
    run_scalar_model,
    run_tokenizer,
    trl_arguments,
)

if TYPE_CHECKING:
    from easyrlhf_core.kit.shapes import Record
    from easyrlhf_core.kit.context import RunContext


@dataclass
class RMConfig(TrainerConfig):
    """Options of the rm method (on top of the shared ones)."""

    learning_rate: float = option(1e-5, "Peak learning rate.")
    margin: float = option(
        0.0,
        "Reward gap the chosen answer must win by: loss = -log sigmoid(r_chosen - r_rejected - margin). "
        "Records with their own 'margin' field keep it.",
    )
    center_rewards_coefficient: float | None = option(
        None,
        "Pull rewards towards mean zero: adds coef * mean((r_chosen + r_rejected)^2) to the loss "
        "(0.01 is typical); empty: off.",
    )
    prefix_sharing: bool = option(True, PREFIX_SHARING_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin < 0:
            raise invalid("margin", "must be >= 0")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise invalid("center_rewards_coefficient", "must be >= 0, or empty for off")


class RMMethod(TrainerMethod):
    """A scalar reward read at the last token, trained so chosen answers outscore rejected ones."""

    name = "rm"
    description = "Reward model (TRL RewardTrainer, one-label sequence classifier) on preference pairs"
    config_class = RMConfig
    shape = Shape.PREFERENCE

    def build_trainer(self, run: RunContext) -> tuple[Any, Any]:
        from trl import RewardConfig, RewardTrainer

        config = run.config
        path = run_model_path(run)
        tokenizer = run_tokenizer(run, path)
        model = run_scalar_model(run, path, pad_token_id=tokenizer.pad_token_id)
        train = as_dataset(with_margins(run.data.train, config.margin))
        evaluation = as_dataset(with_margins(run.data.eval, config.margin)) if run.data.eval else None
        args = trl_arguments(
            RewardConfig,
            run,
            has_eval=evaluation is not None,
            center_rewards_coefficient=config.center_rewards_coefficient,
        )
        collator = shared_prefix_collator(tokenizer) if config.prefix_sharing else None
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=lora_config(config, "SEQ_CLS"),
            data_collator=collator,
        )
        if collator is not None:
            from easyrlhf_core.kit.shared_prefix_forward import share_prefixes

            share_prefixes(collator, [trainer.model], "classifier", run.log, autocast=trainer.accelerator.autocast)
        kept = len(trainer.train_dataset)
        if kept == 0:
            raise DataError(
                f"every training pair is longer than max_length={config.max_length} tokens; raise max_length",
                where="max_length",
            )
        run.train_examples_used = kept
        kept_eval = len(trainer.eval_dataset) if evaluation is not None else 0
        run.log(
            f"rm: kept {kept} of {len(run.data.train)} training and {kept_eval} of {len(run.data.eval)} eval "
            f"pairs (TRL drops pairs longer than max_length={config.max_length} tokens)"
        )
        describe_trainable(run, trainer.model)
        return trainer, tokenizer


def shared_prefix_collator(tokenizer: Any) -> Any:
    """TRL's reward collator (chosen rows, then rejected rows, right-padded) with each pair's common prefix
    packed once (:class:`easyrlhf_core.kit.shared_prefix_packing.SharedPrefixCollator`)."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from easyrlhf_core.kit.shared_prefix_packing import SharedPrefixCollator

    return SharedPrefixCollator(
        DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id),
        pad_token_id=tokenizer.pad_token_id,
        grouping="pairs",
    )


def with_margins(records: list[Record], margin: float) -> list[Record]:
    """Records with a ``margin`` field (the record's own, else ``margin``) when any margin is in play."""
    if margin == 0 and not any("margin" in r for r in records):
        return records
    return [{**r, "margin": float(r.get("margin", margin))} for r in records]


@hookimpl
def register_methods(register):
    register(RMMethod)
