"""The processes of a run, from inside one: the main process, launched or not, the world size, the process
group (started with the run's collective timeout) and its end."""

from __future__ import annotations

import os
import signal
import sys

__all__ = [
    "is_main_process",
    "LAUNCHED_ENV",
    "STOP_SIGNALS",
    "SIGNAL_REPEAT_WINDOW",
    "is_launched",
    "world_size",
    "start_process_group",
    "finish_distributed",
]


def is_main_process() -> bool:
    """True on the rank that writes outputs (rank 0, or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


#: Set to 1 in the rank processes ``easyrlhf run --num-processes N`` starts.
LAUNCHED_ENV = "EASYRLHF_LAUNCHED"


#: The signals that ask a run to stop at its next step with a checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: Seconds within which a repeated stop signal counts as the same one (a scheduler and the launcher may
#: both deliver it).
SIGNAL_REPEAT_WINDOW = 1.0


def is_launched() -> bool:
    """True inside a process started by :func:`launch` (or by any torchrun/accelerate launcher)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def world_size() -> int:
    """How many processes this run has (``WORLD_SIZE`` of the launcher; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_process_group(timeout_seconds: float) -> None:
    """The default process group of a launched rank (gloo on CPU, nccl on GPUs, from the launcher's
    environment), with ``timeout_seconds`` (config ``collective_timeout``) for every collective on it: a
    rank left waiting for one that never comes fails with the backend's timeout error
    (:func:`easyrlhf_core.kit.faults.collective_timeout_error` words it) instead of hanging. The Trainer,
    accelerate and DeepSpeed take an existing group as it is. Idempotent; nothing outside a launched run."""
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized() or "MASTER_ADDR" not in os.environ:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # NCCL's watchdog aborts a rank whose collective times out (a hang becomes a rank killed by SIGABRT,
        # which ranks.py words); blocking waits would raise in Python instead, at the cost of a host sync each
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(
        backend="nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(seconds=timeout_seconds)
    )


def finish_distributed() -> None:
    """Destroy the process group, if one is up. No barrier: a rank must never wait here for one that has gone."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
