"""Read data files row by row: ``.jsonl``, ``.json`` (JSON lines or one array), either gzipped (``.gz``), and
``.parquet``. Each row comes with its line number (Parquet: its 1-based row number), and every problem is a
:class:`DataError` naming the file and line.

File-level problems (missing, empty, not gzip, unreadable Parquet) always stop the run; row-level problems
(bad UTF-8, truncated JSON, a row that is not an object) go through :class:`BadRows` so that
``skip_bad_rows`` can count and skip them.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from easyrlhf_core.kit.errors import DataError
from easyrlhf_core.kit.rows import BadRows, json_type

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, OSError)


def is_data_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def iter_rows(path: str | Path, bad: BadRows) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_row)`` for every non-blank row of ``path``."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found; check the --data-files path", file=path)
    if path.is_dir():
        raise DataError("is a directory; give data files (.jsonl, .jsonl.gz, .json, .parquet)", file=path)
    if path.name.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    if path.stat().st_size == 0:
        raise DataError("file is empty; expected one JSON object per line", file=path, line=1)
    compressed = path.name.endswith(".gz")
    inner = path.name[:-3] if compressed else path.name
    if inner.endswith(".json") and _starts_with_array(path, compressed):
        yield from _json_array_rows(path, compressed)
        return
    yield from _json_lines(path, compressed, bad)


def _open(path: Path, compressed: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _gzip_error(path: Path, line: int, exc: BaseException) -> DataError:
    if line <= 1 and isinstance(exc, gzip.BadGzipFile):
        return DataError(
            f"not a gzip file ({exc}); decompress it, or drop the .gz from its name if it is plain text",
            file=path,
            line=1,
        )
    return DataError(
        f"the gzip stream is damaged or cut short ({exc or type(exc).__name__}); download the file again",
        file=path,
        line=line,
    )


def _json_lines(path: Path, compressed: bool, bad: BadRows) -> Iterator[tuple[int, Any]]:
    seen_content = False
    line_no = 0
    with _open(path, compressed) as stream:
        lines = iter(stream)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _GZIP_ERRORS as exc:
                if not compressed:
                    raise DataError(f"cannot read the file ({exc})", file=path, line=line_no + 1) from None
                raise _gzip_error(path, line_no + 1, exc) from None
            line_no += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                seen_content = True
                bad.report(
                    DataError(
                        f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "re-save the file as UTF-8",
                        file=path,
                        line=line_no,
                    )
                )
                continue
            if not text.strip():
                continue
            seen_content = True
            text = text.rstrip("\r\n")
            if line_no == 1:
                text = text.lstrip("\ufeff")  # a byte-order mark some editors write
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                bad.report(
                    DataError(
                        f"{_json_problem(exc, text)}; each line must be one complete JSON object",
                        file=path,
                        line=line_no,
                    )
                )
                continue
            if not isinstance(row, dict):
                bad.report(DataError(f"expected a JSON object per line, got {json_type(row)}", file=path, line=line_no))
                continue
            yield line_no, row
    if not seen_content:
        raise DataError("file is empty (only blank lines); expected one JSON object per line", file=path, line=1)


def _starts_with_array(path: Path, compressed: bool) -> bool:
    try:
        with _open(path, compressed) as stream:
            head = stream.read(4096)
    except _GZIP_ERRORS as exc:
        raise _gzip_error(path, 1, exc) from None
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def _json_array_rows(path: Path, compressed: bool) -> Iterator[tuple[int, Any]]:
    """A ``.json`` file holding one array of objects; a broken array cannot be resynchronised, so any error
    here stops the run."""
    try:
        with _open(path, compressed) as stream:
            data = stream.read()
    except _GZIP_ERRORS as exc:
        raise _gzip_error(path, 1, exc) from None
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as UTF-8", file=path, line=line
        ) from None
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    count = 0
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]" and count == 0:
            break
        line = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(_json_problem(exc, text), file=path, line=exc.lineno) from None
        if not isinstance(row, dict):
            raise DataError(f"expected an array of JSON objects, got {json_type(row)}", file=path, line=line)
        count += 1
        yield line, row
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        raise DataError(
            "invalid JSON: expected ',' or ']' after an array element (the file looks truncated)",
            file=path,
            line=text.count("\n", 0, pos) + 1,
        )
    if count == 0:
        raise DataError("file holds an empty array; expected objects", file=path, line=1)


def _json_problem(exc: json.JSONDecodeError, text: str) -> str:
    """``invalid JSON at column 13: Unterminated string starting (truncated?)``"""
    cut = " (it looks truncated)" if exc.pos >= len(text.rstrip()) or "Unterminated" in exc.msg else ""
    return f"invalid JSON at column {exc.colno}: {exc.msg.removesuffix(' at')}{cut}"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from None
    if parquet.metadata.num_rows == 0:
        raise DataError("file is empty (a Parquet file with no rows)", file=path, line=1)
    row_no = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"Parquet file is damaged after row {row_no} ({exc})", file=path, line=row_no + 1) from None
