"""Overhead of `easyrlhf run` over a raw TRL script, for SFT, reward modelling and DPO.

For each method the same training runs twice, each as a child process of this script: once as the short
script a TRL user would write (``Dataset.from_list`` of the records, TRL's ``SFTTrainer`` /
``RewardTrainer`` with ``AutoModelForSequenceClassification(num_labels=1)`` and ``pad_token_id`` set /
``DPOTrainer``), once as ``easyrlhf run --method M``. Both sides get the same model, the same hh-rlhf
records (our dataset plugin: conversations for SFT, preference pairs for RM and DPO; embedded sample,
seed 42), batch, max_length, steps, learning rate (our method's default), seed, fp32, no eval, no
checkpoints, one log row per step. Step time = the trainer's ``train_runtime`` / steps (TRL's training
loop alone, measured the same way on both sides); peak RSS from the child's rusage. Raw and ours alternate
within each repeat (the order flips every repeat); the fastest step time of ``--repeats`` is kept, and the
highest peak RSS. Below the table, a check line per method compares the training tokens (TRL's
``num_tokens``) and the last step's loss of the two sides: equal values show both did the same work
(same records, order, settings and optimizer steps).

    python benchmarks/trl_overhead.py                          # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/trl_overhead.py --methods dpo --steps 8 --repeats 3
    python benchmarks/trl_overhead.py --model /tmp/bench-tiny --steps 2 --repeats 1 --max-length 512

Settings pinned on our side so both sides match (our defaults differ from TRL's here):

* sft: ``packing=false`` and ``assistant_only_loss=false`` (TRL's defaults). Our default assistant-only
  loss needs a chat template with ``{% generation %}`` markers; SmolLM2's has none and TRL cannot patch
  it (our sft method rebuilds a marked copy), so a raw TRL script cannot do the same on this model.
* rm: ``learning_rate`` 1e-5 (ours; TRL's default is 1e-4), ``margin=0`` (no margin column), no reward
  centring.
* gradient checkpointing: off for both sides by default (our default; ``--gradient-checkpointing``: on for
  both). TRL's ``*Config`` classes default it to on; the raw script sets it explicitly, as we do.

Differences that remain (they are what "our layer" is): we hand TRL an Arrow-backed dataset stored by
content hash (``easyrlhf_core.kit.dataset_cache``) rather than ``Dataset.from_list``; our callbacks (metrics.jsonl
row and progress update per step, stop-signal check, checkpoint marker) replace TRL's printer callback;
``log_level="warning"``; our tokenizer loader (pad token / chat template only when missing; SmolLM2 and
the test tokenizer have both, so nothing changes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    ChildResult,
    benchmark_model,
    easyrlhf_command,
    first,
    last,
    load_records,
    read_metrics,
    remove,
    run_child,
    write_jsonl,
)

METHODS = ("sft", "rm", "dpo")
SHAPES = {"sft": "conversation", "rm": "preference", "dpo": "preference"}
LEARNING_RATES = {"sft": 2e-5, "rm": 1e-5, "dpo": 1e-6}  # our methods' defaults
#: Our options that differ from TRL's defaults, pinned to what the raw side does.
OUR_SETTINGS: dict[str, dict[str, Any]] = {
    "sft": {"packing": "false", "assistant_only_loss": "false"},
    "rm": {"margin": 0.0, "center_rewards_coefficient": "null"},
    "dpo": {"beta": 0.1, "precompute_ref_log_probs": "false"},
}

RAW_HEADER = r"""
import json, sys
from datasets import Dataset
from transformers import AutoTokenizer, set_seed

opts = json.loads(sys.argv[1])
records = [json.loads(line) for line in open(opts["data"])]
tokenizer = AutoTokenizer.from_pretrained(opts["model"])
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
common = dict(output_dir=opts["out"], max_steps=opts["steps"], per_device_train_batch_size=opts["batch"],
              max_length=opts["max_length"], learning_rate=opts["learning_rate"], lr_scheduler_type="linear",
              warmup_steps=0.0, weight_decay=0.0, max_grad_norm=1.0, gradient_accumulation_steps=1,
              gradient_checkpointing=opts["gradient_checkpointing"], bf16=False, use_cpu=True,
              eval_strategy="no", save_strategy="no", report_to="none", logging_steps=1, seed=42, data_seed=42,
              disable_tqdm=True, dataloader_num_workers=0)
set_seed(42)
"""

RAW_TRAINERS = {
    "sft": r"""
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer
model = AutoModelForCausalLM.from_pretrained(opts["model"], dtype="float32")
trainer = SFTTrainer(model=model, args=SFTConfig(**common, packing=False, assistant_only_loss=False),
                     train_dataset=Dataset.from_list(records), processing_class=tokenizer)
""",
    "rm": r"""
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer
model = AutoModelForSequenceClassification.from_pretrained(opts["model"], num_labels=1, dtype="float32")
model.config.pad_token_id = tokenizer.pad_token_id
trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=Dataset.from_list(records),
                        processing_class=tokenizer)
""",
    "dpo": r"""
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer
model = AutoModelForCausalLM.from_pretrained(opts["model"], dtype="float32")
trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1), train_dataset=Dataset.from_list(records),
                     processing_class=tokenizer)
""",
}

RAW_FOOTER = r"""
result = trainer.train()
history = trainer.state.log_history
print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"],
                              "loss": [row["loss"] for row in history if "loss" in row][-1],
                              "num_tokens": max(row.get("num_tokens", 0) for row in history)}))
"""


@dataclass
class Measurement:
    """One side of one method: step time, peak RSS, and what the check line compares."""

    step_seconds: float
    peak_rss_mib: float
    num_tokens: float
    last_loss: float

    def best_of(self, other: Measurement | None) -> Measurement:
        """The faster step time and the higher peak RSS of two repeats."""
        if other is None:
            return self
        return Measurement(
            min(self.step_seconds, other.step_seconds),
            max(self.peak_rss_mib, other.peak_rss_mib),
            self.num_tokens,
            self.last_loss,
        )


def raw_trl(method: str, model: str, data: Path, out: Path, args: argparse.Namespace) -> Measurement:
    opts = {
        "model": model,
        "data": str(data),
        "out": str(out),
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "learning_rate": LEARNING_RATES[method],
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    script = RAW_HEADER + RAW_TRAINERS[method] + RAW_FOOTER
    child = run_child([sys.executable, "-c", script, json.dumps(opts)])
    line = next(output_line for output_line in child.output.splitlines() if output_line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    return Measurement(result["train_runtime"] / args.steps, child.peak_rss_mib, result["num_tokens"], result["loss"])


def ours(method: str, model: str, out: Path, args: argparse.Namespace) -> Measurement:
    settings = {
        "max_train_samples": args.samples,
        "per_device_train_batch_size": args.batch,
        "max_length": args.max_length,
        "learning_rate": f"{LEARNING_RATES[method]:.1e}",
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "gradient_accumulation_steps": 1,
        **OUR_SETTINGS[method],
    }
    flags = ["--precision", "fp32"]
    flags += ["--gradient-checkpointing"] if args.gradient_checkpointing else ["--set", "gradient_checkpointing=false"]
    child: ChildResult = run_child(easyrlhf_command(method, model, out, args.steps, settings, flags))
    rows = read_metrics(out)
    measurement = Measurement(
        first(rows, "train_runtime") / args.steps,
        child.peak_rss_mib,
        max(row.get("num_tokens", 0) for row in rows),
        last(rows, "loss"),
    )
    remove(out)
    return measurement


def check_line(method: str, raw: Measurement, mine: Measurement) -> str:
    same = raw.num_tokens == mine.num_tokens and math.isclose(raw.last_loss, mine.last_loss, rel_tol=1e-5)
    return (
        f"check {method}: training tokens raw {raw.num_tokens:.0f} / ours {mine.num_tokens:.0f}; last-step loss "
        f"raw {raw.last_loss:.8g} / ours {mine.last_loss:.8g}: {'same' if same else 'DIFFERENT'}"
    )


def print_table(best: dict[tuple[str, str], Measurement], methods: list[str]) -> None:
    print("| method | raw TRL s/step | easyrlhf s/step | ratio | raw RSS MiB | easyrlhf RSS MiB |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        raw, mine = best[method, "raw"], best[method, "ours"]
        print(
            f"| {method} | {raw.step_seconds:.3f} | {mine.step_seconds:.3f} | "
            f"{mine.step_seconds / raw.step_seconds:.3f} | {raw.peak_rss_mib:.0f} | {mine.peak_rss_mib:.0f} |"
        )
    for method in methods:
        print(check_line(method, best[method, "raw"], best[method, "ours"]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the embedded SmolLM2-135M-Instruct, converted once)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of sft,rm,dpo")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--samples", type=int, help="training records (default: steps x batch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="gradient checkpointing on both sides (default: off, our default)",
    )
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    args.samples = args.samples or args.steps * args.batch
    return args


def main() -> None:
    args = parse_args()
    model = benchmark_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="trl-overhead-"))
    data = {m: write_jsonl(work / f"{m}.jsonl", load_records(SHAPES[m], args.samples)) for m in args.methods}
    best: dict[tuple[str, str], Measurement] = {}
    started = time.time()
    for repeat in range(args.repeats):
        for method in args.methods:
            sides = ("raw", "ours") if repeat % 2 == 0 else ("ours", "raw")
            for side in sides:
                out = work / f"{method}-{side}-{repeat}"
                if side == "raw":
                    measured = raw_trl(method, model, data[method], out, args)
                else:
                    measured = ours(method, model, out, args)
                best[method, side] = measured.best_of(best.get((method, side)))
                print(
                    f"  repeat {repeat + 1}: {method} {side}: {measured.step_seconds:.3f} s/step, peak RSS "
                    f"{measured.peak_rss_mib:.0f} MiB, {measured.num_tokens:.0f} tokens",
                    file=sys.stderr,
                )
    remove(work)
    print(
        f"model: {model}; {args.steps} steps x batch {args.batch}, max_length {args.max_length}, "
        f"{args.samples} records, fp32, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"best of {args.repeats}; total {time.time() - started:.0f}s"
    )
    print_table(best, args.methods)


if __name__ == "__main__":
    main()
