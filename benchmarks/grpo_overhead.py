"""Overhead of `easyrlhf run --method grpo` over a raw TRL `GRPOTrainer` script, in one run.

Both sides, each a child process of this script, train the same model on the same prompts (the first
``--prompts`` problems of the built-in ``arithmetic`` dataset, in the order our run trains on them) with
the same number of generations, completion length, batch, steps, learning rate, seed, fp32, no eval and no
checkpoints, scored by the same rule (1.0 when the completion's last number equals the answer): ours
through the ``match`` reward plugin, the raw side through the plain function a TRL user writes. Step time
= the trainer's ``train_runtime`` / steps (the training loop alone, measured the same way on both sides);
peak RSS from the child's rusage. The sides alternate within each repeat; the fastest of ``--repeats`` is
kept.

    python benchmarks/grpo_overhead.py                       # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/grpo_overhead.py --steps 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import SEED, benchmark_model, read_metrics, remove, run_child

RAW_SCRIPT = r"""
import json, re, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

model_path, data_path, out, steps, generations, length, batch, lr, seed = sys.argv[1:10]
rows = [json.loads(line) for line in open(data_path)]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")

def match(prompts, completions, answer, **kwargs):
    scores = []
    for completion, expected in zip(completions, answer):
        found = NUMBER.findall(completion[-1]["content"])
        try:
            scores.append(float(bool(found) and abs(float(found[-1].replace(",", "")) - float(expected)) < 1e-6))
        except ValueError:
            scores.append(0.0)
    return scores

tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
args = GRPOConfig(output_dir=out, max_steps=int(steps), num_generations=int(generations),
                  max_completion_length=int(length), per_device_train_batch_size=int(batch), learning_rate=float(lr),
                  seed=int(seed), data_seed=int(seed), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                  logging_steps=1, disable_tqdm=True, gradient_checkpointing=False, lr_scheduler_type="linear",
                  warmup_steps=0.0, weight_decay=0.0, max_grad_norm=1.0, dataloader_num_workers=0,
                  log_completions=False, remove_unused_columns=False)
trainer = GRPOTrainer(model=model, reward_funcs=[match], args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"], "last_loss": losses[-1]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    model = benchmark_model(args.model)
    lr = 1e-6
    with tempfile.TemporaryDirectory(prefix="grpo-overhead-") as tmp:
        root = Path(tmp)
        from easyrlhf_core.kit.data_loading import shuffled

        records = [{"prompt": r["prompt"], "answer": r["answer"]} for r in our_training_prompts(args.prompts)]
        data = root / "prompts.jsonl"  # ours reads it, and shuffles it with the seed as every run does
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        raw_data = root / "prompts-in-our-order.jsonl"  # the raw side gets the records in that same order
        raw_data.write_text("".join(json.dumps(r) + "\n" for r in shuffled(records, SEED)))
        script = root / "raw_grpo.py"
        script.write_text(RAW_SCRIPT)
        ours_cmd = [
            sys.executable,
            "-m",
            "easyrlhf_core.commands.cli",
            "run",
            "--method",
            "grpo",
            "--model",
            model,
            "--dataset",
            "jsonl",
            "--data-files",
            str(data),
            "--reward",
            "match",
            "--output-dir",
            str(root / "ours"),
            "--overwrite",
            "--max-steps",
            str(args.steps),
            "--seed",
            str(SEED),
            *[
                x
                for k, v in {
                    "eval_fraction": 0.0,
                    "max_eval_samples": 0,
                    "save_steps": 0,
                    "logging_steps": 1,
                    "num_generations": args.generations,
                    "per_device_train_batch_size": args.batch,
                    "max_completion_length": args.completion_length,
                    "learning_rate": lr,
                    "num_sample_completions": 0,
                }.items()
                for x in ("--set", f"{k}={v}")
            ],
        ]
        raw_cmd = [
            sys.executable,
            str(script),
            model,
            str(raw_data),
            str(root / "raw"),
            str(args.steps),
            str(args.generations),
            str(args.completion_length),
            str(args.batch),
            str(lr),
            str(SEED),
        ]
        best: dict[str, float] = {}
        rss: dict[str, float] = {}
        losses: dict[str, float] = {}
        for repeat in range(args.repeats):
            order = [("raw", raw_cmd), ("ours", ours_cmd)]
            for side, command in order if repeat % 2 == 0 else order[::-1]:
                child = run_child(command)
                if side == "raw":
                    result = json.loads(
                        next(line[7:] for line in child.output.splitlines() if line.startswith("RESULT "))
                    )
                    runtime, loss = result["train_runtime"], result["last_loss"]
                else:
                    rows = read_metrics(root / "ours")
                    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
                    loss = [r["loss"] for r in rows if "loss" in r][-1]
                    remove(root / "ours")
                step = runtime / args.steps
                best[side] = min(best.get(side, step), step)
                rss[side] = max(rss.get(side, 0.0), child.peak_rss_mib)
                losses[side] = loss
                print(
                    f"repeat {repeat + 1} {side}: {step:.2f} s/step, peak RSS {child.peak_rss_mib:.0f} MiB",
                    file=sys.stderr,
                )
    print(
        f"| grpo | raw TRL {best['raw']:.2f} s/step | easyrlhf {best['ours']:.2f} s/step | ratio "
        f"{best['ours'] / best['raw']:.3f} | peak RSS {rss['raw']:.0f} / {rss['ours']:.0f} MiB |"
    )
    print(f"check: last loss raw {losses['raw']:.6g}, ours {losses['ours']:.6g}")


def our_training_prompts(count: int) -> list[dict]:
    """The arithmetic problems in the order `easyrlhf run --dataset arithmetic` trains on them."""
    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.shapes import DataOptions, Shape
    from easyrlhf_core.runtime.registry import get_registry

    dataset = get_registry().get("datasets", "arithmetic")
    options = DataOptions(shape=Shape.PROMPT, max_train_samples=count, eval_fraction=0.0, max_eval_samples=0, seed=SEED)
    return load_dataset(dataset, options).train


if __name__ == "__main__":
    main()
