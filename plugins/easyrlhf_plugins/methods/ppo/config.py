"""PPO's options (on top of the shared ones), validated before any model loads.

Batch sizes, per process (``--num-processes N`` multiplies each by N):

- ``rollout_batch_size`` prompts are sampled per iteration (one ``generate`` call);
- the update runs ``ppo_epochs`` passes over those samples in shuffled minibatches of
  ``per_device_train_batch_size * gradient_accumulation_steps`` samples (one optimizer step each),
  each split into micro-batches of ``per_device_train_batch_size``;
- ``max_steps`` counts iterations (rollout + update); ``-1``: ``num_train_epochs`` passes over the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from easyrlhf_core.kit.config import invalid, option, require_model_dir, require_positive, with_default
from easyrlhf_core.kit.online import SampleLogOptions, SamplingOptions
from easyrlhf_core.kit.rewards import OneRewardOptions
from easyrlhf_core.kit.environments import EnvironmentOptions
from easyrlhf_core.kit.trainer_method import TrainerConfig


@dataclass
class PPOConfig(SamplingOptions, EnvironmentOptions, SampleLogOptions, OneRewardOptions, TrainerConfig):
    """Options of the ppo method."""

    method_name = "ppo"  # in messages
    full_softmax = True  # the sampling rule: top_k and top_p stay off (SamplingOptions checks it)

    # shared options whose meaning PPO makes precise
    max_length: int = option(512, "Maximum tokens per prompt + response; longer prompts are dropped.")
    logging_steps: int = option(1, "Log metrics (and write samples.jsonl rows) every N iterations.")
    eval_steps: int | None = option(None, "Score sampled answers to the eval prompts every N iterations; empty: never.")
    save_steps: int = option(100, "Save a checkpoint every N iterations (0: never).")
    max_steps: int = option(
        -1, "Stop after N PPO iterations (rollout + update); -1: num_train_epochs passes over the prompts."
    )
    num_train_epochs: float = option(1.0, "Passes over the training prompts when max_steps is -1.")
    learning_rate: float = option(3e-6, "Peak learning rate of the policy.")
    per_device_train_batch_size: int = option(
        4,
        "Samples per forward/backward pass in the PPO update (micro-batch): bounds its activation memory; "
        "the results do not depend on it.",
    )
    per_device_eval_batch_size: int = option(16, "Eval prompts per generate call.")
    gradient_accumulation_steps: int = option(
        1,
        "Micro-batches per optimizer step; minibatch = per_device_train_batch_size x this (the gradient is "
        "the whole minibatch's, exactly).",
    )
    # reward (reward_model, reward, reward_options: OneRewardOptions)
    missing_eos_penalty: float | None = option(
        1.0, "Subtracted from the score of responses that never emit the stop token; empty: off."
    )
    reward_clip: float | None = option(None, "Clip scores to [-reward_clip, reward_clip]; empty: off.")
    normalize_reward: bool = option(False, "Scale scores by running mean/std over all iterations so far.")
    # models
    value_model: str | None = option(
        None,
        "Value model init; empty: the reward model when its tokenizer matches "
        "the policy's, else the policy with a fresh scalar head.",
    )
    value_learning_rate: float | None = option(None, "Learning rate of the value model; empty: learning_rate.")
    # rollout
    rollout_batch_size: int = option(16, "Prompts sampled per iteration on each process (one generate call).")
    forward_batch_size: int | None = option(
        None,
        "Sequences per no-grad forward pass (log-probs, reference, values, reward); empty: the whole rollout batch.",
    )
    lean_forward: bool = option(
        True,
        "Pack rows without padding and run the LM head only at the response positions, in chunks (same "
        "results, less memory and time); false: padded rows through the model's own forward. Models whose "
        "attention takes no block mask fall back by themselves.",
    )
    # sampling: temperature, top_k, top_p (SamplingOptions), num_sample_completions (SampleLogOptions)
    max_new_tokens: int = with_default(SamplingOptions, "max_new_tokens", 64)
    stop_token: str | None = option(
        None,
        "Token that ends a response; empty: the model's end-of-turn ids (its "
        "generation config's eos ids and the tokenizer's eos), as in eval and "
        "rrhf.",
    )
    # objective
    beta: float = option(0.05, "KL penalty coefficient (initial value with adaptive_kl).")
    kl_estimator: Literal["k1", "k3"] = option(
        "k1", "Per-token KL estimate: k1 = log p - log q; k3 = (q/p - 1) - log(q/p), non-negative."
    )
    adaptive_kl: bool = option(False, "Adapt beta towards target_kl (Ziegler et al. 2019).")
    target_kl: float = option(6.0, "Target KL per response (nats) for adaptive_kl.")
    kl_horizon: int = option(10000, "Adaptive KL horizon, in samples.")
    gamma: float = option(1.0, "Discount factor.")
    lam: float = option(0.95, "GAE lambda.")
    ppo_epochs: int = option(4, "Passes over each rollout batch.")
    cliprange: float = option(0.2, "Policy ratio clip.")
    cliprange_value: float = option(0.2, "Value prediction clip, around the rollout's values.")
    vf_coef: float = option(0.1, "Value loss weight.")

    def __post_init__(self) -> None:
        super().__post_init__()  # the sampling rule, num_sample_completions, not both reward_model and reward
        require_model_dir("reward_model", self.reward_model)
        require_model_dir("value_model", self.value_model)
        require_positive(self, "rollout_batch_size", "ppo_epochs", "kl_horizon")
        if self.forward_batch_size is not None and self.forward_batch_size <= 0:
            raise invalid("forward_batch_size", "must be a positive integer, or empty for the whole rollout batch")
        if self.rollout_batch_size % self.mini_batch_size:
            raise invalid(
                "rollout_batch_size",
                f"must be a multiple of the minibatch size "
                f"per_device_train_batch_size x gradient_accumulation_steps = "
                f"{self.mini_batch_size}",
            )
        if self.max_new_tokens >= self.max_length:
            raise invalid(
                "max_new_tokens", f"must be below max_length ({self.max_length}), which also bounds the prompt"
            )
        for key in ("cliprange", "cliprange_value", "target_kl"):
            if getattr(self, key) <= 0:
                raise invalid(key, "must be > 0")
        for key in ("beta", "vf_coef"):
            if getattr(self, key) < 0:
                raise invalid(key, "must be >= 0")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise invalid(key, "must be in [0, 1]")
        if self.reward_clip is not None and self.reward_clip <= 0:
            raise invalid("reward_clip", "must be > 0, or empty for off")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise invalid("missing_eos_penalty", "must be >= 0 (it is subtracted), or empty for off")
        if self.value_learning_rate is not None and self.value_learning_rate <= 0:
            raise invalid("value_learning_rate", "must be > 0, or empty for learning_rate")

    def validate_for_run(self) -> None:
        """A run needs exactly one reward, with valid options; checked before data or models load
        (``show-config`` skips this so it can print the defaults). Built once: the trainer gets it."""
        super().validate_for_run()
        if self.env is not None and not self.reward_specs():
            return  # the environment's reward scores the episodes
        self.require_reward(" to score its samples")
        self.build_reward()

    @property
    def mini_batch_size(self) -> int:
        """Samples per optimizer step on each process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps
