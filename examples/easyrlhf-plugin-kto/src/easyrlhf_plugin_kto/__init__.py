"""KTO (TRL's KTOTrainer) and a politeness reward: an example third-party EasyRLHF plugin."""

from __future__ import annotations

import re
from dataclasses import dataclass

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction
from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.trainer_method import (
    TrainerConfig,
    TrainerMethod,
    data_splits,
    lora_config,
    run_model_path,
    run_policy,
    run_tokenizer,
    trl_arguments,
)


@dataclass
class KTOConfig(TrainerConfig):
    """Options of the kto method (on top of the shared ones)."""

    beta: float = option(0.1, "Strength of the implicit KL penalty.")
    desirable_weight: float = option(1.0, "Loss weight of desirable (chosen) examples.")
    undesirable_weight: float = option(1.0, "Loss weight of undesirable (rejected) examples.")
    learning_rate: float = option(5e-7, "Peak learning rate (KTO's usual scale; a shared option's default).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise invalid("beta", "must be > 0")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise invalid("desirable_weight", "both weights must be > 0")


class KTOMethod(TrainerMethod):
    """KTO: align from desirable / undesirable examples (each preference pair gives one of each)."""

    name = "kto"
    description = "Kahneman-Tversky Optimization (TRL KTOTrainer) on preference pairs"
    config_class = KTOConfig
    shape = Shape.PREFERENCE

    def build_trainer(self, run):
        # Heavy imports here, never at module level: `easyrlhf list-plugins` stays instant.
        from trl import KTOConfig as TRLKTOConfig
        from trl import KTOTrainer

        config = run.config
        path = run_model_path(run)
        tokenizer, model = run_tokenizer(run, path), run_policy(run, path)
        train, evaluation = data_splits(run)
        args = trl_arguments(
            TRLKTOConfig,
            run,
            has_eval=evaluation is not None,
            beta=config.beta,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
        )
        trainer = KTOTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=lora_config(config, "CAUSAL_LM"),
        )
        return trainer, tokenizer


@dataclass
class PolitenessOptions:
    """Options of the politeness reward (``--set reward_options.weight=2``)."""

    words: list[str] = option(["please", "thanks", "thank you", "sorry", "glad"], "Polite words and phrases.")
    weight: float = option(1.0, "Score per polite word found.")

    def __post_init__(self) -> None:
        if not self.words:
            raise invalid("words", "name at least one word")


class Politeness(RewardFunction):
    """+weight for each polite word in the completion."""

    name = "politeness"
    description = "counts polite words (please, thank, sorry, glad) in the completion"
    options_class = PolitenessOptions

    def __init__(self, **options):
        super().__init__(**options)
        words = sorted(self.config.words, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def score(self, prompts, completions):
        return [self.config.weight * len(self.pattern.findall(text)) for text in completions]


@hookimpl
def register_methods(register):
    register(KTOMethod)


@hookimpl
def register_rewards(register):
    register(Politeness)
