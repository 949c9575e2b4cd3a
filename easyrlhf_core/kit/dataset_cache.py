"""Shape records -> a ``datasets.Dataset`` on disk, so tokenization through ``Dataset.map`` is cached.

Methods built on TRL trainers pass their records through :func:`as_hf_dataset`::

    from easyrlhf_core.kit.dataset_cache import as_hf_dataset
    train = as_hf_dataset(run.data.train)          # a datasets.Dataset backed by an Arrow file
    trainer = DPOTrainer(..., train_dataset=train)  # TRL's internal .map() calls now hit the disk cache

The records are written once, as Arrow, under ``<cache_dir>/datasets/<sha256 of their canonical JSON>/`` and
loaded memory-mapped from there. ``datasets`` keeps the result of every ``.map`` next to that file, named by
a fingerprint of the input dataset, the function and its arguments (the tokenizer included): a second run
with the same data and tokenizer reads the tokenized columns back instead of tokenizing again, whether the
``.map`` is a TRL trainer's or a method's own.

``datasets`` is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.model_loading import cache_dir

__all__ = ["FORMAT_VERSION", "records_digest", "datasets_cache_dir", "as_hf_dataset"]

if TYPE_CHECKING:
    import datasets

#: Bumped when the on-disk layout changes, so old entries are never read by new code.
FORMAT_VERSION = "1"


def records_digest(records: list[dict[str, Any]]) -> str:
    """sha256 of the records' canonical JSON (sorted keys, no whitespace), plus the format version."""
    digest = hashlib.sha256(f"easyrlhf-hfdata-v{FORMAT_VERSION}\n".encode())
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def datasets_cache_dir() -> Path:
    """Where :func:`as_hf_dataset` keeps its Arrow files: ``<EASYRLHF_CACHE>/datasets``."""
    return cache_dir() / "datasets"


def as_hf_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
    """A ``datasets.Dataset`` of ``records`` (shape records, see :mod:`easyrlhf_core.kit.shapes`), stored once
    per content under :func:`datasets_cache_dir` so that ``.map`` results are cached across runs.

    The same records always give the same directory and dataset fingerprint; writing is atomic (a temporary
    directory renamed into place), so concurrent processes are safe. An empty list gives an empty in-memory
    dataset (nothing to cache).
    """
    import datasets

    if not records:
        return datasets.Dataset.from_list([])
    digest = records_digest(records)
    target = datasets_cache_dir() / digest
    if not (target / "state.json").is_file():
        _write(records, digest, target)
    return datasets.load_from_disk(str(target))


def _write(records: list[dict[str, Any]], digest: str, target: Path) -> None:
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{digest}.{uuid.uuid4().hex}.tmp"
    dataset = datasets.Dataset.from_list(records)
    try:
        dataset.save_to_disk(str(tmp))
        if target.exists():  # a half-written leftover, or another process won the race
            if (target / "state.json").is_file():
                return
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if not (target / "state.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
