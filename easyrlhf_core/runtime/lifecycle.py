"""The run lifecycle: resolve method and config, claim the output dir, load data, train, write outputs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.checkpoints import is_complete_run
from easyrlhf_core.kit.config import BaseConfig, Layer
from easyrlhf_core.kit.distributed import is_launched, is_main_process, world_size
from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError, one_line
from easyrlhf_core.kit.shapes import DataSplits
from easyrlhf_core.runtime.config_layers import config_to_yaml, load_yaml_layer, parse_set_options, resolve_config
from easyrlhf_core.runtime.registry import Registry, get_registry
from easyrlhf_core.runtime.run import (
    CHECKPOINTS_DIR,
    COMPLETE_FILE,
    CONFIG_FILE,
    MODEL_DIR,
    Run,
    RunComplete,
    RunRequest,
)

__all__ = [
    "resolve",
    "default_output_dir",
    "check_output_dir",
    "check_resume",
    "asks_for_more",
    "run_stage",
    "write_run_config",
    "prepare",
    "check_lora_support",
    "preflight",
    "finish_directory",
    "execute",
    "write_run_summary",
    "finish_run_dir",
    "write_run_report",
]


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
                    if several is not None:  # a method that takes one reward (the rule: easyrlhf_core.kit.rewards)
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
    from easyrlhf_core.runtime.run_directory import contents

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

    from easyrlhf_core.kit.checkpoints import latest_checkpoint

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


def run_stage(parent: Run, method: Method, config: BaseConfig, data: Any, output_dir: Path) -> Path:
    """Run ``method`` as one stage of ``parent``'s run (a pipeline), into ``output_dir`` below the parent's
    locked directory, with the usual run layout: skipped when complete, resumed when started, else new.
    Returns the stage's ``model/``."""
    from easyrlhf_core.runtime.run_directory import contents

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
    stage.stage_runner = run_stage
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
    (:class:`~easyrlhf_core.runtime.run_directory.RunDirectory`): the returned run's ``directory`` must be finished with
    :func:`finish_directory`. Nothing is written into the directory unless every check passed.
    """
    from easyrlhf_core.runtime.run_directory import RunDirectory, hold_for_rank

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
        run.stage_runner = run_stage
        return run
    directory = RunDirectory(output_dir, log=_stderr_log).lock()
    try:
        directory.clear_dead_start()
        check_output_dir(output_dir, overwrite=request.overwrite, resume=request.resume)
        if request.resume:  # the same model and data as the run was started with, unchanged on disk
            from easyrlhf_core.runtime.inputs import check_same_inputs

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
            from easyrlhf_core.runtime.inputs import write_inputs

            write_inputs(output_dir, config)
    except BaseException:
        directory.finish(failed=True)  # as it was found: refused, or failed while claiming
        raise
    run = Run(method, config, output_dir, data, registry, resume=request.resume)
    run.directory = directory
    run.stage_runner = run_stage
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
            f"easyrlhf_core.kit.model_loading.apply_lora and sets supports_lora = True)",
            where="--lora",
        )


def _stderr_log(message: str) -> None:
    print(f"[easyrlhf] {message}", file=sys.stderr, flush=True)


def preflight(config: BaseConfig) -> None:
    """Cheap checks of what training would load first, before the output dir is claimed: a local
    ``model`` path exists and is a model, and explicit LoRA ``target_modules`` exist in it."""
    from easyrlhf_core.kit.model_loading import check_lora_targets, check_model_name

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
        from easyrlhf_core.kit.zero import start_deepspeed

        start_deepspeed(timeout)
    elif world_size() > 1:  # our timeout on every collective (the Trainer / accelerate take this group)
        from easyrlhf_core.kit.distributed import start_process_group

        start_process_group(timeout)
    report_to = [name for name in getattr(config, "report_to", []) if name != "none"]
    if report_to and run.is_main_process and not run.method.runs_stages:  # a pipeline's stages track themselves
        from easyrlhf_core.runtime.tracking import Trackers

        run.trackers = Trackers(report_to, run.logs_dir, run.output_dir.name, config, run.resume, run.log)
    try:
        run.method.train(run)
    except Exception as exc:  # a known fault (disk full, out of memory, a reward that raised): one line
        from easyrlhf_core.kit.faults import training_fault

        fault = training_fault(run, exc)
        if fault is None:
            raise
        raise fault from exc
    finally:
        if getattr(config, "deepspeed", None):
            from easyrlhf_core.kit.zero import stop_zero_init

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
        write_run_report(run)
    run.log(f"done in {time.time() - run.started:.0f}s; model: {run.model_dir}")


def write_run_summary(run: Run) -> None:
    """The end-of-run summary (:mod:`easyrlhf_core.runtime.summary`); a pipeline's stages print their own. A failure
    here is a warning: the trained model is already saved."""
    if run.method.runs_stages or not run.model_dir.is_dir():
        return
    from easyrlhf_core.runtime.summary import build_summary, write_summary

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
    from easyrlhf_core.runtime.model_card import write_model_card
    from easyrlhf_core.runtime.plots import plot_run

    try:
        if run.metrics_path.is_file():
            plot_run(run.output_dir)
        write_model_card(run)
    except Exception as exc:  # the trained model is already saved
        run.log(f"warning: could not write plots or README.md: {type(exc).__name__}: {exc}")


def write_run_report(run: Run) -> None:
    """``report.html`` (:mod:`easyrlhf_core.runtime.report`), once everything else is written; a failure here is
    one warning line, never a failed run."""
    try:
        from easyrlhf_core.runtime.report import write_report

        path = write_report(run.output_dir)
    except Exception as exc:  # the run is complete: the report can be rebuilt with `easyrlhf report`
        run.log(f"warning: could not write report.html: {type(exc).__name__}: {one_line(str(exc))}")
        return
    run.log(f"report: {path}")
