"""Glue between a :class:`~easyrlhf_core.run.Run` and a transformers/TRL ``Trainer``: arguments from our
config, metrics and progress through a callback, checkpoints under ``OUTPUT_DIR/checkpoints``, resume,
and a clean stop on Ctrl-C / SIGTERM.

Checkpoints. The Trainer writes ``checkpoint-N`` in place; :class:`CheckpointCallback` then (``on_save``,
after a barrier, so every rank has finished) writes the ``COMPLETE`` marker and only then prunes old
checkpoints to ``save_total_limit`` (the Trainer's own pruning is off: it could delete the last good
checkpoint before the new one is known to be whole). ``--resume`` takes the newest checkpoint with the
marker and intact files (:func:`easyrlhf_core.checkpoints.latest_checkpoint`), deletes the broken newer ones
(the resumed run writes them again) and drops the ``metrics.jsonl`` rows logged after that checkpoint's
step (the resumed run logs those steps again), so the file reads as one run.

Stopping. During ``trainer.train`` SIGINT/SIGTERM only set a flag (:class:`~easyrlhf_core.run.StopSignals`);
at the end of the current optimizer step every rank agrees on it, the Trainer saves a checkpoint at that
step and stops, and :func:`train_and_save` raises :class:`~easyrlhf_core.run.RunInterrupted` (no final
evaluation, no ``model/``). Nothing after the last optimizer step is lost.

Imported only inside ``Method.train`` (it pulls in transformers).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .checkpoints import (
    COMPLETE_MARKER,
    checkpoint_step,
    latest_checkpoint,
    prune_checkpoints,
    remove_checkpoints_after,
)
from .launch import world_size
from .metrics import drop_rows_after, last_logged
from .models import resolve_precision
from .run import RunInterrupted, StopSignals

if TYPE_CHECKING:
    from .config import BaseConfig
    from .run import Run


def training_arguments(config: BaseConfig, run: Run, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (or a TRL ``*Config``) from our shared options.

    Checkpoint pruning (``save_total_limit``) and the ``COMPLETE`` marker are :class:`CheckpointCallback`'s
    job: run the trainer through :func:`train_and_save`.
    """
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
        save_total_limit=None,  # CheckpointCallback prunes, after the new checkpoint is marked complete
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        **checkpointing_argument(config.gradient_checkpointing),
        deepspeed=config.deepspeed,
        report_to="none",  # report_to is ours: every metrics.jsonl row goes to the trackers (easyrlhf_core.tracking)
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
        # gloo only for real multi-process CPU runs: set in one process, accelerate asks for a process group
        ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
        # every parameter of our models takes part in the loss: skip DDP's extra search for unused ones
        ddp_find_unused_parameters=False,
    )


def checkpointing_argument(enabled: bool) -> dict[str, bool]:
    """Our ``gradient_checkpointing`` option, always passed: TRL's ``*Config`` classes default it to on, so
    leaving it out would turn it on. Under its current name (``activation_checkpointing``, transformers 5)
    where it exists, so no deprecation warning; ``gradient_checkpointing`` on older transformers."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


class RunCallback(TrainerCallback):
    """Forwards the trainer's logs to ``metrics.jsonl`` and the progress display."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.tokens_before = 0.0  # ``num_tokens`` trained on before a resumed run's checkpoint

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.start(state.max_steps, description=self.run.method.name)
        if state.global_step > 0:  # resumed: the trainers count num_tokens from zero again
            self.tokens_before = last_logged(self.run.metrics_path, "num_tokens", state.global_step) or 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.advance_to(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs:
            row = {"epoch": state.epoch, **logs}
            if self.tokens_before and isinstance(row.get("num_tokens"), (int, float)):
                row["num_tokens"] += self.tokens_before  # a running total across the resume, as uninterrupted
            self.run.log_metrics(state.global_step, row)


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once every rank has written it, then prunes to ``save_total_limit``."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        barrier()
        if self.run.is_main_process:
            path = self.run.checkpoints_dir / f"checkpoint-{state.global_step}"
            (path / COMPLETE_MARKER).write_text(f"step {state.global_step}\n", encoding="utf-8")
            prune_checkpoints(self.run.checkpoints_dir, self.run.config.save_total_limit)
        barrier()


class StopCallback(TrainerCallback):
    """At each optimizer step's end: once a stop signal came (on any rank), save a checkpoint and stop."""

    def __init__(self, stop: StopSignals) -> None:
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop.requested(device=args.device):
            control.should_save = True
            control.should_training_stop = True


def barrier() -> None:
    """Wait for every rank (nothing to do in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resume_checkpoint(run: Run) -> str | None:
    """The checkpoint to resume from with ``--resume`` (newest complete one), else None. Broken newer
    checkpoints are removed and ``metrics.jsonl`` cut back to the checkpoint's step (main process)."""
    if not run.resume:
        return None
    found = latest_checkpoint(run.checkpoints_dir, log=run.log)
    if run.is_main_process:
        step = checkpoint_step(found) if found is not None else 0
        remove_checkpoints_after(run.checkpoints_dir, step, log=run.log)
        drop_rows_after(run.metrics_path, step)
    barrier()
    if found is None:
        run.log("--resume: no complete checkpoint found; starting from the beginning")
        return None
    run.log(f"--resume: continuing from {found}")
    return str(found)


def check_ranks_agree(run: Run, model: Any) -> None:
    """In a multi-process run, log each rank's parameter checksum: equal values show the gradients were
    synchronised (a warning when they differ). Parameters sharded by DeepSpeed ZeRO-3 are not checked."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    params = list(model.parameters())
    if not params or any(hasattr(p, "ds_id") for p in params):
        return
    with torch.no_grad():
        total = sum((p.detach().double().sum() * (i + 1) + p.detach().double().square().sum())
                    for i, p in enumerate(params))
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    values = [float(v) for v in gathered]
    if len(set(values)) == 1:
        run.log(f"ranks: parameter checksum per rank {values}: identical")
    else:
        run.log(f"warning: ranks: parameter checksum per rank {values}: DIFFERENT (gradients not synchronised?)")


def _no_model_card(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for a TRL trainer's ``create_model_card``: the run's model card is ``OUTPUT_DIR/README.md``."""


class _TiedKeysFilter(logging.Filter):
    """Drops transformers' "missing keys in the checkpoint" warning on resume when the only missing keys are
    tied weights (``lm_head.weight`` of a tied-embedding model): they are restored by the tie, not lost."""

    def __init__(self, tied: set[str]) -> None:
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("There were missing keys in the checkpoint model loaded:"):
            return True
        listed = set(re.findall(r"'([^']+)'", message))
        return not (listed and listed <= self.tied)


def tied_parameter_names(model: Any) -> set[str]:
    """State-dict names whose tensor is another name's (tied weights), all but the first of each group."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied


def _quiet_tied_weight_warning(model: Any) -> None:
    tied = tied_parameter_names(model)
    if not tied:
        return
    trainer_logger = logging.getLogger("transformers.trainer")
    for old in [f for f in trainer_logger.filters if isinstance(f, _TiedKeysFilter)]:
        trainer_logger.removeFilter(old)
    trainer_logger.addFilter(_TiedKeysFilter(tied))


def train_and_save(run: Run, trainer: Any, model_for_save: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run ``trainer.train`` (resuming when asked; stopping cleanly on SIGINT/SIGTERM with a checkpoint and
    :class:`RunInterrupted`), evaluate once at the end (unless ``final_eval`` is off), save ``model/``."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics reach the progress display and metrics.jsonl instead
    trainer.create_model_card = _no_model_card  # TRL's card in checkpoints/ names no base model; ours is README.md
    _quiet_tied_weight_warning(trainer.model)
    trainer.add_callback(RunCallback(run))
    trainer.add_callback(CheckpointCallback(run))
    checkpoint = resume_checkpoint(run)
    with StopSignals(run.log) as stop:
        trainer.add_callback(StopCallback(stop))
        trainer.train(resume_from_checkpoint=checkpoint)
    if stop.agreed:
        step = trainer.state.global_step
        saved = run.checkpoints_dir / f"checkpoint-{step}"
        run.log(f"stopped at step {step}; checkpoint saved to {saved}")
        raise RunInterrupted(stop.agreed, saved)
    check_ranks_agree(run, trainer.model)
    final = _eval_at_step(trainer, trainer.state.global_step)  # transformers evaluates at the last step itself
    wanted = getattr(run.config, "final_eval", True)           # when eval_steps is set: not twice
    if not final and wanted and getattr(trainer, "eval_dataset", None) is not None and len(trainer.eval_dataset) > 0:
        final = trainer.evaluate()
    model = model_for_save if model_for_save is not None else trainer.model
    tok = tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None)
    run.save_model(model, tok)
    return final


def _eval_at_step(trainer: Any, step: int) -> dict[str, Any]:
    """The ``eval_*`` metrics the trainer logged at ``step`` (empty when it did not evaluate there)."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}
