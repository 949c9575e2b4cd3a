"""Generation with each group's prompt read once (easyrlhf_core.kit.shared_prefill) vs plain ``generate``, on
the shape GRPO and RLOO sample: hh-rlhf prompts, ``num_generations`` completions of each, SmolLM2-135M-Instruct,
fp32, CPU. Same prompts, seed and settings on both sides (the tokens are compared, not only timed);
alternating A/B rounds, medians.

    python benchmarks/shared_prefill.py [--prompts 4] [--generations 4] [--new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from _common import load_records

    from easyrlhf_core.kit.chat_template import prompt_ids
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model
    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    path = resolve_model(None).path
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path).eval()
    records = load_records("prompt", 64)[: args.prompts]
    ids = [prompt_ids(tokenizer, r["prompt"]) for r in records for _ in range(args.generations)]
    sampling = Sampling(args.new_tokens, [tokenizer.eos_token_id], tokenizer.pad_token_id, seed=0)
    engines = {
        "plain": TransformersEngine(model, tokenizer, share_prompts=False),
        "shared": TransformersEngine(model, tokenizer),
    }
    for engine in engines.values():
        engine.generate(ids[: args.generations], sampling)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            began = time.perf_counter()
            out = engine.generate(ids, sampling)
            times[name].append(time.perf_counter() - began)
            outputs[name] = out.response_ids * out.response_mask
    plain, shared = (statistics.median(times[n]) for n in ("plain", "shared"))
    lengths = [len(i) for i in ids[:: args.generations]]
    tokens = int(outputs["shared"].ne(0).sum())
    print(
        f"generation, {args.prompts} hh-rlhf prompts x {args.generations} completions, up to {args.new_tokens} "
        f"tokens (prompts {min(lengths)}-{max(lengths)} tokens): plain {plain:.2f} s, shared prompt {shared:.2f} s "
        f"-> {plain / shared:.2f}x (median of {args.rounds}); same tokens: "
        f"{torch.equal(outputs['plain'], outputs['shared'])} ({tokens} new tokens)"
    )


if __name__ == "__main__":
    main()
