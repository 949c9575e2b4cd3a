"""The embedded model's own answers to the first arithmetic questions (asked bare: "What is 12 + 54?"),
recorded once and shipped: the rejected side of the arithmetic dataset's preference pairs (the chosen side is
the equation with its right result, "12 + 54 = 66").

Recorded with ``python -m easyrlhf_plugins.data.record_arithmetic_answers`` (SmolLM2-135M-Instruct, greedy, fp32,
at most 48 new tokens); the file says which model and settings wrote it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ANSWERS_FILE = Path(__file__).parent / "embedded" / "arithmetic" / "smollm2-answers.jsonl.gz"


def recorded_answers(path: Path = ANSWERS_FILE) -> dict[str, str]:
    """``{prompt text: the recorded model answer}`` from the shipped file (its header line skipped)."""
    answers: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if "model_answer" in row:
                answers[row["prompt"]] = row["model_answer"]
    return answers
