"""The online kit on TRL's trainers (GRPOTrainer, RLOOTrainer, or another TRL online trainer a plugin picks):
:class:`OnlineConfig` (the options they share, named as TRL names them) and :class:`OnlineMethod` (prompts in,
completions sampled and scored by the reward plugins); the run's weighted rewards as TRL reward functions,
with the dataset's extra columns, logging to ``samples.jsonl`` (:class:`easyrlhf_core.kit.online.SampleLog`).

A TRL online method is a config with its TRL fields and a method naming TRL's classes::

    @dataclass
    class GRPOConfig(OnlineConfig):
        method_name = "grpo"
        beta: float = option(0.0, "KL coefficient to the reference model.")

        def trl_fields(self):
            return {**super().trl_fields(), "beta": self.beta}

    class GRPOMethod(OnlineMethod):
        name, description, config_class = "grpo", "GRPO (TRL GRPOTrainer)", GRPOConfig
        trl_names = ("GRPOConfig", "GRPOTrainer")
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from easyrlhf_core.kit.causal_lm import pin_generation, response_text
from easyrlhf_core.kit.config import invalid, option, require_positive
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.kit.environments import EnvironmentOptions
from easyrlhf_core.kit.rollout import RolloutOptions
from easyrlhf_core.kit.online import SampleLog, SampleLogOptions, TokenSamplingOptions, prompts_that_fit
from easyrlhf_core.kit.online_prefix_sharing import SharedPromptLogProbs
from easyrlhf_core.kit.rewards import WeightedReward, WeightedRewardsOptions, score_with_columns
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.shared_prefix_packing import PREFIX_SHARING_HELP
from easyrlhf_core.kit.trainer_method import (
    TrainerConfig,
    TrainerMethod,
    as_dataset,
    describe_trainable,
    lora_config,
    run_model_path,
    run_policy,
    run_tokenizer,
    trl_arguments,
)

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext
    from easyrlhf_core.kit.shapes import Record

__all__ = [
    "EpisodeRollouts",
    "EnvRewardFunc",
    "episode_rollout",
    "EPISODE_KWARGS",
    "EngineRollouts",
    "OnlineConfig",
    "OnlineMethod",
    "TRLRewardFunc",
    "trl_reward_funcs",
    "TRL_REWARD_KWARGS",
]

#: Keys TRL adds to a reward function's keyword arguments that are not dataset columns.
TRL_REWARD_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}
#: Fields an environment episode adds (kit.episodes): the reward plugins read ``episode_text`` as the completion.
EPISODE_KWARGS = {"episode_text", "env_reward"}


# --------------------------------------------------------------------------------------------------
# Rewards as TRL reward functions


class TRLRewardFunc:
    """A reward plugin as TRL's online trainers call a reward function: ``(prompts, completions, **columns)``
    with conversational prompts and completions; returns one float per completion. TRL decodes completions
    with special tokens skipped; :func:`easyrlhf_core.kit.causal_lm.response_text` then gives the text every path's
    reward sees."""

    def __init__(self, weighted: WeightedReward, samples: SampleLog | None = None) -> None:
        self.weighted = weighted
        self.samples = samples
        self.__name__ = weighted.label  # TRL names the metrics rewards/<name>/mean after it

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        messages = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
        texts = [response_text(c[-1]["content"] if isinstance(c, list) else str(c)) for c in completions]
        if "episode_text" in kwargs:  # an environment episode: the reward reads the whole transcript
            texts = list(kwargs["episode_text"])
        columns = {k: v for k, v in kwargs.items() if k not in TRL_REWARD_KWARGS | EPISODE_KWARGS}
        scores = score_with_columns(self.weighted.reward, messages, texts, columns)
        if self.samples is not None and self.samples.training():
            state = kwargs.get("trainer_state")
            self.samples.record(int(getattr(state, "global_step", 0)) + 1, self.weighted.label, messages, texts, scores)
        return scores


class EnvRewardFunc:
    """The environment's own episode reward as a TRL reward function (logged as ``rewards/<env>/mean``)."""

    def __init__(self, label: str, samples: SampleLog | None = None) -> None:
        self.__name__ = label
        self.samples = samples

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        scores = [0.0 if r is None else float(r) for r in kwargs.get("env_reward", [None] * len(completions))]
        if self.samples is not None and self.samples.training():
            messages = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
            step = int(getattr(kwargs.get("trainer_state"), "global_step", 0)) + 1
            self.samples.record(step, self.__name__, messages, list(kwargs.get("episode_text", [])), scores)
        return scores


def trl_reward_funcs(
    rewards: list[WeightedReward], samples: SampleLog | None = None
) -> tuple[list[TRLRewardFunc], list[float]]:
    """``(reward_funcs, reward_weights)`` for a TRL online trainer (GRPOTrainer, RLOOTrainer)."""
    return [TRLRewardFunc(r, samples) for r in rewards], [r.weight for r in rewards]


# --------------------------------------------------------------------------------------------------
# The config and the method


@dataclass
class OnlineConfig(
    TokenSamplingOptions, RolloutOptions, EnvironmentOptions, SampleLogOptions, WeightedRewardsOptions, TrainerConfig
):
    """What TRL's online methods share (GRPO, RLOO, a plugin's): the sampling options (top_k, top_p off: the loss
    scores the full softmax), ``num_sample_completions``, several weighted rewards; names as TRL's configs name
    them. A subclass sets ``method_name`` and adds its own fields in :meth:`trl_fields`."""

    method_name = "grpo/rloo"  # in messages; each method's config names itself
    full_softmax = True
    learning_rate: float = option(1e-6, "Peak learning rate (TRL's default for GRPO and RLOO).")
    per_device_train_batch_size: int = option(
        4,
        "Completions per device per micro-batch; x processes x "
        "steps_per_generation must be a multiple of num_generations.",
    )
    per_device_eval_batch_size: int = option(
        0,
        "Eval completions per device per pass: a multiple of num_generations (each eval prompt's completions "
        "are scored as one group); 0: num_generations.",
    )
    max_length: int = option(512, "Prompt + completion tokens at most; longer prompts are dropped.")
    num_generations: int = option(
        4,
        "Completions sampled per prompt, the group the advantages compare "
        "(TRL's default: 8 for GRPO, 2 for RLOO; 4 is CPU-friendly).",
    )
    max_completion_length: int = option(128, "Longest completion, in tokens.")
    epsilon: float = option(0.2, "Clip range of the policy ratio.")
    epsilon_high: float | None = option(None, "Upper clip range (DAPO's clip-higher); empty: epsilon.")
    num_iterations: int = option(1, "Updates per generated batch (PPO-style epochs; 1: on-policy).")
    steps_per_generation: int | None = option(
        None, "Micro-batches trained per generation round (TRL's count); empty: gradient_accumulation_steps."
    )
    mask_truncated_completions: bool = option(False, "Leave completions cut at max_completion_length out of the loss.")
    use_vllm: bool = option(
        False, "Generate with TRL's vLLM server mode (CUDA GPUs, `trl vllm-serve`); in-process: rollout_engine: vllm."
    )
    vllm_mode: Literal["colocate", "server"] = option(
        "colocate", "With use_vllm: server (a `trl vllm-serve` server); colocate is rollout_engine: vllm."
    )
    prefix_sharing: bool = option(
        True,
        PREFIX_SHARING_HELP + " Generation (rollout_engine: transformers) also reads each group's prompt once "
        "and copies its KV cache to the group's rows.",
    )

    def __post_init__(self) -> None:
        auto_eval_batch = self.per_device_eval_batch_size == 0  # stays 0 in the config: it follows num_generations
        if auto_eval_batch:
            self.per_device_eval_batch_size = 1  # for the shared checks
        super().__post_init__()  # the sampling rule, num_sample_completions, the one-reward rule, the shared options
        if auto_eval_batch:
            self.per_device_eval_batch_size = 0
        require_positive(self, "num_generations", "max_completion_length", "num_iterations")
        if self.num_generations < 2:
            raise invalid("num_generations", "must be at least 2: the group is what the advantages compare")
        if self.eval_batch_size() % self.num_generations:
            raise invalid(
                "per_device_eval_batch_size",
                f"must be a multiple of num_generations ({self.num_generations}): each eval prompt's completions "
                "are scored as one group (0: num_generations)",
            )
        if self.max_completion_length >= self.max_length:
            raise invalid(
                "max_completion_length", f"must be below max_length ({self.max_length}), which also bounds the prompt"
            )
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high < self.epsilon):
            raise invalid("epsilon", "must be > 0, and epsilon_high (if set) at least epsilon")

    def validate_for_run(self) -> None:
        """The rewards exist and take their options (built once: the trainer gets them); vLLM can run here.
        Before data or models load."""
        super().validate_for_run()
        if self.env is None or self.reward_specs():  # with an environment, its reward may be the only one
            self.build_rewards()
        if self.use_vllm and self.vllm_mode == "colocate":
            raise ConfigError(
                "use_vllm needs vllm_mode: server here (TRL's `trl vllm-serve` on CUDA GPUs); for vLLM inside the "
                "training processes set rollout_engine: vllm (the engine every online method shares)",
                where="use_vllm",
            )
        if self.use_vllm and self.rollout_engine == "vllm":
            raise ConfigError("give one vLLM: rollout_engine: vllm or use_vllm (server mode)", where="use_vllm")
        if self.use_vllm:
            if importlib.util.find_spec("vllm") is None:
                raise ConfigError(
                    "use_vllm needs the vllm package and CUDA GPUs (`pip install vllm`); on this "
                    "machine generate with transformers (use_vllm: false)",
                    where="use_vllm",
                )
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "use_vllm needs CUDA GPUs; on CPU generate with transformers (use_vllm: false)", where="use_vllm"
                )

    def eval_batch_size(self) -> int:
        """``per_device_eval_batch_size``, 0 meaning ``num_generations``."""
        return self.per_device_eval_batch_size or self.num_generations

    def trl_fields(self) -> dict[str, Any]:
        """The fields of TRL's config (on top of the shared training arguments); a subclass adds its own (its
        ``beta``, its loss's options)."""
        return {
            "num_generations": self.num_generations,
            "num_generations_eval": self.num_generations,
            "max_completion_length": self.max_completion_length,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "epsilon": self.epsilon,
            "epsilon_high": self.epsilon_high,
            "num_iterations": self.num_iterations,
            "steps_per_generation": self.steps_per_generation,
            "mask_truncated_completions": self.mask_truncated_completions,
            "use_vllm": self.use_vllm,
            "vllm_mode": self.vllm_mode,
            "log_completions": False,
            "remove_unused_columns": False,
        }  # the dataset's extra columns reach the rewards


class OnlineMethod(TrainerMethod):
    """A TRL online trainer: prompts in, completions sampled and scored by the reward plugins, the first
    ``num_sample_completions`` of each step to ``samples.jsonl``. A subclass names TRL's classes in
    ``trl_names``."""

    shape = Shape.PROMPT
    trl_names: tuple[str, str]  # (config class, trainer class) in trl
    #: Mixed into TRL's trainer with ``env``; None: :class:`EpisodeRollouts` (through TRL's ``rollout_func``). A
    #: trainer without one needs a subclass that hands it the episodes itself (rloo's).
    episode_rollouts: type[EpisodeRollouts] | None = None

    def build_trainer(self, run: RunContext) -> tuple[Any, Any]:
        import trl

        config: OnlineConfig = run.config  # type: ignore[assignment]
        rewards = config.build_rewards(run.registry) if config.env is None or config.reward_specs() else []
        path = run_model_path(run)
        tokenizer = run_tokenizer(run, path, padding_side="left")
        model = run_policy(run, path)
        train = self.prompts(run, tokenizer, run.data.train, "training")
        evaluation = self.prompts(run, tokenizer, run.data.eval, "eval") if run.data.eval else []
        labels = [r.label for r in rewards] + ([config.env] if config.env is not None else [])
        samples = SampleLog.for_run(run, labels, config.num_sample_completions)
        funcs: list[Any]
        funcs, weights = trl_reward_funcs(rewards, samples)
        extra: dict[str, Any] = {}
        episodes = self.episode_rollouts or EpisodeRollouts
        if config.env is not None:
            through_rollout_func = episodes.through_rollout_func
            if (
                through_rollout_func
                and "rollout_func" not in inspect.signature(getattr(trl, self.trl_names[1]).__init__).parameters
            ):
                raise ConfigError(
                    f"{self.name} cannot run environments: TRL's {self.trl_names[1]} takes no rollout_func, so the "
                    f"tokens an environment writes could not be kept out of the loss (the method needs its own "
                    f"episode_rollouts, as rloo has); use grpo, rloo or ppo",
                    where="--env",
                )
            funcs, weights = [*funcs, EnvRewardFunc(config.env, samples)], [*weights, 1.0]
            if through_rollout_func:
                extra["rollout_func"] = episode_rollout
        run.log(
            f"{self.name}: rewards "
            + ", ".join(
                [f"{r.label} x {r.weight:g}" for r in rewards] + ([f"{config.env} (environment)"] if config.env else [])
            )
            + f"; {config.num_generations} {'episodes' if config.env else 'completions'} per prompt"
        )
        config_class, trainer_class = (getattr(trl, n) for n in self.trl_names)
        # The order is the call order: an episode mixin's overrides (RLOO's wrap the log-prob forwards) run first
        # and reach the engine's and the shared-prompt forwards through super(), which reach TRL's own.
        mixins: list[type] = [episodes] if config.env is not None else []
        mixins += [EngineRollouts] if config.rollout_engine != "transformers" else []
        mixins += [SharedPromptLogProbs] if config.prefix_sharing else []
        if mixins:
            trainer_class = type(trainer_class.__name__, (*mixins, trainer_class), {})
        try:  # TRL checks the batch against num_generations across all processes, in its config and trainer
            args = trl_arguments(
                config_class, run, has_eval=bool(evaluation), reward_weights=weights, **config.trl_fields()
            )
            trainer = trainer_class(
                model=model,
                reward_funcs=funcs,
                args=args,
                train_dataset=as_dataset(train),
                eval_dataset=as_dataset(evaluation) if evaluation else None,
                processing_class=tokenizer,
                peft_config=lora_config(config, "CAUSAL_LM"),
                **extra,
            )
        except ValueError as exc:
            if "num_generations" in str(exc) or "number of generations" in str(exc):
                raise ConfigError(
                    f"{exc} (per_device_train_batch_size x processes x steps_per_generation must be "
                    f"a multiple of num_generations)",
                    where="num_generations",
                ) from None
            raise
        # TRL's generate: its config alone, not the model's generation_config.json; a group's prompt read once
        pin_generation(trainer.model, share_prompts=config.prefix_sharing)
        if isinstance(trainer, SharedPromptLogProbs):
            trainer.share_prompts(run.log)
        if isinstance(trainer, EngineRollouts):
            trainer.start_engine(run, path, tokenizer)
        if isinstance(trainer, EpisodeRollouts):
            trainer.start_episodes(run, tokenizer, samples)
        samples.trainer = trainer
        describe_trainable(run, trainer.model)
        return trainer, tokenizer

    def prompts(self, run: RunContext, tokenizer: Any, records: list[Record], split: str) -> list[Record]:
        """The records whose prompt leaves room for a completion (max_length - max_completion_length)."""
        config: OnlineConfig = run.config  # type: ignore[assignment]
        room = config.max_length - config.max_completion_length
        return prompts_that_fit(run, tokenizer, records, room, split, "max_length - max_completion_length")[0]


class EngineRollouts:
    """Mixed into a TRL online trainer (GRPO, RLOO) when ``rollout_engine`` is not transformers: its completions
    come from the rollout layer's engine (:mod:`easyrlhf_core.kit.rollout`), synced with the policy's weights
    whenever an optimizer step has changed them, one completion per (already repeated) prompt row, the stop
    tokens and sampling settings the run's. TRL then scores and trains as usual."""

    rollout_engine: Any = None
    engine_sync: Any = None  # kit.rollout.EngineSync

    def start_engine(self, run: RunContext, model_dir: str, tokenizer: Any) -> None:
        """Start the engine from ``model_dir`` (the policy's starting weights; the first rollout pushes the
        current ones)."""
        from easyrlhf_core.kit.causal_lm import stop_token_ids
        from easyrlhf_core.kit.rollout import EngineSync, build_engine

        config: OnlineConfig = run.config  # type: ignore[assignment]
        self.rollout_config = config
        self.rollout_stops = stop_token_ids(tokenizer, getattr(self, "model", None))
        self.rollout_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.rollout_stops[0]
        self.rollout_engine = build_engine(
            config,
            None,
            tokenizer,
            model_dir=model_dir,
            precision=config.precision,
            seed=config.seed,
            max_model_len=config.max_length,
            log=run.log,
        )
        trainer: Any = self
        self.engine_sync = EngineSync(self.rollout_engine, config.seed, trainer.accelerator.process_index)

    def _generate_single_turn(self, prompt_ids: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        import inspect

        from easyrlhf_core.kit.rollout import Sampling

        trainer: Any = self
        config = self.rollout_config
        policy = trainer.accelerator.unwrap_model(trainer.model)
        seed = self.engine_sync.before_rollout(policy, trainer.state.global_step)
        sampling = Sampling.from_config(
            config, config.max_completion_length, self.rollout_stops, self.rollout_pad, seed
        )
        out = trainer.rollout_engine.generate(prompt_ids, sampling, logprobs=True)
        lengths = out.response_mask.sum(dim=1).tolist()
        completion_ids = [row[:n].tolist() for row, n in zip(out.response_ids, lengths)]
        base = super()._generate_single_turn  # type: ignore[misc]
        if "num_generations" not in inspect.signature(base).parameters:
            return completion_ids  # RLOO: completions only
        assert out.logprobs is not None
        return completion_ids, [row[:n].tolist() for row, n in zip(out.logprobs, lengths)]


def episode_rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
    """TRL's ``rollout_func``: the trainer's environment episodes for these prompts."""
    return trainer.rollout_episodes(prompts)  # type: ignore[no-any-return]


class EpisodeRollouts:
    """Mixed into TRL's GRPOTrainer when ``env`` is set: each prompt row is one episode against a fresh environment
    (:func:`easyrlhf_core.kit.episodes.run_episodes`, on the run's rollout engine), returned to TRL through
    ``rollout_func`` with ``env_mask`` (TRL keeps those tokens out of the loss and the KL), the environment's
    reward and the transcript the reward plugins read. A trainer without ``rollout_func`` needs a subclass
    that sets ``through_rollout_func = False`` and hands :meth:`rollout_episodes` to the trainer itself (rloo's)."""

    through_rollout_func = True  # the episodes reach TRL through its rollout_func (and env_mask)
    episode_rows: list[dict[str, Any]] = []

    def start_episodes(self, run: RunContext, tokenizer: Any, samples: SampleLog) -> None:
        from easyrlhf_core.kit.causal_lm import stop_token_ids

        self.episode_config: OnlineConfig = run.config  # type: ignore[assignment]
        self.episode_registry = run.registry
        self.episode_tokenizer = tokenizer
        self.episode_stops = stop_token_ids(tokenizer, getattr(self, "model", None))
        self.episode_samples = samples

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
        self.episode_rows = inputs  # rollout_func gets the prompts only; the environments need the rows
        return super()._generate_and_score_completions(inputs)  # type: ignore[misc]

    def rollout_episodes(self, prompts: list[Any]) -> dict[str, Any]:
        from easyrlhf_core.kit.episodes import EpisodeSettings, episode_text, run_episodes
        from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

        trainer: Any = self
        config = self.episode_config
        pad = self.episode_tokenizer.pad_token_id
        pad = pad if pad is not None else self.episode_stops[0]
        sampling = Sampling.from_config(config, config.max_completion_length, self.episode_stops, pad)
        rows = [{k: v for k, v in row.items() if k != "prompt"} for row in self.episode_rows]
        envs = [config.new_environment(self.episode_registry) for _ in prompts]
        settings = EpisodeSettings(config.max_turns, config.max_episode_tokens)
        engine = getattr(trainer, "rollout_engine", None)
        if engine is not None:  # vllm: the weights of the current step first
            model = trainer.accelerator.unwrap_model(trainer.model)
            sampling.seed = trainer.engine_sync.before_rollout(model, trainer.state.global_step)
            episodes = run_episodes(engine, self.episode_tokenizer, envs, prompts, rows, sampling, settings, True)
        else:
            from trl.models.utils import unwrap_model_for_generation

            with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
                engine = TransformersEngine(model, self.episode_tokenizer, share_prompts=config.prefix_sharing)
                episodes = run_episodes(engine, self.episode_tokenizer, envs, prompts, rows, sampling, settings)
        mode = "train" if trainer.model.training else "eval"
        for key, values in (
            ("episodes/turns", [e.turns for e in episodes]),
            ("episodes/tool_calls", [e.tool_calls for e in episodes]),
            ("episodes/tool_failures", [e.tool_failures for e in episodes]),
            ("episodes/done", [float(e.done) for e in episodes]),
        ):
            trainer._metrics[mode][key].append(sum(values) / max(1, len(values)))
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.logprobs for e in episodes] if engine.name != "transformers" else None,
            "env_mask": [e.env_mask for e in episodes],
            "env_reward": [e.env_reward for e in episodes],
            "episode_text": [episode_text(e) for e in episodes],
        }
