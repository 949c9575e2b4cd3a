"""`easyrlhf run --method grpo|rloo` against a raw TRL `GRPOTrainer` / `RLOOTrainer` script, in one run:
our overhead, and what prefix sharing (each prompt once in the log-prob forwards) gains.

Every side is a child process of this script training the same model on the same prompts in the same order,
with the same number of generations, completion length, batch, steps, learning rate, seed, fp32, no eval and
no checkpoints, scored by the same rule:

- ``--dataset arithmetic`` (default): the first ``--prompts`` problems of the built-in ``arithmetic`` dataset,
  1.0 when the completion's last number equals the answer (ours: the ``match`` reward plugin);
- ``--dataset hh-rlhf``: the embedded hh-rlhf sample's prompts (multi-turn chats), scored by closeness to 50
  words (ours: the ``length`` reward plugin), ``max_length`` 2048 so no prompt is dropped on our side.

The raw side is the script a TRL user writes (the trainer on ``Dataset.from_list``, a plain reward function).
``--sides`` picks the sides: ``raw``, ``ours`` (``prefix_sharing`` at its default, on) and ``ours-unshared``
(``prefix_sharing=false``: TRL's own log-prob forwards). Step time = the trainer's ``train_runtime`` / steps
(the training loop alone, measured the same way on every side); peak RSS from the child's rusage. Each child
also times its log-prob forwards (every call of ``_get_per_token_logps_and_entropies``: policy, old policy,
reference) and the backward passes (``Accelerator.backward``), reported as shares of the step. The sides
alternate within each repeat; the fastest of ``--repeats`` is kept.

    python benchmarks/grpo_overhead.py                       # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/grpo_overhead.py --steps 4 --repeats 2
    python benchmarks/grpo_overhead.py --method grpo,rloo --dataset hh-rlhf --completion-length 64 \\
        --sides raw,ours-unshared,ours --steps 2 --repeats 1      # prefix sharing against raw TRL
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import SEED, benchmark_model, load_records, read_metrics, remove, run_child

#: Times the log-prob forwards and the backward passes of a child; prints ``TIMES {...}`` at exit.
TIMER = r"""
import atexit, functools, json, time
_spent = {"forwards": 0.0, "backward": 0.0}
_depth = [0]

def _timed(cls, name, key):
    inner = getattr(cls, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        _depth[0] += 1
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            _depth[0] -= 1
            if _depth[0] == 0:  # the outermost call only (our shared path falls back to TRL's by super())
                _spent[key] += time.perf_counter() - start

    setattr(cls, name, wrapper)

import accelerate, trl
for _cls in (trl.GRPOTrainer, trl.RLOOTrainer):
    _timed(_cls, "_get_per_token_logps_and_entropies", "forwards")
try:
    from easyrlhf_core.kit.online_prefix_sharing import SharedPromptLogProbs
    _timed(SharedPromptLogProbs, "_get_per_token_logps_and_entropies", "forwards")
except ImportError:
    pass
_timed(accelerate.Accelerator, "backward", "backward")
atexit.register(lambda: print("TIMES " + json.dumps(_spent), flush=True))
"""

OURS_SCRIPT = TIMER + "\nfrom easyrlhf_core.commands.cli import main\nmain()\n"

RAW_SCRIPT = (
    TIMER
    + r"""
import re, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

method, model_path, data_path, out, steps, generations, length, batch, lr, seed, reward = sys.argv[1:12]
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

def words_near_50(prompts, completions, **kwargs):
    return [-abs(len(c[-1]["content"].split()) - 50) / 50 for c in completions]

config_class, trainer_class = (GRPOConfig, GRPOTrainer) if method == "grpo" else (RLOOConfig, RLOOTrainer)
tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
args = config_class(output_dir=out, max_steps=int(steps), num_generations=int(generations),
                    max_completion_length=int(length), per_device_train_batch_size=int(batch), learning_rate=float(lr),
                    seed=int(seed), data_seed=int(seed), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    logging_steps=1, disable_tqdm=True, gradient_checkpointing=False, lr_scheduler_type="linear",
                    warmup_steps=0.0, weight_decay=0.0, max_grad_norm=1.0, dataloader_num_workers=0,
                    log_completions=False, remove_unused_columns=False)
trainer = trainer_class(model=model, reward_funcs=[match if reward == "match" else words_near_50], args=args,
                        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"], "last_loss": losses[-1]}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--method", default="grpo", help="grpo, rloo or both (comma-separated)")
    parser.add_argument("--dataset", choices=["arithmetic", "hh-rlhf"], default="arithmetic")
    parser.add_argument("--sides", default="raw,ours", help="raw, ours, ours-unshared (comma-separated)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    model = benchmark_model(args.model)
    tables = []
    with tempfile.TemporaryDirectory(prefix="grpo-overhead-") as tmp:
        root = Path(tmp)
        from easyrlhf_core.kit.data_loading import shuffled

        records, reward, extra = training_prompts(args.dataset, args.prompts)
        data = root / "prompts.jsonl"  # ours reads it, and shuffles it with the seed as every run does
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        raw_data = root / "prompts-in-our-order.jsonl"  # the raw side gets the records in that same order
        raw_data.write_text("".join(json.dumps(r) + "\n" for r in shuffled(records, SEED)))
        (root / "raw.py").write_text(RAW_SCRIPT)
        (root / "ours.py").write_text(OURS_SCRIPT)
        for method in args.method.split(","):
            sides = args.sides.split(",")
            commands = {side: command(side, method, model, root, data, raw_data, reward, extra, args) for side in sides}
            best = measure(method, commands, sides, root, args.steps, args.repeats)
            tables.append(table(method, best))
    print("\n".join([tables[0], *(t.split("\n", 2)[2] for t in tables[1:])]))


def command(
    side: str,
    method: str,
    model: str,
    root: Path,
    data: Path,
    raw_data: Path,
    reward: str,
    extra: dict[str, object],
    args: argparse.Namespace,
) -> list[str]:
    """The child's command line: the raw TRL script, or `easyrlhf run` (with the timer) for ours."""
    lr = 1e-6
    if side == "raw":
        sizes = (args.steps, args.generations, args.completion_length, args.batch)
        return [sys.executable, str(root / "raw.py"), method, model, str(raw_data), str(root / "raw")] + [
            str(x) for x in (*sizes, lr, SEED, reward)
        ]
    settings = {
        "eval_fraction": 0.0,
        "max_eval_samples": 0,
        "save_steps": 0,
        "logging_steps": 1,
        "num_generations": args.generations,
        "per_device_train_batch_size": args.batch,
        "max_completion_length": args.completion_length,
        "learning_rate": lr,
        "num_sample_completions": 0,
        "prefix_sharing": side != "ours-unshared",
        **extra,
    }
    return [
        sys.executable,
        str(root / "ours.py"),
        "run",
        "--method",
        method,
        "--model",
        model,
        "--dataset",
        "jsonl",
        "--data-files",
        str(data),
        "--reward",
        reward,
        "--output-dir",
        str(root / side),
        "--overwrite",
        "--max-steps",
        str(args.steps),
        "--seed",
        str(SEED),
        *[x for k, v in settings.items() for x in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")],
    ]


def measure(
    method: str, commands: dict[str, list[str]], sides: list[str], root: Path, steps: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per side, the figures of its fastest repeat: s/step, log-prob forwards and backward s/step, peak RSS
    and the last loss."""
    best: dict[str, dict[str, float]] = {}
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            child = run_child(commands[side])
            lines = child.output.splitlines()
            times = json.loads(next(line[6:] for line in lines if line.startswith("TIMES ")))
            if side == "raw":
                result = json.loads(next(line[7:] for line in lines if line.startswith("RESULT ")))
                runtime, loss = result["train_runtime"], result["last_loss"]
            else:
                rows = read_metrics(root / side)
                runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
                loss = [r["loss"] for r in rows if "loss" in r][-1]
                remove(root / side)
            figures = {
                "step": runtime / steps,
                "forwards": times["forwards"] / steps,
                "backward": times["backward"] / steps,
                "rss": child.peak_rss_mib,
                "loss": loss,
            }
            if side not in best or figures["step"] < best[side]["step"]:
                best[side] = figures
            print(
                f"repeat {repeat + 1} {method} {side}: "
                f"{figures['step']:.2f} s/step (log-prob forwards {figures['forwards']:.2f} s, backward "
                f"{figures['backward']:.2f} s), peak RSS {child.peak_rss_mib:.0f} MiB, last loss {loss:.6g}",
                file=sys.stderr,
                flush=True,
            )
    return best


def table(method: str, best: dict[str, dict[str, float]]) -> str:
    """The markdown rows: per side, s/step, speed-up over raw TRL, the log-prob forwards' and the backward's
    shares of the step, peak RSS and the last loss."""
    base = best.get("raw")
    lines = [
        "| method | side | s/step | speed-up vs raw TRL | log-prob forwards s/step (share) | backward s/step (share) "
        "| peak RSS MiB | last loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for side, f in best.items():
        speedup = f"**{base['step'] / f['step']:.2f}x**" if base else "-"
        forwards = f"{f['forwards']:.2f} ({f['forwards'] / f['step']:.0%})"
        backward = f"{f['backward']:.2f} ({f['backward'] / f['step']:.0%})"
        lines.append(
            f"| {method} | {side} | {f['step']:.2f} | {speedup} | {forwards} | {backward} | {f['rss']:.0f} "
            f"| {f['loss']:.6g} |"
        )
    return "\n".join(lines)


def training_prompts(dataset: str, count: int) -> tuple[list[dict], str, dict[str, object]]:
    """``(records, our reward plugin, extra settings)``: the prompts in the order `easyrlhf run` trains on them."""
    if dataset == "hh-rlhf":
        return [{"prompt": r["prompt"]} for r in load_records("prompt", count)], "length", {"max_length": 2048}
    records = [{"prompt": r["prompt"], "answer": r["answer"]} for r in arithmetic_prompts(count)]
    return records, "match", {}


def arithmetic_prompts(count: int) -> list[dict]:
    """The arithmetic problems in the order `easyrlhf run --dataset arithmetic` trains on them."""
    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.shapes import DataOptions, Shape
    from easyrlhf_core.runtime.registry import get_registry

    dataset = get_registry().get("datasets", "arithmetic")
    options = DataOptions(shape=Shape.PROMPT, max_train_samples=count, eval_fraction=0.0, max_eval_samples=0, seed=SEED)
    return load_dataset(dataset, options).train


if __name__ == "__main__":
    main()
