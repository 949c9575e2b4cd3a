"""Shared-prefix training against raw TRL (dpo, rm) and against our padded path (rrhf, k candidates).

Each side is a child process of this script, on the same model, records, batch, max_length, steps,
learning rate and seed (the settings of ``trl_overhead.py``, which this reuses):

* dpo and rm: a raw TRL script with TRL's defaults (``DPOTrainer`` / ``RewardTrainer`` on
  ``Dataset.from_list``) against ``easyrlhf run`` with its defaults (``prefix_sharing`` on);
* rrhf: ``easyrlhf run --method rrhf`` with ``prefix_sharing=false`` (every candidate its own padded row,
  one forward per batch: the path before prefix sharing) against the default, on ranked records of k
  candidates built from hh-rlhf pairs (chosen, rejected, and the first halves of both, scored 1, 0, 0.5,
  -0.5: a ranking for timing, not for learning).

Throughput is in useful tokens: the non-pad tokens of the padded rows (TRL's ``num_tokens``, the same
number on both sides: every pair counts its prompt twice) per second of ``train_runtime``. Peak RSS is the
child's. Sides alternate within each repeat; the fastest of ``--repeats`` and the highest RSS are kept.

    python benchmarks/prefix_sharing.py                                  # embedded SmolLM2-135M, fp32 + bf16
    python benchmarks/prefix_sharing.py --methods dpo --precisions bf16 --steps 2 --repeats 1
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

from _common import benchmark_model, easyrlhf_command, first, load_records, read_metrics, remove, run_child, write_jsonl
from trl_overhead import LEARNING_RATES, OUR_SETTINGS, RAW_FOOTER, RAW_HEADER, RAW_TRAINERS

METHODS = ("dpo", "rm", "rrhf")


@dataclass
class Side:
    """One child run: seconds of training, useful tokens trained on, peak RSS, the last loss."""

    seconds: float
    tokens: float
    peak_rss_mib: float
    last_loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def best_of(self, other: Side | None) -> Side:
        if other is None:
            return self
        return Side(
            min(self.seconds, other.seconds), self.tokens, max(self.peak_rss_mib, other.peak_rss_mib), self.last_loss
        )


def raw_trl(method: str, model: str, data: Path, out: Path, precision: str, args: argparse.Namespace) -> Side:
    opts = {
        "model": model,
        "data": str(data),
        "out": str(out),
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "learning_rate": LEARNING_RATES[method],
        "gradient_checkpointing": False,
    }
    header = RAW_HEADER.replace("bf16=False", f"bf16={precision == 'bf16'}")
    child = run_child([sys.executable, "-c", header + RAW_TRAINERS[method] + RAW_FOOTER, json.dumps(opts)])
    result = json.loads(next(line for line in child.output.splitlines() if line.startswith("RESULT "))[7:])
    remove(out)
    return Side(result["train_runtime"], result["num_tokens"], child.peak_rss_mib, result["loss"])


def ours(
    method: str,
    model: str,
    out: Path,
    precision: str,
    args: argparse.Namespace,
    prefix_sharing: bool = True,
    ranked: Path | None = None,
) -> Side:
    rate = LEARNING_RATES.get(method, 1e-6)
    settings = {
        "max_train_samples": args.samples,
        "per_device_train_batch_size": args.batch,
        "max_length": args.max_length,
        "learning_rate": f"{rate:.1e}",
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": "false",
        "prefix_sharing": str(prefix_sharing).lower(),
        **OUR_SETTINGS.get(method, {}),
    }
    data = ("--dataset", "jsonl", "--data-files", str(ranked)) if ranked else ("--dataset", "hh-rlhf")
    child = run_child(easyrlhf_command(method, model, out, args.steps, settings, ["--precision", precision], data=data))
    rows = read_metrics(out)
    losses = [row["loss"] for row in rows if "loss" in row]
    remove(out)
    return Side(
        first(rows, "train_runtime"), max(row.get("num_tokens", 0) for row in rows), child.peak_rss_mib, losses[-1]
    )


def ranked_records(pairs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """k candidates per hh-rlhf prompt: chosen, rejected, then the first halves of both (k <= 4)."""

    def text(messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"] if isinstance(messages, list) else messages

    records = []
    for pair in pairs:
        chosen, rejected = text(pair["chosen"]), text(pair["rejected"])
        responses = [chosen, rejected, chosen[: len(chosen) // 2], rejected[: len(rejected) // 2]]
        records.append({"prompt": pair["prompt"], "responses": responses[:k], "scores": [1.0, 0.0, 0.5, -0.5][:k]})
    return records


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model dir (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="pairs (rrhf: queries) per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--k", type=int, default=4, help="rrhf candidates per query (2-4)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.samples = args.steps * args.batch
    return args


def main() -> None:
    args = parse_args()
    model = benchmark_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="prefix-sharing-"))
    pairs = load_records("preference", args.samples)
    data = write_jsonl(work / "pairs.jsonl", pairs)
    ranked = write_jsonl(work / "ranked.jsonl", ranked_records(pairs, args.k))
    best: dict[tuple[str, str, str], Side] = {}
    started = time.time()
    for repeat in range(args.repeats):
        for method in args.methods:
            for precision in args.precisions:
                sides = ("baseline", "shared") if repeat % 2 == 0 else ("shared", "baseline")
                for side in sides:
                    out = work / f"{method}-{precision}-{side}-{repeat}"
                    if method == "rrhf":
                        measured = ours(
                            method, model, out, precision, args, prefix_sharing=side == "shared", ranked=ranked
                        )
                    elif side == "baseline":
                        measured = raw_trl(method, model, data, out, precision, args)
                    else:
                        measured = ours(method, model, out, precision, args)
                    key = (method, precision, side)
                    best[key] = measured.best_of(best.get(key))
                    print(
                        f"  repeat {repeat + 1}: {method} {precision} {side}: {measured.seconds:.1f} s, "
                        f"{measured.tokens:.0f} tokens, {measured.tokens_per_second:.0f} tokens/s, peak RSS "
                        f"{measured.peak_rss_mib:.0f} MiB, last loss {measured.last_loss:.6g}",
                        file=sys.stderr,
                    )
    remove(work)
    print(
        f"model: {model}; {args.steps} steps x {args.batch} pairs (rrhf: queries, k={args.k}), max_length "
        f"{args.max_length}, {args.samples} hh-rlhf records, best of {args.repeats}; "
        f"total {time.time() - started:.0f} s"
    )
    print(
        "| method | precision | baseline | baseline tokens/s | shared tokens/s | speed-up | baseline RSS MiB "
        "| shared RSS MiB | RSS ratio | last loss baseline / shared |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for precision in args.precisions:
            base, shared = best[method, precision, "baseline"], best[method, precision, "shared"]
            name = "ours, prefix_sharing=false" if method == "rrhf" else "raw TRL"
            same = "" if base.tokens == shared.tokens else f" (tokens differ: {base.tokens:.0f} / {shared.tokens:.0f})"
            close = math.isclose(base.last_loss, shared.last_loss, rel_tol=1e-3 if precision == "bf16" else 1e-4)
            print(
                f"| {method} | {precision} | {name} | {base.tokens_per_second:.0f} | "
                f"{shared.tokens_per_second:.0f} | {shared.tokens_per_second / base.tokens_per_second:.2f}x | "
                f"{base.peak_rss_mib:.0f} | {shared.peak_rss_mib:.0f} | "
                f"{shared.peak_rss_mib / base.peak_rss_mib:.2f} | {base.last_loss:.6g} / {shared.last_loss:.6g}"
                f"{'' if close else ' (differ)'}{same} |"
            )


if __name__ == "__main__":
    main()
