"""GRPO and RLOO: critic-free online RL on TRL's GRPOTrainer / RLOOTrainer, scored by the reward plugins
(several at once, with weights), built only on the public kit (easyrlhf_core.training, .online, .rewards)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from easyrlhf_core import hookimpl
from easyrlhf_core.config import invalid, option, require_positive
from easyrlhf_core.errors import ConfigError
from easyrlhf_core.lm import pin_generation
from easyrlhf_core.online import (
    SAMPLES_FILE,
    SampleLog,
    prompts_that_fit,
    trl_reward_funcs,
)
from easyrlhf_core.rewards import WeightedRewardsOptions
from easyrlhf_core.shapes import Shape
from easyrlhf_core.training import (
    TrainerConfig,
    TrainerMethod,
    as_dataset,
    check_full_softmax_sampling,
    check_sampling,
    describe_trainable,
    lora_config,
    run_model_path,
    run_policy,
    run_tokenizer,
    trl_arguments,
)

if TYPE_CHECKING:
    from easyrlhf_core.run import Run
    from easyrlhf_core.shapes import Record


@dataclass
class OnlineConfig(WeightedRewardsOptions, TrainerConfig):
    """What GRPO and RLOO share; names as TRL's configs name them."""

    method_name = "grpo/rloo"  # in messages; each method's config names itself
    learning_rate: float = option(1e-6, "Peak learning rate (TRL's default for GRPO and RLOO).")
    per_device_train_batch_size: int = option(4, "Completions per device per micro-batch; x processes x "
                                                 "steps_per_generation must be a multiple of num_generations.")
    per_device_eval_batch_size: int = option(4, "Eval completions per device per pass.")
    max_length: int = option(512, "Prompt + completion tokens at most; longer prompts are dropped.")
    num_generations: int = option(4, "Completions sampled per prompt, the group the advantages compare "
                                     "(TRL's default: 8 for GRPO, 2 for RLOO; 4 is CPU-friendly).")
    max_completion_length: int = option(128, "Longest completion, in tokens.")
    temperature: float = option(1.0, "Sampling temperature.")
    top_p: float = option(1.0, "Must stay 1.0 (off): the loss's log-probs (and rloo's KL) use the full softmax, "
                               "so nucleus sampling would be off-policy.")
    top_k: int = option(0, "Must stay 0 (off): the loss's log-probs (and rloo's KL) use the full softmax, so "
                           "top-k sampling would be off-policy.")
    epsilon: float = option(0.2, "Clip range of the policy ratio.")
    epsilon_high: float | None = option(None, "Upper clip range (DAPO's clip-higher); empty: epsilon.")
    num_iterations: int = option(1, "Updates per generated batch (PPO-style epochs; 1: on-policy).")
    steps_per_generation: int | None = option(None, "Micro-batches trained per generation round (TRL's count); "
                                                    "empty: gradient_accumulation_steps.")
    mask_truncated_completions: bool = option(False, "Leave completions cut at max_completion_length out of the loss.")
    use_vllm: bool = option(False, "Generate with vLLM (CUDA GPUs and the vllm package).")
    vllm_mode: Literal["colocate", "server"] = option("colocate", "vLLM in the training processes, or a `trl "
                                                                  "vllm-serve` server.")
    num_sample_completions: int = option(4, "Completions (with their rewards) written to samples.jsonl per step.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "num_generations", "max_completion_length", "num_iterations")
        if self.num_generations < 2:
            raise invalid("num_generations", "must be at least 2: the group is what the advantages compare")
        if self.max_completion_length >= self.max_length:
            raise invalid("max_completion_length", f"must be below max_length ({self.max_length}), which also "
                                                   f"bounds the prompt")
        check_sampling(self)
        check_full_softmax_sampling(self, self.method_name)
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high < self.epsilon):
            raise invalid("epsilon", "must be > 0, and epsilon_high (if set) at least epsilon")
        if self.num_sample_completions < 0:
            raise invalid("num_sample_completions", "must be >= 0")

    def validate_for_run(self) -> None:
        """The rewards exist and take their options (built once: the trainer gets them); vLLM can run here.
        Before data or models load."""
        super().validate_for_run()
        self.build_rewards()
        if self.use_vllm:
            if importlib.util.find_spec("vllm") is None:
                raise ConfigError("use_vllm needs the vllm package and CUDA GPUs (`pip install vllm`); on this "
                                  "machine generate with transformers (use_vllm: false)", where="use_vllm")
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("use_vllm needs CUDA GPUs; on CPU generate with transformers (use_vllm: false)",
                                  where="use_vllm")

    def trl_fields(self) -> dict[str, Any]:
        return {"num_generations": self.num_generations, "num_generations_eval": self.num_generations,
                "max_completion_length": self.max_completion_length, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "beta": self.beta, "epsilon": self.epsilon,
                "epsilon_high": self.epsilon_high, "num_iterations": self.num_iterations,
                "steps_per_generation": self.steps_per_generation,
                "mask_truncated_completions": self.mask_truncated_completions,
                "use_vllm": self.use_vllm, "vllm_mode": self.vllm_mode, "log_completions": False,
                "remove_unused_columns": False}  # the dataset's extra columns reach the rewards


@dataclass
class GRPOConfig(OnlineConfig):
    """Options of the grpo method."""

    method_name = "grpo"
    beta: float = option(0.0, "KL coefficient to the reference model (TRL's default 0: no reference is loaded).")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = option(
        "dapo", "How token losses are aggregated (TRL's loss types; dapo: over the active tokens of the batch).")
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "Divide advantages by the reward std of the group, of the batch, or not at all (Dr. GRPO).")

    def trl_fields(self) -> dict[str, Any]:
        return {**super().trl_fields(), "loss_type": self.loss_type, "scale_rewards": self.scale_rewards}


@dataclass
class RLOOConfig(OnlineConfig):
    """Options of the rloo method."""

    method_name = "rloo"
    beta: float = option(0.05, "KL coefficient to the reference model (TRL's default).")
    normalize_advantages: bool = option(False, "Normalise the leave-one-out advantages over the batch.")

    def trl_fields(self) -> dict[str, Any]:
        return {**super().trl_fields(), "normalize_advantages": self.normalize_advantages}


class OnlineMethod(TrainerMethod):
    """A TRL online trainer: prompts in, completions sampled and scored by the reward plugins."""

    shape = Shape.PROMPT
    trl_names: tuple[str, str]  # (config class, trainer class) in trl

    def build_trainer(self, run: Run) -> tuple[Any, Any]:
        import trl

        config: OnlineConfig = run.config
        rewards = config.build_rewards(run.registry)
        path = run_model_path(run)
        tokenizer = run_tokenizer(run, path, padding_side="left")
        model = run_policy(run, path)
        train = self.prompts(run, tokenizer, run.data.train, "training")
        evaluation = self.prompts(run, tokenizer, run.data.eval, "eval") if run.data.eval else []
        samples = SampleLog(run.output_dir / SAMPLES_FILE, [r.label for r in rewards], config.num_sample_completions,
                            enabled=run.is_main_process, resume=run.resume)
        funcs, weights = trl_reward_funcs(rewards, samples)
        run.log(f"{self.name}: rewards " + ", ".join(f"{r.label} x {r.weight:g}" for r in rewards) +
                f"; {config.num_generations} completions per prompt")
        config_class, trainer_class = (getattr(trl, n) for n in self.trl_names)
        try:  # TRL checks the batch against num_generations across all processes, in its config and trainer
            args = trl_arguments(config_class, run, has_eval=bool(evaluation), reward_weights=weights,
                                 **config.trl_fields())
            trainer = trainer_class(model=model, reward_funcs=funcs, args=args, train_dataset=as_dataset(train),
                                    eval_dataset=as_dataset(evaluation) if evaluation else None,
                                    processing_class=tokenizer, peft_config=lora_config(config, "CAUSAL_LM"))
        except ValueError as exc:
            if "num_generations" in str(exc) or "number of generations" in str(exc):
                raise ConfigError(f"{exc} (per_device_train_batch_size x processes x steps_per_generation must be "
                                  f"a multiple of num_generations)", where="num_generations") from None
            raise
        pin_generation(trainer.model)  # TRL's generate: its config alone, not the model's generation_config.json
        samples.trainer = trainer
        describe_trainable(run, trainer.model)
        return trainer, tokenizer

    def prompts(self, run: Run, tokenizer: Any, records: list[Record], split: str) -> list[Record]:
        """The records whose prompt leaves room for a completion (max_length - max_completion_length)."""
        room = run.config.max_length - run.config.max_completion_length
        return prompts_that_fit(run, tokenizer, records, room, split, "max_length - max_completion_length")[0]


class GRPOMethod(OnlineMethod):
    """GRPO: advantages from each prompt's group of completions, no value model."""

    name = "grpo"
    description = "GRPO (TRL GRPOTrainer): group-relative advantages over sampled completions, reward plugins"
    config_class = GRPOConfig
    trl_names = ("GRPOConfig", "GRPOTrainer")


class RLOOMethod(OnlineMethod):
    """RLOO: REINFORCE with a leave-one-out baseline from the prompt's other completions."""

    name = "rloo"
    description = "RLOO (TRL RLOOTrainer): REINFORCE with a leave-one-out baseline, reward plugins"
    config_class = RLOOConfig
    trl_names = ("RLOOConfig", "RLOOTrainer")


@hookimpl
def register_methods(register: Any) -> None:
    register(GRPOMethod)
    register(RLOOMethod)
