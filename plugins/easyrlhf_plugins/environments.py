"""The built-in environments: ``calculator`` (a tool environment) and ``guess-number`` (a turn game), with the
datasets of problems they play on (generated from a seed, the run holding ``eval_fraction`` out)."""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from dataclasses import dataclass
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.environments import StepResult, ToolEnvironment, TurnEnvironment, tool_schemas
from easyrlhf_core.kit.episodes import tool_system_prompt
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Record, Shape

from .rewards import MatchReward

# --------------------------------------------------------------------------------------------------
# calculator

#: Operators the calculator evaluates (no names, calls or attributes: nothing but arithmetic runs).
_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
MAX_EXPRESSION = 200
MAX_POWER = 64


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression: numbers, + - * / // % ** and parentheses; anything else raises
    ValueError (so the model reads what it got wrong)."""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
                raise ValueError(f"exponent above {MAX_POWER}")
            return _OPERATORS[type(node.op)](left, right)  # type: ignore[no-any-return]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))  # type: ignore[no-any-return]
        raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, got {type(node).__name__}")

    result = value(tree.body)
    return int(result) if isinstance(result, float) and result.is_integer() else result


@dataclass
class CalculatorOptions:
    """Options of the ``calculator`` environment."""

    column: str = option("answer", "The dataset column holding the expected answer.")


class CalculatorEnvironment(ToolEnvironment):
    """Multi-digit arithmetic with a ``calculate`` tool; reward 1 when the final answer's last number equals the
    row's answer."""

    name = "calculator"
    description = "multi-digit arithmetic with a calculate(expression) tool; reward 1 for the right final answer"
    options_class = CalculatorOptions
    default_dataset = "calculator"

    def reset(self, **row: Any) -> str | None:
        column = self.options.column if self.options is not None else "answer"
        self.expected = row.get(column)
        self.final = ""
        return None

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression exactly.

        Args:
            expression: The expression, with numbers and + - * / ( ), e.g. "4821 * 37".
        """
        return str(safe_eval(expression))

    def finish(self, messages: list[dict[str, Any]]) -> None:
        """Remember the final answer (the last assistant message)."""
        finals = [m["content"] for m in messages if m.get("role") == "assistant"]
        self.final = finals[-1] if finals else ""

    def get_reward(self) -> float:
        matcher = MatchReward()
        return float(matcher.same(matcher.extract(self.final), self.expected))


CALCULATOR_SIZE = 2000
CALCULATOR_SEED = 4321


def calculator_problem(rng: random.Random) -> Record:
    """A product or sum of multi-digit numbers (beyond what a small model computes in its head)."""
    op = rng.choice("*+")
    if op == "*":
        a, b = rng.randint(100, 9999), rng.randint(12, 999)
    else:
        a, b = rng.randint(10_000, 99_999), rng.randint(10_000, 99_999)
    answer = a * b if op == "*" else a + b
    question = f"What is {a} {op} {b}? Use the calculator, then give the final answer as a number."
    return {"prompt": [{"role": "user", "content": question}], "answer": str(answer)}


def generated(count: int, seed: int, make: Any) -> list[Record]:
    """``count`` distinct problems from ``make(rng)``."""
    rng = random.Random(seed)
    seen: dict[str, Record] = {}
    while len(seen) < count:
        record = make(rng)
        seen.setdefault(str(record["prompt"]), record)
    return list(seen.values())


def demonstration(record: Record, system: str | None) -> Record:
    """A worked tool-use episode for ``record``: the call, the tool's result, the final answer (``system``: the
    tool list as an episode renders it for a template without tools; None: the template renders the tools)."""
    question = record["prompt"][-1]["content"]
    expression = re.match(r"What is (.+)\?", question)
    assert expression is not None, question
    call = {"name": "calculate", "arguments": {"expression": expression.group(1)}}
    messages = [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": question},
        {"role": "assistant", "content": f"<tool_call>{json.dumps(call)}</tool_call>"},
        {"role": "tool", "content": record["answer"]},
        {"role": "assistant", "content": f"{expression.group(1)} = {record['answer']}"},
    ]
    return {"messages": messages}


class CalculatorDataset(Dataset):
    """Generated multi-digit arithmetic problems with an ``answer`` column; as conversations, worked tool-use
    episodes on other problems (a warm start for models that never call a tool on their own)."""

    name = "calculator"
    description = (
        "generated multi-digit products and sums with an 'answer' column (for --env calculator); as "
        "conversations, worked tool-use episodes for an SFT warm start"
    )
    shapes = frozenset({Shape.PROMPT, Shape.CONVERSATION})
    fields = ()

    def load(self, options: DataOptions) -> DataSplits:
        problems = generated(CALCULATOR_SIZE, CALCULATOR_SEED, calculator_problem)
        if options.shape is not Shape.CONVERSATION:
            return DataSplits(options.shape, problems, [], notes=[f"calculator: {len(problems)} generated problems"])
        asked = {str(p["prompt"]) for p in problems}
        others = [
            p
            for p in generated(DEMONSTRATIONS, DEMONSTRATION_SEED, calculator_problem)
            if str(p["prompt"]) not in asked
        ]
        system = tool_system_prompt(tool_schemas(CalculatorEnvironment(None)))
        records = [demonstration(p, system) for p in others]
        return DataSplits(
            options.shape,
            records,
            [],
            notes=[
                f"calculator: {len(records)} worked tool-use episodes (problems from seed {DEMONSTRATION_SEED}, "
                "none among the environment's; the tool list in the system message, as episodes render it for "
                "a template without tools)"
            ],
        )


DEMONSTRATIONS = 1000
DEMONSTRATION_SEED = 4322


# --------------------------------------------------------------------------------------------------
# guess-number


@dataclass
class GuessOptions:
    """Options of the ``guess-number`` environment."""

    low: int = option(1, "The smallest number the target may be.")
    high: int = option(100, "The largest number the target may be.")

    def __post_init__(self) -> None:
        if self.high <= self.low:
            raise invalid("high", "must be above low")


class GuessNumberEnvironment(TurnEnvironment):
    """Guess the row's number; the environment answers higher or lower. Reward on solving it: 1 for the first
    guess, less for each further one (never below 0.1); 0 when the episode ends unsolved."""

    name = "guess-number"
    description = "a number-guessing game with higher/lower feedback; reward for solving it in fewer turns"
    options_class = GuessOptions
    default_dataset = "guess-number"

    def reset(self, **row: Any) -> str | None:
        options = self.options or GuessOptions()
        self.low, self.high = options.low, options.high
        self.target = int(row.get("target", (self.low + self.high) // 2))
        self.guesses = 0
        return None

    def step(self, message: str) -> StepResult:
        numbers = re.findall(r"-?\d+", message)
        if not numbers:
            return StepResult(f"Please answer with one number between {self.low} and {self.high}.")
        self.guesses += 1
        guess = int(numbers[-1])
        if guess == self.target:
            return StepResult("Correct!", done=True, reward=max(0.1, 1.0 - 0.15 * (self.guesses - 1)))
        return StepResult("Higher." if guess < self.target else "Lower.")


GUESS_SIZE = 1000
GUESS_SEED = 777


def guess_problem(rng: random.Random) -> Record:
    target = rng.randint(1, 100)
    question = (
        "I am thinking of a number between 1 and 100. Guess it: answer with one number, and I will say "
        f"higher or lower. (Game {rng.randint(0, 10**9)})"
    )
    return {"prompt": [{"role": "user", "content": question}], "target": target}


class GuessNumberDataset(Dataset):
    """Generated number-guessing games with a ``target`` column."""

    name = "guess-number"
    description = "generated number-guessing games with a 'target' column (for --env guess-number)"
    shapes = frozenset({Shape.PROMPT})
    fields = ()

    def load(self, options: DataOptions) -> DataSplits:
        records = generated(GUESS_SIZE, GUESS_SEED, guess_problem)
        return DataSplits(options.shape, records, [], notes=[f"guess-number: {len(records)} generated games"])


@hookimpl
def register_environments(register: Any) -> None:
    register(CalculatorEnvironment)
    register(GuessNumberEnvironment)


@hookimpl
def register_datasets(register: Any) -> None:
    register(CalculatorDataset)
    register(GuessNumberDataset)
