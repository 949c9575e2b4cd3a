"""What a model directory holds (reward model or causal LM), checked before anything loads; loading for
inference (eval mode, no dropout, on the best device)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from easyrlhf_core.kit.errors import EasyRLHFError
from easyrlhf_core.kit.model_loading import resolve_model

__all__ = [
    "Kind",
    "ModelRef",
    "inspect_model",
    "require_kind",
    "device",
    "for_inference",
    "load_ref_policy",
    "load_ref_tokenizer",
    "quiet_transformers",
]

#: What a model directory holds: a reward model (sequence classifier) or a causal LM.
Kind = Literal["reward_model", "causal_lm"]


@dataclass
class ModelRef:
    """A resolved model location, what it is, and the flag it came from (for error messages)."""

    name: str
    path: str
    kind: Kind
    flag: str


def _architectures(path: str, trust_remote_code: bool) -> tuple[list[str], int | None]:
    """``(architectures, num_labels)`` from config.json (or a LoRA adapter's task type)."""
    local = Path(path)
    if (local / "config.json").is_file():
        try:
            config = json.loads((local / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EasyRLHFError(f"cannot read config.json ({exc})", file=local / "config.json") from None
        labels = config.get("id2label")
        return list(config.get("architectures") or []), (len(labels) if isinstance(labels, dict) else None)
    if (local / "adapter_config.json").is_file():
        adapter = json.loads((local / "adapter_config.json").read_text(encoding="utf-8"))
        task = adapter.get("task_type")
        return (["PeftSequenceClassification"] if task == "SEQ_CLS" else ["PeftForCausalLM"]), None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return list(getattr(config, "architectures", None) or []), getattr(config, "num_labels", None)


def inspect_model(name: str, flag: str, trust_remote_code: bool = False) -> ModelRef:
    """Resolve ``name`` (directory, .gguf or Hub id) and tell a reward model from a causal LM."""
    resolved = resolve_model(name)
    architectures, num_labels = _architectures(resolved.path, trust_remote_code)
    if any(a.endswith("SequenceClassification") for a in architectures):
        if num_labels not in (None, 1):
            raise EasyRLHFError(
                f"a sequence classifier with {num_labels} labels, not a reward model (one scalar "
                f"score); give a model trained with `easyrlhf run --method rm`",
                where=name,
            )
        kind: Kind = "reward_model"
    elif any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        kind = "causal_lm"
    else:
        found = ", ".join(architectures) or "none"
        raise EasyRLHFError(
            f"{flag} must be a causal LM (policy) or a one-label sequence classifier (reward "
            f"model); its config.json lists architectures: {found}",
            where=name,
        )
    return ModelRef(name=name, path=resolved.path, kind=kind, flag=flag)


def require_kind(ref: ModelRef, kind: Kind, what: str) -> None:
    """A ModelRef of the wrong kind: one line naming the directory and the flag."""
    if ref.kind != kind:
        has = "a reward model (sequence classifier)" if ref.kind == "reward_model" else "a causal LM"
        raise EasyRLHFError(f"{ref.flag} must be {what}, but this is {has}", where=ref.name)


def device() -> Any:
    """The device inference runs on: the GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def for_inference(model: Any) -> Any:
    """Eval mode, no dropout, no gradients, on :func:`device`."""
    from easyrlhf_core.kit.model_loading import disable_dropout

    disable_dropout(model)
    model.eval()
    model.requires_grad_(False)
    return model.to(device())


def load_ref_policy(ref: ModelRef, trust_remote_code: bool = False) -> Any:
    """The causal LM ``ref`` names, ready for inference (eval mode, no dropout, on :func:`device`)."""
    from easyrlhf_core.kit.model_loading import load_causal_lm

    return for_inference(load_causal_lm(ref.path, trust_remote_code=trust_remote_code))


def load_ref_tokenizer(ref: ModelRef, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    """The tokenizer of the model ``ref`` names (pad token and chat template ensured)."""
    from easyrlhf_core.kit.model_loading import load_tokenizer as load

    return load(ref.path, trust_remote_code=trust_remote_code, padding_side=padding_side)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading bars or tokenizer length warnings while evaluating (our notes report truncation)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
