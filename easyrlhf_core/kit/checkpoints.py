"""Finding checkpoints to resume from: ``checkpoint-<step>`` dirs, newest complete one first.

A checkpoint counts as complete (:func:`is_complete`) when it holds the ``COMPLETE`` marker, written only
after every file of the checkpoint is on disk, by every process. PPO writes it into a temp dir that is
then renamed into place. The HF Trainer writes ``checkpoint-N`` in place (no public hook changes that), so
``easyrlhf_core.kit.trainer_run.CheckpointCallback`` writes the marker from ``on_save``, which fires after the save,
behind a barrier so every rank has finished; it also prunes old checkpoints only after that. A save cut
short by a crash or SIGKILL never has the marker, so it is never resumed from.

:func:`latest_checkpoint` also wants the files intact (:func:`checkpoint_problem`): ``trainer_state.json``
(when present) parses, every ``*.safetensors`` file is as long as its header says, and every zip-format
torch file (``*.pt``, ``*.pth``, ``*.bin``, ``*.pkl``) has its central directory (a truncated one has
not). Only headers are read, so this is cheap.

A broken newest checkpoint is skipped with a warning naming the problem, so ``--resume`` falls back to the
one before it.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "resumable_checkpoints",
    "prune_checkpoints",
    "remove_checkpoints_after",
    "remove_incomplete_checkpoints",
    "COMPLETE_MARKER",
    "is_complete_run",
]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: The file written into a checkpoint once every rank has saved it whole; a checkpoint without it is not resumed.
COMPLETE_MARKER = "COMPLETE"
_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".pkl"}
_TEMP_DIRS = ".checkpoint-*.tmp"  # a checkpoint written elsewhere first, renamed into place when complete (PPO's)


def list_checkpoints(root: Path) -> list[Path]:
    """``checkpoint-N`` dirs under ``root``, sorted by step (oldest first)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The step in a ``checkpoint-<step>`` dir name."""
    match = _CHECKPOINT.match(path.name)
    if match is None:
        raise ValueError(f"not a checkpoint directory name: {path.name}")
    return int(match.group(1))


def is_complete(path: Path) -> bool:
    """True when ``path`` was fully written: it holds the ``COMPLETE`` marker."""
    return (path / COMPLETE_MARKER).is_file()


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (one short phrase), or None when it is complete and intact."""
    if not is_complete(path):
        return f"no {COMPLETE_MARKER} marker (its save did not finish)"
    state = path / "trainer_state.json"
    if state.exists():
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "trainer_state.json does not parse"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not any(p.suffix == ".safetensors" or p.suffix in _TORCH_SUFFIXES for p in files):
        return "no weights in it"
    for file in files:
        problem = weights_file_problem(file)
        if problem:
            return f"{file.relative_to(path)} {problem}"
    return None


def weights_file_problem(path: Path) -> str | None:
    """What is wrong with one weights file (``is truncated``, ``has no readable header``), or None."""
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    return _torch_file_problem(path) if path.suffix in _TORCH_SUFFIXES else None


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), or None when it does not
    read: a safetensors file is an 8-byte header length, that JSON header, then the tensor bytes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (header_length,) = struct.unpack("<Q", fh.read(8))
            if header_length > size:
                return None
            header = json.loads(fh.read(header_length))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (header_length,) = struct.unpack("<Q", fh.read(8))
    except (OSError, struct.error):
        return "has no readable header"
    if header_length > size:
        return "is truncated"
    header = safetensors_header(path)
    if header is None:
        return "has no readable header"
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    return None if size == 8 + header_length + end else "is truncated"


def _torch_file_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive; a truncated one lost its central directory (at the end)."""
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return None  # not a zip (legacy torch or plain pickle format): nothing cheap to check
        with zipfile.ZipFile(path):
            return None
    except (OSError, zipfile.BadZipFile):
        return "is truncated"


def resumable_checkpoints(root: Path, log: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
    """Complete, intact checkpoints, newest first; each broken one on the way is reported and skipped. The
    one resume protocol: the Trainer-based methods take the first, a method that can still fail to load
    one (PPO) goes on to the next."""
    for path in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(path)
        if problem is None:
            yield path
        else:
            log(f"warning: skipping checkpoint {path}: {problem}")


def latest_checkpoint(root: Path, log: Callable[[str], None] = lambda _m: None) -> Path | None:
    """The newest complete checkpoint; incomplete or corrupt newer ones are reported and skipped."""
    return next(resumable_checkpoints(root, log), None)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints under ``root`` (nothing when ``keep`` <= 0)."""
    import shutil

    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def remove_incomplete_checkpoints(root: Path) -> list[Path]:
    """Delete what a save that never finished left under ``root``: ``checkpoint-N`` dirs without the
    ``COMPLETE`` marker, and the temp dirs ``.checkpoint-<step>.tmp`` of a method that writes a checkpoint
    there first and renames it into place once complete. None is ever resumed from, and the space they hold
    comes back. Call it from the main process only. Returns what was removed (incomplete checkpoints by step,
    then temp dirs by name)."""
    import shutil

    if not root.is_dir():
        return []
    partial = [p for p in list_checkpoints(root) if not is_complete(p)] + sorted(root.glob(_TEMP_DIRS))
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def remove_checkpoints_after(root: Path, step: int, log: Callable[[str], None] = lambda _m: None) -> None:
    """Delete checkpoints newer than ``step`` (the broken ones a resume skipped: the resumed run rewrites
    them, and a stale file or marker must not survive into the new save)."""
    import shutil

    for path in list_checkpoints(root):
        if checkpoint_step(path) > step:
            log(f"removing {path} (it will be written again)")
            shutil.rmtree(path, ignore_errors=True)


def is_complete_run(path: Path) -> bool:
    """A run that finished: :func:`execute` wrote ``COMPLETE`` once training and its outputs succeeded."""
    return (path / COMPLETE_MARKER).is_file()
