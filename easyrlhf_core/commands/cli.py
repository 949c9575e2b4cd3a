"""The ``easyrlhf`` command line (click + rich). No torch import on ``--help`` or ``list-plugins``."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, NoReturn

import click

from easyrlhf_core import __version__
from easyrlhf_core.kit.errors import EasyRLHFError, RanksFailed, one_line


def _fail(message: str, code: int = 2) -> NoReturn:
    """``Error: <message>`` and exit; a rank launched by ``easyrlhf run`` hands the line to its parent
    instead, which prints the first failing rank's (:mod:`easyrlhf_core.runtime.rank_errors`)."""
    from easyrlhf_core.kit.distributed import is_launched
    from easyrlhf_core.runtime.rank_errors import record_rank_error

    if not (is_launched() and record_rank_error(message, code)):
        click.echo(f"Error: {message}", err=True)
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Exit with ``code``; a launched rank leaves without interpreter shutdown, so a failed rank ends at once
    (its launcher then stops the others) instead of hanging in gloo's teardown."""
    from easyrlhf_core.kit.distributed import is_launched
    from easyrlhf_core.runtime.launcher import exit_launched_rank

    if is_launched():
        exit_launched_rank(code)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """One ``Error: ...`` line and a nonzero exit for bad input; the traceback only with ``--debug``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = kwargs.get("debug") or (ctx.obj or {}).get("debug", False)
        try:
            return func(*args, **kwargs)
        except RanksFailed as exc:  # the ranks printed their tracebacks (with --debug) themselves
            _fail(str(exc), code=exc.exit_code)
        except EasyRLHFError as exc:
            if debug:
                _record_for_parent(str(exc), exc.exit_code)
                raise
            _fail(str(exc), code=exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            _exit(130)
        except Exception as exc:  # an unexpected failure: still one line unless --debug
            message = f"{type(exc).__name__}: {one_line(str(exc))}"
            if debug:
                _record_for_parent(message, 1)
                raise
            _fail(f"{message} (run again with --debug for the traceback)", code=1)

    return wrapper


def _record_for_parent(message: str, code: int) -> None:
    """With --debug a launched rank prints its traceback and still hands its error line to the parent."""
    from easyrlhf_core.kit.distributed import is_launched
    from easyrlhf_core.runtime.rank_errors import record_rank_error

    if is_launched():
        record_rank_error(message, code)


def _print_versions(ctx: click.Context, _param: Any, value: bool) -> None:
    """``--version``: ours, the libraries a bug report needs, and whether a GPU is visible."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_report())
    ctx.exit()


def version_report() -> str:
    import importlib.metadata as metadata
    import platform

    lines = [
        f"easyrlhf {__version__}",
        f"python {platform.python_version()} ({platform.system()} {platform.machine()})",
    ]
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"):
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{package} not installed")
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        lines.append(f"gpu: {gpus} visible ({torch.cuda.get_device_name(0)})" if gpus else "gpu: none visible (CPU)")
    except Exception as exc:  # a broken torch install is worth reporting, not a traceback
        lines.append(f"gpu: unknown ({type(exc).__name__}: {exc})")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_versions,
    help="Show the versions of easyrlhf and its libraries, and whether a GPU is visible.",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """EasyRLHF: align language models with SFT, reward models, PPO, DPO, IPO and RRHF.

    \b
    easyrlhf list-plugins
    easyrlhf run --method dpo --dataset hh-rlhf --max-steps 20
    """
    ctx.obj = {"debug": debug}


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@handle_errors
def list_plugins(as_json: bool) -> None:
    """List installed plugins and the methods, datasets, reward functions and environments they provide."""
    from easyrlhf_core.runtime.registry import get_registry

    registry = get_registry()
    data = registry.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind in ("methods", "datasets", "rewards", "environments"):
        table = Table(title=kind.capitalize(), title_justify="left")
        for col in ("name", "description", "plugin", "package", "version"):
            table.add_column(col)
        for entry in data[kind]:
            description = entry.get("description", "")
            if entry.get("conflict"):
                description = f"[red]conflict:[/red] {entry['conflict']}"
            table.add_row(
                entry["name"], description, *(str(entry.get(c, "")) for c in ("plugin", "package", "version"))
            )
        console.print(table)
    table = Table(title="Plugins", title_justify="left")
    for col in ("plugin", "package", "version", "status", "error"):
        table.add_column(col)
    colours = {"ok": "green", "conflict": "yellow"}
    for plugin in data["plugins"]:
        colour = colours.get(plugin["status"], "red")
        table.add_row(
            plugin["name"],
            plugin["package"],
            plugin["version"],
            f"[{colour}]{plugin['status']}[/{colour}]",
            plugin["error"] or "",
        )
    console.print(table)


# Flags that set config keys: flag name -> config key.
_FLAG_KEYS = {
    "model": "model",
    "dataset": "dataset",
    "data_files": "data_files",
    "max_steps": "max_steps",
    "output_dir": "output_dir",
    "precision": "precision",
    "deepspeed": "deepspeed",
    "reward_model": "reward_model",
    "reward": "reward",
    "env": "env",
    "seed": "seed",
}
_BOOL_FLAG_KEYS = {
    "lora": "lora.enabled",
    "save_adapter_only": "save_adapter_only",
    "gradient_checkpointing": "gradient_checkpointing",
    "trust_remote_code": "trust_remote_code",
    "skip_bad_rows": "skip_bad_rows",
}


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``run`` and ``show-config``."""
    options = [
        click.option("--method", "-m", help="Alignment method (see `easyrlhf list-plugins`)."),
        click.option(
            "--config", "-c", "config_file", help="YAML config file (method defaults < this file < flags < --set)."
        ),
        click.option(
            "--set",
            "set_options",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config key, e.g. --set beta=0.2 --set lora.r=8 (repeatable).",
        ),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


@cli.command("run", context_settings={"help_option_names": []})
@config_options
@click.option("--model", help="Hub id, model directory or .gguf file (default: embedded SmolLM2-135M-Instruct).")
@click.option("--dataset", help="Dataset plugin (default: hh-rlhf, embedded sample).")
@click.option("--data-files", help="Comma-separated local data files for the dataset plugin.")
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    default=None,
    help="Skip (and count) malformed data rows instead of stopping at the first one.",
)
@click.option("--max-steps", type=int, help="Stop after N optimizer steps.")
@click.option("--output-dir", "-o", help="Run directory (default: runs/<method>-<timestamp>).")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--lora", is_flag=True, default=None, help="Train LoRA adapters (peft) instead of all weights.")
@click.option(
    "--save-adapter-only", is_flag=True, default=None, help="With --lora: save the adapter, not the merged model."
)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), help="Training precision.")
@click.option("--gradient-checkpointing", is_flag=True, default=None, help="Recompute activations to save memory.")
@click.option("--deepspeed", help="DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json).")
@click.option("--reward-model", help="Reward model directory (methods that score generations).")
@click.option(
    "--reward",
    multiple=True,
    help="Registered reward function name (methods that score generations); repeat it to sum several (grpo, rloo).",
)
@click.option(
    "--env",
    help="Environment plugin: multi-turn episodes (tools, games) for ppo, grpo, rloo and the rlhf pipeline's RL stage.",
)
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow custom model code (off by default).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its latest checkpoint.")
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes (GPUs) per machine; >1 launches through accelerate (GPU) or torchrun (CPU, gloo).",
)
@click.option("--num-machines", type=click.IntRange(min=1), default=1, show_default=True, help="Machines (nodes).")
@click.option("--machine-rank", type=click.IntRange(min=0), default=0, show_default=True, help="This machine's rank.")
@click.option("--main-process-ip", help="Address of the rank-0 machine (multi-node).")
@click.option(
    "--main-process-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Rendezvous port; default: a free port on one machine, 29500 on several.",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--help",
    "-h",
    "show_help",
    is_flag=True,
    help="Show this message and exit; with --method NAME, also that method's options.",
)
@handle_errors
def run_command(
    method: str | None,
    config_file: str | None,
    set_options: tuple[str, ...],
    overwrite: bool,
    resume: bool,
    debug: bool,
    num_processes: int,
    num_machines: int,
    machine_rank: int,
    main_process_ip: str | None,
    main_process_port: int | None,
    show_help: bool,
    **flags: Any,
) -> None:
    """Train a model with one alignment method (`easyrlhf run --method NAME --help` lists its options)."""
    from easyrlhf_core.kit.distributed import is_launched
    from easyrlhf_core.kit.stopping import RunInterrupted, stopped_at_once_message
    from easyrlhf_core.runtime.launcher import STOPPED_EXIT_CODES, LaunchOptions, exit_launched_rank, launch
    from easyrlhf_core.runtime.lifecycle import execute, finish_directory, prepare
    from easyrlhf_core.runtime.run import RunComplete, RunRequest

    if show_help:
        click.echo(click.get_current_context().get_help())
        if method:
            click.echo(f"\nOptions of method '{method}' (set with --config FILE or --set KEY=VALUE):\n")
            click.echo(_method_options_text(method), nl=False)
        return

    quiet_library_output()
    request = RunRequest(
        method=method,
        config_file=config_file,
        flags=_flag_values(flags),
        set_options=list(set_options),
        overwrite=overwrite,
        resume=resume,
        num_machines=num_machines,
        machine_rank=machine_rank,
    )
    try:
        run = prepare(request)  # validates, locks the output dir, loads data, claims it; before any rank starts
    except RunComplete as complete:
        click.echo(f"[easyrlhf] {complete}", err=True)
        return
    options = LaunchOptions(
        num_processes,
        num_machines,
        machine_rank,
        main_process_ip,
        main_process_port,
        deepspeed=bool(getattr(run.config, "deepspeed", None)),
    )
    failed = True
    try:
        if options.needs_launcher and not is_launched():
            if run.directory is not None:
                run.directory.announce_ranks()
            launched = launch(options, _rank_args(sys.argv[1:], str(run.output_dir)))
            failed = launched.code != 0
            if launched.stopped_at_once is not None:
                raise RanksFailed(stopped_at_once_message(launched.stopped_at_once, run.checkpoints_dir), launched.code)
            if launched.code in STOPPED_EXIT_CODES:
                _print_resume_hint(str(run.output_dir))
            if launched.error is not None:
                raise RanksFailed(launched.error, launched.code)
            sys.exit(launched.code)
        try:
            execute(run)
        except RunInterrupted as stopped:
            if is_launched():  # a rank that stopped as asked: the parent process reports the stop
                exit_launched_rank(0)
            _print_resume_hint(str(run.output_dir))
            sys.exit(stopped.exit_code)
        failed = False
    finally:
        finish_directory(run, failed)  # a failure before training leaves the directory as it was found
    if is_launched():
        exit_launched_rank(0)


def quiet_library_output() -> None:
    """Our progress display and run log replace the libraries' progress bars when output is not a
    terminal, and their deprecation notices about their own internals are dropped."""
    import os
    import warnings

    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow this one
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # bars drawn with tqdm itself (GGUF conversion, shard writing)
    for notice in (
        r".*gradient_checkpointing.* is deprecated",
        r".*torch_dtype.* is deprecated",
        r"`torch\.distributed\.\w+` is deprecated",
    ):  # DeepSpeed's calls into torch.distributed
        warnings.filterwarnings("ignore", message=notice, category=FutureWarning)


def _print_resume_hint(output_dir: str) -> None:
    click.echo(f"Stopped. Resume with:\n  {resume_command(sys.argv[1:], output_dir)}", err=True)


def resume_command(argv: list[str], output_dir: str) -> str:
    """The command line that continues this run: the same arguments without --overwrite / --resume /
    --output-dir, then ``--resume --output-dir OUTPUT_DIR``."""
    import shlex

    kept = _drop_options(argv, valued={"--output-dir", "-o"}, flags={"--overwrite", "--resume"})
    return shlex.join(["easyrlhf", *kept, "--resume", "--output-dir", output_dir])


_LAUNCHER_OPTIONS = {"--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port"}


def _rank_args(argv: list[str], output_dir: str) -> list[str]:
    """The parent's arguments for the launched ranks: no launcher options, no --overwrite (done), and
    the output dir fixed (a default one has a timestamp that must not differ between ranks)."""
    kept = _drop_options(argv, valued=_LAUNCHER_OPTIONS | {"--output-dir", "-o"}, flags={"--overwrite"})
    return kept + ["--output-dir", output_dir]


def _drop_options(argv: list[str], valued: set[str], flags: set[str]) -> list[str]:
    """``argv`` without the ``valued`` options (``--opt VALUE`` or ``--opt=VALUE``) and the ``flags``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in valued:
            skip = "=" not in arg
            continue
        if arg not in flags:
            out.append(arg)
    return out


def _flag_values(flags: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    rewards = list(flags.get("reward") or ())
    flags = {**flags, "reward": rewards[0] if len(rewards) == 1 else None}
    if len(rewards) > 1:  # several rewards: the methods that sum them take a rewards list
        values["rewards"] = [{"reward": name} for name in rewards]
    for name, key in _FLAG_KEYS.items():
        if flags.get(name) is not None:
            value = flags[name]
            if name == "data_files":
                value = [v.strip() for v in value.split(",") if v.strip()]
            values[key] = value
    for name, key in _BOOL_FLAG_KEYS.items():
        if flags.get(name):
            values[key] = True
    return values


@cli.command("show-config")
@config_options
@click.option("--no-comments", is_flag=True, help="Leave out the help text above each option.")
@handle_errors
def show_config(method: str | None, config_file: str | None, set_options: tuple[str, ...], no_comments: bool) -> None:
    """Print the effective config of a method as YAML (defaults, then --config and --set applied)."""
    from easyrlhf_core.runtime.config_layers import config_to_yaml
    from easyrlhf_core.runtime.lifecycle import resolve
    from easyrlhf_core.runtime.run import RunRequest

    request = RunRequest(method=method, config_file=config_file, set_options=list(set_options))
    method_obj, config = resolve(request)
    text = f"method: {method_obj.name}\n" + config_to_yaml(config, comments=not no_comments)
    if not no_comments:
        text = f"# {method_obj.name}: {method_obj.description}\n" + text
    click.echo(text, nl=False)


def _method_options_text(method: str) -> str:
    """Every option of ``method`` with its default and help text (what show-config prints)."""
    from easyrlhf_core.runtime.config_layers import config_to_yaml
    from easyrlhf_core.runtime.lifecycle import resolve
    from easyrlhf_core.runtime.run import RunRequest

    method_obj, config = resolve(RunRequest(method=method))
    return f"# {method_obj.name}: {method_obj.description}\n" + config_to_yaml(config, comments=True)


@cli.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]", type=click.Path(file_okay=False))
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False),
    help="Where the PNGs go (default: RUN_DIR/plots for one run, ./plots-compare for several).",
)
@handle_errors
def plot_command(run_dirs: tuple[str, ...], output_dir: str | None) -> None:
    """Draw PNG curves of a run's metrics into RUN_DIR/plots. With several runs, overlay them: one figure per
    key metric that at least two of the runs logged, one line per run, labelled with the run directory's
    name (parent/name where names collide)."""
    from pathlib import Path

    from easyrlhf_core.runtime.plots import plot_compare, plot_run

    out = Path(output_dir) if output_dir else None
    if len(run_dirs) == 1:
        written = plot_run(Path(run_dirs[0]), out)
        missing = "no numeric key metrics to plot"
    else:
        written = plot_compare([Path(d) for d in run_dirs], out or Path("plots-compare"))
        missing = "no numeric key metric is logged by two or more of these runs"
    for path in written:
        click.echo(str(path))
    if not written:
        click.echo(missing, err=True)


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]")
@click.option(
    "--out",
    help="The HTML file to write (default: RUN_DIR/report.html for one run, ./report-compare.html for several).",
)
@handle_errors
def report_command(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Rebuild a run's report.html: one self-contained page (summary, curves, sampled completions, before/after,
    model card, config) that opens in any browser, offline. With several runs, write one page comparing them:
    their summaries side by side, the same metrics' curves overlaid, the config options that differ."""
    from pathlib import Path

    from easyrlhf_core.runtime.report import COMPARE_FILE, write_compare, write_report

    if len(run_dirs) == 1:
        written = write_report(Path(run_dirs[0]), Path(out) if out else None)
    else:
        written = write_compare([Path(d) for d in run_dirs], Path(out or COMPARE_FILE))
    click.echo(str(written))


def _env_dataset(env: str | None) -> str | None:
    """The dataset an environment plays on by default (its ``default_dataset``), if it names one."""
    if env is None:
        return None
    from easyrlhf_core.runtime.registry import get_registry

    return getattr(get_registry().get("environments", env), "default_dataset", None)


@cli.command("eval")
@click.option(
    "--model",
    required=True,
    help="Model to evaluate: a reward model (sequence classifier) or a policy (causal LM): a directory, .gguf file "
    "or Hub id.",
)
@click.option(
    "--reference", help="Policies: the reference (starting) model, for implicit-reward accuracy, KL and win rate."
)
@click.option("--reward-model", help="Policies: reward model directory that scores answers.")
@click.option("--reward", help="Policies: registered reward function that scores answers (instead of --reward-model).")
@click.option(
    "--reward-option",
    "reward_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for --reward (YAML value), e.g. --reward-option keywords=thanks (repeatable).",
)
@click.option(
    "--dataset", help="Dataset plugin (see `easyrlhf list-plugins`); default: hh-rlhf, or the --env's own problems."
)
@click.option("--data-files", help="Comma-separated local data files for the dataset plugin.")
@click.option(
    "--split",
    type=click.Choice(["eval", "all"]),
    default="eval",
    show_default=True,
    help="eval: the dataset's held-out rows (all rows if it has none); all: train + eval rows.",
)
@click.option("--limit", type=int, help="Evaluate at most N pairs / prompts (the first N).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Answer length cap (policies).")
@click.option(
    "--max-length",
    type=int,
    default=1024,
    show_default=True,
    help="Token cap per sequence; longer ones lose their oldest prompt tokens.",
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per forward pass.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for the data split and sampling.")
@click.option(
    "--sample/--no-sample",
    default=True,
    show_default=True,
    help="Policies: also sample answers (temperature 1) for the sampled reward and KL.",
)
@click.option(
    "--bootstrap-samples",
    type=int,
    default=None,
    hidden=True,
    help="Ignored: kept so old scripts still run (eval's intervals are Wilson's, no resampling).",
)
@click.option(
    "--rollout-engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="Policies: the engine that generates the answers (docs/rollouts.md).",
)
@click.option("--env", help="Policies: play this environment's held-out episodes (success rate, turns, tool calls).")
@click.option(
    "--env-option",
    "env_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for --env (YAML value), e.g. --env-option high=50 (repeatable).",
)
@click.option("--max-turns", type=int, default=4, show_default=True, help="With --env: assistant turns per episode.")
@click.option(
    "--max-episode-tokens", type=int, default=256, show_default=True, help="With --env: tokens after the prompt."
)
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys in docs/eval.md).")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def eval_command(
    data_files: str | None,
    reward_options: tuple[str, ...],
    env_options: tuple[str, ...],
    as_json: bool,
    debug: bool,
    bootstrap_samples: int | None,
    **options: Any,
) -> None:
    """Evaluate a reward model (pairwise accuracy vs a length baseline) or a policy (implicit-reward
    accuracy, reward scores, win rate and KL against a reference). Batched, no gradients."""
    from easyrlhf_core.commands.eval import EvalRequest, evaluate
    from easyrlhf_core.commands.eval.report import render_table

    files = [f.strip() for f in (data_files or "").split(",") if f.strip()]
    if options.get("dataset") is None:
        options["dataset"] = _env_dataset(options.get("env")) or "hh-rlhf"
    request = EvalRequest(
        data_files=files,
        reward_options=_key_values(reward_options, "--reward-option"),
        env_options=_key_values(env_options, "--env-option"),
        **options,
    )
    report = evaluate(request)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        render_table(report)


@cli.command("chat")
@click.argument("model_dir")
@click.option("--prompt", help="Answer this one message and exit; the answer alone goes to stdout.")
@click.option(
    "--compare",
    metavar="OTHER_DIR",
    help="A second model answering the same messages; answers are labelled with each model's name.",
)
@click.option("--system", help="System message at the start of the conversation.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Answer length cap.")
@click.option(
    "--max-length",
    type=int,
    default=1024,
    show_default=True,
    help="Token cap per prompt + answer; the oldest turns are dropped to fit.",
)
@click.option(
    "--sample/--greedy",
    " /--no-sample",
    default=None,
    help="Sample (the default, with the model's recommended settings: its generation_config.json or GGUF "
    "metadata, else llama.cpp's defaults; the first line says which) or decode greedily (deterministic; "
    "--compare's default).",
)
@click.option("--temperature", type=float, help="Sampling temperature (overrides the model's).")
@click.option("--top-k", type=int, help="Sample from the k likeliest tokens; 0: off (overrides the model's).")
@click.option("--top-p", type=float, help="Nucleus mass; 1.0: off (overrides the model's).")
@click.option("--min-p", type=float, help="Drop tokens below this share of the likeliest's; 0: off.")
@click.option("--repetition-penalty", type=float, help="Penalty on tokens already in the context; 1.0: off.")
@click.option("--seed", type=int, default=42, show_default=True, help="Sampling seed (set once).")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code (off by default).")
@click.option("--env", help="Play this environment: each message starts an episode, tool calls run live.")
@click.option("--env-option", "env_options", multiple=True, metavar="KEY=VALUE", help="Option for --env (repeatable).")
@click.option("--max-turns", type=int, default=4, show_default=True, help="With --env: assistant turns per episode.")
@click.option(
    "--max-episode-tokens", type=int, default=512, show_default=True, help="With --env: tokens after the prompt."
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def chat_command(
    model_dir: str,
    prompt: str | None,
    compare: str | None,
    env: str | None,
    env_options: tuple[str, ...],
    debug: bool,
    **options: Any,
) -> None:
    """Chat with a causal LM (a model directory, Hub id or .gguf file) through its chat template, the answer
    streamed as it is generated, sampled with the model's recommended settings (the first line says which
    and where from; --greedy for the same answer every time). Multi-turn: /reset clears the history, /quit or
    Ctrl-D leaves. With --env, each message starts an episode of the environment instead."""
    from easyrlhf_core.commands.chat import ChatSettings, run_chat, stderr_log

    settings = ChatSettings(**options)
    if env is None:
        run_chat(model_dir, compare, prompt, settings)
        return
    if compare is not None:
        raise EasyRLHFError("plays one model at a time; leave out --compare", where="--env")
    from easyrlhf_core.commands.chat_env import run_env_chat

    settings.check()
    run_env_chat(model_dir, env, _key_values(env_options, "--env-option"), prompt, settings, stderr_log)


@cli.command("export")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--gguf", "as_gguf", is_flag=True, help="Write a GGUF file (llama.cpp, Ollama, LM Studio).")
@click.option(
    "--quantize",
    type=click.Choice(["q8_0", "q4_k_m", "f16"]),
    default="q8_0",
    show_default=True,
    help="Weight type; q4_k_m needs llama.cpp's quantizer (pip install llama-cpp-python).",
)
@click.option("--out", help="The .gguf file to write (default: RUN_DIR/<name>-<quantize>.gguf).")
@click.option("--ollama", is_flag=True, help="Also write an Ollama Modelfile beside the GGUF.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def export_command(run_dir: str, as_gguf: bool, quantize: str, out: str | None, ollama: bool, debug: bool) -> None:
    """Export a run's model (RUN_DIR/model, or a model directory) for other programs: --gguf writes a GGUF file
    with llama.cpp's own converter, LoRA adapters merged, the chat template in its metadata. Prints the files
    written."""
    from easyrlhf_core.commands.export import ExportRequest, export_gguf

    if not as_gguf:
        raise EasyRLHFError("choose the format to write: --gguf (llama.cpp, Ollama, LM Studio)", where="export")
    quiet_library_output()
    written = export_gguf(ExportRequest(path=run_dir, quantize=quantize, out=out, ollama=ollama))
    click.echo(str(written.gguf))
    if written.modelfile is not None:
        click.echo(str(written.modelfile))
        click.echo(f"Next: cd {written.modelfile.parent} && ollama create NAME -f Modelfile", err=True)


def _key_values(items: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, values parsed as YAML scalars (``3`` -> 3, ``[a, b]`` -> a list)."""
    import yaml

    from easyrlhf_core.kit.errors import ConfigError

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", where=flag)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key.strip()}: not a valid YAML value ({exc.__class__.__name__})", where=flag) from None
    return values


@cli.command("new-plugin")
@click.argument("name")
@click.option(
    "--directory",
    "-d",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to write easyrlhf-plugin-NAME/.",
)
@handle_errors
def new_plugin_command(name: str, directory: str) -> None:
    """Write a pip-installable plugin package, easyrlhf-plugin-NAME/: a pyproject with the entry point, a
    method NAME, a dataset NAME-jsonl and a reward NAME-length that work, tests on the shipped pytest
    fixtures, and a README."""
    from easyrlhf_core.commands.new_plugin import write_plugin

    target = write_plugin(name, directory)
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    shown = str(target) if target.is_absolute() or str(target).startswith(".") else f"./{target}"
    click.echo(f"Wrote {shown}/: " + ", ".join(files))
    click.echo(f"Next: pip install -e {shown} && pytest {shown}")


def main() -> None:
    cli(prog_name="easyrlhf")


if __name__ == "__main__":
    main()
