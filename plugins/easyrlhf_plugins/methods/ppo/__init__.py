"""Proximal Policy Optimization (PPO) for RLHF: the InstructGPT loop, our own, on transformers + accelerate.

Modules: ``config`` (options), ``core`` (tensor math), ``rollout`` (generation and scoring), ``models``
(policy, reference, value), ``trainer`` (the loop), ``checkpoint`` (atomic save and resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.shapes import Shape

from .config import PPOConfig

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext


class PPOMethod(Method):
    """Samples responses to prompts, scores them with a reward model or function, and improves the policy
    with clipped PPO updates under a KL penalty to the starting model."""

    name = "ppo"
    description = "PPO (InstructGPT RLHF loop, own implementation on accelerate) with a reward model or function"
    config_class = PPOConfig
    shape = Shape.PROMPT
    supports_lora = True  # models.load_models wraps the policy and the value model with apply_lora

    def train(self, run: RunContext) -> None:
        from .trainer import PPOTrainer

        PPOTrainer(run).train()


@hookimpl
def register_methods(register):
    register(PPOMethod)
