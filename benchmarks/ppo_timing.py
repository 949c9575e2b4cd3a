"""Where one PPO iteration's time goes, on SmolLM2-135M on CPU, and how it scales.

For each (rollout batch, response length) the script runs the real PPO loop (policy, frozen reference,
a SmolLM2 reward model and a value model initialised from it; hh-rlhf prompts) for a warm-up iteration
and a measured one, and splits the measured iteration into: generation (one batched ``generate``),
scoring (reward model), forward passes (policy log-probs, reference log-probs, values; no grad), the
PPO update, and the rest (rewards, GAE, whitening, bookkeeping). The baseline, measured in the same run
on the same tokens, is one forward+backward pass of the policy alone.

    non-generation overhead = scoring + forward passes + rest      (target: < 2x the baseline)
    update ratio            = update / (ppo_epochs x baseline)     (~2: policy and value both train)

Usage:
    python benchmarks/ppo_timing.py [--batch-sizes 2,4] [--response-lengths 16,32] [--ppo-epochs 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_PROMPT_TOKENS = 128


def reward_model_dir(policy_path: str, root: Path) -> Path:
    """SmolLM2 with a fresh scalar head, saved like `--method rm` output (the scoring cost is the same)."""
    import torch

    from easyrlhf_core.kit.model_loading import load_sequence_classifier, load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(policy_path)
    out = root / "reward-model"
    load_sequence_classifier(policy_path, pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_trainer(policy_path: str, rm_path: Path, out: Path, batch: int, new_tokens: int, ppo_epochs: int):
    from easyrlhf_plugins.methods.ppo.trainer import PPOTrainer

    from easyrlhf_core.runtime.lifecycle import prepare
    from easyrlhf_core.runtime.run import RunRequest

    settings = {
        "max_new_tokens": new_tokens,
        "rollout_batch_size": batch,
        "per_device_train_batch_size": batch,
        "ppo_epochs": ppo_epochs,
        "max_length": MAX_PROMPT_TOKENS + new_tokens,
        "max_train_samples": 400,
        "max_eval_samples": 1,
        "save_steps": 0,
        "num_sample_completions": 0,
    }
    request = RunRequest(
        method="ppo",
        flags={
            "model": policy_path,
            "reward_model": str(rm_path),
            "dataset": "hh-rlhf",
            "output_dir": str(out),
            "max_steps": 2,
        },
        set_options=[f"{k}={v}" for k, v in settings.items()],
        overwrite=True,
    )
    run = prepare(request)
    run.log = lambda _msg: None
    run.progress.enabled = False
    return PPOTrainer(run), run


def policy_forward_backward(trainer, iteration: int) -> float:
    """Seconds for one policy forward+backward over a rollout's prompt+response tokens."""
    from easyrlhf_plugins.methods.ppo.rollout import policy_response_logits

    from easyrlhf_core.kit import causal_lm as lm
    from easyrlhf_core.kit import rl_math

    ro, _, _, _ = trainer.rollout(iteration)
    policy = trainer.unwrapped.policy
    policy.train()
    start = time.perf_counter()
    logits = policy_response_logits(policy, ro.input_ids, ro.attention_mask, ro.queries.shape[1])
    loss = -rl_math.masked_mean(lm.logprobs_from_logits(logits, ro.responses), ro.mask)
    loss.backward()
    elapsed = time.perf_counter() - start
    policy.zero_grad(set_to_none=True)
    policy.eval()
    return elapsed


def measure(policy_path: str, rm_path: Path, root: Path, batch: int, new_tokens: int, ppo_epochs: int) -> dict:
    out = root / f"run-b{batch}-t{new_tokens}"
    trainer, run = build_trainer(policy_path, rm_path, out, batch, new_tokens, ppo_epochs)
    trainer.step(1)  # warm-up
    trainer.step(2)
    row = [json.loads(line) for line in run.metrics_path.read_text().splitlines()][-1]
    baseline = policy_forward_backward(trainer, 3)
    rest = row["time/iteration"] - sum(row[k] for k in ("time/generate", "time/score", "time/forward", "time/update"))
    overhead = row["time/score"] + row["time/forward"] + rest
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "response_length": row["response_length"],
        "generate": row["time/generate"],
        "score": row["time/score"],
        "forward": row["time/forward"],
        "update": row["time/update"],
        "rest": rest,
        "iteration": row["time/iteration"],
        "baseline": baseline,
        "overhead_ratio": overhead / baseline,
        "update_ratio": row["time/update"] / (ppo_epochs * baseline),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="2,4")
    parser.add_argument("--response-lengths", default="16,32")
    parser.add_argument("--ppo-epochs", type=int, default=1, help="update time scales linearly with this")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine more threads oversubscribe and crawl)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from easyrlhf_core.kit.model_loading import resolve_default_model

    policy_path = resolve_default_model().path
    print(f"policy: {policy_path}; torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rm_path = reward_model_dir(policy_path, root)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            for new_tokens in [int(t) for t in args.response_lengths.split(",")]:
                results.append(measure(policy_path, rm_path, root, batch, new_tokens, args.ppo_epochs))
                r = results[-1]
                print(f"batch {batch} x {new_tokens} new tokens: iteration {r['iteration']:.1f}s", flush=True)
    header = (
        "| batch | max new | resp len | generate s | score s | fwd (3 models) s | update s | rest s | "
        "iteration s | policy fwd+bwd s | non-gen overhead / fwd+bwd | update / (epochs x fwd+bwd) |"
    )
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        share = 100 * r["generate"] / r["iteration"]
        print(
            f"| {r['batch']} | {r['new_tokens']} | {r['response_length']:.1f} | {r['generate']:.2f} ({share:.0f}%) "
            f"| {r['score']:.2f} | {r['forward']:.2f} | {r['update']:.2f} | {r['rest']:.3f} | {r['iteration']:.2f} "
            f"| {r['baseline']:.2f} | {r['overhead_ratio']:.2f}x | {r['update_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
