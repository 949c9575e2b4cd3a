"""Does GRPO teach the embedded SmolLM2-135M-Instruct to use the calculator, and does the tool help?

Every stage is an ``easyrlhf`` command a user can type; each writes its own run directory under ``--out`` and is
skipped when its result is there (a stopped benchmark continues where it was: ``--resume`` for a training run
with checkpoints).

1. **Warm start** (``sft --dataset calculator``): a few steps on worked tool-use episodes (problems from another
   seed, none among the environment's). The start model never calls the tool on its own (0 calls in 64 sampled
   episodes), so without it every GRPO group scores 0 and there is nothing to learn from.
2. **GRPO with the tool** (``grpo --env calculator``) from the warm start.
3. **GRPO without the tool**, same budget (steps, prompts, episodes per prompt, learning rate, temperature) on
   the same problems scored by ``match``, from the start model (the warm start teaches tool calls, which get
   no answer without the environment).
4. **PPO with the tool** for a few iterations (reward, KL, turns from its metrics).

Held-out success: greedy, on the environment's held-out problems (``eval --env calculator``, 95% Wilson
intervals); without the tool, the same problems answered in one turn and scored by ``match``.

    python benchmarks/calculator_learning.py [--out runs/calculator-bench] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

EASYRLHF = [str(Path(sys.executable).parent / "easyrlhf")]


def run(args: list[str]) -> str:
    print("$ easyrlhf " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(EASYRLHF + args, check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout


def train(out: Path, name: str, args: list[str]) -> Path:
    """The run directory ``out/name`` trained by ``easyrlhf run ARGS`` (continued when it has checkpoints)."""
    run_dir = out / name
    if (run_dir / "model").exists():
        return run_dir
    resume = ["--resume"] if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()) else []
    if not resume and run_dir.exists():
        raise SystemExit(f"Error: {run_dir}: neither finished nor resumable; remove it and run again")
    run(["run", *args, "--output-dir", str(run_dir), *resume])
    return run_dir


def evaluate(out: Path, name: str, args: list[str]) -> dict[str, object]:
    """``easyrlhf eval ARGS --json``, cached in ``out/eval-<name>.json``."""
    cached = out / f"eval-{name}.json"
    if not cached.exists():
        cached.write_text(run(["eval", *args, "--json"]))
    return json.loads(cached.read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/calculator-bench", help="Directory for the runs and evaluations.")
    parser.add_argument("--warm-steps", type=int, default=8, help="SFT steps of the warm start (4 episodes each).")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps (2 prompts x 8 episodes each).")
    parser.add_argument("--ppo-steps", type=int, default=4, help="PPO iterations.")
    parser.add_argument("--limit", type=int, default=100, help="Held-out problems evaluated.")
    options = parser.parse_args()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from easyrlhf_core.kit.model_loading import resolve_model
    from easyrlhf_core.kit.stats import wilson_interval

    base = resolve_model(None).path
    grpo = [
        "--method", "grpo", "--max-steps", str(options.steps), "--set", "learning_rate=5e-6",
        "--set", "temperature=0.7", "--set", "per_device_train_batch_size=16", "--set", "num_generations=8",
        "--set", "max_completion_length=48", "--set", "save_steps=10", "--set", "max_eval_samples=16",
    ]  # fmt: skip
    episode = ["--set", "max_turns=3", "--set", "max_episode_tokens=160"]
    warm = train(
        out, "sft-tools", ["--method", "sft", "--dataset", "calculator", "--max-steps", str(options.warm_steps)]
    )
    tools = train(out, "grpo-tools", [*grpo, *episode, "--env", "calculator", "--model", str(warm / "model")])
    plain = train(out, "grpo-plain", [*grpo, "--dataset", "calculator", "--reward", "match", "--model", base])
    ppo = train(
        out,
        "ppo-tools",
        [
            "--method", "ppo", "--env", "calculator", "--model", str(warm / "model"), *episode,
            "--max-steps", str(options.ppo_steps), "--set", "temperature=0.7", "--set", "rollout_batch_size=16",
            "--set", "ppo_epochs=1", "--set", "max_new_tokens=48", "--set", "max_eval_samples=16",
        ],
    )  # fmt: skip

    limit = ["--limit", str(options.limit), "--no-sample", "--max-new-tokens", "48"]
    with_tool = ["--env", "calculator", "--max-turns", "3", "--max-episode-tokens", "160", "--batch-size", "16"]
    without_tool = ["--dataset", "calculator", "--reward", "match", "--batch-size", "16"]
    rows: list[tuple[str, str, float, list[float], str]] = []
    for key, name, model in [
        ("start", "start", base),
        ("warm", "warm start", str(warm / "model")),
        ("grpo", "grpo with the tool", str(tools / "model")),
    ]:
        report = evaluate(out, f"tool-{key}", ["--model", model, *with_tool, *limit])
        metrics = report["metrics"]  # type: ignore[index]
        turns = f"{metrics['turns_mean']:.2f} turns, {metrics['tool_calls_mean']:.2f} tool calls"  # type: ignore[index]
        rows.append((name, "yes", metrics["success_rate"], metrics["success_ci95"], turns))  # type: ignore[index]
    for key, name, model in [
        ("start", "start", base),
        ("warm", "warm start", str(warm / "model")),
        ("grpo", "grpo without the tool (from the start)", str(plain / "model")),
    ]:
        report = evaluate(out, f"plain-{key}", ["--model", model, *without_tool, *limit])
        prompts = int(report["prompts"])  # type: ignore[call-overload]
        success = float(report["metrics"]["reward_greedy_mean"])  # type: ignore[index]
        low, high = wilson_interval(success * prompts, prompts)
        rows.append((name, "no", success, [low, high], "1 turn"))

    ppo_metrics = [json.loads(line) for line in (ppo / "metrics.jsonl").read_text().splitlines() if line.strip()]
    print(f"| model | tool | held-out success ({options.limit}, greedy) | 95% interval | episodes |")
    print("|---|---|---|---|---|")
    for name, tool, success, (low, high), detail in rows:
        print(f"| {name} | {tool} | {success:.2f} | [{low:.2f}, {high:.2f}] | {detail} |")
    print()
    print("PPO with the tool, per iteration (reward, KL, turns, tool calls):")
    for entry in ppo_metrics:
        if "objective/kl" in entry or "reward" in entry:
            print(
                json.dumps(
                    {
                        k: v
                        for k, v in entry.items()
                        if k.split("/")[0] in {"step", "reward", "kl", "objective", "episodes"}
                    }
                )
            )


if __name__ == "__main__":
    main()
