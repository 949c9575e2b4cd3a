"""GRPO and RLOO: critic-free online RL on TRL's GRPOTrainer / RLOOTrainer, scored by the reward plugins
(several at once, with weights), built only on the online kit (:mod:`easyrlhf_core.kit.online_trl`): each keeps
only its own options and TRL's names, rloo also the overrides that hand TRL's RLOOTrainer environment episodes
(:mod:`.rloo_episodes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.config import option
from easyrlhf_core.kit.online_trl import OnlineConfig, OnlineMethod

from .rloo_episodes import RLOOEpisodeRollouts


@dataclass
class GRPOConfig(OnlineConfig):
    """Options of the grpo method."""

    method_name = "grpo"
    beta: float = option(0.0, "KL coefficient to the reference model (TRL's default 0: no reference is loaded).")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = option(
        "dapo", "How token losses are aggregated (TRL's loss types; dapo: over the active tokens of the batch)."
    )
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "Divide advantages by the reward std of the group, of the batch, or not at all (Dr. GRPO)."
    )

    def trl_fields(self) -> dict[str, Any]:
        return {
            **super().trl_fields(),
            "beta": self.beta,
            "loss_type": self.loss_type,
            "scale_rewards": self.scale_rewards,
        }


@dataclass
class RLOOConfig(OnlineConfig):
    """Options of the rloo method."""

    method_name = "rloo"
    beta: float = option(0.05, "KL coefficient to the reference model (TRL's default).")
    normalize_advantages: bool = option(False, "Normalise the leave-one-out advantages over the batch.")

    def trl_fields(self) -> dict[str, Any]:
        return {**super().trl_fields(), "beta": self.beta, "normalize_advantages": self.normalize_advantages}


class GRPOMethod(OnlineMethod):
    """GRPO: advantages from each prompt's group of completions, no value model."""

    name = "grpo"
    description = "GRPO (TRL GRPOTrainer): group-relative advantages over sampled completions, reward plugins"
    config_class = GRPOConfig
    trl_names = ("GRPOConfig", "GRPOTrainer")


class RLOOMethod(OnlineMethod):
    """RLOO: REINFORCE with a leave-one-out baseline from the prompt's other completions; with ``env``, on
    episodes (:mod:`.rloo_episodes`: TRL's RLOOTrainer has no rollout_func)."""

    name = "rloo"
    description = "RLOO (TRL RLOOTrainer): REINFORCE with a leave-one-out baseline, reward plugins"
    config_class = RLOOConfig
    trl_names = ("RLOOConfig", "RLOOTrainer")
    episode_rollouts = RLOOEpisodeRollouts


@hookimpl
def register_methods(register: Any) -> None:
    register(GRPOMethod)
    register(RLOOMethod)
