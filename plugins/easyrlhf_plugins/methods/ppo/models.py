"""PPO's four models: the policy (trained), the reference (frozen copy, or the adapter-disabled base with
LoRA), the value model (trained; from the reward model when tokenizers match, else the policy with a fresh
scalar head) and the container that trains policy and value as one module (one DDP/DeepSpeed engine)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from easyrlhf_core.kit.zero import is_partitioned

from .forward import Layout, policy_log_probs, response_values

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext

    from .config import PPOConfig


class PolicyAndValue(torch.nn.Module):
    """Policy and value model behind one ``forward``, so one optimizer and one DDP wrapper cover both."""

    def __init__(self, policy: Any, value_model: Any) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, batch: Layout, temperature: float, parts: tuple[str, ...] = ("policy", "value")
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(log-probs, values)`` ``(batch, response_len)`` of the response tokens (log-probs under
        ``logits / temperature``), each None when not in ``parts``."""
        logprobs = policy_log_probs(self.policy, batch, temperature)[0] if "policy" in parts else None
        values = response_values(self.value_model, batch) if "value" in parts else None
        return logprobs, values


@dataclass
class Models:
    tokenizer: Any
    policy: Any
    value_model: Any
    #: ``(batch, temperature) -> response log-probs`` of the frozen reference policy
    reference: Callable[[Layout, float], torch.Tensor]
    #: the separate reference model (None with LoRA: the policy without its adapter)
    reference_model: Any


def same_vocabulary(tokenizer_a: Any, tokenizer_b: Any) -> bool:
    """True when both tokenizers map the same strings to the same ids."""
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def value_model_path(run: RunContext, config: PPOConfig, policy_path: str, tokenizer: Any) -> str:
    """Where the value model starts: ``value_model``, else the reward model when its tokenizer matches the
    policy's, else the policy (with a fresh scalar head)."""
    from easyrlhf_core.kit.model_loading import load_tokenizer

    if config.value_model is not None:
        run.log(f"value model: from {config.value_model}")
        return config.value_model
    if config.reward_model is not None:
        reward_tokenizer = load_tokenizer(config.reward_model, trust_remote_code=config.trust_remote_code)
        if same_vocabulary(reward_tokenizer, tokenizer):
            run.log(f"value model: initialised from the reward model {config.reward_model}")
            return config.reward_model
        run.log(
            "value model: the reward model's tokenizer differs from the policy's; starting from the policy "
            "with a fresh scalar head (scores are decoded and re-tokenized)"
        )
    else:
        run.log("value model: the policy with a fresh scalar head")
    return policy_path


def load_models(run: RunContext, config: PPOConfig, policy_path: str) -> Models:
    """Load, freeze and wire the policy, reference and value models (dropout off in all)."""
    from easyrlhf_core.kit.model_loading import (
        apply_lora,
        disable_dropout,
        load_causal_lm,
        load_sequence_classifier,
        load_tokenizer,
        unwrap,
    )

    tokenizer = load_tokenizer(policy_path, trust_remote_code=config.trust_remote_code, padding_side="left")
    policy = load_causal_lm(policy_path, trust_remote_code=config.trust_remote_code)
    disable_dropout(policy)
    value_path = value_model_path(run, config, policy_path, tokenizer)
    value_model = load_sequence_classifier(
        value_path, trust_remote_code=config.trust_remote_code, pad_token_id=tokenizer.pad_token_id
    )
    disable_dropout(value_model)
    if config.gradient_checkpointing:
        for model in (policy, value_model):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference_model = None
    if config.lora.enabled:
        policy = apply_lora(policy, config.lora, "CAUSAL_LM")
        value_model = apply_lora(value_model, config.lora, "SEQ_CLS")
        disable_dropout(policy)  # the adapters' own dropout too
        disable_dropout(value_model)

        def reference(batch: Layout, temperature: float) -> torch.Tensor:
            with unwrap(policy).disable_adapter():
                return policy_log_probs(policy, batch, temperature)[0]
    else:
        if is_partitioned(policy):  # ZeRO-3 loaded it partitioned: a copy of the slices is no model; load again
            reference_model = load_causal_lm(policy_path, trust_remote_code=config.trust_remote_code)
            disable_dropout(reference_model)
        else:
            reference_model = copy.deepcopy(policy)
        reference_model.eval().requires_grad_(False)

        def reference(batch: Layout, temperature: float) -> torch.Tensor:
            return policy_log_probs(reference_model, batch, temperature)[0]

    return Models(
        tokenizer=tokenizer,
        policy=policy,
        value_model=value_model,
        reference=reference,
        reference_model=reference_model,
    )


def response_stop_ids(config: PPOConfig, tokenizer: Any, policy: Any) -> list[int]:
    """The ids that end a response: ``stop_token`` when set, else the same end-of-turn set that eval and
    rrhf stop on (:func:`easyrlhf_core.kit.causal_lm.stop_token_ids`: the policy's generation config's eos ids and the
    tokenizer's eos), so a response ending in any of the model's eos ids counts as finished."""
    from easyrlhf_core.kit.causal_lm import stop_token_ids
    from easyrlhf_core.kit.errors import ConfigError

    if config.stop_token is None:
        ids = stop_token_ids(tokenizer, policy)
        if not ids:
            raise ConfigError("the tokenizer has no eos token; set stop_token", where="stop_token")
        return ids
    token = config.stop_token
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise ConfigError(f"stop_token {token!r} is not a single token of the policy's tokenizer", where="stop_token")
    return [int(token_id)]
