"""``metrics.jsonl``: one JSON object per logged step. Read, cut back and summarised here, and only here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from easyrlhf_core.kit.errors import EasyRLHFError

__all__ = ["drop_rows_after", "last_values"]

METRICS_FILE = "metrics.jsonl"


def metric_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
    """``(line number, text, row)`` of each non-blank line; ``row`` is None for a line that is not a JSON
    object (one cut short by a kill, say)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield number, line, row if isinstance(row, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line that does not parse is an error naming file and line."""
    if not path.is_file():
        raise EasyRLHFError("no metrics.jsonl here; is this a run directory?", where=str(path.parent))
    rows = []
    for number, line, row in metric_lines(path):
        if row is None:
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise EasyRLHFError(f"invalid JSON ({exc.msg})", file=path, line=number) from None
            continue  # valid JSON, but not an object: not a row
        rows.append(row)
    return rows


def last_values(path: Path) -> dict[str, Any]:
    """The last logged value of every key (a run's summary), from a ``metrics.jsonl`` that may not exist."""
    last: dict[str, Any] = {}
    if path.is_file():
        for _, _, row in metric_lines(path):
            last.update(row or {})
    return last


def last_logged(path: Path, key: str, up_to_step: int) -> float | None:
    """The last value of ``key`` in the rows up to ``up_to_step``, or None."""
    values = [
        float(row[key])
        for row in (read_metrics(path) if path.is_file() else [])
        if row.get("step", 0) <= up_to_step and isinstance(row.get(key), (int, float))
    ]
    return values[-1] if values else None


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of a ``*.jsonl`` log (metrics, samples) up to ``step``, minus end-of-training
    summaries (``train_runtime``: a stopped run's) and lines cut short; the resumed run logs the rest again."""
    if not path.is_file():
        return
    kept = [
        line + "\n"
        for _, line, row in metric_lines(path)
        if row is not None and row.get("step", 0) <= step and "train_runtime" not in row
    ]
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("".join(kept), encoding="utf-8")
    os.replace(partial, path)
