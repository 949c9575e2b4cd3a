"""The TRL-based methods (sft, rm, dpo, ipo) end to end on the tiny fixture model: they train through
`easyrlhf run`, change the weights, save a model/ that reloads, mask what they should, and compute the
losses they claim to."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset
from easyrlhf_core.kit.shapes import DataSplits, Shape
from easyrlhf_core.runtime import registry

ROOT = Path(__file__).resolve().parents[1]

#: SmolLM2-135M-Instruct's own chat template (no {% generation %} markers, a default system message).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOPICS = ["bread", "France", "jokes", "homework", "the road", "yeast", "salt", "a chicken"]


def toy_pair(i: int) -> dict:
    """Chosen answers carry the marker word 'Paris', rejected ones 'bread': a preference a tiny RM can learn."""
    topic = TOPICS[i % len(TOPICS)]
    prompt = [{"role": "user", "content": f"Tell me about {topic}, please."}]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": f"Here is what I know about {topic}: Paris."}],
        "rejected": [{"role": "assistant", "content": f"Here is what I know about {topic}: bread."}],
    }


class ToyData(Dataset):
    """24 toy preference pairs (or their chosen side as conversations); the last 8 are for evaluation."""

    name = "toy-prefs"
    description = "toy preference pairs: chosen answers say Paris"
    shapes = frozenset({Shape.PREFERENCE, Shape.CONVERSATION})

    def load(self, options):
        records = [toy_pair(i) for i in range(24)]
        if options.shape == Shape.CONVERSATION:
            records = [{"messages": r["prompt"] + r["chosen"]} for r in records]
        return DataSplits(options.shape, records[:16], records[16:])


class ToyPlugin:
    """Test plugin: the toy preference dataset."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(ToyData)


@pytest.fixture(autouse=True)
def toy_plugin():
    registry.register_plugin("toy-prefs-test", ToyPlugin)
    yield
    registry.unregister_plugin("toy-prefs-test")


@pytest.fixture(scope="module")
def smollm2_template_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model whose tokenizer carries SmolLM2's own chat template."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-smollm2-template")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------------
# Helpers


def run_method(
    cli_run, method: str, model_dir: Path, out: Path, *extra: str, dataset: str = "toy-prefs", steps: int = 3
) -> None:
    result = cli_run(
        "run",
        "--method",
        method,
        "--model",
        str(model_dir),
        "--dataset",
        dataset,
        "--output-dir",
        str(out),
        "--max-steps",
        str(steps),
        "--set",
        "max_length=128",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "per_device_eval_batch_size=2",
        *extra,
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return result


def train_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_run_outputs(out: Path, method: str) -> None:
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == method
    losses = train_losses(out)
    assert losses and all(math.isfinite(x) for x in losses)


def max_weight_change(start_dir: Path, trained) -> float:
    """Largest absolute difference between the starting weights and ``trained``'s, over shared names."""
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(start_dir).state_dict()
    trained_state = trained.state_dict()
    shared = [k for k in start if k in trained_state]
    assert len(shared) >= len(start) - 1  # same architecture (tied lm_head may be listed once)
    return max(float((start[k] - trained_state[k]).abs().max()) for k in shared)


def prepared_run(method: str, model_dir: Path, out: Path, *set_options: str):
    """A prepared Run (data loaded, output dir claimed) for inspecting a method's trainer."""
    from easyrlhf_core.runtime.lifecycle import prepare
    from easyrlhf_core.runtime.run import RunRequest

    request = RunRequest(
        method=method,
        flags={"model": str(model_dir), "dataset": "toy-prefs", "output_dir": str(out)},
        set_options=["max_length=128", *set_options],
    )
    return prepare(request)


# --------------------------------------------------------------------------------------------------
# Each method through `easyrlhf run` on hh-rlhf


HH = ("--set", "max_train_samples=8", "--set", "max_eval_samples=4", "--set", "learning_rate=1e-3")


@pytest.mark.parametrize("method", ["sft", "dpo", "ipo"])
def test_policy_methods_train_on_hh_rlhf_and_reload(cli_run, tiny_model_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    run_method(cli_run, method, tiny_model_dir, out, *HH, dataset="hh-rlhf")
    assert_run_outputs(out, method)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert max_weight_change(tiny_model_dir, reloaded) > 1e-4
    assert (out / "model" / "tokenizer_config.json").is_file()


def test_rm_trains_on_hh_rlhf_and_reloads_as_a_scorer(cli_run, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    run_method(cli_run, "rm", tiny_model_dir, out, *HH, "--set", "max_length=1024", dataset="hh-rlhf")
    assert_run_outputs(out, "rm")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r for r in rows)  # pairwise accuracy is logged at evaluation
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["Human: hi Assistant: hello", "Human: hi Assistant: go away"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


@pytest.mark.parametrize(
    "method, metric", [("sft", "eval_loss"), ("rm", "eval_accuracy"), ("dpo", "eval_rewards/accuracies")]
)
def test_eval_steps_write_eval_rows_to_metrics_during_training(cli_run, tiny_model_dir, tmp_path, method, metric):
    out = tmp_path / method
    run_method(cli_run, method, tiny_model_dir, out, "--set", "eval_steps=3", "--set", "learning_rate=5e-3", steps=6)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if metric in r]
    assert [r["step"] for r in evals] == [3, 6], evals  # every 3 steps; the last step's not twice (final_eval)
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"], evals  # held-out loss falls as training goes on


# --------------------------------------------------------------------------------------------------
# SFT: assistant-only loss, EOS, packing


@pytest.mark.parametrize("template", ["ours", "smollm2"])
def test_sft_labels_cover_exactly_the_assistant_turns(tiny_model_dir, smollm2_template_model_dir, tmp_path, template):
    from easyrlhf_plugins.methods.sft import SFTMethod

    model_dir = tiny_model_dir if template == "ours" else smollm2_template_model_dir
    run = prepared_run("sft", model_dir, tmp_path / "out", "packing=false")
    trainer, saved_tokenizer = SFTMethod().build_trainer(run)
    tokenizer = trainer.processing_class
    assert saved_tokenizer.chat_template == (
        SMOLLM2_TEMPLATE if template == "smollm2" else tokenizer.chat_template
    )  # the model keeps its own template
    for record, row in zip(run.data.train, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        text = tokenizer.decode(ids)
        if template == "smollm2":
            assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        trained = [i for i, label in zip(ids, labels) if label != -100]
        answer = record["messages"][-1]["content"]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"  # assistant text + EOS, nothing else
        assert trained[-1] == tokenizer.eos_token_id
        assert labels == [i if label != -100 else -100 for i, label in zip(ids, labels)]


def test_sft_packing_keeps_assistant_masks(tiny_model_dir, tmp_path):
    from easyrlhf_plugins.methods.sft import SFTMethod

    run = prepared_run("sft", tiny_model_dir, tmp_path / "out", "packing=true")
    trainer, _ = SFTMethod().build_trainer(run)
    tokenizer = trainer.processing_class
    assert trainer.padding_free and len(trainer.train_dataset) < len(run.data.train)  # rows hold several
    trained_text = "".join(
        tokenizer.decode([i for i, label in zip(row["input_ids"], row["labels"]) if label != -100])
        for row in trainer.train_dataset
    )
    answers = [r["messages"][-1]["content"] + "<|im_end|>" for r in run.data.train]
    assert sorted(trained_text.split("<|im_end|>")[:-1]) == sorted(a[: -len("<|im_end|>")] for a in answers)


def test_packing_probe_accepts_llama_and_rejects_a_model_that_mixes_sequences(tiny_model_dir):
    import torch
    from easyrlhf_plugins.methods.sft import keeps_packed_sequences_apart
    from transformers import AutoModelForCausalLM

    assert keeps_packed_sequences_apart(AutoModelForCausalLM.from_pretrained(tiny_model_dir))

    class RunningMean(torch.nn.Module):
        """Logits from the running mean of embeddings: ignores positions, so packing leaks."""

        def __init__(self):
            super().__init__()
            self.config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
            self.embed = torch.nn.Embedding(self.config.vocab_size, 8)
            self.head = torch.nn.Linear(8, self.config.vocab_size)

        def forward(self, input_ids, position_ids=None, use_cache=None):
            hidden = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
            return type("Out", (), {"logits": self.head(hidden)})()

    assert not keeps_packed_sequences_apart(RunningMean())


def test_sft_lora_adapter_only_saves_an_adapter(cli_run, tiny_model_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "sft-lora"
    run_method(cli_run, "sft", tiny_model_dir, out, "--lora", "--save-adapter-only", "--set", "learning_rate=1e-2")
    assert (out / "model" / "adapter_config.json").is_file()
    assert not (out / "model" / "model.safetensors").exists()  # no full weights, only the adapter
    model = AutoPeftModelForCausalLM.from_pretrained(out / "model")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0  # B starts at zero: it trained


# --------------------------------------------------------------------------------------------------
# RM learns a learnable preference


def pairwise_accuracy(model, tokenizer, pairs: list[dict]) -> float:
    import torch

    wins = 0
    for pair in pairs:
        texts = [
            tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=False)
            for side in ("chosen", "rejected")
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            chosen, rejected = model(**batch).logits[:, 0].tolist()
        wins += chosen > rejected
    return wins / len(pairs)


def test_rm_ranks_chosen_above_rejected_more_often_after_training(cli_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from easyrlhf_core.kit.model_loading import load_sequence_classifier, load_tokenizer
    from easyrlhf_core.kit.trainer_method import seed_everything

    held_out = [toy_pair(i) for i in range(100, 116)]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    seed_everything(42)  # the run's seed: the same fresh score head the run starts from
    before = pairwise_accuracy(
        load_sequence_classifier(str(tiny_model_dir), pad_token_id=tokenizer.pad_token_id), tokenizer, held_out
    )
    out = tmp_path / "rm"
    run_method(
        cli_run,
        "rm",
        tiny_model_dir,
        out,
        "--set",
        "learning_rate=5e-3",
        "--set",
        "margin=0.5",
        "--set",
        "center_rewards_coefficient=0.01",
        steps=16,
    )
    trained = AutoModelForSequenceClassification.from_pretrained(out / "model")
    after = pairwise_accuracy(trained, AutoTokenizer.from_pretrained(out / "model"), held_out)
    assert after > before and after >= 0.9, (before, after)


# --------------------------------------------------------------------------------------------------
# DPO / IPO: LoRA reference, losses


@pytest.mark.parametrize("variant", ["full", "lora-merged"])
def test_dpo_full_and_lora_merged_reload_as_plain_models(cli_run, tiny_model_dir, tmp_path, variant):
    from transformers import AutoModelForCausalLM

    out = tmp_path / variant
    extra = ("--lora", "--set", "learning_rate=1e-2") if variant == "lora-merged" else ("--set", "learning_rate=1e-3")
    run_method(cli_run, "dpo", tiny_model_dir, out, *extra)
    assert_run_outputs(out, "dpo")
    assert not (out / "model" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in name for name in reloaded.state_dict())
    assert max_weight_change(tiny_model_dir, reloaded) > 1e-5


def test_dpo_lora_reference_is_the_adapter_disabled_base(tiny_model_dir, tmp_path):
    import torch
    from easyrlhf_plugins.methods.dpo import DPOMethod

    run = prepared_run("dpo", tiny_model_dir, tmp_path / "out", "lora.enabled=true")
    trainer, _ = DPOMethod().build_trainer(run)
    model = trainer.model
    assert trainer.ref_model is None and list(model.peft_config) == ["default"]  # no copy, no "ref" adapter
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    from transformers import AutoModelForCausalLM

    assert base_params == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    # A perturbed adapter moves the policy but not the reference the trainer computes.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    batch = next(iter(trainer.get_train_dataloader()))
    ref_chosen, _ = trainer.compute_ref_log_probs(model, batch)
    with model.disable_adapter():
        (base_chosen, _), _ = sequence_logps(model, batch)
    (policy_chosen, _), _ = sequence_logps(model, batch)
    assert torch.allclose(ref_chosen, base_chosen, atol=1e-4)
    assert not torch.allclose(ref_chosen, policy_chosen, atol=1e-2)


def sequence_logps(model, batch):
    """Summed log-probs of the completion tokens, by hand: (chosen, rejected) and their token counts."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].float()
    return (logprobs * mask).sum(1).chunk(2), mask.sum(1).chunk(2)


def dpo_sigmoid_loss(chosen_logratios, rejected_logratios, beta: float):
    """The reference formula: per-pair DPO loss ``-log σ(β((log π/π_ref)(y_w) − (log π/π_ref)(y_l)))``
    (TRL computes the dpo method's loss; this is what it is checked against)."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


def test_preference_losses_match_hand_computed_values():
    import torch
    from easyrlhf_plugins.methods.dpo_losses import ipo_loss

    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.2, 0.3])
    expected_dpo = [math.log1p(math.exp(-0.1 * 0.8)), math.log1p(math.exp(-0.1 * -0.8))]
    assert torch.allclose(dpo_sigmoid_loss(chosen, rejected, beta=0.1), torch.tensor(expected_dpo))
    assert torch.allclose(ipo_loss(chosen, rejected, tau=0.1), torch.tensor([(0.8 - 5) ** 2, (-0.8 - 5) ** 2]))
    lengths_c, lengths_r = torch.tensor([4.0, 5.0]), torch.tensor([2.0, 10.0])
    expected_mean = [(1.0 / 4 - 0.2 / 2 - 5) ** 2, (-0.5 / 5 - 0.3 / 10 - 5) ** 2]
    assert torch.allclose(ipo_loss(chosen, rejected, 0.1, lengths_c, lengths_r), torch.tensor(expected_mean))


@pytest.mark.parametrize(
    "method, options",
    [
        ("dpo", ["beta=0.3"]),
        ("ipo", ["beta=0.5", "log_ratio_normalization=mean"]),
        ("ipo", ["beta=0.5", "log_ratio_normalization=sum"]),
    ],
)
def test_trainer_loss_equals_the_formula_on_a_fixed_batch(tiny_model_dir, tmp_path, method, options):
    import torch
    from easyrlhf_plugins.methods.dpo import DPOMethod, IPOMethod
    from easyrlhf_plugins.methods.dpo_losses import ipo_loss

    run = prepared_run(method, tiny_model_dir, tmp_path / "out", *options)
    trainer, _ = (DPOMethod() if method == "dpo" else IPOMethod()).build_trainer(run)
    with torch.no_grad():  # move the policy away from its frozen reference copy
        generator = torch.Generator().manual_seed(0)
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    (policy_c, policy_r), (tokens_c, tokens_r) = sequence_logps(trainer.model, batch)
    (ref_c, ref_r), _ = sequence_logps(trainer.ref_model, batch)
    beta = run.config.beta
    if method == "dpo":
        expected = dpo_sigmoid_loss(policy_c - ref_c, policy_r - ref_r, beta).mean()
    elif run.config.log_ratio_normalization == "mean":
        expected = ipo_loss(policy_c - ref_c, policy_r - ref_r, beta, tokens_c, tokens_r).mean()
    else:
        expected = ipo_loss(policy_c - ref_c, policy_r - ref_r, beta).mean()
    assert abs(float(policy_c.mean() - ref_c.mean())) > 1e-3  # the log-ratios are not trivially zero
    assert torch.allclose(loss.float(), expected, rtol=1e-4, atol=1e-5), (float(loss), float(expected))


def test_ipo_summed_normalization_trains_with_precomputed_reference(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "ipo-sum"
    result = run_method(
        cli_run,
        "ipo",
        tiny_model_dir,
        out,
        "--set",
        "log_ratio_normalization=sum",
        "--set",
        "precompute_ref_log_probs=true",
        "--set",
        "learning_rate=1e-3",
    )
    assert "precomputed" in result.stderr
    assert_run_outputs(out, "ipo")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows)


# --------------------------------------------------------------------------------------------------
# DeepSpeed, configs


def test_deepspeed_config_reaches_the_trainer_arguments(tiny_model_dir, tmp_path, monkeypatch):
    """The TRL config gets the DeepSpeed file, a shipped preset found by name (the ZeRO runs themselves:
    tests/test_deepspeed.py)."""
    from easyrlhf_core.kit.trainer_method import trl_arguments

    captured = {}
    run = prepared_run("dpo", tiny_model_dir, tmp_path / "out", "deepspeed=zero2")
    trl_arguments(lambda **kwargs: captured.update(kwargs), run, has_eval=False, beta=run.config.beta)
    assert captured["deepspeed"] == str(ROOT / "easyrlhf_core" / "configs" / "deepspeed" / "zero2.json")
    assert captured["beta"] == 0.1


@pytest.mark.parametrize(
    "method, config_class", [("sft", "SFTConfig"), ("rm", "RewardConfig"), ("dpo", "DPOConfig"), ("ipo", "DPOConfig")]
)
@pytest.mark.parametrize("asked", [False, True])
def test_gradient_checkpointing_is_what_the_config_says(tiny_model_dir, tmp_path, method, config_class, asked):
    """TRL's configs default gradient checkpointing to on: ours (off unless asked) must win, both ways."""
    import trl

    from easyrlhf_core.kit.trainer_method import trl_arguments

    run = prepared_run(method, tiny_model_dir, tmp_path / "out", f"gradient_checkpointing={str(asked).lower()}")
    arguments = trl_arguments(getattr(trl, config_class), run, has_eval=False)
    assert arguments.gradient_checkpointing is asked


@pytest.mark.parametrize("method", ["sft", "ppo"])
def test_deepspeed_without_the_package_is_a_one_line_error(cli_run, tmp_path, monkeypatch, method):
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # hidden: find_spec says absent, import fails
    path = ROOT / "configs" / "deepspeed" / "zero3.json"
    out = tmp_path / "out"
    reward = ["--reward", "length"] if method == "ppo" else []
    result = cli_run(
        "run", "--method", method, "--dataset", "toy-prefs", "--output-dir", str(out), *reward, "--deepspeed", str(path)
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --deepspeed: the deepspeed package is not installed: `pip install deepspeed` (it runs on CPU "
        "too), or drop --deepspeed"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    "name, stage, offload",
    [("zero2", 2, False), ("zero3", 3, False), ("zero2_offload", 2, True), ("zero3_offload", 3, True)],
)
def test_deepspeed_configs_leave_batch_and_precision_to_the_trainer(name, stage, offload):
    config = json.loads((ROOT / "configs" / "deepspeed" / f"{name}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in config["zero_optimization"]) == offload
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"


def test_fp16_on_cpu_is_refused_before_a_model_loads(cli_run, tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli_run(
        "run",
        "--method",
        "dpo",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "toy-prefs",
        "--output-dir",
        str(tmp_path / "out"),
        "--precision",
        "fp16",
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --precision: fp16 mixed precision needs a GPU")
