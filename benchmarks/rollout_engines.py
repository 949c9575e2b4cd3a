"""The rollout engines side by side: vLLM vs transformers ``generate``, same prompts, seeds and settings, in one
script run, on SmolLM2-135M-Instruct (fp32) on CPU. Needs the vLLM venv (docs/rollouts.md).

Three measurements, each engine in turn:
1. generation alone: the rollout layer's ``generate`` on the same chat prompts (tokens/s; greedy and sampled);
2. PPO: ``easyrlhf run --method ppo`` for a few iterations; ``time/generate`` and ``time/iteration`` from its
   ``metrics.jsonl`` (the first iteration left out: warm-up), and the engine/trainer log-prob agreement;
3. GRPO: ``easyrlhf run --method grpo`` for a few steps; its ``step_time``.
The vLLM engine's start-up is reported on its own line (it is paid once per run).

    python benchmarks/rollout_engines.py [--prompts 32] [--new-tokens 64] [--iterations 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")

ENGINES = ("transformers", "vllm")
WORDS = "rivers trees tea music winter bread chess maps clouds bees glass rain paper salt iron wool".split()


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write a few sentences about {WORDS[i % len(WORDS)]}."}] for i in range(n)]


def generation_only(model_dir: str, n: int, new_tokens: int) -> dict[str, dict[str, float]]:
    """Tokens per second of each engine on the same prompts (greedy, then sampled at temperature 1)."""
    import torch

    from easyrlhf_core.kit.chat_template import prompt_ids
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer
    from easyrlhf_core.kit.rollout import RolloutOptions, Sampling, build_engine

    tokenizer = load_tokenizer(model_dir, padding_side="left")
    model = load_causal_lm(model_dir).eval()
    ids = [prompt_ids(tokenizer, p) for p in prompts(n)]
    out: dict[str, dict[str, float]] = {}
    for name in ENGINES:
        started = time.perf_counter()
        options = RolloutOptions(rollout_engine=name)  # type: ignore[arg-type]
        engine = build_engine(options, model, tokenizer, model_dir=model_dir, seed=0)
        row: dict[str, float] = {"start_s": time.perf_counter() - started}
        for mode, greedy in (("greedy", True), ("sampled", False)):
            sampling = Sampling(new_tokens, [tokenizer.eos_token_id], tokenizer.pad_token_id, greedy=greedy, seed=1)
            engine.generate(ids[:2], sampling)  # warm-up
            began = time.perf_counter()
            result = engine.generate(ids, sampling)
            seconds = time.perf_counter() - began
            row[f"{mode}_tokens_per_s"] = float(result.response_mask.sum()) / seconds
        engine.close()
        out[name] = row
        del engine
        torch.manual_seed(0)
    return out


def cli_run(args: list[str]) -> tuple[list[dict], str]:
    done = subprocess.run([sys.executable, "-m", "easyrlhf_core.commands.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    out = Path(args[args.index("--output-dir") + 1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, done.stderr


def start_seconds(log: str) -> float | None:
    found = re.search(r"vLLM engine .* started in ([0-9.]+) s", log)
    return float(found.group(1)) if found else None


def ppo(model_dir: str, data: Path, root: Path, n: int, new_tokens: int, iterations: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in ENGINES:
        args = ["run", "--method", "ppo", "--model", model_dir, "--dataset", "jsonl", "--data-files", str(data)]
        args += ["--output-dir", str(root / f"ppo-{name}"), "--max-steps", str(iterations), "--reward", "length"]
        args += ["--seed", "3", "--set", "eval_fraction=0", "--set", "save_steps=0", "--set", f"rollout_engine={name}"]
        args += ["--set", f"rollout_batch_size={n}", "--set", f"per_device_train_batch_size={n // 2}"]
        args += ["--set", f"max_new_tokens={new_tokens}", "--set", "max_length=256", "--set", "ppo_epochs=1"]
        rows, log = cli_run(args)
        measured = rows[1:] or rows
        out[name] = {
            "generate_s": statistics.mean(r["time/generate"] for r in measured),
            "iteration_s": statistics.mean(r["time/iteration"] for r in measured),
            "start_s": start_seconds(log),
            "logprob_diff_mean": max((r.get("rollout/logprob_diff_mean", 0.0) for r in rows), default=0.0),
            "logprob_diff_max": max((r.get("rollout/logprob_diff_max", 0.0) for r in rows), default=0.0),
        }
    return out


def grpo(model_dir: str, data: Path, root: Path, n: int, new_tokens: int, steps: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in ENGINES:
        args = ["run", "--method", "grpo", "--model", model_dir, "--dataset", "jsonl", "--data-files", str(data)]
        args += ["--output-dir", str(root / f"grpo-{name}"), "--max-steps", str(steps), "--reward", "length"]
        args += ["--seed", "3", "--set", "eval_fraction=0", "--set", "save_steps=0", "--set", f"rollout_engine={name}"]
        args += ["--set", "num_generations=4", "--set", f"per_device_train_batch_size={n}"]
        args += ["--set", f"max_completion_length={new_tokens}", "--set", "max_length=256"]
        rows, log = cli_run(args)
        steps_rows = [r for r in rows if "step_time" in r]
        measured = steps_rows[1:] or steps_rows
        out[name] = {"step_s": statistics.mean(r["step_time"] for r in measured), "start_s": start_seconds(log)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="Prompts per rollout (and for generation alone).")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations and GRPO steps (first: warm-up).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_engines.json"))
    args = parser.parse_args()

    from easyrlhf_core.kit.model_loading import resolve_model

    model_dir = resolve_model(None).path  # the embedded SmolLM2-135M-Instruct, converted once
    root = Path(tempfile.mkdtemp(prefix="rollout-engines-"))
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(max(64, args.prompts * 2))))
    result = {
        "settings": vars(args) | {"out": str(args.out), "model": "SmolLM2-135M-Instruct fp32", "threads": 2},
        "generation": generation_only(model_dir, args.prompts, args.new_tokens),
        "ppo": ppo(model_dir, data, root, args.prompts, args.new_tokens, args.iterations),
        "grpo": grpo(model_dir, data, root, args.prompts, args.new_tokens, args.iterations),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    g, p, r = result["generation"], result["ppo"], result["grpo"]
    v, t = g["vllm"], g["transformers"]
    for mode in ("greedy", "sampled"):
        fast, slow = v[f"{mode}_tokens_per_s"], t[f"{mode}_tokens_per_s"]
        print(f"generation, {mode} tok/s: vllm {fast:.0f} vs transformers {slow:.0f} = {fast / slow:.2f}x")
    for label, rows, key in (
        ("ppo generate phase", p, "generate_s"),
        ("ppo iteration", p, "iteration_s"),
        ("grpo step", r, "step_s"),
    ):
        fast, slow = rows["vllm"][key], rows["transformers"][key]
        print(f"{label}: {slow / fast:.2f}x faster with vllm ({fast:.2f} s vs {slow:.2f} s)")
    print(
        f"vllm engine start-up: {v['start_s']:.1f} s "
        f"(in the ppo run {p['vllm']['start_s']} s, grpo {r['vllm']['start_s']} s)"
    )
    agreement = p["vllm"]
    print(
        f"ppo log-prob agreement (engine vs trainer, fp32): mean {agreement['logprob_diff_mean']:.2e}, "
        f"max {agreement['logprob_diff_max']:.2e}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
