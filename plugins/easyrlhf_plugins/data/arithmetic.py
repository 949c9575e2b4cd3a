"""Arithmetic: generated two-number sums, products and differences with their answers, a verifiable task
for online RL (GRPO, RLOO, PPO) scored by the ``match`` reward. Nothing to download: the same prompts for
the same seed, on every machine.

As preference pairs (dpo, ipo, rm, ...): the question asked bare ("What is 12 + 54?"); the chosen answer is
the equation with its right result ("12 + 54 = 66"), the rejected one what the embedded model really answered
(recorded once and shipped: :mod:`.arithmetic_answers`; it mostly explains at length, "To add 12 and 54, we
need to combine the numbers in a way that...", and is wrong more often when it does). The pairs teach it to
answer directly, and correctly. Questions it already answered exactly so make no pair."""

from __future__ import annotations

import random
import re

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.rows import RowProblem, as_messages, get_field
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Record, Shape

from .reader import iter_rows

#: How many problems the dataset generates; the run holds eval_fraction of them out.
SIZE = 2000
GENERATOR_SEED = 1234
INSTRUCTION = "Answer with the number only."


def problem(rng: random.Random) -> Record:
    """One problem: a prompt and its answer (the ``answer`` column the ``match`` reward reads)."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": [{"role": "user", "content": f"What is {a} {op} {b}? {INSTRUCTION}"}], "answer": str(answer)}


def question(record: Record) -> str:
    """The problem's question without the instruction ("What is 12 + 54?")."""
    return str(record["prompt"][0]["content"]).removesuffix(f" {INSTRUCTION}")


def worked_answer(record: Record) -> str:
    """The equation with its right result ("12 + 54 = 66")."""
    match = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question(record))
    assert match is not None, record
    return f"{match[1]} {match[2]} {match[3]} = {record['answer']}"


def problems(count: int = SIZE, seed: int = GENERATOR_SEED) -> list[Record]:
    """``count`` distinct problems (so a held-out one is never also a training one)."""
    rng = random.Random(seed)
    seen: dict[str, Record] = {}
    while len(seen) < count:
        record = problem(rng)
        seen.setdefault(record["prompt"][0]["content"], record)
    return list(seen.values())


class ArithmeticDataset(Dataset):
    """Generated arithmetic prompts with an answer column."""

    name = "arithmetic"
    description = "generated arithmetic problems (+, -, *) with an 'answer' column, for the match reward"
    shapes = frozenset({Shape.PROMPT, Shape.PREFERENCE})
    fields = ()

    def load(self, options: DataOptions) -> DataSplits:
        """The generated problems; with ``data_files``, problems from those files instead (rows with a
        ``prompt`` and an ``answer``: a held-out set of your own, say). Preference pairs: see the module."""
        if options.shape is Shape.PREFERENCE:
            return preference_pairs(options)
        if not options.data_files:
            return DataSplits(options.shape, problems(), [], notes=[f"arithmetic: {SIZE} generated problems"])
        records = []
        for entry in options.data_files:
            for line, row in iter_rows(entry, options.bad_rows):
                try:
                    records.append(
                        {
                            "prompt": as_messages(get_field(row, "prompt", {}), "prompt", "user"),
                            "answer": str(get_field(row, "answer", {})),
                        }
                    )
                except RowProblem as problem:
                    options.bad_rows.report(problem, file=entry, line=line)
        return DataSplits(options.shape, records, [], notes=[f"arithmetic: {len(records)} problems from files"])


def preference_pairs(options: DataOptions) -> DataSplits:
    """The worked answer (chosen) against the embedded model's recorded answer (rejected), per question."""
    from easyrlhf_core.kit.errors import EasyRLHFError

    from .arithmetic_answers import ANSWERS_FILE, recorded_answers

    if options.data_files:
        raise EasyRLHFError(
            "arithmetic: preference pairs come from the recorded answers shipped with the dataset, not from "
            "--data-files; for pairs of your own use --dataset jsonl (prompt, chosen, rejected)"
        )
    answers = recorded_answers()
    records, already = [], 0
    for record in problems()[: len(answers)]:
        asked = question(record)
        answer, worked = answers.get(asked), worked_answer(record)
        if answer is None:
            continue
        if answer.strip() == worked:
            already += 1
            continue
        records.append(
            {
                "prompt": [{"role": "user", "content": asked}],
                "chosen": [{"role": "assistant", "content": worked}],
                "rejected": [{"role": "assistant", "content": answer}],
                "answer": record["answer"],
            }
        )
    note = (
        f"arithmetic: {len(records)} pairs: the equation with its right result (chosen) against "
        f"SmolLM2-135M-Instruct's recorded answer (rejected; {ANSWERS_FILE.name}); {already} questions it "
        "already answered exactly so"
    )
    return DataSplits(options.shape, records, [], notes=[note])


@hookimpl
def register_datasets(register):
    register(ArithmeticDataset)
