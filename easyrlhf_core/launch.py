"""Multi-process runs through an existing launcher, never a home-made one.

On GPUs: ``accelerate launch`` (which also wires DeepSpeed). On CPU: ``torch.distributed.run``
(torchrun) with the gloo backend, because ``accelerate launch --cpu`` starts a single process without MPI.
The parent process validates everything and claims the output dir first; the launched ranks see
``EASYRLHF_LAUNCHED=1`` and skip those steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

LAUNCHED_ENV = "EASYRLHF_LAUNCHED"


@dataclass
class LaunchOptions:
    """Where and how many processes to start."""

    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.num_machines > 1


def is_launched() -> bool:
    """True inside a process started by :func:`launch` (or by any torchrun/accelerate launcher)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launcher_command(options: LaunchOptions, cli_args: list[str], use_gpu: bool) -> list[str]:
    """The launcher invocation that runs ``easyrlhf <cli_args>`` on every rank of this machine.

    ``num_processes`` is per machine, as with ``torchrun --nproc_per_node``.
    """
    target = ["-m", "easyrlhf_core.cli", *cli_args]
    if use_gpu:
        cmd = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(options.num_processes * options.num_machines),
               "--num_machines", str(options.num_machines), "--machine_rank", str(options.machine_rank),
               "--main_process_port", str(options.main_process_port)]
        if options.main_process_ip:
            cmd += ["--main_process_ip", options.main_process_ip]
        if options.num_processes * options.num_machines > 1:
            cmd += ["--multi_gpu"]
        return cmd + target
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(options.num_processes),
           "--nnodes", str(options.num_machines), "--node_rank", str(options.machine_rank),
           "--master_port", str(options.main_process_port)]
    if options.main_process_ip:
        cmd += ["--master_addr", options.main_process_ip]
    return cmd + target


def launch(options: LaunchOptions, cli_args: list[str]) -> int:
    """Start the ranks and wait; returns the launcher's exit code."""
    import torch

    cmd = launcher_command(options, cli_args, use_gpu=torch.cuda.is_available())
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"[easyrlhf] launching: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)
