"""What ``easyrlhf eval`` was asked for: one request object the runner and the episode evaluation share."""

from __future__ import annotations
from dataclasses import dataclass, field
from typing import Any
from easyrlhf_core.commands.eval.data import Split

__all__ = ["EvalRequest"]


@dataclass
class EvalRequest:
    """The options of ``easyrlhf eval`` (see docs/eval.md)."""

    model: str
    reference: str | None = None
    reward_model: str | None = None
    reward: str | None = None
    reward_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "hh-rlhf"
    data_files: list[str] = field(default_factory=list)
    split: Split = "eval"
    limit: int | None = None
    max_new_tokens: int = 128
    max_length: int = 1024
    batch_size: int = 8
    seed: int = 42
    sample: bool = True
    trust_remote_code: bool = False
    rollout_engine: str = "transformers"
    env: str | None = None
    env_options: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 4
    max_episode_tokens: int = 256
