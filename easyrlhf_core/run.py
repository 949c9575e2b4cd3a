"""The run lifecycle: resolve method and config, load data, claim the output dir, train, write outputs.

Everything that can be checked is checked before a model loads and before anything is written:
unknown methods and options, wrong types, data that does not parse, an output dir already in use.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .api import Method
from .checkpoints import COMPLETE_MARKER
from .config import (
    BaseConfig,
    Layer,
    config_to_yaml,
    load_yaml_layer,
    parse_set_options,
    resolve_config,
)
from .errors import ConfigError, EasyRLHFError
from .launch import SIGNAL_REPEAT_WINDOW, STOP_SIGNALS, is_launched, world_size
from .metrics import METRICS_FILE
from .tracking import LOGS_DIR
from .progress import ProgressReporter
from .registry import Registry, get_registry
from .shapes import DataSplits

__all__ = ["Run", "StopSignals", "RunInterrupted", "run_stage", "is_complete_run"]

CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
#: Written by :func:`execute` once training and the saving of outputs succeeded (the name checkpoints use too).
COMPLETE_FILE = COMPLETE_MARKER


@dataclass
class RunRequest:
    """What the user asked for on the command line."""

    method: str | None
    config_file: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # config key -> value, from dedicated flags
    set_options: list[str] = field(default_factory=list)
    overwrite: bool = False
    resume: bool = False
    num_machines: int = 1  # multi-node runs: only machine 0 checks and claims the output dir
    machine_rank: int = 0


def is_main_process() -> bool:
    """True on the rank that writes outputs (rank 0, or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


class Run:
    """A run in progress: what a method's ``train`` gets."""

    def __init__(
        self,
        method: Method,
        config: BaseConfig,
        output_dir: Path,
        data: DataSplits | None,
        registry: Registry,
        resume: bool = False,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.method = method
        self.config = config
        self.output_dir = output_dir
        self.data = data
        self.registry = registry
        self.resume = resume
        self.is_main_process = is_main_process()
        self.progress = progress or ProgressReporter(enabled=self.is_main_process)
        self.started = time.time()
        self.logs_dir = output_dir / LOGS_DIR  # where local trackers write (a pipeline's stages: below its own)
        self.trackers: Any = None  # easyrlhf_core.tracking.Trackers while execute() runs, on the main process
        self.directory: Any = None  # the RunDirectory held by the process that claimed the output dir
        self.rank_lock: Any = None  # a launched rank's shared hold on it
        #: How many training examples the method really trains on, when it drops some (too long for
        #: max_length, say); the summary says "N of M". None: all of ``data.train``.
        self.train_examples_used: int | None = None
        #: Whether the saved model trained LoRA adapters, read from the model ``save_model`` was given (a
        #: pipeline: its last stage's); the summary and model card claim LoRA only when True. None: not saved.
        self.lora_applied: bool | None = None

    # -- paths -------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @property
    def model_dir(self) -> Path:
        return self.output_dir / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    # -- reporting ---------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A line in the run log (stderr), on the main process only."""
        if self.is_main_process:
            print(f"[easyrlhf] {message}", file=sys.stderr, flush=True)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one JSON object to ``metrics.jsonl`` and show it in the progress display."""
        if not self.is_main_process:
            return
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        record = {"step": int(step), **{k: v for k, v in clean.items() if k != "step"}}
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log_row(int(step), record)
        self.progress.update(step, record)

    # -- outputs -----------------------------------------------------------------------------------
    def save_model(self, model: Any, tokenizer: Any) -> Path:
        """Save the trained model (merged LoRA unless ``save_adapter_only``) and tokenizer to ``model/``."""
        from .models import is_peft_model, save_model
        from .zero import gathered

        self.lora_applied = is_peft_model(model)
        with gathered(model):  # ZeRO-3: the partitions made whole on every rank (collective), rank 0 writes
            if self.is_main_process:
                try:
                    save_model(model, tokenizer, self.model_dir, merge_lora=not self.config.save_adapter_only)
                except Exception as exc:
                    from .faults import disk_full_error, is_disk_full, model_bytes

                    if not is_disk_full(exc):
                        raise
                    raise disk_full_error(self, exc, writing=self.model_dir, needed=model_bytes(model)) from exc
                self.log(f"saved model to {self.model_dir}")
        return self.model_dir


class RunComplete(Exception):
    """``--resume`` on a run that finished and asks for nothing more: the CLI says so and exits 0."""


class RunInterrupted(Exception):
    """Training stopped early on SIGINT/SIGTERM, after saving the checkpoint ``checkpoint``; the CLI
    prints how to resume and exits with ``128 + signal_number`` (130 for Ctrl-C)."""

    def __init__(self, signal_number: int, checkpoint: Path | None = None) -> None:
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM as a request to stop at the next step boundary, so a training loop can
    save a checkpoint and stop cleanly. Use around the loop and call :meth:`requested` once per step on
    every rank (it agrees across ranks, so all stop at the same step)::

        with StopSignals(run.log) as stop:
            for step in ...:
                ...
                if stop.requested():
                    save a checkpoint; raise RunInterrupted(stop.requested(), path)

    A second Ctrl-C or SIGTERM more than a second after the first ends the process at once, even while the
    step is blocked (in a collective, a C call that never returns to Python), with exit code
    ``128 + signal`` and one line (:func:`stopped_at_once_message`; a launched rank leaves the line to the
    process that launched it); the newest complete checkpoint is never touched. Repeats within that
    second (one signal delivered twice, by a scheduler and by our launcher) count once. Python runs signal
    handlers in the main thread only, between bytecodes, so the signals are also read by a watcher thread
    from :func:`signal.set_wakeup_fd`, which the C-level handler writes to at once. Handlers are installed
    only in the main thread and restored on exit. ``checkpoints``: the run's checkpoints folder (named in
    the line).
    """

    #: Seconds within which a repeated signal counts as the same one.
    REPEAT_WINDOW = SIGNAL_REPEAT_WINDOW

    def __init__(self, log: Callable[[str], None], checkpoints: Path | None = None) -> None:
        self.log = log
        self.checkpoints = checkpoints
        self.received: int | None = None
        self._received_at = 0.0
        self._announced = False
        self._agreed: int | None = None
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[Any, Any] | None = None
        self._previous_wakeup = -1

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            import socket

            reader, writer = socket.socketpair()
            writer.setblocking(False)
            self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._wakeup = (reader, writer)
            threading.Thread(target=self._watch, args=(reader,), name="easyrlhf-stop-signals", daemon=True).start()
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            writer = self._wakeup[1]  # the watcher closes the reader
            self._wakeup = None
            try:
                writer.send(b"\0")  # ends the watcher
            except OSError:
                pass
            writer.close()

    def _handle(self, signum: int, frame: Any) -> None:  # no I/O here: the handler may interrupt a write
        if self.received is None:  # the request, at once; only the watcher counts and times signals (one clock:
            self.received = signum  # the same signal seen here and there late is never taken for a second one)

    def _note(self, signum: int) -> bool:
        """The watcher's record of a stop signal; True when it is a second one (not a repeat of the first)."""
        now = time.monotonic()
        if not self._received_at:
            if self.received is None:
                self.received = signum
            self._received_at = now
            return False
        return now - self._received_at > self.REPEAT_WINDOW

    def _watch(self, reader: Any) -> None:
        """The watcher thread: each signal's number as the C-level handler wrote it; a second one ends the
        process at once."""
        with reader:
            while True:
                try:
                    data = reader.recv(64)
                except OSError:
                    return
                if not data or 0 in data:
                    return
                for signum in data:
                    if signum in STOP_SIGNALS and self._note(signum):
                        self._stop_at_once(signum)

    def _stop_at_once(self, signum: int) -> None:
        code = 128 + signum
        if not is_launched():  # a launched rank: the launching process says it (it got both signals too)
            print(f"Error: {stopped_at_once_message(signum, self.checkpoints)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)

    @property
    def agreed(self) -> int | None:
        """The signal the last :meth:`requested` call acted on (no collective), else None."""
        return self._agreed

    def requested(self, device: Any = None) -> int | None:
        """The stop signal (a number) once any rank got one, else None. Collective when distributed:
        every rank must call it at the same points; ``device`` is where the flag tensor lives (the
        training device, for NCCL)."""
        if self._agreed:
            return self._agreed
        signum = self.received or 0
        if "torch" in sys.modules:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                flag = torch.tensor([signum], dtype=torch.int64, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag.item())
        if signum and not self._announced:
            self._announced = True
            again = " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""
            self.log(f"received {signal.Signals(signum).name}: stopping after this step and saving a checkpoint{again}")
        self._agreed = signum or None
        return self._agreed


def stopped_at_once_message(signum: int, checkpoints: Path | None) -> str:
    """The line a run stopped at once by a second Ctrl-C / SIGTERM ends with: what was lost, what is kept."""
    from .checkpoints import latest_checkpoint
    from .faults import checkpoint_note, resume_advice

    name = signal.Signals(signum).name
    kept = latest_checkpoint(checkpoints) if checkpoints is not None and checkpoints.is_dir() else None
    if kept is None:
        return (
            f"{name}: stopped at once by a second signal, without a checkpoint (none was saved yet); "
            f"run the command again to start over"
        )
    return (
        f"{name}: stopped at once by a second signal (the step in progress is lost); {checkpoint_note(kept)}: "
        f"{resume_advice(kept)}"
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# --------------------------------------------------------------------------------------------------
# Steps of a run


def _methods_with_option(registry: Registry, name: str) -> list[str]:
    """The registered methods whose config has option ``name``."""
    return sorted(
        n for n, e in registry.methods.items() if name in getattr(e.obj.config_class, "__dataclass_fields__", {})
    )


def resolve(request: RunRequest, registry: Registry | None = None) -> tuple[Method, BaseConfig]:
    """The method instance and its validated config, from defaults < file < flags < --set."""
    registry = registry or get_registry()
    layers: list[Layer] = []
    method_name = request.method
    if request.config_file:
        file_layer = load_yaml_layer(request.config_file)
        file_method = file_layer.values.pop("method", None)
        if method_name is None:
            method_name = file_method
        elif file_method is not None and file_method != method_name:
            raise ConfigError(
                f"this file is a '{file_method}' config but --method says '{method_name}'; drop "
                f"--method to run '{file_method}', or change the file's method",
                file=file_layer.source,
                line=file_layer.lines.get("method"),
            )
        layers.append(file_layer)
    if not method_name:
        raise ConfigError("no method given; pass --method NAME (see `easyrlhf list-plugins`)", where="--method")
    method_cls = registry.get("methods", method_name)
    config_cls = method_cls.config_class
    if request.flags:
        for key in request.flags:
            if key.split(".")[0] not in {f for f in config_cls.__dataclass_fields__}:
                if key == "rewards":  # --reward given several times
                    several = getattr(config_cls, "several_rewards_error", None)
                    if several is not None:  # a method that takes one reward (the rule: easyrlhf_core.rewards)
                        raise several(len(request.flags["rewards"]), _methods_with_option(registry, "rewards"))
                    key = "reward"
                flag = "--" + key.split(".")[0].replace("_", "-")
                raise ConfigError(f"method '{method_name}' has no option '{key}'", where=flag)
        layers.append(Layer(values=_nest(request.flags), source="flags"))
    if request.set_options:
        layers.append(parse_set_options(request.set_options))
    # Flags get their own error location: the flag name.
    config = _resolve_with_flag_locations(config_cls, layers, method_name)
    return method_cls(), config


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _resolve_with_flag_locations(config_cls: type, layers: list[Layer], method: str) -> BaseConfig:
    class _FlagLayer(Layer):
        def error(self, key: str, message: str) -> ConfigError:  # name the flag, not "flags"
            return ConfigError(message, where="--" + key.split(".")[-1].replace("_", "-"))

    fixed = [
        (_FlagLayer(values=layer.values, source=layer.source) if layer.source == "flags" else layer) for layer in layers
    ]
    return resolve_config(config_cls, fixed, method)


def default_output_dir(method_name: str) -> Path:
    return Path("runs") / f"{method_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty ``path`` unless ``overwrite`` or ``resume``; touch nothing."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one", where="--resume")
    from .rundir import contents

    non_empty = bool(contents(path))
    if non_empty and not (overwrite or resume):
        raise EasyRLHFError(
            "output directory is not empty; pass --overwrite to replace it, --resume to "
            "continue its run, or choose another --output-dir",
            where=str(path),
        )
    if resume and not non_empty:
        raise EasyRLHFError("--resume needs an existing run directory; none found here", where=str(path))


def check_resume(path: Path, method: Method, config: BaseConfig) -> bool:
    """With ``--resume``: True when the run in ``path`` is complete and ``config`` asks for more training
    (a higher ``max_steps`` or ``num_train_epochs`` than the run's ``config.yaml``); :class:`RunComplete`
    when it is complete and asks for nothing more; False for a run that has not finished."""
    import yaml

    from .checkpoints import latest_checkpoint

    if not is_complete_run(path):
        return False
    try:
        saved = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        saved = {}
    if not asks_for_more(saved, config):
        limit = f" (max_steps was {saved['max_steps']})" if "max_steps" in saved else ""
        raise RunComplete(
            f"the run in {path} is complete; nothing to do. To train it further, pass a higher "
            f"--max-steps{limit} with --resume"
        )
    if method.shape is None:
        raise ConfigError(
            f"the {method.name} run in {path} is complete; a pipeline is not trained further with "
            f"--resume: start a new run from its final model (--model {path / MODEL_DIR})",
            where="--resume",
        )
    if latest_checkpoint(path / CHECKPOINTS_DIR) is None:
        raise ConfigError(
            f"cannot train the complete run in {path} further: it has no complete checkpoint to "
            f"continue from (save_steps={getattr(config, 'save_steps', '?')}); start a new run from "
            f"its model instead: --model {path / MODEL_DIR}",
            where="--resume",
        )
    return True


def asks_for_more(saved: dict[str, Any], config: BaseConfig) -> bool:
    """Whether ``config`` trains further than the finished run's saved config: a higher positive
    ``max_steps``, or (both counting epochs, ``max_steps: -1``) a higher ``num_train_epochs``."""
    steps, saved_steps = getattr(config, "max_steps", None), saved.get("max_steps")
    if isinstance(steps, int) and isinstance(saved_steps, int) and saved_steps > 0:
        return steps > saved_steps
    epochs, saved_epochs = getattr(config, "num_train_epochs", None), saved.get("num_train_epochs")
    return (
        steps == -1
        and saved_steps == -1
        and isinstance(epochs, (int, float))
        and isinstance(saved_epochs, (int, float))
        and epochs > saved_epochs
    )


def is_complete_run(path: Path) -> bool:
    """A run that finished: :func:`execute` wrote ``COMPLETE`` once training and its outputs succeeded."""
    return (path / COMPLETE_FILE).is_file()


def run_stage(parent: Run, method: Method, config: BaseConfig, data: Any, output_dir: Path) -> Path:
    """Run ``method`` as one stage of ``parent``'s run (a pipeline), into ``output_dir`` below the parent's
    locked directory, with the usual run layout: skipped when complete, resumed when started, else new.
    Returns the stage's ``model/``."""
    from .rundir import contents

    if is_complete_run(output_dir):
        parent.log(f"{parent.method.name}: {method.name} stage already complete in {output_dir}; skipped")
        return output_dir / MODEL_DIR
    config.validate_for_run()
    check_lora_support(method, config)
    resume = parent.resume  # the same on every rank (a stage dir's contents may be mid-write on rank 0)
    started = resume and bool(contents(output_dir))  # for the log line (main process) only
    if parent.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and (output_dir / CONFIG_FILE).exists()):
            write_run_config(output_dir, method.name, config)
    parent.log(f"{parent.method.name}: {method.name} stage{' (resuming)' if started else ''} -> {output_dir}")
    stage = Run(method, config, output_dir, data, parent.registry, resume=resume, progress=parent.progress)
    stage.logs_dir = parent.logs_dir / method.name  # one `tensorboard --logdir OUTPUT_DIR/logs` for the pipeline
    execute(stage)
    parent.lora_applied = stage.lora_applied  # a pipeline's model is its last stage's
    _barrier()  # the next stage loads this one's model/, which rank 0 may still be writing
    return output_dir / MODEL_DIR


def _barrier() -> None:
    """Wait for every rank of a multi-process run (nothing to do otherwise)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def write_run_config(output_dir: Path, method_name: str, config: Any) -> None:
    """``config.yaml``: the fully resolved config, loadable again with ``--config``."""
    text = f"method: {method_name}\n" + config_to_yaml(config, comments=False)
    (output_dir / CONFIG_FILE).write_text(text, encoding="utf-8")


def prepare(request: RunRequest, registry: Registry | None = None) -> Run:
    """Everything before training: validation, data, output dir. Raises :class:`EasyRLHFError`.

    The process that claims the output dir (not a launched rank) locks it first, for the whole run
    (:class:`~easyrlhf_core.rundir.RunDirectory`): the returned run's ``directory`` must be finished with
    :func:`finish_directory`. Nothing is written into the directory unless every check passed.
    """
    from .rundir import RunDirectory, hold_for_rank

    registry = registry or get_registry()
    method, config = resolve(request, registry)
    config.validate_for_run()
    check_lora_support(method, config)
    if request.num_machines > 1 and not config.output_dir:
        raise ConfigError(
            "a run on several machines needs --output-dir: the same path on every machine, on a "
            "filesystem they all see",
            where="--output-dir",
        )
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(method.name)
    config.output_dir = str(output_dir)
    # A rank started by `launch`, or a machine other than the first: the first machine's parent process
    # checks, locks and claims the output dir.
    claims = not is_launched() and request.machine_rank == 0 and is_main_process()
    if not claims:
        rank_lock = hold_for_rank(output_dir) if is_launched() else None
        run = Run(method, config, output_dir, method.load_data(config, registry), registry, resume=request.resume)
        run.rank_lock = rank_lock
        return run
    directory = RunDirectory(output_dir, log=_stderr_log).lock()
    try:
        directory.clear_dead_start()
        check_output_dir(output_dir, overwrite=request.overwrite, resume=request.resume)
        if request.resume:  # the same model and data as the run was started with, unchanged on disk
            from .inputs import check_same_inputs

            check_same_inputs(output_dir, config, CONFIG_FILE)
        extend = request.resume and check_resume(output_dir, method, config)
        preflight(config)
        data = method.load_data(config, registry)
        directory.claim(overwrite=request.overwrite)
        if extend:
            (output_dir / COMPLETE_FILE).unlink(missing_ok=True)
            _stderr_log(f"--resume: the run is complete; training it further, to max_steps={config.max_steps}")
        if extend or not (request.resume and (output_dir / CONFIG_FILE).exists()):
            write_run_config(output_dir, method.name, config)
        if not request.resume:
            from .inputs import write_inputs

            write_inputs(output_dir, config)
    except BaseException:
        directory.finish(failed=True)  # as it was found: refused, or failed while claiming
        raise
    run = Run(method, config, output_dir, data, registry, resume=request.resume)
    run.directory = directory
    if isinstance(data, DataSplits):
        run.log(f"data: {config.dataset} ({data.shape}): {len(data.train)} train / {len(data.eval)} eval examples")
        for note in data.notes:
            run.log(f"data: {note}")
    return run


def check_lora_support(method: Method, config: BaseConfig) -> None:
    """``--lora`` only for a method that applies it (``Method.supports_lora``; every ``TrainerMethod``, whose
    trainer's model the kit wraps): a method that would train all weights instead is refused in one line."""
    lora = getattr(config, "lora", None)
    if lora is not None and lora.enabled and not method.supports_lora:
        raise ConfigError(
            f"method '{method.name}' does not train LoRA adapters (it does not declare "
            f"supports_lora): drop --lora, or have the method apply it (a TrainerMethod gets it "
            f"from the kit; a method with its own loop wraps its model with "
            f"easyrlhf_core.models.apply_lora and sets supports_lora = True)",
            where="--lora",
        )


def _stderr_log(message: str) -> None:
    print(f"[easyrlhf] {message}", file=sys.stderr, flush=True)


def preflight(config: BaseConfig) -> None:
    """Cheap checks of what training would load first, before the output dir is claimed: a local
    ``model`` path exists and is a model, and explicit LoRA ``target_modules`` exist in it."""
    from .models import check_lora_targets, check_model_name

    name = getattr(config, "model", None)
    path = check_model_name(name) if isinstance(name, str) else None
    lora = getattr(config, "lora", None)
    if path is not None and lora is not None and lora.enabled and lora.target_modules != ["all-linear"]:
        check_lora_targets(path, lora.target_modules, trust_remote_code=getattr(config, "trust_remote_code", False))


def finish_directory(run: Run, failed: bool) -> None:
    """End the claiming process's hold on the output dir: a run that failed before it trained is rolled
    back (the directory is as it was found), then the lock is released."""
    if run.directory is not None:
        run.directory.finish(failed)


def execute(run: Run) -> None:
    """Train, then close the progress display."""
    run.log(f"method: {run.method.name}; output: {run.output_dir}")
    config = run.config
    if hasattr(config, "per_device_train_batch_size"):
        per_device = config.per_device_train_batch_size
        accumulation = config.gradient_accumulation_steps
        processes = world_size()
        run.log(
            f"batch: {per_device} per device x {accumulation} accumulation steps x {processes} "
            f"process{'es' if processes > 1 else ''} = {per_device * accumulation * processes} examples "
            f"per optimizer step (global)"
        )
    timeout = getattr(config, "collective_timeout", 1800)
    if getattr(config, "deepspeed", None):  # before any model loads (ZeRO-3 loads them partitioned)
        from .zero import start_deepspeed

        start_deepspeed(timeout)
    elif world_size() > 1:  # our timeout on every collective (the Trainer / accelerate take this group)
        from .launch import start_process_group

        start_process_group(timeout)
    report_to = [name for name in getattr(config, "report_to", []) if name != "none"]
    if report_to and run.is_main_process and not run.method.runs_stages:  # a pipeline's stages track themselves
        from .tracking import Trackers

        run.trackers = Trackers(report_to, run.logs_dir, run.output_dir.name, config, run.resume, run.log)
    try:
        run.method.train(run)
    except Exception as exc:  # a known fault (disk full, out of memory, a reward that raised): one line
        from .faults import training_fault

        fault = training_fault(run, exc)
        if fault is None:
            raise
        raise fault from exc
    finally:
        if getattr(config, "deepspeed", None):
            from .zero import stop_zero_init

            stop_zero_init()
        run.progress.close()
        if run.trackers is not None:
            run.trackers.close()
            run.trackers = None
    lora = getattr(config, "lora", None)
    if lora is not None and lora.enabled and run.lora_applied is False and not run.method.runs_stages:
        run.log(
            f"warning: --lora: {run.method.name} saved a model without LoRA adapters (all weights trained); "
            f"the summary and model card say so"
        )
    if run.is_main_process:
        finish_run_dir(run)
        write_run_summary(run)
        (run.output_dir / COMPLETE_FILE).write_text(
            json.dumps(
                {
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "method": run.method.name,
                    "max_steps": getattr(config, "max_steps", None),
                }
            )
            + "\n",
            encoding="utf-8",
        )
    run.log(f"done in {time.time() - run.started:.0f}s; model: {run.model_dir}")


def write_run_summary(run: Run) -> None:
    """The end-of-run summary (:mod:`easyrlhf_core.summary`); a pipeline's stages print their own. A failure
    here is a warning: the trained model is already saved."""
    if run.method.runs_stages or not run.model_dir.is_dir():
        return
    from .summary import build_summary, write_summary

    try:
        changed = run.method.what_changed(run)
    except Exception as exc:
        run.log(f"warning: could not score what changed for the summary: {type(exc).__name__}: {exc}")
        changed = []
    try:
        write_summary(run, build_summary(run, changed))
    except OSError as exc:
        run.log(f"warning: could not write {run.output_dir / 'summary.json'}: {exc}")


def finish_run_dir(run: Run) -> None:
    """Plots and the model card; a failure here is a warning, never a lost run."""
    from .model_card import write_model_card
    from .plots import plot_run

    try:
        if run.metrics_path.is_file():
            plot_run(run.output_dir)
        write_model_card(run)
    except Exception as exc:  # the trained model is already saved
        run.log(f"warning: could not write plots or README.md: {type(exc).__name__}: {exc}")
