"""Shape conversions shared by the dataset plugins: a preference pair, a ranked list or a conversation turned
into the record a method asks for (formats in :mod:`easyrlhf_core.kit.shapes`).

A pair whose two conversations diverge before their last assistant turn is split at the longest common
prefix of whole turns, backed up to the last user turn in it: ``prompt`` is that prefix and ``chosen`` /
``rejected`` hold the rest of each conversation (an assistant turn, possibly followed by more user/assistant
turns). TRL's conversational format takes such multi-message completions; ranked records, whose responses
are single texts, leave such pairs out (counted in the run notes).
"""

from __future__ import annotations

from dataclasses import dataclass

from easyrlhf_core.kit.rows import RowProblem, ends_with
from easyrlhf_core.kit.shapes import Message, Record, Shape


@dataclass
class Pair:
    """A shared prompt and two completions (message lists starting with an assistant turn)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]

    @property
    def divergent(self) -> bool:
        """True when a completion spans several turns (the pair diverged before its last assistant turn)."""
        return len(self.chosen) > 1 or len(self.rejected) > 1


def common_turns(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def split_conversations(chosen: list[Message], rejected: list[Message]) -> Pair | None:
    """Split two whole conversations into prompt + completions; ``None`` when they are identical."""
    if chosen == rejected:
        return None
    ends_with(chosen, "assistant", "chosen")
    ends_with(rejected, "assistant", "rejected")
    cut = common_turns(chosen, rejected)
    while cut > 0 and chosen[cut - 1]["role"] != "user":
        cut -= 1
    if cut == 0:
        raise RowProblem("chosen and rejected share no opening user turn; both must continue the same conversation")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if side[cut]["role"] != "assistant":
            raise RowProblem(
                f"'{name}' continues the shared conversation with a {side[cut]['role']} turn; "
                "the reply after the last user turn must be the assistant's"
            )
    return Pair(chosen[:cut], chosen[cut:], rejected[cut:])


def pair_to(pair: Pair, shape: Shape) -> Record | None:
    """The record of ``shape`` a pair gives; ``None`` for ranked from a divergent (multi-turn) pair."""
    if shape is Shape.PREFERENCE:
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    if shape is Shape.RANKED:
        if pair.divergent:
            return None
        return {
            "prompt": pair.prompt,
            "responses": [pair.chosen[0]["content"], pair.rejected[0]["content"]],
            "scores": [1.0, 0.0],
        }
    if shape is Shape.CONVERSATION:
        return {"messages": pair.prompt + pair.chosen}
    return {"prompt": pair.prompt}


def ranked_to(prompt: list[Message], responses: list[str], scores: list[float], shape: Shape) -> Record | None:
    """The record of ``shape`` a ranked list gives; preference pairs its best against its worst response
    (``None`` when all scores tie)."""
    if len(responses) < 2 and shape is not Shape.PROMPT:
        raise RowProblem(f"'responses' needs at least two candidates, got {len(responses)}")
    if len(responses) != len(scores):
        raise RowProblem(
            f"'responses' has {len(responses)} items but 'scores' has {len(scores)}; give one score per response"
        )
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    if shape is Shape.RANKED:
        return {"prompt": prompt, "responses": responses, "scores": scores}
    if shape is Shape.PREFERENCE:
        if scores[best] == scores[worst]:
            return None
        return {"prompt": prompt, "chosen": [_assistant(responses[best])], "rejected": [_assistant(responses[worst])]}
    if shape is Shape.CONVERSATION:
        return {"messages": prompt + [_assistant(responses[best])]}
    return {"prompt": prompt}


def conversation_to(messages: list[Message], shape: Shape, name: str = "messages") -> Record:
    """A conversation as itself (cut after its last assistant turn), or as the prompt before that turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise RowProblem(f"'{name}' has no assistant turn")
    if shape is Shape.CONVERSATION:
        return {"messages": messages[: last + 1]}
    if shape is Shape.PROMPT:
        prompt = messages[:last]
        if not any(m["role"] == "user" for m in prompt):
            raise RowProblem(f"'{name}' has no user turn before its last assistant turn")
        return {"prompt": ends_with(prompt, "user", f"{name} before its last assistant turn")}
    raise RowProblem(f"a conversation cannot give {shape} records")


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}
