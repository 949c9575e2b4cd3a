"""The one error type users see: a message, and where the bad input is."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EasyRLHFError", "ConfigError", "DataError", "PluginError"]


def one_line(text: str) -> str:
    """A library's multi-line message as one line (what an ``Error:`` line quotes of it)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class EasyRLHFError(Exception):
    """Bad input or setup, reported as one line: ``Error: <where>: <what is wrong and how to fix it>``.

    ``where`` is ``file:line`` for a file, or a flag such as ``--set`` for command-line input. ``key`` is the
    config key or option at fault when known (a check in ``__post_init__``): the config loader points the
    error at the file line or ``--set`` that set it.
    """

    #: The process exit code the CLI ends with.
    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        where: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.where = where
        self.key = key

    @property
    def location(self) -> str | None:
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line is not None else self.file
        return self.where

    def __str__(self) -> str:
        loc = self.location
        return f"{loc}: {self.message}" if loc else self.message


class ConfigError(EasyRLHFError):
    """A config value is unknown, of the wrong type, or fails validation."""


class DataError(EasyRLHFError):
    """A data file cannot be read or a row does not have the expected shape."""


class PluginError(EasyRLHFError):
    """A plugin is missing, broken, or collides with another one."""


class RanksFailed(EasyRLHFError):
    """A launched rank failed: its error line (``rank N: ...``), reported by the process that launched it,
    with the rank's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
