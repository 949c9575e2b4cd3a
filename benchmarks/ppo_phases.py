"""Peak RSS and seconds of each phase of a PPO iteration (generate, the no-grad forwards, the update), at the
``online_speed.py`` settings: the embedded SmolLM2-135M-Instruct, 8 hh-rlhf prompts per iteration, 32 new
tokens, the ``length`` reward, one minibatch of 8, fp32.

The real loop (``PPOTrainer.step``) in this process, seconds as wall and the process's CPU time; before
each phase the resident high-water mark is reset (Linux: ``/proc/self/clear_refs``), so each phase's peak is
its own. ``KEY=VALUE`` arguments override options.

    python benchmarks/ppo_phases.py                       # 2 iterations, ppo_epochs 1
    python benchmarks/ppo_phases.py ppo_epochs=4 lean_forward=false
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = {
    "rollout_batch_size": 8,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_new_tokens": 32,
    "ppo_epochs": 1,
    "learning_rate": 1e-6,
    "temperature": 1.0,
    "eval_steps": "null",
    "eval_fraction": 0.0,
    "max_eval_samples": 0,
    "save_steps": 0,
    "logging_steps": 1,
}


def status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, printing its peak RSS (reset first), the RSS before and after, and its seconds."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as refs:
            refs.write("5")
        started, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        print(
            f"  {name}: peak {status_mib('VmHWM'):.0f} MiB (before {before:.0f}, after {status_mib('VmRSS'):.0f}), "
            f"{time.perf_counter() - started:.1f} s, {time.process_time() - cpu:.1f} CPU s",
            flush=True,
        )
        return out

    return wrapper


def main() -> None:
    from easyrlhf_plugins.methods.ppo import trainer as ppo_trainer

    from easyrlhf_core.kit.model_loading import resolve_model
    from easyrlhf_core.runtime.lifecycle import prepare
    from easyrlhf_core.runtime.run import RunRequest

    settings = {**SETTINGS, **dict(arg.split("=", 1) for arg in sys.argv[1:])}
    flags = {
        "model": resolve_model(None).path,
        "reward": "length",
        "dataset": "hh-rlhf",
        "output_dir": tempfile.mkdtemp(),
        "max_steps": 2,
        "seed": 42,
    }
    run = prepare(RunRequest(method="ppo", flags=flags, set_options=[f"{k}={v}" for k, v in settings.items()]))
    run.progress.enabled = False
    print(f"load average {os.getloadavg()[0]:.1f}; settings {settings}", flush=True)
    ppo_trainer.record_rollout = timed("no-grad forwards (policy, reference, values)", ppo_trainer.record_rollout)
    trainer = timed("setup", ppo_trainer.PPOTrainer)(run)
    trainer.sample = timed("generate", trainer.sample)
    trainer.update = timed("update", trainer.update)
    for iteration in (1, 2):
        print(f"iteration {iteration}", flush=True)
        trainer.step(iteration)
    rows = [line for line in Path(run.metrics_path).read_text(encoding="utf-8").splitlines()]
    print(rows[-1][:400])
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
