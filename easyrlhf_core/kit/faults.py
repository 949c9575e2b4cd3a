"""What breaks during training, in our voice: one ``Error:`` line saying what happened and what to do, with
the newest complete checkpoint named (``docs/faults.md``).

:func:`training_fault` turns the library exceptions a long run dies of into an
:class:`~easyrlhf_core.kit.errors.EasyRLHFError`: a full disk (``OSError`` ENOSPC / EDQUOT, or safetensors'
``SafetensorError: ... No space left on device``; the partial checkpoint is removed so it never looks
resumable and its space comes back), running out of memory (``MemoryError``, torch's ``OutOfMemoryError``:
the options that lower memory), a file torch's safe loader refuses because it holds pickled objects
besides tensors (never the advice to turn the safe loader off), and a reward plugin that raised
(:class:`RewardFailed`). No torch import here: the checks look at class names and errno.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.errors import EasyRLHFError, PluginError

__all__ = [
    "RewardFailed",
    "is_disk_full",
    "is_out_of_memory",
    "unpickling_problem",
    "unpickling_error",
    "human_bytes",
    "tree_bytes",
    "model_bytes",
    "newest_checkpoint",
    "checkpoint_note",
    "resume_advice",
    "disk_full_error",
    "out_of_memory_error",
    "collective_call",
    "collective_timeout_error",
    "training_fault",
]

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext

_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class RewardFailed(PluginError):
    """A reward plugin raised while scoring: its name and its exception, one line."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (a library may wrap the real cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(exc: BaseException) -> bool:
    """True for an out-of-disk (or out-of-quota) failure, whichever library reported it."""
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXT):
            return True
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``MemoryError`` and torch's ``OutOfMemoryError`` (CUDA, MPS, XPU)."""
    for err in _chain(exc):
        if isinstance(err, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(err).__mro__):
            return True
        if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
            return True
    return False


def unpickling_problem(exc: BaseException) -> str | None:
    """Why torch's safe loader (``weights_only``) refused a file: ``"objects"`` (it holds Python objects besides
    tensors: an unsupported global), ``"damaged"`` (not a valid torch file at all: truncated, random bytes, a
    git-lfs pointer), or None when ``exc`` is no such refusal."""
    for err in _chain(exc):
        text = str(err)
        if type(err).__name__ == "UnpicklingError" or "Weights only load failed" in text:
            return "objects" if "Unsupported global" in text or "allowed global" in text else "damaged"
    return None


def unpickling_error(path: str | Path, problem: str) -> EasyRLHFError:
    """The refusal of a pickled weights file (see :func:`unpickling_problem`), naming it (or the folder); never
    torch's advice to turn the safe loader off."""
    folder = Path(path)
    pickled = (
        sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        if folder.is_dir()
        else ([folder] if folder.is_file() else [])
    )
    where = str(pickled[0]) if len(pickled) == 1 else str(folder)
    if problem == "objects":
        return EasyRLHFError(
            "this file holds more than tensors (pickled Python objects), and loading it could run "
            "code, so the safe loader refused it; get a safetensors copy of the model "
            "(model.safetensors) from a trusted source",
            where=where,
        )
    lfs = len(pickled) == 1 and _head(pickled[0]).startswith(b"version https://git-lfs")
    what = (
        "a git-lfs pointer, not the weights (the repository was cloned without git-lfs): run `git lfs pull` "
        "there, or download the file again"
        if lfs
        else "not a valid PyTorch weights file (truncated or damaged): download it again"
    )
    return EasyRLHFError(f"this file is {what}", where=where)


def _head(path: Path, size: int = 64) -> bytes:
    """A file's first bytes (not the whole of a multi-GB file)."""
    with path.open("rb") as fh:
        return fh.read(size)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def human_bytes(size: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 KB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") or size >= 100 else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def model_bytes(model: Any) -> int:
    """Bytes of a model's parameters as they are saved."""
    try:
        return int(sum(p.numel() * p.element_size() for p in model.parameters()))
    except (AttributeError, TypeError, RuntimeError):  # not a torch module: the estimate is only for the message
        return 0


def newest_checkpoint(run: RunContext) -> Path | None:
    """The run's newest complete checkpoint (what :func:`checkpoint_note` and :func:`resume_advice` take), or
    None when none was saved yet; look it up once per message."""
    from easyrlhf_core.kit.checkpoints import latest_checkpoint

    return latest_checkpoint(run.checkpoints_dir)


def checkpoint_note(kept: Path | None) -> str:
    """``the newest complete checkpoint, DIR, is intact`` (or that none was saved yet); ``kept``:
    :func:`newest_checkpoint`."""
    if kept is None:
        return "no checkpoint was saved yet"
    return f"the newest complete checkpoint, {kept}, is intact"


def resume_advice(kept: Path | None) -> str:
    """How to go on once the cause is fixed: ``--resume`` from the checkpoint ``kept``, or run again."""
    if kept is not None:
        return "continue with --resume"
    return "run the command again (with --resume if the output directory was kept)"


def disk_full_error(run: RunContext, exc: BaseException, writing: Path | None = None, needed: int = 0) -> EasyRLHFError:
    """Out of disk while writing ``writing`` (a checkpoint when not given): which directory, the room a
    checkpoint needs (``needed`` bytes, else the newest complete checkpoint's size), that the newest
    complete checkpoint is intact. Removes the partial checkpoint (main process)."""
    from easyrlhf_core.kit.checkpoints import remove_incomplete_checkpoints

    removed = remove_incomplete_checkpoints(run.checkpoints_dir) if run.is_main_process else []
    named = next((Path(e.filename) for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
    target = writing or (removed[-1] if removed else named or run.output_dir)
    name = target.name.lstrip(".").removesuffix(".tmp")
    kept = newest_checkpoint(run)
    if not needed and kept is not None:
        needed = tree_bytes(kept)
        size = f"a checkpoint of this run takes about {human_bytes(needed)} (the size of {kept.name})"
    elif needed:
        size = f"it needs about {human_bytes(needed)}"
    else:
        size = "a checkpoint holds the weights and the optimizer state, about 3 times the model's size"
    directory = next((p for p in (target, *target.parents) if p.exists()), run.output_dir)
    try:
        free = f", {human_bytes(shutil.disk_usage(directory).free)} free there"
    except OSError:
        free = ""
    cleaned = " (the partial one was removed)" if removed else ""
    return EasyRLHFError(
        f"the disk is full: writing {name} ran out of space ({size}{free}){cleaned}; "
        f"{checkpoint_note(kept)}; free some space (or lower save_total_limit, "
        "or choose an --output-dir "
        f"on a larger disk), then {resume_advice(kept)}",
        where=str(directory),
    )


def out_of_memory_error(run: RunContext, exc: BaseException) -> EasyRLHFError:
    """Out of memory during a step: the options that lower memory, with their current values."""
    config = run.config
    levers = []
    batch = getattr(config, "per_device_train_batch_size", None)
    if batch is not None:
        levers.append(
            f"a smaller per_device_train_batch_size (now {batch}; raise gradient_accumulation_steps "
            f"to keep the global batch)"
        )
    for key in ("rollout_batch_size", "max_length", "max_new_tokens"):
        if getattr(config, key, None) is not None:
            levers.append(f"a smaller {key} (now {getattr(config, key)})")
    if getattr(config, "gradient_checkpointing", True) is False:
        levers.append("--gradient-checkpointing")
    lora = getattr(config, "lora", None)
    if lora is not None and not getattr(lora, "enabled", True):
        levers.append("--lora")
    if not getattr(config, "deepspeed", None):
        levers.append("--deepspeed zero3 with several processes")
    cause = next((e for e in _chain(exc) if is_out_of_memory(e)), exc)
    kept = newest_checkpoint(run)
    return EasyRLHFError(
        f"out of memory during training ({_first_line(cause)}); use {', '.join(levers)}; "
        f"{checkpoint_note(kept)}: {resume_advice(kept)} after the change"
    )


def collective_call(exc: BaseException) -> str | None:
    """The collective ``exc`` timed out in (``all_reduce``, ``all_gather_into_tensor``, ``barrier``, ...:
    the innermost torch.distributed / deepspeed.comm function of its traceback; ``a collective`` when none
    is named there), or None when ``exc`` is not a collective's timeout (gloo: ``RuntimeError: ... Timed
    out waiting ...``; NCCL with async error handling: ``DistBackendError`` / ``... Watchdog caught
    collective operation timeout``)."""
    for err in _chain(exc):
        text = str(err)
        if not (
            isinstance(err, RuntimeError)
            and ("Timed out" in text or "timed out" in text or "collective operation timeout" in text)
        ):
            continue
        call = None
        traceback = err.__traceback__
        while traceback is not None:
            path = traceback.tb_frame.f_code.co_filename.replace("\\", "/")
            if "torch/distributed/distributed_c10d" in path or "deepspeed/comm/" in path:
                call = traceback.tb_frame.f_code.co_name
            traceback = traceback.tb_next
        if call is not None or "gloo" in text or "NCCL" in text or "Watchdog" in text:
            return call if call not in (None, "wrapper", "log_wrapper") else "a collective"
    return None


def collective_timeout_error(run: RunContext, call: str) -> EasyRLHFError:
    """A collective that waited past ``collective_timeout``: the call, the timeout, what it means, the
    checkpoint. The launcher's parent adds ``rank N: `` (the rank that gave up first)."""
    timeout = getattr(run.config, "collective_timeout", None)
    waited = f"longer than collective_timeout={timeout}s" if timeout else "past its timeout"
    kept = newest_checkpoint(run)
    return EasyRLHFError(
        f"{call} waited {waited} for the other ranks, which never joined it (one is stuck, "
        f"was killed or lost its network, or the ranks ran different code paths); "
        f"{checkpoint_note(kept)}: {resume_advice(kept)} (raise collective_timeout if a step can "
        f"legitimately take that long)",
        where=None,
    )


def training_fault(run: RunContext, exc: BaseException) -> EasyRLHFError | None:
    """The one-line error for ``exc`` raised by a method's training, or None when it is not one of the
    known faults (then it reaches the user as ``Error: <Type>: <message>``)."""
    if isinstance(exc, RewardFailed):
        kept = newest_checkpoint(run)
        return PluginError(
            f"{exc.message}; {checkpoint_note(kept)}: {resume_advice(kept)} once it is fixed", where=exc.where
        )  # not a RewardFailed: a pipeline's own run adds no second note
    if isinstance(exc, EasyRLHFError):
        return None
    if is_disk_full(exc):
        return disk_full_error(run, exc)
    if is_out_of_memory(exc):
        return out_of_memory_error(run, exc)
    call = collective_call(exc)
    if call is not None:
        return collective_timeout_error(run, call)
    problem = unpickling_problem(exc)
    if problem is not None:
        return unpickling_error(run.output_dir, problem)
    return None
