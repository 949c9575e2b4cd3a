"""Glue between a :class:`~easyrlhf_core.run.Run` and a transformers/TRL ``Trainer``: arguments from our
config, metrics and progress through a callback, checkpoints under ``OUTPUT_DIR/checkpoints``, resume.

Imported only inside ``Method.train`` (it pulls in transformers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .checkpoints import latest_checkpoint
from .launch import world_size
from .models import resolve_precision

if TYPE_CHECKING:
    from .config import BaseConfig
    from .run import Run


def training_arguments(config: BaseConfig, run: Run, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (or a TRL ``*Config``) from our shared options."""
    import torch

    precision = resolve_precision(config.precision)
    save = config.save_steps > 0
    evaluate = has_eval and config.eval_steps is not None
    return dict(
        output_dir=str(run.checkpoints_dir),
        seed=config.seed,
        data_seed=config.seed,
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps if evaluate else None,
        save_strategy="steps" if save else "no",
        save_steps=config.save_steps if save else 500,
        save_total_limit=config.save_total_limit,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=config.gradient_checkpointing,
        deepspeed=config.deepspeed,
        report_to=list(config.report_to) or "none",
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
        # gloo only for real multi-process CPU runs: set in one process, accelerate asks for a process group
        ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
    )


class RunCallback(TrainerCallback):
    """Forwards the trainer's logs to ``metrics.jsonl`` and the progress display."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.start(state.max_steps, description=self.run.method.name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.advance_to(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs:
            self.run.log_metrics(state.global_step, {"epoch": state.epoch, **logs})


def resume_checkpoint(run: Run) -> str | None:
    """The checkpoint to resume from with ``--resume`` (newest complete one), else None."""
    if not run.resume:
        return None
    found = latest_checkpoint(run.checkpoints_dir, log=run.log)
    if found is None:
        run.log("--resume: no checkpoint found; starting from the beginning")
        return None
    run.log(f"--resume: continuing from {found}")
    return str(found)


def train_and_save(run: Run, trainer: Any, model_for_save: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run ``trainer.train`` (resuming when asked), evaluate once at the end, save ``model/``."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics reach the progress display and metrics.jsonl instead
    trainer.add_callback(RunCallback(run))
    trainer.train(resume_from_checkpoint=resume_checkpoint(run))
    final: dict[str, Any] = {}
    if getattr(trainer, "eval_dataset", None) is not None and len(trainer.eval_dataset) > 0:
        final = trainer.evaluate()
    model = model_for_save if model_for_save is not None else trainer.model
    tok = tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None)
    run.save_model(model, tok)
    return final
