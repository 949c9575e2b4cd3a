"""The method kit: what a training method needs, public, the same for the built-in methods and for plugins.

A method on a TRL trainer is a config and a ``build_trainer``::

    from dataclasses import dataclass
    from easyrlhf_core.kit.config import option
    from easyrlhf_core.kit.trainer_method import (TrainerConfig, TrainerMethod, data_splits, lora_config,
                                                  run_model_path,
                                        run_policy, run_tokenizer, trl_arguments)

    @dataclass
    class SimPOConfig(TrainerConfig):
        beta: float = option(2.0, "Reward scale.")

    class SimPO(TrainerMethod):
        name, description, config_class, shape = "simpo", "SimPO (TRL CPOTrainer)", SimPOConfig, Shape.PREFERENCE

        def build_trainer(self, run):
            from trl.experimental.cpo import CPOConfig, CPOTrainer
            path = run_model_path(run)
            tokenizer, model = run_tokenizer(run, path), run_policy(run, path)
            train, evaluation = data_splits(run)
            args = trl_arguments(CPOConfig, run, has_eval=evaluation is not None, loss_type="simpo",
                                 cpo_alpha=0.0, beta=run.config.beta)
            trainer = CPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                 processing_class=tokenizer, peft_config=lora_config(run.config, "CAUSAL_LM"))
            return trainer, tokenizer

:meth:`TrainerMethod.train` then runs it through :func:`~easyrlhf_core.kit.trainer_run.train_and_save`:
checkpoints under
``OUTPUT_DIR/checkpoints``, ``--resume``, Ctrl-C, metrics to ``metrics.jsonl``, the final eval and ``model/``.
A method with its own loop (as ``ppo``) uses the loading helpers directly; a method that scores samples mixes
the reward options of :mod:`easyrlhf_core.kit.rewards` into its config, and one that samples the online kit's
options (:mod:`easyrlhf_core.kit.online`; on TRL's online trainers :mod:`easyrlhf_core.kit.online_trl`).

Light at import time (no torch / transformers / TRL); the heavy imports live inside the functions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.config import BaseConfig
from easyrlhf_core.kit.errors import ConfigError

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext
    from easyrlhf_core.kit.shapes import Record

__all__ = [
    "TrainerConfig",
    "TrainerMethod",
    "run_model_path",
    "run_tokenizer",
    "run_policy",
    "run_scalar_model",
    "seed_everything",
    "check_precision",
    "lora_config",
    "describe_trainable",
    "as_dataset",
    "data_splits",
    "trl_arguments",
    "deepspeed_installed",
]


# --------------------------------------------------------------------------------------------------
# Configs


@dataclass
class TrainerConfig(BaseConfig):
    """The shared options (:class:`~easyrlhf_core.kit.config.BaseConfig`) plus the checks a trainer-based run
    needs before anything loads (DeepSpeed installed when asked for)."""

    def validate_for_run(self) -> None:
        super().validate_for_run()
        if self.deepspeed is not None and not deepspeed_installed():
            raise ConfigError(
                "the deepspeed package is not installed: `pip install deepspeed` (it runs on CPU "
                "too), or drop --deepspeed",
                where="--deepspeed",
            )


def deepspeed_installed() -> bool:
    """Whether the ``deepspeed`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("deepspeed") is not None


# --------------------------------------------------------------------------------------------------
# The trainer-based method


class TrainerMethod(Method):
    """A method that builds one transformers/TRL trainer; ``train`` runs it and saves ``model/``. With
    ``--lora``, a trainer whose model has no adapters (a plain ``transformers.Trainer``) gets them from the kit
    before training (:func:`easyrlhf_core.kit.trainer_run.add_lora`); a TRL trainer given ``lora_config`` wraps its
    own."""

    supports_lora = True

    def build_trainer(self, run: RunContext) -> tuple[Any, Any]:
        """The ready-to-train trainer and the tokenizer to save next to the model."""
        raise NotImplementedError

    def train(self, run: RunContext) -> None:
        from easyrlhf_core.kit.model_loading import lora_errors

        with lora_errors():  # peft's "target modules not found" (raised inside the trainer) in our voice
            trainer, tokenizer = self.build_trainer(run)
        from easyrlhf_core.kit.trainer_run import train_and_save  # transformers: only when training

        train_and_save(run, trainer, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------------
# Loading


def run_model_path(run: RunContext, name: str | None = None) -> str:
    """``--model`` (or ``name``) as a loadable path (Hub id, directory, .gguf, the embedded default); the
    source goes to the run log."""
    from easyrlhf_core.kit.model_loading import resolve_model

    resolved = resolve_model(name if name is not None else run.config.model, log=run.log)
    run.log(f"model: {resolved.source}")
    return resolved.path


def run_tokenizer(run: RunContext, path: str, padding_side: str = "right") -> Any:
    """The model's tokenizer (pad token and chat template ensured), honouring ``trust_remote_code``."""
    from easyrlhf_core.kit.model_loading import load_tokenizer

    return load_tokenizer(path, trust_remote_code=run.config.trust_remote_code, padding_side=padding_side)


def run_policy(run: RunContext, path: str) -> Any:
    """The causal LM to train (fp32 weights; mixed precision is the trainer's autocast), seeded."""
    from easyrlhf_core.kit.model_loading import load_causal_lm

    check_precision(run.config)
    seed_everything(run.config.seed)
    return load_causal_lm(path, trust_remote_code=run.config.trust_remote_code)


def run_scalar_model(run: RunContext, path: str, pad_token_id: int) -> Any:
    """A one-label sequence classifier (reward model) to train, its pad token set so the score is read at
    the last real token (:func:`easyrlhf_core.kit.model_loading.reward_scores`); a new head is seeded."""
    from easyrlhf_core.kit.model_loading import load_sequence_classifier

    check_precision(run.config)
    seed_everything(run.config.seed)
    return load_sequence_classifier(
        path, trust_remote_code=run.config.trust_remote_code, num_labels=1, pad_token_id=pad_token_id
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (``transformers.set_seed``)."""
    from transformers import set_seed

    set_seed(seed)


def check_precision(config: BaseConfig) -> None:
    """fp16 needs a GPU; say so before a model loads."""
    from easyrlhf_core.kit.model_loading import resolve_precision

    if resolve_precision(config.precision) == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "fp16 mixed precision needs a GPU; use --precision bf16 or fp32 on CPU", where="--precision"
            )


def lora_config(config: BaseConfig, task_type: str) -> Any:
    """A peft ``LoraConfig`` for a TRL trainer's ``peft_config`` (None without --lora).

    Handing the config to the TRL trainer (rather than wrapping the model first) lets DPO use the
    adapter-disabled base as its reference: no second model copy, no extra "ref" adapter.
    """
    if not config.lora.enabled:
        return None
    from easyrlhf_core.kit.model_loading import peft_config

    return peft_config(config.lora, task_type)


def describe_trainable(run: RunContext, model: Any) -> None:
    """Log how many parameters train (after LoRA wrapping; ZeRO-3 partitions counted whole)."""
    from easyrlhf_core.kit.model_loading import trainable_line

    run.log(trainable_line(model))


# --------------------------------------------------------------------------------------------------
# Data and arguments


def as_dataset(records: list[Record]) -> Any:
    """Records (TRL's conversational format already) as a ``datasets.Dataset`` stored by content hash, so
    the trainer's tokenization is cached across runs."""
    from easyrlhf_core.kit.dataset_cache import as_hf_dataset

    return as_hf_dataset(records)


def data_splits(run: RunContext) -> tuple[Any, Any]:
    """``(train, eval or None)`` datasets from ``run.data``."""
    train = as_dataset(run.data.train)
    evaluation = as_dataset(run.data.eval) if run.data.eval else None
    return train, evaluation


def trl_arguments(trl_config_class: type, run: RunContext, has_eval: bool, **method_fields: Any) -> Any:
    """A TRL ``*Config`` (or ``TrainingArguments``): :func:`~easyrlhf_core.kit.trainer_run.training_arguments`, then
    ``method_fields`` on top (a method's own fields, or a shared default it overrides, e.g.
    ``remove_unused_columns=False`` for a collator that needs extra columns); ``max_length`` from the config unless
    given."""
    from easyrlhf_core.kit.trainer_run import training_arguments

    kwargs = training_arguments(run.config, run, has_eval=has_eval)
    kwargs.update(method_fields)
    known = getattr(trl_config_class, "__dataclass_fields__", None)
    if known is None or "max_length" in known:  # TRL's configs have it; TrainingArguments has not
        kwargs.setdefault("max_length", run.config.max_length)
    return trl_config_class(**kwargs)
