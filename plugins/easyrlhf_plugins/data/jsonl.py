"""Local files (.jsonl, .jsonl.gz, .json, .parquet) in any of the four shapes, with column mapping."""

from __future__ import annotations

from collections import Counter
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.kit.rows import (
    RowProblem,
    as_messages,
    as_number_list,
    as_text_list,
    ends_with,
    get_field,
    has_field,
    json_type,
)
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Message, Record, Shape

from .collect import collect
from .convert import Pair, conversation_to, pair_to, ranked_to, split_conversations
from .sources import Source, local_sources

FIELDS = ("prompt", "chosen", "rejected", "responses", "scores", "messages", "completion")


class RowReader:
    """One row of a generic file -> the record of one shape. Each shape reads its own fields first and
    falls back to fields it can be derived from (see docs/data.md)."""

    def __init__(self, shape: Shape, columns: dict[str, str]) -> None:
        self.shape, self.columns = shape, columns
        self.counts: Counter[str] = Counter()
        self.extra_types: dict[str, str] = {}  # a prompt row's extra fields: one JSON type per column

    def __call__(self, row: Any) -> Record | None:
        if not isinstance(row, dict):
            raise RowProblem(f"expected a JSON object, got {json_type(row)}")

        def has(field: str) -> bool:
            return has_field(row, field, self.columns)

        shape = self.shape
        if shape is Shape.PREFERENCE:
            return self._from_ranked(row) if has("responses") and not has("chosen") else self._from_pair(row)
        if shape is Shape.RANKED:
            return self._from_pair(row) if has("chosen") and not has("responses") else self._from_ranked(row)
        if shape is Shape.CONVERSATION:
            if has("messages"):
                return {
                    "messages": ends_with(self._messages(row, "messages", "user"), "assistant", self._name("messages"))
                }
            if has("completion"):
                completion = self._messages(row, "completion", "assistant")
                return {"messages": self._prompt(row) + ends_with(completion, "assistant", self._name("completion"))}
            if has("chosen"):
                return self._from_pair(row)
            if has("responses"):
                return self._from_ranked(row)
            get_field(row, "messages", self.columns)  # raises, naming the missing field
        if has("prompt"):  # the row's other fields ride along: online rewards read them (an answer, a test)
            used = {self._name(f) for f in FIELDS}
            return {"prompt": self._prompt(row), **self._extras({k: v for k, v in row.items() if k not in used})}
        if has("messages"):
            return conversation_to(self._messages(row, "messages", "user"), Shape.PROMPT, self._name("messages"))
        if has("chosen"):
            return self._from_pair(row)
        get_field(row, "prompt", self.columns)  # raises, naming the missing field
        return None

    def _extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """Extra fields, each column of one JSON type (the rows become one Arrow table)."""
        for key, value in extras.items():
            if value is None:
                continue
            kind = json_type(value)
            seen = self.extra_types.setdefault(key, kind)
            if kind != seen:
                raise RowProblem(
                    f"field '{key}' is {kind} here but {seen} in earlier rows; give every row's "
                    f"'{key}' the same type (quote the numbers, say)"
                )
        return extras

    # -- fields --------------------------------------------------------------------------------------
    def _name(self, field: str) -> str:
        return self.columns.get(field, field)

    def _messages(self, row: dict, field: str, default_role: str) -> list[Message]:
        return as_messages(get_field(row, field, self.columns), self._name(field), default_role)

    def _prompt(self, row: dict) -> list[Message]:
        return ends_with(self._messages(row, "prompt", "user"), "user", self._name("prompt"))

    # -- shapes --------------------------------------------------------------------------------------
    def _from_pair(self, row: dict) -> Record | None:
        chosen = self._messages(row, "chosen", "assistant")
        rejected = self._messages(row, "rejected", "assistant")
        if has_field(row, "prompt", self.columns):
            pair = Pair(self._prompt(row), chosen, rejected)
            for name, side in (("chosen", chosen), ("rejected", rejected)):
                if side[0]["role"] != "assistant":
                    raise RowProblem(f"'{self._name(name)}' must start with an assistant message after the prompt")
            if chosen == rejected:
                pair = None
        else:
            if isinstance(get_field(row, "chosen", self.columns), str):
                get_field(row, "prompt", self.columns)  # text completions need a prompt: raises
            pair = split_conversations(chosen, rejected)
        if pair is None:
            self.counts["identical"] += 1
            return None
        if pair.divergent:
            self.counts["divergent"] += 1
        record = pair_to(pair, self.shape)
        if record is None:
            self.counts["left_out"] += 1
        return record

    def _from_ranked(self, row: dict) -> Record | None:
        responses = as_text_list(get_field(row, "responses", self.columns), self._name("responses"))
        scores = as_number_list(get_field(row, "scores", self.columns), self._name("scores"))
        record = ranked_to(self._prompt(row), responses, scores, self.shape)
        if record is None:
            self.counts["ties"] += 1
        return record

    def notes(self, rows: int) -> list[str]:
        c = self.counts
        notes = [f"jsonl: read {rows} rows"]
        if c["identical"] or c["divergent"]:
            notes.append(f"jsonl: dropped {c['identical']} identical pairs; {c['divergent']} split at a divergent turn")
        if c["left_out"]:
            notes.append(f"jsonl: left out {c['left_out']} divergent pairs: ranked responses are single texts")
        if c["ties"]:
            notes.append(f"jsonl: dropped {c['ties']} ranked rows whose scores all tie (no preference)")
        return notes


class JsonlDataset(Dataset):
    """Generic local files, one record per row."""

    name = "jsonl"
    description = "local .jsonl/.json/.parquet files in any shape (rename fields with `columns`)"
    shapes = frozenset(Shape)
    fields = FIELDS

    def load(self, options: DataOptions) -> DataSplits:
        if not options.data_files:
            raise ConfigError(
                "dataset 'jsonl' reads local files; pass them with --data-files a.jsonl[,b.jsonl]", where="--data-files"
            )
        sources: list[Source] = []
        for entry in options.data_files:
            sources.extend(local_sources(entry))
        reader = RowReader(options.shape, options.columns)
        return collect(sources, reader, options, reader.notes)


@hookimpl
def register_datasets(register):
    register(JsonlDataset)
