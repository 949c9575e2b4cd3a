"""Helpers for the data tests: record-format checks, file writers, and probe methods (one per shape) that
record what a run's data looked like."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.config import BaseConfig
from easyrlhf_core.kit.shapes import Shape

ROLES = {"system", "user", "assistant", "tool"}


def check_messages(messages: Any) -> None:
    assert isinstance(messages, list) and messages, messages
    for m in messages:
        assert set(m) == {"role", "content"} and m["role"] in ROLES and isinstance(m["content"], str), m


def check_record(shape: Shape, record: dict) -> None:
    """Assert ``record`` follows exactly the format of ``shape`` in easyrlhf_core/shapes.py."""
    if shape is Shape.PREFERENCE:
        assert set(record) == {"prompt", "chosen", "rejected"}, record
        for key in record:
            check_messages(record[key])
        assert record["prompt"][-1]["role"] == "user"
        for key in ("chosen", "rejected"):
            assert record[key][0]["role"] == "assistant" and record[key][-1]["role"] == "assistant"
    elif shape is Shape.RANKED:
        assert set(record) == {"prompt", "responses", "scores"}, record
        check_messages(record["prompt"])
        assert record["prompt"][-1]["role"] == "user"
        assert all(isinstance(r, str) for r in record["responses"]) and len(record["responses"]) >= 2
        assert all(type(s) is float for s in record["scores"]) and len(record["scores"]) == len(record["responses"])
    elif shape is Shape.CONVERSATION:
        assert set(record) == {"messages"}, record
        check_messages(record["messages"])
        assert record["messages"][-1]["role"] == "assistant"
    else:
        assert set(record) == {"prompt"}, record
        check_messages(record["prompt"])
        assert record["prompt"][-1]["role"] == "user"


def write_jsonl(path: Path, rows: list[Any], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def hh_row(*turns: str, rejected_last: str = "a worse reply") -> dict[str, str]:
    """An hh-rlhf row from alternating human/assistant turns; rejected differs in the last reply."""

    def transcript(parts: tuple[str, ...]) -> str:
        return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(parts))

    return {"chosen": transcript(turns), "rejected": transcript(turns[:-1] + (rejected_last,))}


# -- probe methods: one per shape; train() writes what it got to probe.json ------------------------------


@dataclass
class ProbeConfig(BaseConfig):
    """Config of the probe test methods."""


def _probe(shape: Shape) -> type[Method]:
    class Probe(Method):
        name = f"probe-{shape}"
        description = f"test method: records the {shape} data it gets"
        config_class = ProbeConfig

        def train(self, run) -> None:
            summary = {"train": run.data.train, "eval": run.data.eval, "notes": run.data.notes}
            (run.output_dir / "probe.json").write_text(json.dumps(summary), encoding="utf-8")

    Probe.shape = shape
    Probe.__name__ = f"Probe{shape.value.title()}"
    return Probe


PROBES = [_probe(shape) for shape in Shape]


class ProbePlugin:
    """Test plugin: probe-preference, probe-ranked, probe-conversation, probe-prompt."""

    @staticmethod
    @hookimpl
    def register_methods(register):
        for probe in PROBES:
            register(probe)
