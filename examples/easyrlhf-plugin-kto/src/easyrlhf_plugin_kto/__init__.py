"""KTO (TRL's KTOTrainer) and a politeness reward: an example third-party EasyRLHF plugin."""

from __future__ import annotations

import re
from dataclasses import dataclass

from easyrlhf_core import hookimpl
from easyrlhf_core.api import Method, RewardFunction
from easyrlhf_core.config import BaseConfig, invalid, option
from easyrlhf_core.shapes import Shape


@dataclass
class KTOConfig(BaseConfig):
    """Options of the kto method (on top of the shared ones)."""

    beta: float = option(0.1, "Strength of the implicit KL penalty.")
    desirable_weight: float = option(1.0, "Loss weight of desirable (chosen) examples.")
    undesirable_weight: float = option(1.0, "Loss weight of undesirable (rejected) examples.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise invalid("beta", "must be > 0")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise invalid("desirable_weight", "both weights must be > 0")


class KTOMethod(Method):
    """KTO: align from desirable / undesirable examples."""

    name = "kto"
    description = "Kahneman-Tversky Optimization (TRL KTOTrainer) on preference pairs"
    config_class = KTOConfig
    shape = Shape.PREFERENCE

    def train(self, run) -> None:
        # Heavy imports here, never at module level: `easyrlhf list-plugins` stays instant.
        from trl import KTOConfig as TRLKTOConfig
        from trl import KTOTrainer

        from easyrlhf_core.hf import train_and_save, training_arguments
        from easyrlhf_core.hfdata import as_hf_dataset
        from easyrlhf_core.models import apply_lora, load_causal_lm, load_tokenizer, resolve_model

        config = run.config
        resolved = resolve_model(config.model, log=run.log)
        run.log(f"model: {resolved.source}")
        tokenizer = load_tokenizer(resolved.path, config.trust_remote_code)
        model = apply_lora(load_causal_lm(resolved.path, config.trust_remote_code), config.lora)
        args = TRLKTOConfig(**training_arguments(config, run, has_eval=bool(run.data.eval)),
                            beta=config.beta, desirable_weight=config.desirable_weight,
                            undesirable_weight=config.undesirable_weight, max_length=config.max_length)
        trainer = KTOTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=as_hf_dataset(run.data.train),
                             eval_dataset=as_hf_dataset(run.data.eval) if run.data.eval else None)
        train_and_save(run, trainer, tokenizer=tokenizer)


class Politeness(RewardFunction):
    """+1 for each polite word in the completion."""

    name = "politeness"
    description = "counts polite words (please, thank, sorry, glad) in the completion"
    WORDS = re.compile(r"\b(please|thanks?|thank you|sorry|glad)\b", re.IGNORECASE)

    def score(self, prompts, completions):
        return [float(len(self.WORDS.findall(text))) for text in completions]


@hookimpl
def register_methods(register):
    register(KTOMethod)


@hookimpl
def register_rewards(register):
    register(Politeness)
