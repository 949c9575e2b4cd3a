"""Training tokens/s and peak RSS of every method on one model, in fp32 and bf16 autocast, full and LoRA.

Each (method, variant) is one ``easyrlhf run --method M --max-steps N`` child process of this script, on
the same model and hh-rlhf records (embedded sample, seed 42), batch, max_length and step count, with no
eval and no checkpoints. Variants: ``fp32-full`` (the baseline of each method's rows), ``fp32-lora``
(``--lora``: r=16, all-linear), ``bf16-full`` and ``bf16-lora`` (``--precision bf16``: bf16 autocast over
fp32 weights), and for dpo only ``precompute`` (fp32, full, ``precompute_ref_log_probs=true``).

    python benchmarks/method_speed.py                            # SmolLM2-135M-Instruct (embedded default)
    python benchmarks/method_speed.py --methods dpo,ppo --variants fp32-full,bf16-full --steps 6 --repeats 2
    python benchmarks/method_speed.py --model /tmp/bench-tiny --steps 2

tokens/s = tokens through the trained model's forward+backward passes / training seconds, both from the
run's ``metrics.jsonl`` (a token = a non-padding position of a training sequence, counted once per pass):

* sft, rm, dpo, ipo (TRL trainers): the last ``num_tokens`` (TRL's cumulative count of the attention mask
  over the training batches; sft: prompt and answer tokens; rm and dpo/ipo: chosen and rejected sequences
  with their prompt) / ``train_runtime`` (TRL's whole training loop). DPO/IPO's reference forward passes
  are in the time, not in the tokens; with ``precompute`` they run before training (in the trainer's
  setup, cached on disk by ``datasets``) and are in neither.
* rrhf: ``num_tokens`` (logged by our RRHFTrainer the same way: every candidate row, prompt + response) /
  ``train_runtime``.
* ppo: the sum of the per-iteration ``tokens`` (prompt + response tokens of the rollout batch x
  ``ppo_epochs``: what the clipped policy update trains on; the value model sees the same tokens) / the sum
  of ``time/iteration`` (the whole iteration: generation, scoring and the no-grad forward passes of
  policy, reference and value model are in the time, not in the tokens).

Peak RSS is the child's rusage (the whole run: model loading, data, training, saving ``model/``). Ratios
compare each row with the same method's fp32-full row; the best tokens/s of ``--repeats`` is kept, and
the highest peak RSS.

Gradient checkpointing is off by default (our default); ``--gradient-checkpointing`` turns it on for every
method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import benchmark_model, easyrlhf_command, first, read_metrics, remove, run_child

METHODS = ("sft", "rm", "dpo", "ipo", "rrhf", "ppo")
VARIANTS: dict[str, list[str]] = {
    "fp32-full": ["--precision", "fp32"],
    "fp32-lora": ["--precision", "fp32", "--lora"],
    "bf16-full": ["--precision", "bf16"],
    "bf16-lora": ["--precision", "bf16", "--lora"],
    "precompute": ["--precision", "fp32", "--set", "precompute_ref_log_probs=true"],
}
BASELINE = "fp32-full"
ONLY_FOR = {"precompute": {"dpo"}}  # variants that apply to some methods only
#: PPO: prompts per iteration (x batch), response length and update epochs, kept small.
PPO_ROLLOUT_FACTOR, PPO_MAX_NEW_TOKENS, PPO_EPOCHS = 2, 32, 2


@dataclass
class Measurement:
    tokens: float
    seconds: float
    peak_rss_mib: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def best_of(self, other: Measurement | None) -> Measurement:
        """The faster of two repeats, with the higher peak RSS."""
        if other is None:
            return self
        faster = self if self.tokens_per_second >= other.tokens_per_second else other
        return Measurement(faster.tokens, faster.seconds, max(self.peak_rss_mib, other.peak_rss_mib))


def method_settings(method: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """``--set`` options and extra flags for ``method``: small, no eval, the same batch and max_length."""
    settings: dict[str, Any] = {
        "max_train_samples": args.steps * args.batch,
        "max_length": args.max_length,
        "per_device_train_batch_size": args.batch,
    }
    flags: list[str] = []
    if method == "rrhf":
        settings["candidates"] = "dataset"  # the hh-rlhf pair as two ranked candidates
    if method == "ppo":
        rollout = PPO_ROLLOUT_FACTOR * args.batch
        settings.update(
            max_train_samples=args.steps * rollout,
            rollout_batch_size=rollout,
            max_new_tokens=PPO_MAX_NEW_TOKENS,
            ppo_epochs=PPO_EPOCHS,
            num_sample_completions=0,
        )
        flags += ["--reward", "length"]  # a rule-based reward: no reward model to train first
    if args.gradient_checkpointing:
        flags.append("--gradient-checkpointing")
    return settings, flags


def tokens_and_seconds(method: str, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Training tokens and training seconds from a run's metrics rows (see the docstring)."""
    if method == "ppo":
        iterations = [row for row in rows if "tokens" in row]
        return sum(r["tokens"] for r in iterations), sum(r["time/iteration"] for r in iterations)
    return max(row.get("num_tokens", 0) for row in rows), first(rows, "train_runtime")


def measure(method: str, variant: str, model: str, out: Path, args: argparse.Namespace) -> Measurement:
    settings, flags = method_settings(method, args)
    child = run_child(easyrlhf_command(method, model, out, args.steps, settings, [*VARIANTS[variant], *flags]))
    tokens, seconds = tokens_and_seconds(method, read_metrics(out))
    remove(out)
    if not tokens or not seconds:
        raise RuntimeError(f"{method} {variant}: no token count or training time in metrics.jsonl")
    return Measurement(tokens, seconds, child.peak_rss_mib)


def runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every (method, variant) to measure, in order."""
    return [(m, v) for m in args.methods for v in args.variants if m in ONLY_FOR.get(v, {m})]


def ratio(value: float, baseline: Measurement | None, attribute: str) -> str:
    return f"{value / getattr(baseline, attribute):.2f}" if baseline else "n/a"


def print_table(best: dict[tuple[str, str], Measurement], order: list[tuple[str, str]]) -> None:
    print(f"| method | variant | tokens/s | ratio vs {BASELINE} | peak RSS MiB | RSS ratio |")
    print("|---|---|---|---|---|---|")
    for method, variant in order:
        row, base = best[method, variant], best.get((method, BASELINE))
        print(
            f"| {method} | {variant} | {row.tokens_per_second:.0f} | "
            f"{ratio(row.tokens_per_second, base, 'tokens_per_second')} | {row.peak_rss_mib:.0f} | "
            f"{ratio(row.peak_rss_mib, base, 'peak_rss_mib')} |"
        )


def split_choices(
    parser: argparse.ArgumentParser, value: str, choices: tuple[str, ...] | list[str], what: str
) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in choices]
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(choices)}")
    return items


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the embedded SmolLM2-135M-Instruct, converted once)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ",".join(METHODS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from " + ",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (ppo: iterations)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="per-device batch (ppo: micro-batch of the update)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="for every method (default: off, our default)",
    )
    args = parser.parse_args()
    args.methods = split_choices(parser, args.methods, METHODS, "methods")
    args.variants = split_choices(parser, args.variants, list(VARIANTS), "variants")
    return args


def main() -> None:
    args = parse_args()
    model = benchmark_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="method-speed-"))
    order = runs(args)
    best: dict[tuple[str, str], Measurement] = {}
    started = time.time()
    for repeat in range(args.repeats):
        for method, variant in order:
            measured = measure(method, variant, model, work / f"{method}-{variant}-{repeat}", args)
            best[method, variant] = measured.best_of(best.get((method, variant)))
            print(
                f"  repeat {repeat + 1}: {method} {variant}: {measured.tokens:.0f} tokens in {measured.seconds:.2f}s"
                f" = {measured.tokens_per_second:.0f} tokens/s, peak RSS {measured.peak_rss_mib:.0f} MiB",
                file=sys.stderr,
            )
    remove(work)
    print(
        f"model: {model}; {args.steps} steps x batch {args.batch}, max_length {args.max_length}; ppo: rollout "
        f"{PPO_ROLLOUT_FACTOR * args.batch} prompts, {PPO_MAX_NEW_TOKENS} new tokens, {PPO_EPOCHS} epochs, length "
        f"reward; gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
        f"best of {args.repeats}; total {time.time() - started:.0f}s"
    )
    print_table(best, order)


if __name__ == "__main__":
    main()
