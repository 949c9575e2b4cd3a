"""What the methods built on TRL trainers share: config validation, model and tokenizer loading (source
logged), LoRA, precision checks, TRL ``*Config`` arguments from our config, and running the trainer.

Light at import time (no torch / transformers / TRL); the heavy imports live inside the functions.
RRHF and PPO may reuse these helpers too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easyrlhf_core.api import Method
from easyrlhf_core.config import BaseConfig
from easyrlhf_core.errors import ConfigError

if TYPE_CHECKING:
    from easyrlhf_core.run import Run
    from easyrlhf_core.shapes import Record


@dataclass
class TrainerConfig(BaseConfig):
    """Shared options of the trainer-based methods; checks what a run needs before anything loads."""

    def validate_for_run(self) -> None:
        super().validate_for_run()
        if self.deepspeed is not None and not deepspeed_installed():
            raise ConfigError("the deepspeed package is not installed: "
                              "`pip install deepspeed` (ZeRO runs need GPUs), or drop --deepspeed",
                              where="--deepspeed")


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


class TrainerMethod(Method):
    """A method that builds one TRL trainer; ``train`` runs it and saves ``model/``."""

    def build_trainer(self, run: Run) -> tuple[Any, Any]:
        """The ready-to-train trainer and the tokenizer to save next to the model."""
        raise NotImplementedError

    def train(self, run: Run) -> None:
        from easyrlhf_core.hf import train_and_save

        trainer, tokenizer = self.build_trainer(run)
        train_and_save(run, trainer, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------------
# Loading


def resolve_model_path(run: Run, name: str | None = None) -> str:
    """``--model`` (or ``name``) as a loadable path; the source goes to the run log."""
    from easyrlhf_core.models import resolve_model

    resolved = resolve_model(name if name is not None else run.config.model, log=run.log)
    run.log(f"model: {resolved.source}")
    return resolved.path


def load_tokenizer(run: Run, path: str, padding_side: str = "right") -> Any:
    from easyrlhf_core.models import load_tokenizer as load

    return load(path, trust_remote_code=run.config.trust_remote_code, padding_side=padding_side)


def load_policy(run: Run, path: str) -> Any:
    """The causal LM to train (fp32 weights; mixed precision is the trainer's autocast)."""
    from easyrlhf_core.models import load_causal_lm

    check_precision(run.config)
    seed_everything(run.config.seed)
    return load_causal_lm(path, trust_remote_code=run.config.trust_remote_code)


def load_scalar_model(run: Run, path: str, pad_token_id: int) -> Any:
    """A one-label sequence classifier (reward model), its pad token set so the last token can be found."""
    from easyrlhf_core.models import load_sequence_classifier

    check_precision(run.config)
    seed_everything(run.config.seed)  # the new score head is random: make it the same for the same seed
    return load_sequence_classifier(path, trust_remote_code=run.config.trust_remote_code, num_labels=1,
                                    pad_token_id=pad_token_id)


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def check_precision(config: BaseConfig) -> None:
    """fp16 needs a GPU; say so before a model loads."""
    from easyrlhf_core.models import resolve_precision

    precision = resolve_precision(config.precision)
    if precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("fp16 mixed precision needs a GPU; use --precision bf16 or fp32 on CPU",
                              where="--precision")


def lora_config(config: BaseConfig, task_type: str) -> Any:
    """A peft ``LoraConfig`` for the trainer's ``peft_config`` (None without --lora).

    Handing the config to the TRL trainer (rather than wrapping the model first) lets DPO use the
    adapter-disabled base as its reference: no second model copy, no extra "ref" adapter.
    """
    if not config.lora.enabled:
        return None
    from easyrlhf_core.models import peft_config

    return peft_config(config.lora, task_type)


def describe_trainable(run: Run, model: Any) -> None:
    """Log how many parameters train (after LoRA wrapping)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run.log(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)")


# --------------------------------------------------------------------------------------------------
# Data and arguments


def as_dataset(records: list[Record]) -> Any:
    """Our records (TRL conversational format already) as a ``datasets.Dataset`` stored by content hash,
    so the trainer's tokenization is cached across runs."""
    from easyrlhf_core.hfdata import as_hf_dataset

    return as_hf_dataset(records)


def data_splits(run: Run) -> tuple[Any, Any]:
    """``(train, eval or None)`` datasets from ``run.data``."""
    train = as_dataset(run.data.train)
    evaluation = as_dataset(run.data.eval) if run.data.eval else None
    return train, evaluation


def trl_arguments(trl_config_class: type, run: Run, has_eval: bool, **method_fields: Any) -> Any:
    """A TRL ``*Config``: our shared options (``easyrlhf_core.hf.training_arguments``) + the method's fields."""
    from easyrlhf_core.hf import training_arguments

    kwargs = training_arguments(run.config, run, has_eval=has_eval)
    kwargs.update(method_fields)
    kwargs.setdefault("max_length", run.config.max_length)
    return trl_config_class(**kwargs)
