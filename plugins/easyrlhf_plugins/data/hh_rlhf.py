"""Anthropic hh-rlhf: preference pairs, ranked pairs, chosen-side conversations and prompts (embedded sample,
local files in Anthropic's format, or the Hub)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.rows import get_field
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Record, Shape

from .collect import collect
from .convert import pair_to, split_conversations
from .sources import Source, file_source, hub_sources, local_sources
from .transcripts import diverges_before_final_reply, parse_transcript

HUB_ID = "Anthropic/hh-rlhf"
EMBEDDED_DIR = Path(__file__).parent / "embedded" / "hh-rlhf"
EMBEDDED_SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled")
FIELDS = ("chosen", "rejected")


def embedded_files() -> list[Path]:
    """The shipped sample: the test split of each helpful subset (MIT license, see its LICENSE file)."""
    return [EMBEDDED_DIR / subset / "test.jsonl.gz" for subset in EMBEDDED_SUBSETS]


def hh_sources(data_files: list[str]) -> tuple[list[Source], str]:
    """Sources for ``data_files`` (the embedded sample when empty) and a phrase naming them."""
    if not data_files:
        return (
            [file_source(p) for p in embedded_files()],
            f"the embedded sample ({', '.join(EMBEDDED_SUBSETS)} test splits)",
        )
    sources: list[Source] = []
    for entry in data_files:
        if entry == HUB_ID or (entry.startswith(HUB_ID + "/") and not Path(entry).exists()):
            subset = entry[len(HUB_ID) + 1 :] or None
            sources.extend(hub_sources(HUB_ID, data_dir=subset))
        else:
            sources.extend(local_sources(entry))
    return sources, f"{len(sources)} source{'s' if len(sources) != 1 else ''}"


class PairParser:
    """One hh-rlhf row -> the record of one shape, counting drops, divergent splits and repairs."""

    def __init__(self, shape: Shape, columns: dict[str, str]) -> None:
        self.shape, self.columns = shape, columns
        self.counts: Counter[str] = Counter()

    def __call__(self, row: Any) -> Record | None:
        chosen_text = get_field(row, "chosen", self.columns)
        rejected_text = get_field(row, "rejected", self.columns)
        chosen = parse_transcript(chosen_text, "chosen")
        rejected = parse_transcript(rejected_text, "rejected")
        if chosen_text == rejected_text:
            self.counts["identical"] += 1
            return None
        for side in (chosen, rejected):
            self.counts["merged"] += side.merged_turns
            self.counts["removed"] += side.removed_final_human_turns
        pair = split_conversations(chosen.messages, rejected.messages)
        if pair is None:
            self.counts["identical_after_repair"] += 1
            return None
        if pair.divergent or diverges_before_final_reply(chosen_text, rejected_text):
            self.counts["divergent"] += 1
        record = pair_to(pair, self.shape)
        if record is None:
            self.counts["left_out"] += 1
        return record

    def notes(self, rows_read: int, origin: str) -> list[str]:
        c = self.counts
        notes = [
            f"hh-rlhf: read {rows_read} pairs from {origin}; dropped {c['identical']} identical pairs; "
            f"{c['divergent']} split at a divergent turn"
        ]
        if c["merged"] or c["removed"]:
            notes.append(
                f"hh-rlhf: merged {c['merged']} consecutive same-speaker turns; removed "
                f"{c['removed']} unanswered final human turns"
            )
        if c["identical_after_repair"]:
            notes.append(
                f"hh-rlhf: dropped {c['identical_after_repair']} more pairs that were identical once "
                "unanswered final human turns were removed"
            )
        if c["left_out"]:
            notes.append(
                f"hh-rlhf: left out {c['left_out']} divergent pairs: ranked responses are single "
                "texts, and their completions span several turns"
            )
        return notes


class HHRLHFDataset(Dataset):
    """Anthropic's helpful/harmless preference transcripts."""

    name = "hh-rlhf"
    description = "Anthropic hh-rlhf (embedded helpful sample, local files, or the Hub): all four shapes"
    shapes = frozenset(Shape)
    fields = FIELDS

    def load(self, options: DataOptions) -> DataSplits:
        sources, origin = hh_sources(options.data_files)
        parser = PairParser(options.shape, options.columns)
        return collect(sources, parser, options, lambda rows: parser.notes(rows, origin))


@hookimpl
def register_datasets(register):
    register(HHRLHFDataset)
