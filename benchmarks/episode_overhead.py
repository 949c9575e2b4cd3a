"""The multi-turn rollout's own cost: an environment episode of one turn vs plain single-turn sampling of the same
tokens, on the same engine, prompts and seed (SmolLM2-135M-Instruct, fp32, CPU). Goal: within 10%.

A turn environment that ends the episode after the first message makes ``run_episodes`` do exactly one
``generate`` call, plus its own work: rendering the prompt through the template, calling the environment,
bookkeeping. The baseline is the rollout layer's ``generate`` on the same prompt ids. Alternating A/B rounds.

    python benchmarks/episode_overhead.py [--prompts 16] [--new-tokens 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/episode_overhead.json"))
    args = parser.parse_args()

    import torch

    from easyrlhf_core.kit.chat_template import prompt_ids
    from easyrlhf_core.kit.environments import StepResult, TurnEnvironment
    from easyrlhf_core.kit.episodes import EpisodeSettings, run_episodes
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model
    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    class OneTurn(TurnEnvironment):
        name = "one-turn"

        def step(self, message: str) -> StepResult:
            return StepResult(done=True, reward=float(len(message)))

    path = resolve_model(None).path
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path).eval()
    engine = TransformersEngine(model, tokenizer)
    prompts = [[{"role": "user", "content": f"Tell me a fact about the number {i}."}] for i in range(args.prompts)]
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    # the same seed and prompt ids on both sides: the same tokens sampled (the counts printed say so)
    sampling = Sampling(args.new_tokens, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=0)

    def plain() -> int:
        return int(engine.generate(ids, sampling).response_mask.sum())

    def episodes() -> int:
        done = run_episodes(engine, tokenizer, [OneTurn() for _ in prompts], prompts, [{}] * len(prompts), sampling,
                            EpisodeSettings(max_turns=1, max_episode_tokens=args.new_tokens))  # fmt: skip
        return sum(sum(e.env_mask) for e in done)

    plain(), episodes()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "episodes": []}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("episodes", episodes)):
            torch.manual_seed(0)
            began = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - began)
    result: dict[str, Any] = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "tokens": tokens,
    }
    result["ratio"] = result["seconds"]["episodes"] / result["seconds"]["plain"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"one-turn episodes vs plain sampling: {result['ratio']:.3f}x the time "
        f"({result['seconds']['episodes']:.2f} s vs {result['seconds']['plain']:.2f} s, median of {args.rounds}; "
        f"{tokens['episodes']} vs {tokens['plain']} model tokens)"
    )


if __name__ == "__main__":
    main()
