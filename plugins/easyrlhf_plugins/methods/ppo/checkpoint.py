"""PPO checkpoints: ``checkpoints/checkpoint-<iteration>``, written atomically (a temp dir renamed into place
after a ``COMPLETE`` marker), holding everything ``--resume`` needs to continue as if never stopped.

Contents: accelerate's ``save_state`` (policy + value weights, optimizer state, python/numpy/torch RNG
states of every process), ``scheduler.pt``, and ``ppo_state.json`` (iteration, data position, KL
controller, reward normalisation moments).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.kit.checkpoints import COMPLETE_MARKER, prune_checkpoints, resumable_checkpoints

STATE_FILE = "ppo_state.json"
SCHEDULER_FILE = "scheduler.pt"


def _temp_dir(checkpoints_dir: Path, iteration: int) -> Path:
    """Where a checkpoint is written before it is renamed into place: the temp dir name the core's
    :func:`~easyrlhf_core.kit.checkpoints.remove_incomplete_checkpoints` removes after a killed run."""
    return checkpoints_dir / f".checkpoint-{iteration}.tmp"


def save_checkpoint(
    accelerator: Any, checkpoints_dir: Path, iteration: int, state: dict[str, Any], scheduler: Any, total_limit: int
) -> Path:
    """Write ``checkpoint-<iteration>`` (all processes call this; the main one renames and prunes)."""
    import torch

    final = checkpoints_dir / f"checkpoint-{iteration}"
    tmp = _temp_dir(checkpoints_dir, iteration)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    quiet = logging.getLogger("accelerate.utils.other")  # "removed shared tensor": tied embeddings, expected
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(tmp))
    finally:
        quiet.setLevel(level)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}, indent=2), encoding="utf-8")
        (tmp / COMPLETE_MARKER).write_text(f"iteration {iteration}\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune_checkpoints(checkpoints_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def resume_from_latest(
    accelerator: Any, checkpoints_dir: Path, scheduler: Any, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """Load the newest checkpoint that is complete, intact and loads (the core's resume protocol,
    :func:`easyrlhf_core.kit.checkpoints.resumable_checkpoints`); a broken newer one is skipped with a warning.
    Returns its ``ppo_state.json``, or None when there is none."""
    for path in resumable_checkpoints(checkpoints_dir, log):
        try:
            state = load_checkpoint(accelerator, path, scheduler)
        except Exception as exc:  # a truncated or damaged file: fall back to the one before
            log(f"warning: skipping corrupt checkpoint {path} ({type(exc).__name__}: {exc})")
            continue
        log(f"--resume: continuing from {path} (iteration {state['iteration']})")
        return state
    return None


def load_checkpoint(accelerator: Any, path: Path, scheduler: Any) -> dict[str, Any]:
    """Restore models, optimizer, RNG states and scheduler from ``path``; return ``ppo_state.json``."""
    import torch

    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    accelerator.load_state(str(path))
    scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=False))
    return state
