"""Scoring answers with a reward: a reward model directory (through the ``reward-model`` reward plugin) or
any registered reward function (``--reward NAME``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api import RewardFunction
from ..registry import Registry
from ..online import score_with_columns
from ..reward_choice import describe_reward, make_reward
from ..shapes import Message
from .loading import ModelRef



@dataclass
class Judge:
    """A reward function and a phrase naming it for the report."""

    reward: RewardFunction
    description: str

    def score(self, prompts: list[list[Message]], completions: list[list[Message]],
              columns: dict[str, list[Any]] | None = None) -> list[float]:
        """One score per (prompt, completion messages).

        Reward functions score one answer text; a completion of several turns is scored as its last
        assistant message after a prompt that holds the turns before it (the same rendered conversation).
        """
        if not prompts:
            return []
        contexts = [list(p) + list(c[:-1]) for p, c in zip(prompts, completions)]
        texts = [c[-1]["content"] for c in completions]
        return score_with_columns(self.reward, contexts, texts, columns or {})


def reward_model_judge(registry: Registry, model: ModelRef, batch_size: int, max_length: int,
                       trust_remote_code: bool = False) -> Judge:
    """A judge that scores with the reward model at ``model.path``."""
    reward = make_reward(registry, model.path, None, {"batch_size": batch_size, "max_length": max_length,
                                                      "trust_remote_code": trust_remote_code})
    return Judge(reward=reward, description=describe_reward(model.name, None))


def named_judge(registry: Registry, name: str, options: dict[str, Any], where: str = "--reward-option") -> Judge:
    """A judge from the reward function registered as ``name`` (options as keyword arguments; a bad one is
    reported at ``where``, the flag they came from)."""
    return Judge(reward=make_reward(registry, None, name, options, where=where),
                 description=describe_reward(None, name, options))
