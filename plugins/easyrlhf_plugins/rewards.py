"""Built-in reward functions: a reward model directory, and rule-based length and keyword rewards.

Options arrive as keyword arguments (config ``reward_options``); bad options raise a ConfigError naming
``reward_options`` before any model loads.
"""

from __future__ import annotations

import os
import re
from typing import Any

from easyrlhf_core import hookimpl
from easyrlhf_core.api import RewardFunction
from easyrlhf_core.errors import ConfigError
from easyrlhf_core.shapes import Message


def _options_error(reward: str, message: str) -> ConfigError:
    return ConfigError(f"reward '{reward}': {message}", where="reward_options")


def _take(reward: str, options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """``allowed`` (name -> default) filled from ``options``; unknown names are an error."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise _options_error(reward, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return {name: options.get(name, default) for name, default in allowed.items()}


class RewardModelReward(RewardFunction):
    """Scores with a sequence-classification model (e.g. from ``--method rm``): prompt + completion rendered
    with the reward model's own chat template, tokenized as TRL's RewardTrainer tokenizes its pairs, and
    read by the one readout rule (:func:`easyrlhf_core.models.reward_scores`) that training used."""

    name = "reward-model"
    description = "a sequence-classification reward model directory (option path; --reward-model PATH)"

    def __init__(self, **options: Any) -> None:
        from easyrlhf_core.errors import EasyRLHFError
        from easyrlhf_core.models import check_reward_model

        super().__init__(**options)
        opts = _take(self.name, options, {"path": None, "batch_size": 16, "max_length": 2048, "device": "auto",
                                          "trust_remote_code": False})
        if not opts["path"]:
            raise _options_error(self.name, "needs option 'path' (a model directory), e.g. --reward-model PATH")
        if not os.path.isfile(os.path.join(str(opts["path"]), "config.json")):
            raise _options_error(self.name, f"not a transformers model directory (no config.json): {opts['path']}")
        if not isinstance(opts["batch_size"], int) or opts["batch_size"] <= 0:
            raise _options_error(self.name, "'batch_size' must be a positive integer")
        try:  # a causal LM or a checkpoint without a trained head is refused before any model loads
            check_reward_model(str(opts["path"]), "reward model")
        except EasyRLHFError as exc:
            raise ConfigError(exc.message, where=exc.location) from None
        self.path, self.batch_size, self.max_length = str(opts["path"]), opts["batch_size"], opts["max_length"]
        self.device_name, self.trust_remote_code = opts["device"], bool(opts["trust_remote_code"])
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        import torch

        from easyrlhf_core.models import disable_dropout, load_sequence_classifier, load_tokenizer

        device = self.device_name
        if device == "auto":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        self._tokenizer = load_tokenizer(self.path, trust_remote_code=self.trust_remote_code, padding_side="right")
        model = load_sequence_classifier(self.path, trust_remote_code=self.trust_remote_code,
                                         pad_token_id=self._tokenizer.pad_token_id, require_trained_head=True)
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
        from easyrlhf_core.chat import encode, keep_last

        return [keep_last(encode(self.tokenizer, prompt + [{"role": "assistant", "content": completion}]),
                          self.max_length)
                for prompt, completion in zip(prompts, completions)]

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        import torch

        from easyrlhf_core.lm import right_pad
        from easyrlhf_core.models import reward_scores

        encoded = self.encode(prompts, completions)
        model, tokenizer = self._model, self._tokenizer
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                input_ids, attention_mask = right_pad(encoded[start:start + self.batch_size], tokenizer.pad_token_id)
                picked = reward_scores(model, input_ids.to(model.device), attention_mask.to(model.device))
                scores.extend(float(s) for s in picked.float().cpu())
        return scores


class LengthReward(RewardFunction):
    """Closeness of the completion's length to a target: ``-|length - target| / target`` (0 is best)."""

    name = "length"
    description = "closeness to a target length (options target=50, unit=words|characters)"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = _take(self.name, options, {"target": 50, "unit": "words"})
        if not isinstance(opts["target"], int) or isinstance(opts["target"], bool) or opts["target"] <= 0:
            raise _options_error(self.name, f"'target' must be a positive integer, got {opts['target']!r}")
        if opts["unit"] not in ("words", "characters"):
            raise _options_error(self.name, f"'unit' must be 'words' or 'characters', got {opts['unit']!r}")
        self.target, self.unit = opts["target"], opts["unit"]

    def length(self, text: str) -> int:
        return len(text.split()) if self.unit == "words" else len(text)

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        return [-abs(self.length(text) - self.target) / self.target for text in completions]


class KeywordReward(RewardFunction):
    """Counts (or detects) keywords or a regular expression in the completion."""

    name = "keyword"
    description = "keyword / regex matches in the completion (options keywords or pattern, mode=count|presence)"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = _take(self.name, options, {"keywords": None, "pattern": None, "mode": "count",
                                          "case_sensitive": False, "weight": 1.0})
        keywords, pattern = opts["keywords"], opts["pattern"]
        if (keywords is None) == (pattern is None):
            raise _options_error(self.name, "give exactly one of 'keywords' (a word or list of words) and "
                                            "'pattern' (a regular expression)")
        if keywords is not None:
            words = [keywords] if isinstance(keywords, str) else keywords
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
                raise _options_error(self.name, "'keywords' must be a non-empty word or list of words")
            pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        flags = 0 if opts["case_sensitive"] else re.IGNORECASE
        try:
            self.regex = re.compile(str(pattern), flags)
        except re.error as exc:
            raise _options_error(self.name, f"'pattern' is not a valid regular expression: {exc}") from None
        if opts["mode"] not in ("count", "presence"):
            raise _options_error(self.name, f"'mode' must be 'count' or 'presence', got {opts['mode']!r}")
        if not isinstance(opts["weight"], (int, float)) or isinstance(opts["weight"], bool):
            raise _options_error(self.name, f"'weight' must be a number, got {opts['weight']!r}")
        self.mode, self.weight = opts["mode"], float(opts["weight"])

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float]:
        if self.mode == "presence":
            return [self.weight * float(self.regex.search(text) is not None) for text in completions]
        return [self.weight * len(self.regex.findall(text)) for text in completions]


@hookimpl
def register_rewards(register):
    register(RewardModelReward)
    register(LengthReward)
    register(KeywordReward)
