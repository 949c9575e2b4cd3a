"""The rrhf method's options (on top of the shared ones) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from easyrlhf_core.kit.config import invalid, option, require_positive
from easyrlhf_core.kit.online import SamplingOptions
from easyrlhf_core.kit.rewards import OneRewardOptions
from easyrlhf_core.kit.shared_prefix_packing import PREFIX_SHARING_HELP
from easyrlhf_core.kit.trainer_method import TrainerConfig


@dataclass
class RRHFConfig(SamplingOptions, OneRewardOptions, TrainerConfig):
    """RRHF: a ranking loss over k scored candidates per prompt plus fine-tuning on the best one."""

    method_name = "rrhf"  # in messages

    rank_weight: float = option(
        1.0,
        "Weight of the ranking loss: L = rank_weight * L_rank + L_ft (paper and the "
        "reference code's training scripts: 1).",
    )
    length_penalty: float = option(1.0, "p_i = sum of response log-probs / (response tokens ** length_penalty).")
    ft_normalization: Literal["mean", "sum"] = option(
        "mean",
        "L_ft on the best candidate: 'mean' (per-token mean of its log-likelihood, as SFT) or 'sum' "
        "(the paper's L_ft: summed over its tokens).",
    )
    candidates: Literal["dataset", "generate"] = option(
        "dataset",
        "Where the ranked candidates come from: 'dataset' (responses and scores as given) or "
        "'generate' (sample from a model, add the dataset responses, score all with a reward).",
    )
    num_generations: int = option(4, "candidates=generate: responses sampled per prompt.")
    keep_dataset_responses: bool = option(
        True, "candidates=generate: rank the dataset's responses too (re-scored by the reward)."
    )
    generation_model: str | None = option(
        None, "candidates=generate: model that samples the candidates; empty: the policy (its weights before training)."
    )
    generation_batch_size: int = option(8, "candidates=generate: prompts per generate() call.")
    prefix_sharing: bool = option(True, PREFIX_SHARING_HELP)
    # candidates=generate samples with max_new_tokens, temperature, top_k, top_p (SamplingOptions) and scores
    # with reward_model or reward, reward_options (OneRewardOptions)

    def __post_init__(self) -> None:
        super().__post_init__()  # OneRewardOptions: not both of reward_model and reward
        if self.rank_weight < 0:
            raise invalid("rank_weight", "must be >= 0")
        if self.length_penalty < 0:
            raise invalid("length_penalty", "must be >= 0 (0: sum of log-probs, 1: mean per token)")
        if self.num_generations < 0:
            raise invalid("num_generations", "must be >= 0")
        require_positive(self, "generation_batch_size")
        has_reward = self.reward is not None or self.reward_model is not None
        if self.candidates == "generate":
            self.require_reward(" to score the candidates (candidates=generate)", key="candidates")
            if self.num_generations == 0 and not self.keep_dataset_responses:
                raise invalid("num_generations", "is 0 and keep_dataset_responses is false: no candidates left to rank")
        elif has_reward:
            key = "reward" if self.reward is not None else "reward_model"
            raise invalid(
                key, "is only used with candidates=generate; add --set candidates=generate (or drop the reward)"
            )

    def validate_for_run(self) -> None:
        """candidates=generate: the reward exists, takes its options and, for a reward model, is one;
        checked before data or models load."""
        super().validate_for_run()
        if self.candidates == "generate":
            self.build_reward()  # built once: candidate scoring gets it
