"""The LM head with gradients, full logits vs the kit's chunked head (``chunked_token_log_probs``): peak memory
and time of one forward + backward of the taken tokens' log-probs over N positions, SmolLM2-135M's head shape
(hidden 576, vocabulary 49,152), fp32, on CPU.

Peak memory is the process's resident high-water mark above what it held before the pass (Linux: reset
through ``/proc/self/clear_refs`` before each pass), so it counts the logits, their log-softmax and what
autograd keeps of them; best of ``--repeats`` for the time.

    python benchmarks/chunked_head.py --positions 256,1024,4096
"""

from __future__ import annotations

import argparse
import os
import time

import torch


from easyrlhf_core.kit.shared_prefix_forward import chunked_token_log_probs


def resident_mib(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def full(head: torch.nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, labels[:, None])[:, 0]


def chunked(head: torch.nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return chunked_token_log_probs(head, hidden, labels, stats=False)[0]


def measure(fn, head, hidden, labels, repeats: int) -> tuple[float, float]:
    """(peak MiB above the start, best seconds) of forward + backward."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        hidden.grad, head.weight.grad = None, None
        before = resident_mib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as refs:
            refs.write("5")
        started = time.perf_counter()
        fn(head, hidden, labels).sum().backward()
        best = min(best, time.perf_counter() - started)
        peak = max(peak, resident_mib("VmHWM") - before)
    return peak, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    head = torch.nn.Linear(576, 49152, bias=False)
    print(f"load average {os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}")
    print("| positions | full: peak MiB | chunked: peak MiB | ratio | full s | chunked s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.positions.split(",")):
        hidden = torch.randn(n, 576, requires_grad=True)
        labels = torch.randint(0, 49152, (n,))
        full_peak, full_s = measure(full, head, hidden, labels, args.repeats)
        chunk_peak, chunk_s = measure(chunked, head, hidden, labels, args.repeats)
        print(
            f"| {n} | {full_peak:.0f} | {chunk_peak:.0f} | {chunk_peak / full_peak:.2f} | {full_s:.3f} | "
            f"{chunk_s:.3f} | {chunk_s / full_s:.2f} |"
        )


if __name__ == "__main__":
    main()
