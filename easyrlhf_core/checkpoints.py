"""Finding checkpoints to resume from: ``checkpoint-<step>`` dirs, newest complete one first.

A checkpoint counts as complete when it holds ``trainer_state.json`` that parses (the HF Trainer writes
it last) or, for our own loops, a ``COMPLETE`` marker. A broken newest checkpoint is skipped with a
warning, so ``--resume`` falls back to the one before it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "COMPLETE"


def list_checkpoints(root: Path) -> list[Path]:
    """``checkpoint-N`` dirs under ``root``, sorted by step (oldest first)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(path: Path) -> bool:
    """True when ``path`` looks fully written."""
    if (path / COMPLETE_MARKER).is_file():
        return True
    state = path / "trainer_state.json"
    if not state.is_file():
        return False
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("global_step*"))
    return bool(weights)


def latest_checkpoint(root: Path, log: Callable[[str], None] = lambda _m: None) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        if is_complete(path):
            return path
        log(f"warning: skipping incomplete or corrupt checkpoint {path}")
    return None
