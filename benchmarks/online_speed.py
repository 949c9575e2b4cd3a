"""Time per iteration and per sampled token of the online methods (ppo, grpo, rloo), at the same number of
sampled completions per iteration, in one run.

Each method is an ``easyrlhf run`` child process on the same model and hh-rlhf prompts, scored by the same
reward plugin (``length``, so no reward model's time is in the figures), with the same completion cap,
temperature, learning rate, seed and precision, no eval and no checkpoints:

- grpo / rloo: ``--prompts`` prompts x ``--generations`` completions per step, one optimizer step per
  generation (TRL's defaults otherwise: ``steps_per_generation`` 1, ``num_iterations`` 1);
- ppo: ``prompts x generations`` prompts x 1 completion per iteration (the same completions), its update
  at ``ppo_epochs`` passes (default 4, the InstructGPT recipe; ``--ppo-epochs``) in minibatches of the
  same size as the TRL methods' batch.

Iteration time: PPO's own ``time/iteration`` (generate + score + no-grad forwards + update), averaged
over iterations; grpo/rloo: TRL's ``train_runtime`` / steps (the same span: the training loop). Sampled
tokens: completion tokens per iteration (PPO: ``response_length`` x completions; TRL:
``completions/mean_length`` x completions). Peak RSS from the child's rusage.

    python benchmarks/online_speed.py                   # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/online_speed.py --steps 4 --markdown benchmarks/results/online_speed.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from _common import benchmark_model, easyrlhf_command, read_metrics, remove, run_child


def settings_for(
    method: str, completions: int, generations: int, length: int, ppo_epochs: int, lr: float
) -> dict[str, object]:
    common = {"learning_rate": lr, "temperature": 1.0}
    if method == "ppo":
        return {
            **common,
            "rollout_batch_size": completions,
            "max_new_tokens": length,
            "ppo_epochs": ppo_epochs,
            "per_device_train_batch_size": completions,
            "gradient_accumulation_steps": 1,
            "eval_steps": "null",
        }
    return {
        **common,
        "num_generations": generations,
        "per_device_train_batch_size": completions,
        "max_completion_length": length,
        "final_eval": "false",
    }


def measure(method: str, model: str, out: Path, steps: int, settings: dict[str, object]) -> dict[str, float]:
    child = run_child(easyrlhf_command(method, model, out, steps, settings, flags=["--reward", "length"]))
    rows = read_metrics(out)
    completions = int(settings["per_device_train_batch_size"])
    if method == "ppo":
        iterations = [r for r in rows if "time/iteration" in r]
        seconds = sum(r["time/iteration"] for r in iterations) / len(iterations)
        tokens = sum(r["response_length"] for r in iterations) * completions / len(iterations)
    else:
        runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
        lengths = [r["completions/mean_length"] for r in rows if "completions/mean_length" in r]
        seconds = runtime / steps
        tokens = sum(lengths) * completions / len(lengths)
    remove(out)
    return {"seconds": seconds, "tokens": tokens, "rss": child.peak_rss_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model to measure (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per grpo/rloo step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (grpo/rloo)")
    parser.add_argument("--length", type=int, default=32, help="completion cap, tokens")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--methods", default="ppo,grpo,rloo")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args()

    model = benchmark_model(args.model)
    completions = args.prompts * args.generations
    started = time.time()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            settings = settings_for(method, completions, args.generations, args.length, args.ppo_epochs, 1e-6)
            results[method] = measure(method, model, Path(tmp) / method, args.steps, settings)
            print(f"{method}: {results[method]}", flush=True)
    base = results.get("ppo")
    lines = [
        f"machine: {platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}; "
        f"{completions} completions per iteration of up to {args.length} tokens, {args.steps} iterations, "
        f"PPO at ppo_epochs={args.ppo_epochs}; {time.time() - started:.0f} s in all",
        "",
        "| method | s / iteration | sampled tokens / iteration | ms / sampled token | vs ppo | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        per_token = 1000 * r["seconds"] / max(r["tokens"], 1.0)
        ratio = f"{per_token / (1000 * base['seconds'] / max(base['tokens'], 1.0)):.2f}" if base else "-"
        lines.append(
            f"| {method} | {r['seconds']:.2f} | {r['tokens']:.0f} | {per_token:.1f} | {ratio} | {r['rss']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
