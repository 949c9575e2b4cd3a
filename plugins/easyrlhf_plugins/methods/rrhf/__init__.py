"""RRHF (Yuan et al. 2023): rank k scored responses per prompt with a hinge loss, fine-tune on the best."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.shapes import Shape

from .config import RRHFConfig

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext


class RRHFMethod(Method):
    """RRHF on our own ``transformers.Trainer`` subclass (one forward pass per batch of candidates)."""

    name = "rrhf"
    description = (
        "RRHF: ranking loss over k scored candidates + fine-tuning on the best "
        "(candidates from the data, or sampled and scored by a reward)"
    )
    config_class = RRHFConfig
    shape = Shape.RANKED
    supports_lora = True  # build_trainer wraps the policy with apply_lora

    def train(self, run: RunContext) -> None:
        from easyrlhf_core.kit.trainer_run import train_and_save

        trainer, tokenizer = build_trainer(run)
        final = train_and_save(run, trainer, tokenizer=tokenizer)
        if final:
            run.log("final eval: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, (int, float))))


def build_trainer(run: RunContext) -> tuple[Any, Any]:
    """Model, tokenizer, candidates (dataset or generated + scored, cached), encoded data, trainer."""
    from transformers import TrainingArguments

    from easyrlhf_core.kit.model_loading import apply_lora, disable_dropout
    from easyrlhf_core.kit.trainer_method import (
        describe_trainable,
        run_model_path,
        run_policy,
        run_tokenizer,
        trl_arguments,
    )

    from .candidates import generated_candidates, reward_function
    from .encoding import RankedCollator, encode_dataset
    from .trainer import RRHFTrainer

    config: RRHFConfig = run.config
    reward = reward_function(run) if config.candidates == "generate" else None  # bad options fail before loading
    path = run_model_path(run)
    tokenizer = run_tokenizer(run, path)
    model = run_policy(run, path)
    disable_dropout(model)  # p_i compares candidates: keep the scores deterministic
    has_eval = bool(run.data.eval)
    args = trl_arguments(TrainingArguments, run, has_eval, remove_unused_columns=False)  # our own batches

    train_records, eval_records = run.data.train, run.data.eval
    if config.candidates == "generate":
        model.to(args.device)  # sample where training will run
        with args.main_process_first(desc="rrhf candidates"):
            generated = generated_candidates(run, model, tokenizer, reward)
        train_records, eval_records = generated["train"], generated["eval"]
    train_data, truncated = encode_dataset(tokenizer, train_records, config.max_length)
    eval_data, eval_truncated = encode_dataset(tokenizer, eval_records, config.max_length)
    if truncated or eval_truncated:
        run.log(
            f"data: {truncated + eval_truncated} queries truncated to max_length={config.max_length} "
            f"(prompt from the left, responses from the right)"
        )
    candidates = [len(q.response_ids) for q in train_data.queries]
    run.log(
        f"rrhf: {len(candidates)} train queries, {min(candidates)}-{max(candidates)} candidates each, "
        f"rank_weight={config.rank_weight}, length_penalty={config.length_penalty}, "
        f"ft_normalization={config.ft_normalization}"
    )

    if config.lora.enabled and config.gradient_checkpointing:
        model.enable_input_require_grads()
    model = apply_lora(model, config.lora)
    describe_trainable(run, model)
    collator = RankedCollator(pad_token_id=tokenizer.pad_token_id)
    if config.prefix_sharing:
        from easyrlhf_core.kit.shared_prefix_forward import share_prefixes
        from easyrlhf_core.kit.shared_prefix_packing import SharedPrefixCollator

        collator = SharedPrefixCollator(collator, pad_token_id=tokenizer.pad_token_id, grouping="queries")
        share_prefixes(collator, [model], "causal_lm", run.log)
    trainer = RRHFTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data if len(eval_data) else None,
        data_collator=collator,
        processing_class=tokenizer,
        rank_weight=config.rank_weight,
        length_penalty=config.length_penalty,
        ft_normalization=config.ft_normalization,
    )
    return trainer, tokenizer


@hookimpl
def register_methods(register: Any) -> None:
    register(RRHFMethod)
