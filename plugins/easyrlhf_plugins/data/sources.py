"""Where rows come from: local files and directories given with ``--data-files``, or a Hugging Face Hub dataset
(through ``datasets.load_dataset``, when a network is there). Each source knows its split: files named like
``train*`` are training data, ``test*`` / ``eval*`` / ``valid*`` / ``dev*`` evaluation data, others unassigned."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from easyrlhf_core.kit.errors import DataError
from easyrlhf_core.kit.rows import BadRows

from .reader import is_data_file, iter_rows

TRAIN, EVAL = "train", "eval"
_EVAL_NAME = re.compile(r"(^|[-_.])(test|eval|valid|validation|dev)($|[-_.])")
_TRAIN_NAME = re.compile(r"(^|[-_.])train($|[-_.])")

RowIter = Iterator[tuple[int, Any]]


@dataclass
class Source:
    """One file or Hub split: ``rows(bad)`` yields ``(line, row)``; ``split`` is train, eval or None."""

    name: str
    split: str | None
    rows: Callable[[BadRows], RowIter]


def split_of(name: str) -> str | None:
    """The split a file or Hub split name implies: ``test.jsonl.gz`` -> eval, ``train`` -> train."""
    stem = name.lower().split(".")[0]
    if _EVAL_NAME.search(stem):
        return EVAL
    if _TRAIN_NAME.search(stem):
        return TRAIN
    return None


def file_source(path: Path, split: str | None = None) -> Source:
    return Source(
        str(path), split if split is not None else split_of(path.name), lambda bad, path=path: iter_rows(path, bad)
    )


def local_sources(entry: str) -> list[Source]:
    """A file, or every data file under a directory (sorted, recursive)."""
    path = Path(entry).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_data_file(p))
        if not files:
            raise DataError("directory holds no data files (.jsonl, .jsonl.gz, .json, .parquet)", file=path)
        return [file_source(p) for p in files]
    return [file_source(path)]


def hub_sources(repo_id: str, data_dir: str | None = None) -> list[Source]:
    """Every split of a Hub dataset (needs a network, or the dataset in the local HF cache)."""
    try:
        import datasets

        loaded = datasets.load_dataset(repo_id, data_dir=data_dir)
    except Exception as exc:  # network, auth, missing repo: one line, with what to do instead
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"could not load the Hub dataset ({type(exc).__name__}: {reason}); without a network, "
            "download its files and pass them with --data-files",
            where=repo_id,
        ) from None
    label = f"{repo_id}/{data_dir}" if data_dir else repo_id
    return [
        Source(f"{label}[{split}]", split_of(split), lambda bad, ds=ds: enumerate(ds, start=1))
        for split, ds in loaded.items()
    ]


def has_explicit_eval(sources: list[Source]) -> bool:
    """True when the sources hold evaluation data and something else (training or unassigned files, which
    then train); otherwise everything is pooled and eval is carved out by ``eval_fraction``."""
    splits = {s.split for s in sources}
    return EVAL in splits and bool(splits - {EVAL})
