"""Step time of `easyrlhf run --method dpo` vs a raw TRL DPOTrainer script; and what precomputed reference
log-probs, LoRA and bf16 autocast do to step time and peak RSS on this CPU.

Every variant runs as a child process of this script (same process tree, same machine state), on the same
model, the same hh-rlhf records, batch and step count; runs alternate between variants and the fastest of
``--repeats`` is kept. Step time = the trainer's ``train_runtime`` / steps (the training loop alone, both
sides measured the same way); peak RSS from the child's rusage.

    python benchmarks/dpo_overhead.py                      # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/dpo_overhead.py --model PATH --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAW_TRL_SCRIPT = r'''
import json, sys
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model_path, data_path, steps, batch, max_length, out = sys.argv[1:7]
records = [json.loads(line) for line in open(data_path)]
tokenizer = AutoTokenizer.from_pretrained(model_path)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
args = DPOConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                 max_length=int(max_length), learning_rate=1e-6, beta=0.1, bf16=False, gradient_checkpointing=False,
                 use_cpu=True, save_strategy="no", report_to="none", logging_steps=1, seed=42, data_seed=42,
                 disable_tqdm=True, warmup_steps=0.0, lr_scheduler_type="linear", dataloader_num_workers=0)
trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
result = trainer.train()
print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"]}))
'''


def load_records(samples: int, seed: int) -> list[dict]:
    """The hh-rlhf preference records `easyrlhf run` trains on with the same options."""
    from easyrlhf_core.registry import get_registry
    from easyrlhf_core.shapes import DataOptions, Shape

    dataset = get_registry().get("datasets", "hh-rlhf")()
    splits = dataset.load(DataOptions(shape=Shape.PREFERENCE, max_train_samples=samples, eval_fraction=0.0,
                                      max_eval_samples=0, seed=seed))
    return splits.train


def run_child(command: list[str]) -> tuple[str, float]:
    """Run ``command``; its stdout+stderr and peak RSS in MiB."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return output, usage.ru_maxrss / 1024


def raw_trl(model: str, data: Path, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    output, rss = run_child([sys.executable, "-c", RAW_TRL_SCRIPT, model, str(data), str(args.steps),
                             str(args.batch), str(args.max_length), str(out)])
    line = next(l for l in output.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["train_runtime"] / args.steps, rss


def easyrlhf_run(model: str, args: argparse.Namespace, out: Path, extra: list[str]) -> tuple[float, float]:
    command = [sys.executable, "-m", "easyrlhf_core.cli", "run", "--method", "dpo", "--model", model,
               "--dataset", "hh-rlhf", "--output-dir", str(out), "--overwrite", "--max-steps", str(args.steps),
               "--set", f"max_train_samples={args.samples}", "--set", "eval_fraction=0.0",
               "--set", "max_eval_samples=0", "--set", f"per_device_train_batch_size={args.batch}",
               "--set", f"max_length={args.max_length}", "--set", "save_steps=0", *extra]
    _, rss = run_child(command)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
    return runtime / args.steps, rss


VARIANTS: dict[str, list[str]] = {
    "easyrlhf run (fp32, full)": [],
    "+ precompute_ref_log_probs": ["--set", "precompute_ref_log_probs=true"],
    "+ LoRA (r=16, all-linear)": ["--lora"],
    "+ bf16 autocast": ["--precision", "bf16"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the embedded SmolLM2-135M-Instruct, converted once)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from easyrlhf_core.models import resolve_model

    model = resolve_model(args.model, log=lambda m: print(m, file=sys.stderr)).path
    args.samples = args.steps * args.batch
    work = Path(tempfile.mkdtemp(prefix="dpo-overhead-"))
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in load_records(args.samples, seed=42)))

    names = ["raw TRL DPOTrainer", *VARIANTS]
    best: dict[str, tuple[float, float]] = {}
    started = time.time()
    for repeat in range(args.repeats):
        for name in names:
            out = work / f"{len(best)}-{repeat}-{names.index(name)}"
            if name == "raw TRL DPOTrainer":
                step, rss = raw_trl(model, data, args, out)
            else:
                step, rss = easyrlhf_run(model, args, out, VARIANTS[name])
            old = best.get(name)
            best[name] = (min(step, old[0]) if old else step, max(rss, old[1]) if old else rss)
            print(f"  repeat {repeat + 1}: {name}: {step:.3f} s/step, peak RSS {rss:.0f} MiB", file=sys.stderr)

    raw_step = best["raw TRL DPOTrainer"][0]
    base_step, base_rss = best["easyrlhf run (fp32, full)"]
    print(f"model: {model}; {args.steps} steps x batch {args.batch} pairs, max_length {args.max_length}, "
          f"best of {args.repeats}; total {time.time() - started:.0f}s")
    print("| variant | s/step | ratio | peak RSS MiB | RSS ratio |")
    print("|---|---|---|---|---|")
    for name in names:
        step, rss = best[name]
        reference = raw_step if name in ("raw TRL DPOTrainer", "easyrlhf run (fp32, full)") else base_step
        rss_reference = base_rss
        print(f"| {name} | {step:.3f} | {step / reference:.3f} | {rss:.0f} | {rss / rss_reference:.2f} |")
    ratio = base_step / raw_step
    print(f"easyrlhf run / raw TRL step time: {ratio:.3f} (target <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'})")


if __name__ == "__main__":
    main()
