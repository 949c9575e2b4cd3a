"""Anthropic hh-rlhf transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) as chat messages.

Rules (see docs/data.md):
- turns start at ``"\\n\\nHuman: "`` (role ``user``) and ``"\\n\\nAssistant: "`` (role ``assistant``); their
  text is stripped of surrounding whitespace;
- consecutive turns of the same speaker (a few transcripts have them) merge into one message, joined by a
  blank line, so roles alternate as every chat template expects;
- unanswered human turns at the end are removed: a transcript ends with the assistant's reply;
- a transcript with no assistant turn, or with text before its first turn, is a bad row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from easyrlhf_core.kit.rows import RowProblem, json_type
from easyrlhf_core.kit.shapes import Message

_TURN = re.compile(r"\n\n(Human|Assistant): ")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Transcript:
    """Parsed messages and what parsing had to repair (for the run notes)."""

    messages: list[Message]
    merged_turns: int = 0
    removed_final_human_turns: int = 0


def diverges_before_final_reply(chosen: str, rejected: str) -> bool:
    """True when the raw transcripts (turns as written, nothing merged) differ before the final assistant
    turn of either side: the pairs the hh-rlhf notes count as "split at a divergent turn"."""
    a, b = _raw_turns(chosen), _raw_turns(rejected)
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return common < max(_final_reply(a), _final_reply(b))


def _raw_turns(text: str) -> list[tuple[str, str]]:
    parts = _TURN.split("\n\n" + text.lstrip())
    return [(speaker, content.strip()) for speaker, content in zip(parts[1::2], parts[2::2])]


def _final_reply(turns: list[tuple[str, str]]) -> int:
    return max((i for i, (speaker, _) in enumerate(turns) if speaker == "Assistant"), default=0)


def parse_transcript(text: object, name: str) -> Transcript:
    """Turn one transcript into user/assistant messages ending with an assistant turn."""
    if not isinstance(text, str):
        raise RowProblem(f"field '{name}' must be a transcript string, got {json_type(text)}")
    body = "\n\n" + text.lstrip()
    parts = _TURN.split(body)
    if parts[0].strip() or len(parts) < 3:
        start = text.strip()[:30]
        raise RowProblem(
            f"'{name}' is not an hh-rlhf transcript: it must start with '\\n\\nHuman: ', but starts with {start!r}"
        )
    messages: list[Message] = []
    merged = 0
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = _ROLES[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
            merged += 1
        else:
            messages.append({"role": role, "content": content})
    removed = 0
    while messages and messages[-1]["role"] == "user":
        messages.pop()
        removed += 1
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(
            f"'{name}' has no '\\n\\nAssistant: ' turn; each transcript must end with the assistant's reply"
        )
    return Transcript(messages, merged, removed)
