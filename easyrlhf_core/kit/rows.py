"""Row-level parsing for dataset plugins: field access through the ``columns`` mapping, message lists, texts
and numbers, and the bad-row policy (:class:`BadRows`: stop at the first bad row, or skip and count with
``skip_bad_rows``).

A dataset plugin's ``load`` gets a :class:`BadRows` as ``options.bad_rows``: raise :class:`RowProblem` from
your row parser and hand it to ``options.bad_rows.report(problem, file=..., line=...)``; the framework
reports the count with the run's data notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from easyrlhf_core.kit.errors import ConfigError, DataError

__all__ = [
    "get_field",
    "has_field",
    "as_messages",
    "as_text_list",
    "as_number_list",
    "ends_with",
    "json_type",
    "RowProblem",
    "BadRows",
]

#: One chat message: ``{"role": ..., "content": ...}`` (also :data:`easyrlhf_core.kit.shapes.Message`).
Message = dict[str, str]

ROLES = ("system", "user", "assistant", "tool")


class RowProblem(Exception):
    """What is wrong with one row; the caller adds the file and line (see :meth:`BadRows.report`)."""


@dataclass
class BadRows:
    """Raise a row's :class:`DataError`, or with ``skip`` count it and go on (reported in the run notes)."""

    skip: bool = False
    count: int = 0
    first: DataError | None = None

    def report(self, problem: RowProblem | DataError, file: str | Path | None = None, line: int | None = None) -> None:
        err = problem if isinstance(problem, DataError) else DataError(str(problem), file=file, line=line)
        if not self.skip:
            raise err
        self.count += 1
        if self.first is None:
            self.first = err

    def notes(self) -> list[str]:
        if not self.count:
            return []
        return [f"skipped {self.count} bad row{'s' if self.count != 1 else ''} (skip_bad_rows); first: {self.first}"]


def check_columns(columns: dict[str, str], known: Iterable[str], dataset: str) -> None:
    """Refuse a ``columns`` mapping for a field the dataset does not read (a typo would be ignored)."""
    known = list(known)
    for ours in columns:
        if ours not in known:
            raise ConfigError(
                f"dataset '{dataset}' has no field '{ours}' to map; it reads: {', '.join(known)}", where="columns"
            )


def get_field(row: Any, name: str, columns: dict[str, str], required: bool = True) -> Any:
    """``row[columns.get(name, name)]``; a missing field is a :class:`RowProblem` naming the row's keys."""
    if not isinstance(row, dict):
        raise RowProblem(f"expected a JSON object, got {json_type(row)}")
    key = columns.get(name, name)
    if key in row and row[key] is not None:
        return row[key]
    if not required:
        return None
    mapped = f" (mapped from '{name}')" if key != name else ""
    have = ", ".join(sorted(map(str, row))) or "no fields"
    hint = f"; map another column with --set columns.{name}=<column>" if key == name else "; fix the columns mapping"
    if key in row:
        raise RowProblem(f"field '{key}'{mapped} is null")
    raise RowProblem(f"missing field '{key}'{mapped}; the row has: {have}{hint}")


def has_field(row: Any, name: str, columns: dict[str, str]) -> bool:
    """Whether ``row`` has field ``name`` (through ``columns``), not null."""
    return isinstance(row, dict) and row.get(columns.get(name, name)) is not None


def as_messages(value: Any, name: str, default_role: str) -> list[Message]:
    """A string (one ``default_role`` message) or a list of ``{"role", "content"}`` messages, checked."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise RowProblem(f"field '{name}' must be a string or a list of messages, got {json_type(value)}")
    if not value:
        raise RowProblem(f"field '{name}' is an empty list of messages")
    messages: list[Message] = []
    for i, msg in enumerate(value):
        where = f"'{name}'[{i}]"
        if not isinstance(msg, dict):
            raise RowProblem(f'{where} must be a message object {{"role": ..., "content": ...}}, got {json_type(msg)}')
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise RowProblem(f"{where} has role {role!r}; use one of: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowProblem(f"{where} needs a string 'content', got {json_type(content)}")
        messages.append({"role": role, "content": content})
    return messages


def as_text_list(value: Any, name: str) -> list[str]:
    """``value`` as a list of strings (field ``name``), checked."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowProblem(f"field '{name}' must be a list of strings, got {json_type(value)}")
    return list(value)


def as_number_list(value: Any, name: str) -> list[float]:
    """``value`` as a list of floats (field ``name``; booleans refused), checked."""
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise RowProblem(f"field '{name}' must be a list of numbers, got {json_type(value)}")
    return [float(v) for v in value]


def ends_with(messages: list[Message], role: str, name: str) -> list[Message]:
    """``messages`` unchanged when the last one is ``role``'s, else a :class:`RowProblem` naming ``name``."""
    if not messages or messages[-1]["role"] != role:
        last = messages[-1]["role"] if messages else "nothing"
        article = "an" if role[0] in "aeiou" else "a"
        raise RowProblem(f"'{name}' must end with {article} {role} message, but ends with {last}")
    return messages


def json_type(value: Any) -> str:
    """What ``value`` is, in JSON's words ("a string", "null"), for error messages."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
