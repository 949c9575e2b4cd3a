"""Open-Orca SlimOrca-Dedup: chat conversations for SFT and prompts for online methods (local .jsonl/.parquet
files in its format, or the Hub)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.rows import RowProblem, get_field
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Message, Record, Shape

from .collect import collect
from .convert import conversation_to
from .sources import Source, hub_sources, local_sources

HUB_ID = "Open-Orca/SlimOrca-Dedup"
FIELDS = ("conversations",)
_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def orca_messages(turns: Any, name: str = "conversations") -> list[Message]:
    """``[{"from": "system"|"human"|"gpt", "value": str}, ...]`` -> chat messages. The system prompt stays a
    system message; an empty one is left out."""
    if not isinstance(turns, list) or not turns:
        raise RowProblem(f'field \'{name}\' must be a non-empty list of {{"from", "value"}} turns')
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowProblem(f"'{name}'[{i}] must be an object with 'from' and 'value'")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in _ROLES:
            raise RowProblem(f"'{name}'[{i}] has 'from': {speaker!r}; expected one of: {', '.join(_ROLES)}")
        if not isinstance(value, str):
            raise RowProblem(f"'{name}'[{i}] needs a string 'value'")
        if speaker == "system" and not value.strip():
            continue
        messages.append({"role": _ROLES[speaker], "content": value})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(f"'{name}' has no 'gpt' turn; each conversation needs the assistant's reply")
    return messages


class SlimOrcaDataset(Dataset):
    """SlimOrca-Dedup conversations (system, human, gpt)."""

    name = "slimorca"
    description = "Open-Orca/SlimOrca-Dedup (local .jsonl/.parquet, or the Hub): conversations, prompts"
    shapes = frozenset({Shape.CONVERSATION, Shape.PROMPT})
    fields = FIELDS

    def load(self, options: DataOptions) -> DataSplits:
        sources = self._sources(options.data_files)
        columns, shape = options.columns, options.shape
        counts: Counter[str] = Counter()

        def parse(row: Any) -> Record:
            messages = orca_messages(
                get_field(row, "conversations", columns), columns.get("conversations", "conversations")
            )
            counts["with_system"] += messages[0]["role"] == "system"
            return conversation_to(messages, shape, "conversations")

        def notes(rows: int) -> list[str]:
            return [f"slimorca: read {rows} conversations ({counts['with_system']} with a system prompt)"]

        return collect(sources, parse, options, notes)

    @staticmethod
    def _sources(data_files: list[str]) -> list[Source]:
        entries = data_files or [HUB_ID]
        sources: list[Source] = []
        for entry in entries:
            sources.extend(hub_sources(HUB_ID) if entry == HUB_ID else local_sources(entry))
        return sources


@hookimpl
def register_datasets(register):
    register(SlimOrcaDataset)
