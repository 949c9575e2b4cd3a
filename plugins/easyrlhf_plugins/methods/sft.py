"""Supervised fine-tuning (SFT) on conversations with TRL's SFTTrainer, loss on the assistant's tokens."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.config import option
from easyrlhf_core.kit.errors import ConfigError
from easyrlhf_core.kit.model_loading import DEFAULT_CHAT_TEMPLATE
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.trainer_method import (
    TrainerConfig,
    TrainerMethod,
    data_splits,
    describe_trainable,
    lora_config,
    run_model_path,
    run_policy,
    run_tokenizer,
    trl_arguments,
)

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext


@dataclass
class SFTConfig(TrainerConfig):
    """Options of the sft method (on top of the shared ones)."""

    learning_rate: float = option(2e-5, "Peak learning rate.")
    assistant_only_loss: bool = option(
        True, "Loss on the assistant's tokens only (their end-of-turn token included); false: on every token."
    )
    packing: bool | None = option(
        None,
        "Pack several conversations into rows of max_length tokens, attention kept within each "
        "conversation (padding-free). Empty: on when the model keeps packed sequences apart (checked with "
        "a tiny forward pass), else off.",
    )


class SFTMethod(TrainerMethod):
    """SFT: next-token loss on the assistant turns of conversations."""

    name = "sft"
    description = "Supervised fine-tuning (TRL SFTTrainer) on conversations, loss on assistant tokens"
    config_class = SFTConfig
    shape = Shape.CONVERSATION

    def build_trainer(self, run: RunContext) -> tuple[Any, Any]:
        from trl import SFTConfig as TRLSFTConfig
        from trl import SFTTrainer

        config = run.config
        path = run_model_path(run)
        tokenizer = run_tokenizer(run, path)
        original = copy.deepcopy(tokenizer)  # saved with the model: the template the model ships with
        if config.assistant_only_loss:
            tokenizer.chat_template = assistant_masking_template(tokenizer, log=run.log)
        model = run_policy(run, path)
        packing = config.packing
        if packing is None:
            packing = keeps_packed_sequences_apart(model)
            run.log(
                f"sft: packing {'on' if packing else 'off'} (auto: this model "
                f"{'keeps' if packing else 'does not keep'} packed conversations apart)"
            )
        train, evaluation = data_splits(run)
        args = trl_arguments(
            TRLSFTConfig,
            run,
            has_eval=evaluation is not None,
            assistant_only_loss=config.assistant_only_loss,
            packing=packing,
            packing_strategy="bfd",
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=lora_config(config, "CAUSAL_LM"),
        )
        describe_trainable(run, trainer.model)
        return trainer, original


# --------------------------------------------------------------------------------------------------
# Assistant-only loss needs a chat template with {% generation %} markers


def assistant_masking_template(tokenizer: Any, log: Callable[[str], None] = lambda _m: None) -> str:
    """A chat template that renders exactly like the tokenizer's own and marks assistant turns with
    ``{% generation %}``: the template itself if it has the markers, TRL's training variant for the
    templates TRL knows, else a marked ChatML rebuild (SmolLM2, Qwen-style) checked to render the same."""
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
    )

    template = tokenizer.chat_template
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        patched = None
    if patched:
        log("sft: using TRL's training variant of the model's chat template (assistant masks)")
        return patched
    rebuilt = chatml_template_with_markers(tokenizer)
    if rebuilt is None:
        raise ConfigError(
            "the model's chat template has no {% generation %} markers and is not ChatML, so the "
            "assistant tokens cannot be found; set assistant_only_loss: false (loss on every token) "
            "or use a model whose template marks assistant turns",
            where="assistant_only_loss",
        )
    log("sft: the model's ChatML template has no {% generation %} markers; using an equivalent marked copy")
    return rebuilt


_PROBES: list[tuple[list[dict[str, str]], bool]] = [
    ([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}], False),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"},
        ],
        False,
    ),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}], True),
    ([{"role": "user", "content": "Only a question"}], True),
]


def chatml_template_with_markers(tokenizer: Any) -> str | None:
    """Our marked ChatML template, with the original's default system message if it inserts one; None
    unless it renders every probe conversation exactly like the tokenizer's template."""
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False)
    except Exception:
        return None
    turn = "<|im_start|>user\nX<|im_end|>\n"
    if not rendered.endswith(turn):
        return None
    default_system = rendered[: -len(turn)]
    if any(tag in default_system for tag in ("{{", "{%", "{#")):
        return None
    candidate = DEFAULT_CHAT_TEMPLATE
    if default_system:
        candidate = "{% if messages and messages[0]['role'] != 'system' %}" + default_system + "{% endif %}" + candidate
    for messages, generation_prompt in _PROBES:
        original = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        ours = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=candidate
        )
        if original != ours:
            return None
    return candidate


# --------------------------------------------------------------------------------------------------
# Packing is safe when the model's attention honours packed position_ids


def keeps_packed_sequences_apart(model: Any) -> bool:
    """True when two sequences packed into one row (positions restarting at 0, no attention mask, no KV
    cache, as TRL's SFTTrainer calls the model) give the same logits as run one by one: the model keeps
    them apart, so padding-free packing is exact."""
    import torch

    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (1, 7), generator=generator)
    second = torch.randint(0, vocab, (1, 5), generator=generator)
    packed_ids = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [model(input_ids=ids, use_cache=False).logits.float() for ids in (first, second)]
            packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits.float()
    except Exception:
        return False
    finally:
        model.train(was_training)
    scale = max(float(t.abs().max()) for t in alone) + 1.0
    return bool(
        torch.allclose(packed[:, :7], alone[0], atol=1e-4 * scale)
        and torch.allclose(packed[:, 7:], alone[1], atol=1e-4 * scale)
    )


@hookimpl
def register_methods(register):
    register(SFTMethod)
