"""Arithmetic: generated two-number sums, products and differences with their answers, a verifiable task
for online RL (GRPO, RLOO, PPO) scored by the ``match`` reward. Nothing to download: the same prompts for
the same seed, on every machine."""

from __future__ import annotations

import random

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
    shapes = frozenset({Shape.PROMPT})
    fields = ()

    def load(self, options: DataOptions) -> DataSplits:
        """The generated problems; with ``data_files``, problems from those files instead (rows with a
        ``prompt`` and an ``answer``: a held-out set of your own, say)."""
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


@hookimpl
def register_datasets(register):
    register(ArithmeticDataset)
