"""--lora cannot be forgotten: a third-party method on a plain transformers.Trainer that never calls apply_lora
trains adapters under --lora (the kit wraps its trainer's model); a trainer the kit cannot wrap, and a method
with its own loop that does not declare LoRA support, are refused in one line; the summary and the model card
claim LoRA only when the saved model really has adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset, Method
from easyrlhf_core.kit.shapes import DataSplits, Shape
from easyrlhf_core.kit.trainer_method import TrainerConfig, TrainerMethod, run_model_path, run_policy, run_tokenizer


class LoraToy(Dataset):
    """Eight short conversations, no eval split."""

    name = "lora-toy"
    description = "eight short conversations"
    shapes = frozenset({Shape.CONVERSATION})

    def load(self, options):
        records = [
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"It is {2 * i}."},
                ]
            }
            for i in range(8)
        ]
        return DataSplits(options.shape, records, [])


@dataclass
class PlainConfig(TrainerConfig):
    pass


def plain_trainer(run, optimizer: bool = False):
    """A plain ``transformers.Trainer`` on the tokenized conversations: no peft, no apply_lora."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from easyrlhf_core.kit.trainer_method import trl_arguments

    path = run_model_path(run)
    tokenizer, model = run_tokenizer(run, path), run_policy(run, path)
    rows = []
    for record in run.data.train:
        text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        encoded = tokenizer(text, padding="max_length", max_length=48, truncation=True)
        labels = [t if m else -100 for t, m in zip(encoded["input_ids"], encoded["attention_mask"])]
        rows.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels})
    args = trl_arguments(TrainingArguments, run, has_eval=False, remove_unused_columns=False)
    optimizers = (torch.optim.SGD(model.parameters(), lr=0.1), None) if optimizer else (None, None)
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=default_data_collator, optimizers=optimizers
    )
    return trainer, tokenizer


class PlainSFT(TrainerMethod):
    name, description, config_class, shape = "plain-sft", "SFT on a plain Trainer", PlainConfig, Shape.CONVERSATION

    def build_trainer(self, run):
        return plain_trainer(run)


class PrebuiltOptimizer(TrainerMethod):
    name, description, config_class, shape = (
        "prebuilt-optimizer",
        "a Trainer given its optimizer",
        PlainConfig,
        Shape.CONVERSATION,
    )

    def build_trainer(self, run):
        return plain_trainer(run, optimizer=True)


class OwnLoop(Method):
    """A custom loop that knows nothing of LoRA: saves the start model as trained."""

    name, description, config_class, shape = "own-loop", "a loop ignoring lora", PlainConfig, Shape.CONVERSATION

    def train(self, run):
        path = run_model_path(run)
        run.log_metrics(1, {"loss": 1.0})
        run.save_model(run_policy(run, path), run_tokenizer(run, path))


class Forgetful(OwnLoop):
    """Declares LoRA support but never applies it: the summary must not believe the declaration."""

    name = "forgetful"
    supports_lora = True


class LoraPlugin:
    @staticmethod
    @hookimpl
    def register_methods(register):
        for method in (PlainSFT, PrebuiltOptimizer, OwnLoop, Forgetful):
            register(method)

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(LoraToy)


@pytest.fixture
def run_method(easyrlhf_plugin, easyrlhf_cli, tiny_model_dir, tmp_path):
    easyrlhf_plugin("lora-test", LoraPlugin)

    def run(method, *extra):
        out = tmp_path / method
        result = easyrlhf_cli(
            "run",
            "--method",
            method,
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "lora-toy",
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "--set",
            "save_steps=0",
            "--set",
            "per_device_train_batch_size=4",
            *extra,
        )
        return result, out

    return run


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def test_a_plain_trainer_method_gets_lora_without_calling_anything(run_method):
    from peft import AutoPeftModelForCausalLM

    result, out = run_method(
        "plain-sft", "--lora", "--save-adapter-only", "--set", "lora.r=4", "--set", "learning_rate=1e-2"
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    assert "lora: adapters (r=4) added to plain-sft's model by the kit" in result.stderr
    assert (out / "model" / "adapter_config.json").is_file()
    assert not (out / "model" / "model.safetensors").exists()  # only the adapter: the base did not train
    model = AutoPeftModelForCausalLM.from_pretrained(out / "model")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0  # B starts at zero: the adapters trained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained"].startswith("plain-sft (LoRA r4) from ")
    assert "| LoRA | r=4" in (out / "README.md").read_text()


def test_a_trainer_the_kit_cannot_wrap_is_refused_in_one_line(run_method):
    result, out = run_method("prebuilt-optimizer", "--lora")
    assert result.exit_code != 0
    assert len(errors(result)) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        "Error: --lora: method 'prebuilt-optimizer' cannot train LoRA adapters: its optimizer was created already"
    ) in errors(result)[0]
    assert "apply_lora" in errors(result)[0] and "drop --lora" in errors(result)[0]
    assert not (out / "model").exists()


def test_a_method_that_does_not_declare_lora_is_refused_before_anything_loads(run_method):
    result, out = run_method("own-loop", "--lora")
    assert result.exit_code != 0
    assert len(errors(result)) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Error: --lora: method 'own-loop' does not train LoRA adapters" in errors(result)[0]
    assert "supports_lora = True" in errors(result)[0]
    assert not out.exists()  # refused before the output dir was claimed


def test_the_summary_never_claims_lora_the_model_does_not_have(run_method):
    result, out = run_method("forgetful", "--lora")
    assert result.exit_code == 0, result.stderr[-3000:]
    assert "warning: --lora: forgetful saved a model without LoRA adapters" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained"].startswith("forgetful (all weights) from ")
    assert "| LoRA |" not in (out / "README.md").read_text()


def test_a_model_with_adapters_already_is_not_wrapped_twice(tiny_model_dir, tmp_path):
    """What a TRL trainer given peft_config (or a method that wrapped its model) hands the kit: left alone."""
    from transformers import Trainer, TrainingArguments

    from easyrlhf_core.kit.config import LoraOptions
    from easyrlhf_core.kit.model_loading import apply_lora, load_causal_lm
    from easyrlhf_core.kit.trainer_run import add_lora

    lora = LoraOptions(enabled=True, r=4)
    run = SimpleNamespace(config=SimpleNamespace(lora=lora), method=SimpleNamespace(name="x"), log=print)
    wrapped = apply_lora(load_causal_lm(str(tiny_model_dir)), lora)
    trainer = Trainer(model=wrapped, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert add_lora(run, trainer) is False and trainer.model is wrapped
    plain = Trainer(
        model=load_causal_lm(str(tiny_model_dir)),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
    )
    assert add_lora(run, plain) is True
    assert plain.model is plain.model_wrapped is plain.callback_handler.model
    assert sum(p.numel() for p in plain.model.parameters() if p.requires_grad) == sum(
        p.numel() for n, p in plain.model.named_parameters() if "lora_" in n
    )
