"""Multi-process runs through an existing launcher, never a home-made one.

On GPUs: ``accelerate launch`` (which also wires DeepSpeed). On CPU: ``torch.distributed.run``
(torchrun) with the gloo backend, because ``accelerate launch --cpu`` starts a single process without MPI.
A ``--deepspeed`` run is launched even with one process (torchrun, on GPUs too: ``accelerate launch``
starts a single process without the ``RANK``/``WORLD_SIZE`` DeepSpeed needs, and DeepSpeed would then
look for MPI). The launcher runs inside :mod:`easyrlhf_core.runtime.rank_errors`, so a failed rank is one ``Error:``
line (the first failure, named), never the launcher's traceback.
The parent process validates everything and claims the output dir first; the launched ranks see
``EASYRLHF_LAUNCHED=1`` and skip those steps. Ctrl-C / SIGTERM reach the parent, which passes them on to
the ranks, so they stop together with a checkpoint (see :func:`launch`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import NoReturn

from easyrlhf_core.kit.distributed import LAUNCHED_ENV, SIGNAL_REPEAT_WINDOW, STOP_SIGNALS, finish_distributed

__all__ = []

#: Exit codes of a run stopped by SIGINT / SIGTERM (after saving a checkpoint).
STOPPED_EXIT_CODES = tuple(128 + sig for sig in STOP_SIGNALS)
#: The rendezvous port of a run on several machines when ``--main-process-port`` is not given (every
#: machine must use the same one); a run on one machine picks a free port instead.
DEFAULT_PORT = 29500


@dataclass
class LaunchOptions:
    """Where and how many processes to start."""

    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None  # None: a free port on one machine, DEFAULT_PORT on several
    deepspeed: bool = False  # a DeepSpeed run: launched even with one process

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.num_machines > 1

    @property
    def port(self) -> int:
        """The rendezvous port the launcher is given (:func:`rendezvous_port` picks it before launching)."""
        return self.main_process_port if self.main_process_port is not None else DEFAULT_PORT

    @property
    def needs_launcher(self) -> bool:
        """Whether the ranks are started by a launcher (several processes, or DeepSpeed)."""
        return self.distributed or self.deepspeed


@dataclass
class Launched:
    """How the ranks ended: the exit code, the first failing rank's error line (without ``Error: ``), and
    the signal of a second Ctrl-C / SIGTERM that ended them at once (``stopped_at_once``)."""

    code: int
    error: str | None = None
    stopped_at_once: int | None = None
    port_taken: bool = False  # the launcher failed because its rendezvous port is taken (no rank started)


def launcher_command(options: LaunchOptions, cli_args: list[str], use_gpu: bool) -> list[str]:
    """The launcher invocation that runs ``easyrlhf <cli_args>`` on every rank of this machine.

    ``num_processes`` is per machine, as with ``torchrun --nproc_per_node``. The launcher runs in
    :mod:`easyrlhf_core.runtime.rank_errors` (``python -m easyrlhf_core.runtime.rank_errors torchrun|accelerate ARGS``).
    """
    target = ["-m", "easyrlhf_core.commands.cli", *cli_args]
    if use_gpu and options.num_processes * options.num_machines > 1:
        cmd = [
            sys.executable,
            "-m",
            "easyrlhf_core.runtime.rank_errors",
            "accelerate",
            "--num_processes",
            str(options.num_processes * options.num_machines),
            "--num_machines",
            str(options.num_machines),
            "--machine_rank",
            str(options.machine_rank),
            "--main_process_port",
            str(options.port),
        ]
        if options.main_process_ip:
            cmd += ["--main_process_ip", options.main_process_ip]
        return cmd + ["--multi_gpu"] + target
    # CPU; or one GPU process of a DeepSpeed run (accelerate refuses --multi_gpu with one process, and its
    # single-process launcher sets no RANK / WORLD_SIZE)
    cmd = [
        sys.executable,
        "-m",
        "easyrlhf_core.runtime.rank_errors",
        "torchrun",
        "--nproc_per_node",
        str(options.num_processes),
        "--nnodes",
        str(options.num_machines),
        "--node_rank",
        str(options.machine_rank),
        "--master_port",
        str(options.port),
    ]
    if options.main_process_ip:
        cmd += ["--master_addr", options.main_process_ip]
    return cmd + target


def port_is_free(port: int) -> bool:
    """Whether this machine can listen on ``port`` (what the launcher's rendezvous store does)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store: a closed run's port is free
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port no program on this machine listens on now (the system picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def rendezvous_port(options: LaunchOptions) -> LaunchOptions:
    """``options`` with the port the ranks meet on: on one machine without ``--main-process-port``, a free
    one (two runs side by side then never collide on 29500); on several machines :data:`DEFAULT_PORT`. A
    port this machine must listen on (one machine, or machine rank 0) that is taken raises
    :class:`~easyrlhf_core.kit.errors.ConfigError` naming it, before anything starts."""
    import dataclasses

    from easyrlhf_core.kit.errors import ConfigError
    from easyrlhf_core.runtime.rank_errors import port_taken_message

    if options.main_process_port is None and options.num_machines == 1:
        return dataclasses.replace(options, main_process_port=free_port())
    port = options.port
    if options.machine_rank == 0 and not port_is_free(port):
        raise ConfigError(port_taken_message(port), where="--main-process-port")
    return dataclasses.replace(options, main_process_port=port)


def launch(options: LaunchOptions, cli_args: list[str]) -> Launched:
    """Start the ranks and wait; the launcher's exit code (``128 + signal`` when stopped) and, when a rank
    failed, the first failure's error line (:func:`easyrlhf_core.runtime.rank_errors.first_failure`).

    The launcher runs in its own session, so a Ctrl-C reaches only this process, which passes SIGINT /
    SIGTERM on to the ranks (the launcher's child processes): each saves a checkpoint at the same step and
    exits 0 (see ``easyrlhf_core.kit.stopping.StopSignals``), so the launcher ends quietly and this process reports
    the stop. The launcher gets the signal itself only before its ranks exist.

    A port picked free (one machine, no ``--main-process-port``) is released before the launcher binds it,
    so another program can take it in between: when the launcher then fails on it, the run is launched once
    more on a newly picked port (no rank has started), and a second such failure says so.
    """
    import dataclasses

    from easyrlhf_core.runtime.rank_errors import picked_port_taken_message

    picked = options.main_process_port is None and options.num_machines == 1
    options = rendezvous_port(options)
    launched = _launch_once(options, cli_args)
    if not (picked and launched.port_taken):
        return launched
    ports = [options.port]
    options = dataclasses.replace(options, main_process_port=free_port())
    print(
        f"[easyrlhf] the rendezvous port {ports[0]} was taken before the launcher could listen on it; "
        f"launching again on port {options.port}",
        file=sys.stderr,
        flush=True,
    )
    launched = _launch_once(options, cli_args)
    if launched.port_taken:
        launched.error = picked_port_taken_message([*ports, options.port])
    return launched


def _launch_once(options: LaunchOptions, cli_args: list[str]) -> Launched:
    """One start of the launcher on ``options.port`` (see :func:`launch`)."""
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from easyrlhf_core.runtime.rank_errors import RANK_ERRORS_ENV, first_failure, launcher_port_taken

    cmd = launcher_command(options, cli_args, use_gpu=torch.cuda.is_available())
    errors = Path(tempfile.mkdtemp(prefix="easyrlhf-ranks-"))
    env = dict(os.environ, **{LAUNCHED_ENV: "1", RANK_ERRORS_ENV: str(errors)})
    env.setdefault("OMP_NUM_THREADS", "1")
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")  # what DeepSpeed picks anyway, without a warning per rank
    print(f"[easyrlhf] launching: {' '.join(cmd)}", file=sys.stderr, flush=True)
    stopped_by: list[int] = []
    at_once: list[int] = []
    first_at: list[float] = []
    try:
        process = subprocess.Popen(cmd, env=env, start_new_session=True)

        def forward(signum: int, frame: object) -> None:
            import time

            now = time.monotonic()  # the ranks count signals as StopSignals does: a repeat within the window is one
            if first_at and now - first_at[0] > SIGNAL_REPEAT_WINDOW:
                at_once.append(signum)
            first_at[:] = first_at or [now]
            stopped_by.append(signum)
            forward_signal(process.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
        try:
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if at_once:  # each rank ended at once, without a line: this process says it
            return Launched(128 + at_once[0], stopped_at_once=at_once[0])
        if stopped_by:
            return Launched(128 + stopped_by[0])
        failure = first_failure(errors) if code != 0 else None
        if failure is None:
            return Launched(code, f"the launcher exited with code {code}" if code else None)
        return Launched(failure[1], failure[0], port_taken=launcher_port_taken(errors))
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def forward_signal(launcher_pid: int, signum: int) -> None:
    """Send ``signum`` to the launcher's children (the ranks), or to the launcher when it has none yet."""
    import psutil  # an accelerate dependency

    try:
        ranks = psutil.Process(launcher_pid).children()
    except psutil.Error:
        return
    for rank in ranks or [psutil.Process(launcher_pid)]:
        try:
            rank.send_signal(signum)
        except psutil.Error:
            pass


def exit_launched_rank(code: int = 0) -> NoReturn:
    """End a launched rank whose work is done (files written, checkpoints complete): tear the process group
    down, flush output and trackers, and leave without interpreter shutdown.

    Left to interpreter shutdown, gloo can abort the process ("terminate called without an active
    exception") or deadlock: freeing the DDP reducer joins gloo's worker thread while that thread waits for
    the GIL to release a finished collective's tensor. ``os._exit`` skips that teardown.
    """
    import logging

    finish_distributed()
    if "wandb" in sys.modules and getattr(sys.modules["wandb"], "run", None) is not None:
        try:  # report_to=wandb: its atexit hook would not run
            sys.modules["wandb"].finish(exit_code=code)
        except Exception as exc:  # the run's files are written; a tracker must not keep the rank alive
            print(f"[easyrlhf] warning: wandb.finish failed: {exc}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)
