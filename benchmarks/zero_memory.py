"""Peak RSS per process of a 2-process run on CPU: plain DDP vs DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 with
offload (the shipped presets), for dpo and ppo.

Each (method, config) is one ``easyrlhf run --num-processes 2 [--deepspeed PRESET]`` child of this script,
on the same model, hh-rlhf records (embedded sample, seed 42), batch, max_length and step count, fp32, no
eval, no checkpoints. The peak is the child's ``wait4`` rusage, which covers its whole process tree (the
parent, the launcher, both ranks): the largest process, i.e. a rank (the two ranks hold equal shares).

    python benchmarks/zero_memory.py                                  # SmolLM2-135M-Instruct (embedded)
    python benchmarks/zero_memory.py --methods dpo --configs ddp,zero3 --steps 2
    python benchmarks/zero_memory.py --model /tmp/bench-tiny --steps 1

The first ``zero2_offload`` / ``zero3_offload`` run on a machine compiles DeepSpeed's CPU Adam once (minutes);
it is cached in ``~/.cache/torch_extensions``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from _common import benchmark_model, easyrlhf_command, remove, run_child

CONFIGS = ("ddp", "zero2", "zero3", "zero3_offload")
METHODS = ("dpo", "ppo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(method: str, config: str, model: str, out: Path, steps: int, max_length: int) -> list[str]:
    settings = {"max_length": max_length, "per_device_train_batch_size": 2}
    flags = ["--precision", "fp32", "--num-processes", "2", "--main-process-port", str(free_port())]
    if config != "ddp":
        flags += ["--deepspeed", config]
    if method == "ppo":
        settings.update(rollout_batch_size=2, max_new_tokens=16, ppo_epochs=1)
        flags += ["--reward", "length"]
    else:
        settings.update(summary_pairs=0)
    return easyrlhf_command(method, model, out, steps, settings, flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    model = benchmark_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="zero-memory-") as tmp:
        for method in args.methods.split(","):
            baseline = None
            for config in args.configs.split(","):
                out = Path(tmp) / f"{method}-{config}"
                result = run_child(command(method, config, model, out, args.steps, args.max_length))
                remove(out)
                baseline = baseline or result.peak_rss_mib
                rows.append((method, config, result.peak_rss_mib, result.peak_rss_mib / baseline, result.wall_seconds))
                print(
                    f"{method} {config}: {result.peak_rss_mib:.0f} MiB, {result.wall_seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print("| method | config | peak RSS per process MiB | vs DDP | wall s |")
    print("|---|---|---|---|---|")
    for method, config, rss, ratio, wall in rows:
        print(f"| {method} | {config} | {rss:.0f} | {ratio:.2f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
