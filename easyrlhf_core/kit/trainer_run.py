"""A transformers/TRL ``Trainer`` run inside a run (:class:`~easyrlhf_core.kit.context.RunContext`): arguments from our
config, metrics and progress through a callback, checkpoints under ``OUTPUT_DIR/checkpoints``, resume,
and a clean stop on Ctrl-C / SIGTERM.

Checkpoints. The Trainer writes ``checkpoint-N`` in place; :class:`CheckpointCallback` then (``on_save``,
after a barrier, so every rank has finished) writes the ``COMPLETE`` marker and only then prunes old
checkpoints to ``save_total_limit`` (the Trainer's own pruning is off: it could delete the last good
checkpoint before the new one is known to be whole). ``--resume`` takes the newest checkpoint with the
marker and intact files (:func:`easyrlhf_core.kit.checkpoints.latest_checkpoint`), deletes the broken newer ones
(the resumed run writes them again) and drops the ``metrics.jsonl`` rows logged after that checkpoint's
step (the resumed run logs those steps again), so the file reads as one run.

Stopping. During ``trainer.train`` SIGINT/SIGTERM only set a flag (:class:`~easyrlhf_core.kit.stopping.StopSignals`);
at the end of the current optimizer step every rank agrees on it, the Trainer saves a checkpoint at that
step and stops, and :func:`train_and_save` raises :class:`~easyrlhf_core.kit.stopping.RunInterrupted` (no final
evaluation, no ``model/``). Nothing after the last optimizer step is lost.

Imported only inside ``Method.train`` (it pulls in transformers).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from easyrlhf_core.kit.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_step,
    latest_checkpoint,
    prune_checkpoints,
    remove_checkpoints_after,
)
from easyrlhf_core.kit.distributed import world_size
from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError
from easyrlhf_core.kit.metrics import drop_rows_after, last_logged
from easyrlhf_core.kit.model_loading import resolve_precision
from easyrlhf_core.kit.stopping import RunInterrupted, StopSignals

if TYPE_CHECKING:
    from easyrlhf_core.kit.config import BaseConfig
    from easyrlhf_core.kit.context import RunContext

__all__ = [
    "train_and_save",
    "add_lora",
    "check_ranks_agree",
    "NonFinite",
    "checks_gradient_norm",
    "diverged_error",
    "continue_schedule",
]


def training_arguments(config: BaseConfig, run: RunContext, has_eval: bool) -> dict[str, Any]:
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
        per_device_eval_batch_size=config.eval_batch_size(),
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
        # report_to is ours: every metrics.jsonl row goes to the trackers (easyrlhf_core.runtime.tracking)
        report_to="none",
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (not as the average of earlier ones, nor 0)
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

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.tokens_before = 0.0  # ``num_tokens`` trained on before a resumed run's checkpoint

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.start(state.max_steps, description=self.run.method.name)
        if state.global_step > 0:  # resumed: most trainers count num_tokens from zero again; TRL's online ones
            # (grpo, rloo) count it in the trainer state, restored from the checkpoint: only the rest is added
            logged = last_logged(self.run.metrics_path, "num_tokens", state.global_step) or 0.0
            self.tokens_before = max(0.0, logged - (state.num_input_tokens_seen or 0))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.progress.advance_to(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            row = {"epoch": state.epoch, **logs}
            if self.tokens_before and isinstance(row.get("num_tokens"), (int, float)):
                row["num_tokens"] += self.tokens_before  # a running total across the resume, as uninterrupted
            self.run.log_metrics(state.global_step, row)


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once every rank has written it, then prunes to ``save_total_limit``."""

    def __init__(self, run: RunContext) -> None:
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


class NonFinite:
    """Watches losses and gradient norms for NaN / inf, cheaply: :meth:`note` adds each value to a sum on
    its device (no sync; a sum is not finite once one term is not), :meth:`check` reads the sums once per
    optimizer step, agreed across ranks by one all-reduce (a NaN loss on one rank stops every rank at the
    same step). Call :meth:`check` on every rank at the same points."""

    NAMES = ("loss", "gradient norm")

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}  # name -> on-device sum since the last check

    def note(self, name: str, value: Any) -> None:
        """Add ``value`` (a tensor or a number; None: nothing) to the sum ``name`` (one of :attr:`NAMES`)."""
        import torch

        if value is None:
            return
        value = (
            value.detach().float().sum()
            if isinstance(value, torch.Tensor)
            else torch.tensor(float(value), dtype=torch.float32)
        )
        previous = self._sums.get(name)
        self._sums[name] = value if previous is None else previous + value.to(previous.device)

    def check(self, device: Any) -> list[str]:
        """What was not finite since the last check, as every rank saw it (collective when distributed):
        ``["the loss is nan"]``, say; empty when all was finite."""
        import torch
        import torch.distributed as dist

        zero = torch.zeros((), dtype=torch.float32, device=device)
        sums = torch.stack([self._sums[n].to(device) if n in self._sums else zero for n in self.NAMES])
        self._sums.clear()
        flags = (~torch.isfinite(sums)).to(torch.int64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = flags.tolist()  # the one sync per optimizer step
        if not any(bad):
            return []
        found = [(name, value) for name, value, flag in zip(self.NAMES, sums.tolist(), bad) if flag]
        return [
            f"the {name} is {value if not math.isfinite(value) else 'not finite on another process'}"
            for name, value in found
        ]


def checks_gradient_norm(accelerator: Any) -> bool:
    """Whether a non-finite gradient norm means divergence: not under fp16 loss scaling (a gradient scaler),
    where an overflow step is skipped by the scaler and the scale lowered, as it should be."""
    return getattr(accelerator, "scaler", None) is None


class DivergenceCallback(TrainerCallback):
    """Stops training at the first optimizer step whose loss or gradient norm is not finite (NaN or inf),
    before that step is saved or evaluated; :func:`train_and_save` then raises :func:`diverged_error`.
    :meth:`watch` wraps the trainer's ``training_step`` (every micro-batch's loss) and its accelerator's
    ``clip_grad_norm_`` (the Trainer's gradient norm, clipped or not) to feed a :class:`NonFinite`. Under fp16
    loss scaling an infinite gradient norm is an overflow step the scaler skips (:func:`checks_gradient_norm`),
    so only the loss is watched there."""

    def __init__(self) -> None:
        self.values = NonFinite()
        self.bad_step: int | None = None
        self.what: list[str] = []  # "the loss is nan", "the gradient norm is inf"

    def watch(self, trainer: Any) -> None:
        """Wrap ``trainer.training_step`` and ``trainer.accelerator.clip_grad_norm_`` (on these instances)."""
        training_step, clip = trainer.training_step, trainer.accelerator.clip_grad_norm_

        def checked_training_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            self.values.note("loss", loss)
            return loss

        def checked_clip(*args: Any, **kwargs: Any) -> Any:
            norm = clip(*args, **kwargs)
            if checks_gradient_norm(trainer.accelerator):
                self.values.note("gradient norm", norm)
            return norm

        trainer.training_step = checked_training_step
        trainer.accelerator.clip_grad_norm_ = checked_clip

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        what = self.values.check(args.device)
        if what and self.bad_step is None:
            self.bad_step, self.what = state.global_step, what
            control.should_training_stop = True
            control.should_save = False  # the checkpoint on disk stays the newest: no NaN weights saved
            control.should_evaluate = False
            control.should_log = True  # this step's row shows the NaN (every rank agrees: the log gathers)


def diverged_error(run: RunContext, step: int, what: list[str], unit: str = "step") -> EasyRLHFError:
    """The one line of a run stopped by a non-finite loss or gradient norm at ``step``: what was not finite,
    that nothing from that step on was saved, the newest complete checkpoint, and the levers."""
    from easyrlhf_core.kit.faults import checkpoint_note

    config = run.config
    clip = (
        f"a lower max_grad_norm (now {config.max_grad_norm:g})"
        if config.max_grad_norm > 0
        else "max_grad_norm to clip gradients (now 0: off; e.g. 1.0)"
    )
    kept = latest_checkpoint(run.checkpoints_dir)
    then = (
        "continue from it with --resume (the new learning_rate applies) or start again"
        if kept is not None
        else "start again"
    )
    return EasyRLHFError(
        f"training diverged at {unit} {step}: {' and '.join(what)}; nothing from that {unit} on "
        f"was saved and no model/ was written ({checkpoint_note(kept)}); set a lower learning_rate "
        f"(now {config.learning_rate:g}) or {clip}, then {then}"
    )


def continue_schedule(
    run: RunContext,
    scheduler: Any,
    step: int,
    total: int,
    was: int | None,
    peaks: list[float] | float | None = None,
    unit: str = "step",
) -> None:
    """After ``--resume`` loaded a learning-rate scheduler's saved state: the schedule for this run's horizon
    (``total`` steps; ``was`` in the run that saved it, None: not recorded) and peak rates (``peaks``, one per
    parameter group, or one number: the first group's, the others scaled with it so their ratios stay; from
    this run's config; None: as saved), at the saved step, and a log line saying which.

    The saved state holds the step, the old peak rates and the old horizon's last rate (0 at the end of a
    linear decay), which the optimizer's state restores too. transformers' schedules (``LambdaLR`` over a
    ``functools.partial``) keep the lambda built for this run's horizon, so ``peak * lambda(step)`` continues
    on it. For an unchanged horizon and peak this is the rate the scheduler saved, bit for bit (a resume
    stays exact)."""
    import torch

    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    changed = was is not None and was != total
    if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
        if changed:
            run.log(
                f"warning: --resume: the {type(inner).__name__} learning-rate scheduler continues as saved, for "
                f"{was} {unit}s, not {total}"
            )
        return
    notes = []
    if isinstance(peaks, (int, float)):  # a plugin's per-group rates (a value head, LoRA+) keep their ratios
        first = float(inner.base_lrs[0]) if inner.base_lrs else 0.0
        peaks = (
            [float(base) * float(peaks) / first for base in inner.base_lrs]
            if first
            else [float(peaks)] * len(inner.base_lrs)
        )
    if peaks is not None and len(peaks) == len(inner.base_lrs) and list(peaks) != list(inner.base_lrs):
        notes.append(f"peak learning rate {peaks[0]:g} (was {inner.base_lrs[0]:g})")
        inner.base_lrs = list(peaks)
    groups = inner.optimizer.param_groups
    for group, base, fn in zip(groups, inner.base_lrs, inner.lr_lambdas):
        group["lr"] = base * fn(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in groups]
    if changed:
        notes.insert(0, "learning-rate schedule rebuilt for the new horizon")
        where = f"{unit} {step} of {total} (was {was})"
    else:
        where = f"{unit} {step} of {total}"
        if not notes:
            notes.append(
                "learning-rate schedule as saved" if was is not None else f"learning-rate schedule for {total} {unit}s"
            )
    run.log(f"--resume: resuming at {where}: {'; '.join(notes)}")


class ScheduleCallback(TrainerCallback):
    """On ``--resume``: :func:`continue_schedule` once the Trainer has loaded the checkpoint's scheduler."""

    def __init__(self, run: RunContext, checkpoint: str | None) -> None:
        self.run = run
        self.checkpoint = checkpoint

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.checkpoint is None or lr_scheduler is None:
            return
        try:
            saved = json.loads((Path(self.checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
            was = int(saved["max_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            was = None
        continue_schedule(
            self.run, lr_scheduler, state.global_step, state.max_steps, was, peaks=args.learning_rate
        )  # the Trainer gives every parameter group the same rate


def barrier() -> None:
    """Wait for every rank (nothing to do in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resume_checkpoint(run: RunContext) -> str | None:
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


def check_ranks_agree(run: RunContext, model: Any) -> None:
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
        total = sum(
            (p.detach().double().sum() * (i + 1) + p.detach().double().square().sum()) for i, p in enumerate(params)
        )
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


def lora_refusal(trainer: Any) -> str | None:
    """Why the kit cannot add LoRA adapters to ``trainer``'s model itself (None: it can). It can while the
    Trainer has built nothing from the model's parameters yet: the optimizer is created inside ``train()``."""
    from transformers import PreTrainedModel

    model = getattr(trainer, "model", None)
    if getattr(trainer, "model_init", None) is not None:
        return "its model comes from model_init, built inside train()"
    if getattr(trainer, "optimizer", None) is not None or getattr(trainer, "lr_scheduler", None) is not None:
        return "its optimizer was created already, over the base weights"
    if getattr(trainer, "model_wrapped", model) is not model:
        return "its model is wrapped already (DDP, DeepSpeed)"
    if not isinstance(model, PreTrainedModel):
        return f"its model is a {type(model).__name__}, not a transformers model"
    from easyrlhf_core.kit.model_loading import lora_task_type

    if lora_task_type(model) is None:
        return f"its model is a {type(model).__name__}, neither a causal LM nor a sequence classifier"
    return None


def add_lora(run: RunContext, trainer: Any) -> bool:
    """``--lora`` for a trainer whose model has no adapters yet (a plain ``transformers.Trainer``, say): wrap
    ``trainer.model`` with LoRA before ``train()`` creates the optimizer, so the adapters are what trains. A TRL
    trainer given ``peft_config`` (or a model the method wrapped itself) is left as it is. A trainer the kit
    cannot wrap safely (:func:`lora_refusal`) is a :class:`ConfigError` naming the method. True when it wrapped."""
    from easyrlhf_core.kit.model_loading import apply_lora, is_peft_model, lora_task_type, trainable_line

    lora = getattr(run.config, "lora", None)
    if lora is None or not lora.enabled or is_peft_model(trainer.model):
        return False
    why = lora_refusal(trainer)
    if why is not None:
        raise ConfigError(
            f"method '{run.method.name}' cannot train LoRA adapters: {why}; wrap the model with "
            f"easyrlhf_core.kit.model_loading.apply_lora(model, run.config.lora) before building the trainer, "
            f"or drop --lora",
            where="--lora",
        )
    model = apply_lora(trainer.model, lora, lora_task_type(trainer.model) or "CAUSAL_LM")
    if getattr(trainer.args, "gradient_checkpointing", False) or getattr(
        trainer.args, "activation_checkpointing", False
    ):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need inputs that want grads
    trainer.model = trainer.model_wrapped = model
    trainer.callback_handler.model = model
    run.log(f"lora: adapters (r={lora.r}) added to {run.method.name}'s model by the kit; {trainable_line(model)}")
    return True


def train_and_save(run: RunContext, trainer: Any, model_for_save: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train ``trainer`` the way every built-in does: resume with ``--resume``, stop cleanly on Ctrl-C/SIGTERM with
    a checkpoint (:class:`RunInterrupted`), metrics to ``metrics.jsonl``, evaluate once at the end (unless
    ``final_eval`` is off), save ``model/`` (``model_for_save``: another model than ``trainer.model``). Returns
    the final eval metrics.
    With ``--lora``, a trainer whose model has no adapters gets them first (:func:`add_lora`)."""
    from transformers.trainer_callback import PrinterCallback

    base = trainer.model
    if add_lora(run, trainer) and model_for_save is base:  # the base now holds the adapters' layers
        model_for_save = trainer.model
    trainer.remove_callback(PrinterCallback)  # metrics reach the progress display and metrics.jsonl instead
    trainer.create_model_card = _no_model_card  # TRL's card in checkpoints/ names no base model; ours is README.md
    _quiet_tied_weight_warning(trainer.model)
    trainer.add_callback(RunCallback(run))
    trainer.add_callback(CheckpointCallback(run))
    checkpoint = resume_checkpoint(run)
    if checkpoint is not None and _trained_to_the_end(checkpoint, trainer.args.max_steps):
        _train_no_further(run, trainer)
    trainer.add_callback(ScheduleCallback(run, checkpoint))
    with StopSignals(run.log, run.checkpoints_dir) as stop:
        trainer.add_callback(StopCallback(stop))
        divergence = DivergenceCallback()  # after StopCallback: a diverged step is never saved
        divergence.watch(trainer)
        trainer.add_callback(divergence)
        trainer.train(resume_from_checkpoint=checkpoint)
    if divergence.bad_step is not None:
        raise diverged_error(run, divergence.bad_step, divergence.what)
    if stop.agreed:
        step = trainer.state.global_step
        saved = run.checkpoints_dir / f"checkpoint-{step}"
        run.log(f"stopped at step {step}; checkpoint saved to {saved}")
        raise RunInterrupted(stop.agreed, saved)
    check_ranks_agree(run, trainer.model)
    final = _eval_at_step(trainer, trainer.state.global_step)  # transformers evaluates at the last step itself
    wanted = getattr(run.config, "final_eval", True)  # when eval_steps is set: not twice
    if not final and wanted and getattr(trainer, "eval_dataset", None) is not None and len(trainer.eval_dataset) > 0:
        final = trainer.evaluate()
    model = model_for_save if model_for_save is not None else trainer.model
    tok = tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None)
    run.save_model(model, tok)
    return final


def _trained_to_the_end(checkpoint: str, max_steps: int) -> bool:
    """Whether ``checkpoint`` was saved at the run's last step (a later stage failed: the final eval, the save):
    at ``max_steps``, or at the step count its run had (``max_steps`` -1: epochs)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        step, limit = int(state["global_step"]), int(max_steps if max_steps > 0 else state.get("max_steps", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return limit > 0 and step >= limit


def _train_no_further(run: RunContext, trainer: Any) -> None:
    """Resuming from the last step: transformers would train one step past ``max_steps`` (it checks the limit
    after a step, not before); its epoch loop is skipped, so ``train`` only restores the checkpoint and the run
    goes on to its final eval and save."""
    if not hasattr(trainer, "_run_epoch"):  # another transformers: its own loop decides
        return
    trainer._run_epoch = lambda *args, **kwargs: None
    run.log("resume: the checkpoint is at max_steps; training is done, going on to the final eval and save")


def _eval_at_step(trainer: Any, step: int) -> dict[str, Any]:
    """The ``eval_*`` metrics the trainer logged at ``step`` (empty when it did not evaluate there)."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}
