"""Our PPO next to TRL 1.12's (``trl.experimental.ppo.PPOTrainer``, the last TRL with a PPO; removed in 1.13),
side by side on the same model, prompts, reward model and settings, alternating.

TRL 1.12 runs in a venv of its own (created on the first run under ``~/.cache/easyrlhf-bench/trl112-venv``:
``torch==2.13.0``, then ``trl==1.12.0`` with the transformers, accelerate and datasets this checkout runs, so
both sides run the same model code and kernels). Both sides get:

- the policy: the embedded SmolLM2-135M-Instruct (or ``--model``), fp32, dropout off, no gradient checkpointing;
- the reward model: SmolLM2 with a fresh scalar head (seed 0), saved once; the value model starts from it;
- the prompts: ``--prompts`` hh-rlhf prompts of at most ``--max-prompt-tokens`` tokens, chat template applied
  by our encoder, the same token ids handed to TRL; one rollout batch = all of them, so every iteration of
  either side samples the same prompts;
- ``--response-length`` new tokens at temperature 1 (no top-k/top-p), stop at EOS, ``missing_eos_penalty`` 1,
  k1 KL at beta 0.05, gamma 1, lambda 0.95, clip 0.2 / 0.2, vf_coef 0.1, advantages whitened, ``--ppo-epochs``
  epochs of one minibatch (the whole rollout) in one micro-batch, AdamW at a constant learning rate, no
  gradient clipping (TRL's loop has none; ours is set to 1e9).

Figures: seconds per iteration, wall (ours: ``time/iteration``; TRL: between its steps, from a callback) and
CPU (the process's CPU time over the same span: on a machine shared with other jobs, the work done, where
wall time mostly says how busy the machine was; ``--threads`` 1 by default, so no thread spins waiting),
tokens per second of each (prompt + response tokens of each side's own rollouts, responses cut after the stop
token), peak RSS of each child process (``os.wait4``), and both sides' first-iteration statistics.

Where the algorithms still differ (not settable): TRL reads the old log-probs from ``generate``'s scores (ours
recomputes them with a forward); with pad == eos (SmolLM2) TRL's attention mask drops every EOS token, also
the ``<|im_end|>`` ones inside the chat-templated prompt, and its policy loss stops before the response's
EOS (ours includes it); TRL scores token ids at the token before EOS, ours re-renders the text for the reward
model and reads its last non-pad token; TRL's KL metric and reward use the same k1 estimator.

    python benchmarks/ppo_vs_trl.py                     # 8 prompts, 32 new tokens, 3 iterations, 1 epoch
    python benchmarks/ppo_vs_trl.py --repeats 2 --ppo-epochs 4 --markdown benchmarks/results/ppo_vs_trl.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SEED, ChildResult, benchmark_model, easyrlhf_command, load_records, read_metrics, run_child

VENV = Path.home() / ".cache" / "easyrlhf-bench" / "trl112-venv"
#: installed into the venv in this order: torch first (the local CPU wheel), then TRL 1.12 with the
#: libraries this checkout runs on (TRL 1.12 asks for transformers >= 4.56.2, accelerate >= 1.4, datasets >= 4.7)
VENV_PACKAGES = (
    ["torch==2.13.0"],
    ["trl==1.12.0", "transformers==5.25.0", "accelerate==1.16.0", "datasets==5.2.0", "psutil"],
)
REWARD_MODEL = Path.home() / ".cache" / "easyrlhf-bench" / "smollm2-135m-fresh-rm"
BETA, PENALTY = 0.05, 1.0


def trl_python() -> Path:
    """The TRL 1.12 venv's python, created on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (TRL 1.12)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        for packages in VENV_PACKAGES:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    version = subprocess.run(
        [str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if version != "1.12.0":
        raise SystemExit(f"{VENV} has trl {version}, not 1.12.0: remove it to have it created again")
    return python


def reward_model_dir(policy_path: str) -> Path:
    """SmolLM2 with a fresh scalar head (seed 0), saved once like ``--method rm`` output."""
    if (REWARD_MODEL / "config.json").is_file():
        return REWARD_MODEL
    import torch

    from easyrlhf_core.kit.model_loading import load_sequence_classifier, load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(policy_path)
    model = load_sequence_classifier(policy_path, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(REWARD_MODEL)
    tokenizer.save_pretrained(REWARD_MODEL)
    return REWARD_MODEL


def prompts(policy_path: str, count: int, max_tokens: int) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The first ``count`` hh-rlhf prompts (the records ``--dataset hh-rlhf`` trains on) of at most
    ``max_tokens`` tokens, and their token ids as our PPO encodes them."""
    from easyrlhf_core.kit.model_loading import load_tokenizer
    from easyrlhf_core.kit.online import encode_prompts

    tokenizer = load_tokenizer(policy_path, padding_side="left")
    records = load_records("prompt", 50 * count)
    kept, ids = encode_prompts(tokenizer, records, max_tokens)
    chosen = list(range(min(count, len(kept))))
    return [records[kept[i]] for i in chosen], [ids[i] for i in chosen]


TRL_CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
import trl.experimental.ppo.ppo_trainer as ppo_module
from trl.experimental.ppo import PPOConfig, PPOTrainer

spec = json.loads(open(sys.argv[1]).read())
torch.manual_seed(spec["seed"])
tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
value = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
dataset = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
batch = len(spec["prompt_ids"])
args = PPOConfig(
    output_dir=spec["output_dir"], seed=spec["seed"], report_to=[], save_strategy="no", logging_steps=1,
    per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_mini_batches=1,
    local_rollout_forward_batch_size=batch, total_episodes=batch * spec["iterations"],
    num_ppo_epochs=spec["ppo_epochs"], response_length=spec["response_length"], temperature=1.0,
    stop_token="eos", missing_eos_penalty=spec["penalty"], kl_coef=spec["beta"], kl_estimator="k1",
    learning_rate=spec["learning_rate"], lr_scheduler_type="constant", bf16=False, fp16=False,
    gradient_checkpointing=False, num_sample_generations=0, dataloader_num_workers=0,
)
lengths = []  # response tokens up to and including the stop token, per rollout
truncate = ppo_module.truncate_response

def counting_truncate(stop_token_id, pad_token_id, responses):
    out = truncate(stop_token_id, pad_token_id, responses)
    is_stop = responses == stop_token_id
    width = torch.full_like(is_stop[:, 0], responses.shape[1], dtype=torch.long)
    lengths.append(int(torch.where(is_stop.any(1), is_stop.float().argmax(1) + 1, width).sum()))
    return out

ppo_module.truncate_response = counting_truncate

class Clock(TrainerCallback):
    def __init__(self):
        self.marks = []
    def on_train_begin(self, *a, **k):
        self.marks.append((time.perf_counter(), time.process_time()))
    def on_step_end(self, *a, **k):
        self.marks.append((time.perf_counter(), time.process_time()))

clock = Clock()
trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[clock])
trainer.train()
seconds = [b[0] - a[0] for a, b in zip(clock.marks, clock.marks[1:])]
cpu = [b[1] - a[1] for a, b in zip(clock.marks, clock.marks[1:])]
prompt_tokens = sum(len(p) for p in spec["prompt_ids"])
logs = [row for row in trainer.state.log_history if "objective/kl" in row]
json.dump({"seconds": seconds, "cpu": cpu, "response_tokens": lengths, "prompt_tokens": prompt_tokens,
           "first": logs[0]}, open(spec["result"], "w"))
"""


OURS_CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from easyrlhf_core.commands.cli import main
from easyrlhf_plugins.methods.ppo.trainer import PPOTrainer

cpu = []
step = PPOTrainer.step

def timed_step(self, iteration):
    began = time.process_time()
    step(self, iteration)
    cpu.append(time.process_time() - began)

PPOTrainer.step = timed_step
result = sys.argv[1]
sys.argv = ["easyrlhf", *sys.argv[2:]]
try:
    main()
finally:
    json.dump({"cpu": cpu}, open(result, "w"))
"""


def run_trl(python: Path, spec: dict[str, Any], root: Path) -> tuple[dict[str, Any], ChildResult]:
    script = root / "trl_child.py"
    script.write_text(TRL_CHILD, encoding="utf-8")
    spec = {**spec, "output_dir": str(root / "trl-out"), "result": str(root / "trl-result.json")}
    (root / "trl-spec.json").write_text(json.dumps(spec), encoding="utf-8")
    child = run_child([str(python), str(script), str(root / "trl-spec.json")])
    return json.loads(Path(spec["result"]).read_text(encoding="utf-8")), child


def run_ours(spec: dict[str, Any], records: list[dict[str, Any]], root: Path) -> tuple[dict[str, Any], ChildResult]:
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = {
        "rollout_batch_size": len(records),
        "per_device_train_batch_size": len(records),
        "gradient_accumulation_steps": 1,
        "ppo_epochs": spec["ppo_epochs"],
        "max_new_tokens": spec["response_length"],
        "temperature": 1.0,
        "missing_eos_penalty": spec["penalty"],
        "beta": spec["beta"],
        "kl_estimator": "k1",
        "learning_rate": spec["learning_rate"],
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1e9,
        "eval_steps": "null",
        "max_length": max(len(p) for p in spec["prompt_ids"]) + spec["response_length"] + 1,
        "num_sample_completions": 0,
    }
    out = root / "ours-out"
    command = easyrlhf_command(
        "ppo",
        spec["model"],
        out,
        spec["iterations"],
        settings,
        flags=["--reward-model", spec["reward_model"]],
        data=("--dataset", "jsonl", "--data-files", str(data)),
    )
    script = root / "ours_child.py"
    script.write_text(OURS_CHILD, encoding="utf-8")
    cpu_file = root / "ours-cpu.json"
    child = run_child([sys.executable, str(script), str(cpu_file), *command[3:]])
    rows = [r for r in read_metrics(out) if "time/iteration" in r]
    prompt_tokens = sum(len(p) for p in spec["prompt_ids"])
    result = {
        "seconds": [r["time/iteration"] for r in rows],
        "cpu": json.loads(cpu_file.read_text(encoding="utf-8"))["cpu"],
        "response_tokens": [r["tokens"] / spec["ppo_epochs"] - prompt_tokens for r in rows],
        "prompt_tokens": prompt_tokens,
        "first": rows[0],
    }
    return result, child


def summary(result: dict[str, Any], child: ChildResult) -> dict[str, float]:
    seconds = sum(result["seconds"]) / len(result["seconds"])
    cpu = sum(result["cpu"]) / len(result["cpu"])
    tokens = result["prompt_tokens"] + sum(result["response_tokens"]) / len(result["response_tokens"])
    return {
        "seconds": seconds,
        "cpu": cpu,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu,
        "rss": child.peak_rss_mib,
        "tokens": tokens,
    }


#: (label, our metrics key, TRL's metrics key): the first iteration of each side
FIRST_ITERATION = [
    ("score (before the EOS penalty)", "score", None),
    ("kl (k1, summed per response)", "kl", "objective/kl"),
    ("non-score reward", "non_score_reward", "objective/non_score_reward"),
    ("policy loss", "policy_loss", "loss/policy_avg"),
    ("value loss", "value_loss", "loss/value_avg"),
    ("clip fraction", "clipfrac", "policy/clipfrac_avg"),
    ("value clip fraction", "value_clipfrac", "val/clipfrac_avg"),
    ("approx kl", "approx_kl", "policy/approxkl_avg"),
    ("ratio mean", "ratio_mean", "val/ratio"),
    ("score (after the EOS penalty)", None, "objective/scores"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="policy (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts = rollout batch")
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=1, help="A/B pairs, the order alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    python = trl_python()
    model = benchmark_model(args.model)
    records, prompt_ids = prompts(model, args.prompts, args.max_prompt_tokens)
    spec = {
        "model": model,
        "reward_model": str(reward_model_dir(model)),
        "prompt_ids": prompt_ids,
        "seed": SEED,
        "iterations": args.iterations,
        "ppo_epochs": args.ppo_epochs,
        "response_length": args.response_length,
        "learning_rate": args.learning_rate,
        "beta": BETA,
        "penalty": PENALTY,
    }
    started = time.time()
    runs: dict[str, list[tuple[dict[str, Any], ChildResult]]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["ours", "trl"] if repeat % 2 == 0 else ["trl", "ours"]
            for side in order:
                root = Path(tmp) / f"{side}-{repeat}"
                root.mkdir()
                outcome = run_ours(spec, records, root) if side == "ours" else run_trl(python, spec, root)
                runs[side].append(outcome)
                print(f"{side} (repeat {repeat + 1}): {summary(*outcome)}", file=sys.stderr, flush=True)
    best = {side: min((summary(*o) for o in outcomes), key=lambda s: s["cpu"]) for side, outcomes in runs.items()}
    peak = {side: max(summary(*o)["rss"] for o in outcomes) for side, outcomes in runs.items()}
    ours, trl = best["ours"], best["trl"]
    load = os.getloadavg()[0]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; load average {load:.1f} at the end; {len(prompt_ids)} prompts "
        f"({sum(len(p) for p in prompt_ids)} tokens) x {args.response_length} new tokens, {args.iterations} "
        f"iterations, {args.ppo_epochs} PPO epoch(s) of one minibatch, {args.threads} torch thread(s) a side; "
        f"{args.repeats} A/B pair(s), the run with the fewest CPU seconds of each side; "
        f"{time.time() - started:.0f} s in all",
        "",
        "| side | CPU s / iteration | wall s / iteration | tokens / iteration | tokens / CPU s | tokens / wall s "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, r in (("easyrlhf ppo", ours), ("TRL 1.12 PPOTrainer", trl)):
        key = "ours" if side.startswith("easy") else "trl"
        lines.append(
            f"| {side} | {r['cpu']:.2f} | {r['seconds']:.2f} | {r['tokens']:.0f} | {r['tokens_per_cpu_s']:.1f} | "
            f"{r['tokens_per_s']:.1f} | {peak[key]:.0f} |"
        )
    lines += [
        "",
        f"tokens per CPU second: **{ours['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}x** TRL's (per wall "
        f"second: {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, under whatever load each side met); peak RSS: "
        f"**{peak['ours'] / peak['trl']:.2f}x** TRL's",
        "",
        "| first iteration | easyrlhf | TRL 1.12 |",
        "|---|---|---|",
    ]
    first_ours, first_trl = runs["ours"][0][0]["first"], runs["trl"][0][0]["first"]
    for label, ours_key, trl_key in FIRST_ITERATION:
        mine = f"{first_ours[ours_key]:.4g}" if ours_key else "-"
        theirs = f"{first_trl[trl_key]:.4g}" if trl_key else "-"
        lines.append(f"| {label} | {mine} | {theirs} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
