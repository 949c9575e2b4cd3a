"""Built-in reward functions: a reward model directory, and rule-based length and keyword rewards.

Each declares its options as a dataclass (``options_class``); the core checks them (names, types, the
dataclass's own checks) before any model loads and hands them over as ``self.config``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.kit.shapes import Message


@dataclass
class RewardModelOptions:
    """Options of the ``reward-model`` reward."""

    path: str | None = option(None, "The reward model directory (--reward-model PATH sets it).")
    batch_size: int = option(16, "Sequences per forward pass.")
    max_length: int = option(2048, "Token cap per sequence; longer ones lose their oldest tokens.")
    device: str = option("auto", "Where the reward model runs: auto (this rank's GPU, else CPU), cpu, cuda:N.")
    trust_remote_code: bool = option(False, "Allow custom model code.")

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("needs option 'path' (a model directory), e.g. --reward-model PATH")
        if not os.path.isfile(os.path.join(str(self.path), "config.json")):
            raise invalid("path", f"is not a transformers model directory (no config.json): {self.path}")
        if self.batch_size <= 0:
            raise invalid("batch_size", "must be a positive integer")


@dataclass
class LengthOptions:
    """Options of the ``length`` reward."""

    target: int = option(50, "The length that scores best (0).")
    unit: Literal["words", "characters"] = option("words", "How length is counted.")

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise invalid("target", f"must be a positive integer, got {self.target!r}")


@dataclass
class KeywordOptions:
    """Options of the ``keyword`` reward."""

    keywords: list[str] | str | None = option(None, "A word or a list of words to find (or give pattern).")
    pattern: str | None = option(None, "A regular expression to find (or give keywords).")
    mode: Literal["count", "presence"] = option("count", "count: the number of matches; presence: 1 if any.")
    case_sensitive: bool = option(False, "Match case.")
    weight: float = option(1.0, "Multiplies the score.")

    def __post_init__(self) -> None:
        if (self.keywords is None) == (self.pattern is None):
            raise ConfigError(
                "give exactly one of 'keywords' (a word or list of words) and 'pattern' (a regular expression)"
            )
        if self.keywords is not None:
            words = [self.keywords] if isinstance(self.keywords, str) else self.keywords
            if not words or not all(w for w in words):
                raise invalid("keywords", "must be a non-empty word or list of words")
        if self.pattern is not None:
            try:
                re.compile(self.pattern, 0 if self.case_sensitive else re.IGNORECASE)
            except re.error as exc:
                raise invalid("pattern", f"is not a valid regular expression: {exc}") from None


class RewardModelReward(RewardFunction):
    """Scores with a sequence-classification model (e.g. from ``--method rm``): prompt + completion rendered
    with the reward model's own chat template, tokenized as TRL's RewardTrainer tokenizes its pairs, and
    read by the one readout rule (:func:`easyrlhf_core.kit.model_loading.reward_scores`) that training used."""

    name = "reward-model"
    description = "a sequence-classification reward model directory (option path; --reward-model PATH)"
    options_class = RewardModelOptions
    model_option = "path"  # --reward-model PATH builds this reward, with the directory as option path

    def __init__(self, **options: Any) -> None:
        from easyrlhf_core.kit.errors import EasyRLHFError
        from easyrlhf_core.kit.model_loading import check_reward_model

        super().__init__(**options)
        opts: RewardModelOptions = self.config
        try:  # a causal LM or a checkpoint without a trained head is refused before any model loads
            check_reward_model(str(opts.path), "reward model")
        except EasyRLHFError as exc:
            raise ConfigError(exc.message, where=exc.location) from None
        self.path, self.batch_size, self.max_length = str(opts.path), opts.batch_size, opts.max_length
        self.device_name, self.trust_remote_code = opts.device, opts.trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        import torch

        from easyrlhf_core.kit.model_loading import disable_dropout, load_sequence_classifier, load_tokenizer
        from easyrlhf_core.kit.zero import loading_whole

        device = self.device_name
        if device == "auto":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        self._tokenizer = load_tokenizer(self.path, trust_remote_code=self.trust_remote_code, padding_side="right")
        with loading_whole():  # each rank scores its own samples, at its own times: never ZeRO-3 partitioned
            model = load_sequence_classifier(
                self.path,
                trust_remote_code=self.trust_remote_code,
                pad_token_id=self._tokenizer.pad_token_id,
                require_trained_head=True,
            )
        disable_dropout(model)
        self._model = model.to(device).eval().requires_grad_(False)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    def encode(self, prompts: list[list[Message]], completions: list[str]) -> list[list[int]]:
        """Token ids of prompt + completion as the reward model saw its training pairs (its chat template,
        tokenized by it, no generation prompt); over ``max_length``, the oldest tokens go (the score is
        read at the end)."""
        from easyrlhf_core.kit.chat_template import encode, keep_last

        return [
            keep_last(encode(self.tokenizer, prompt + [{"role": "assistant", "content": completion}]), self.max_length)
            for prompt, completion in zip(prompts, completions)
        ]

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        import torch

        from easyrlhf_core.kit.causal_lm import right_pad
        from easyrlhf_core.kit.model_loading import reward_scores

        encoded = self.encode(prompts, completions)
        model, tokenizer = self._model, self._tokenizer
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                input_ids, attention_mask = right_pad(encoded[start : start + self.batch_size], tokenizer.pad_token_id)
                picked = reward_scores(model, input_ids.to(model.device), attention_mask.to(model.device))
                scores.extend(float(s) for s in picked.float().cpu())
        return scores


class LengthReward(RewardFunction):
    """Closeness of the completion's length to a target: ``-|length - target| / target`` (0 is best)."""

    name = "length"
    description = "closeness to a target length (options target=50, unit=words|characters)"
    options_class = LengthOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.target, self.unit = self.config.target, self.config.unit

    def length(self, text: str) -> int:
        return len(text.split()) if self.unit == "words" else len(text)

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        return [-abs(self.length(text) - self.target) / self.target for text in completions]


class KeywordReward(RewardFunction):
    """Counts (or detects) keywords or a regular expression in the completion."""

    name = "keyword"
    description = "keyword / regex matches in the completion (options keywords or pattern, mode=count|presence)"
    options_class = KeywordOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts: KeywordOptions = self.config
        pattern = opts.pattern
        if opts.keywords is not None:
            words = [opts.keywords] if isinstance(opts.keywords, str) else opts.keywords
            pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self.regex = re.compile(str(pattern), 0 if opts.case_sensitive else re.IGNORECASE)
        self.mode, self.weight = opts.mode, float(opts.weight)

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        if self.mode == "presence":
            return [self.weight * float(self.regex.search(text) is not None) for text in completions]
        return [self.weight * len(self.regex.findall(text)) for text in completions]


@dataclass
class MatchOptions:
    """Options of the ``match`` reward."""

    column: str = option("answer", "The dataset column holding the expected answer.")
    pattern: str | None = option(
        None,
        "A regular expression that extracts the answer from the completion (its first "
        "group, else the whole match; the last match counts); empty: the last number.",
    )
    case_sensitive: bool = option(False, "Compare texts with case.")

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise invalid("pattern", f"is not a valid regular expression: {exc}") from None


#: A whole answer that is one number: thousands separators only in groups of three, an optional sign (ASCII or
#: U+2212 minus), an optional fraction and exponent.
_WHOLE_NUMBER = re.compile(r"[+\-\u2212]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][+\-]?\d+)?")
#: Two numbers that are not both integers are equal when closer than this.
NUMBER_TOLERANCE = Fraction(1, 10**6)
#: Larger exponents are not read as numbers (``1e99999999`` would build a 10**8-digit integer): compared as text.
MAX_EXPONENT = 400


def parse_number(value: Any) -> tuple[Fraction, bool] | None:
    """``value`` as an exact number and whether it is an integer (a Python int, or text without a fraction or
    exponent), else None (booleans, non-finite floats, text that is not one whole number such as ``3,4``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value), True
    if isinstance(value, float):
        return (Fraction(value), False) if math.isfinite(value) else None
    text = str(value).strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        return None
    literal = text.replace("\u2212", "-").replace(",", "")
    mantissa, _, exponent = literal.lower().partition("e")
    if exponent and abs(int(exponent)) > MAX_EXPONENT:
        return None
    return Fraction(literal), not any(c in literal for c in ".eE")


class MatchReward(RewardFunction):
    """A verifiable reward: 1.0 when the answer extracted from the completion equals the row's expected answer
    (numbers compared as numbers: integers exactly, others within 1e-6), else 0.0. A number's thousands
    separators come in groups of three (``1,234``; ``3,4`` is two numbers) and a minus sign (``-`` or ``−``)
    counts only where it starts a number (``10-3`` is 10 and 3)."""

    name = "match"
    description = "1 if the completion's answer (a regex, or its last number) equals a dataset column, else 0"
    options_class = MatchOptions
    NUMBER = re.compile(
        r"(?:(?<![\w.)\]])[-\u2212])?"  # a minus only where it starts a number: 10-3 is 10, 3
        r"(?:(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d]|,\d)|\d+)(?:\.\d+)?|(?<![\d.])\.\d+)"
        r"(?:[eE][+\-]?\d+(?![\w.]))?"
    )  # v1.2.3 is 1.2 (no number starts after a digit or dot)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.pattern = re.compile(self.config.pattern) if self.config.pattern else None

    def extract(self, completion: str) -> str | None:
        """The completion's answer: the last match of ``pattern`` (its first group), else its last number."""
        regex = self.pattern or self.NUMBER
        found = list(regex.finditer(completion))
        if not found:
            return None
        last = found[-1]
        return (last.group(1) if last.groups() else last.group(0)).strip()

    def same(self, got: str | None, expected: Any) -> bool:
        if got is None or expected is None:
            return False
        mine, theirs = parse_number(got), parse_number(expected)
        if mine is not None and theirs is not None:
            (a_value, a_integer), (b_value, b_integer) = mine, theirs
            if a_integer and b_integer:
                return a_value == b_value
            return abs(a_value - b_value) < NUMBER_TOLERANCE
        a, b = got.strip(), str(expected).strip()
        return a == b if self.config.case_sensitive else a.lower() == b.lower()

    def score(
        self, prompts: list[list[Message]], completions: list[str], columns: dict[str, list[Any]] | None = None
    ) -> list[float]:
        column = self.config.column
        if not columns or column not in columns:
            known = ", ".join(sorted(columns or {})) or "none"
            raise ConfigError(
                f"reward 'match' compares with the dataset column '{column}', but the rows have no "
                f"column '{column}' (they have: {known}); give each prompt row an '{column}' field "
                f"(the jsonl dataset keeps extra fields) or set reward_options.column",
                where="reward_options",
            )
        return [float(self.same(self.extract(c), e)) for c, e in zip(completions, columns[column])]


@hookimpl
def register_rewards(register):
    register(RewardModelReward)
    register(LengthReward)
    register(KeywordReward)
    register(MatchReward)
