"""RRHF: all k candidates of a batch in one forward pass vs a Python loop over candidates.

Times one training step's loss (forward + backward) both ways on the same queries and checks they give
the same loss. Prints the speed ratio (loop time / batched time).

    python benchmarks/rrhf_batched.py                       # a small random Llama (CPU-friendly)
    python benchmarks/rrhf_batched.py --model default       # the embedded SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easyrlhf_plugins.methods.rrhf.encoding import RankedCollator, encode_dataset  # noqa: E402
from easyrlhf_plugins.methods.rrhf.loss import rrhf_terms  # noqa: E402

from easyrlhf_core.kit.causal_lm import response_log_probs  # noqa: E402

WORDS = (
    "the a cat dog road bread flour water salt Paris France capital city why how what is was "
    "help sure please thanks sorry answer question joke homework subject"
).split()


def toy_records(queries: int, k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [
        {
            "prompt": [{"role": "user", "content": text(20, 40)}],
            "responses": [text(10, 40) for _ in range(k)],
            "scores": [rng.random() for _ in range(k)],
        }
        for _ in range(queries)
    ]


def load(model_arg: str):
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model

    if model_arg == "random":
        from transformers import LlamaConfig, LlamaForCausalLM

        from tests.helpers import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return LlamaForCausalLM(config), tokenizer, "random Llama (hidden 256, 4 layers)"
    resolved = resolve_model(None if model_arg == "default" else model_arg)
    return load_causal_lm(resolved.path), load_tokenizer(resolved.path), resolved.source


def batched_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = response_log_probs(logits, batch["input_ids"], batch["response_mask"])
    return rrhf_terms(sums, counts, batch["rewards"], batch["query_index"], int(batch["query_index"].max()) + 1).loss


def loop_loss(model, features, collate) -> torch.Tensor:
    """The naive way: one forward per candidate, then the same loss on the stacked scores."""
    sums, counts, rewards, index = [], [], [], []
    for q, feature in enumerate(features):
        for response, score in zip(feature["response_ids"], feature["scores"]):
            row = collate([{"prompt_ids": feature["prompt_ids"], "response_ids": [response], "scores": [score]}])
            logits = model(input_ids=row["input_ids"], attention_mask=row["attention_mask"]).logits
            s, c = response_log_probs(logits, row["input_ids"], row["response_mask"])
            sums.append(s)
            counts.append(c)
            rewards.append(score)
            index.append(q)
    return rrhf_terms(
        torch.cat(sums), torch.cat(counts), torch.tensor(rewards), torch.tensor(index), len(features)
    ).loss


def timed(fn, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        loss = fn()
        loss.backward()
        best = min(best, time.perf_counter() - start)
        value = loss.item()
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random", help="'random', 'default' (SmolLM2-135M) or a model path")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, source = load(args.model)
    model.eval()  # no dropout: both ways must give the same loss
    data, _ = encode_dataset(tokenizer, toy_records(args.queries, args.k), max_length=512)
    features = [data[i] for i in range(len(data))]
    collate = RankedCollator(tokenizer.pad_token_id)
    batch = collate(features)
    tokens = int(batch["attention_mask"].sum())
    print(
        f"model: {source}; {args.queries} queries x k={args.k} candidates, {tokens} tokens "
        f"(padded width {batch['input_ids'].shape[1]}), {args.threads} threads"
    )

    t_batched, l_batched = timed(lambda: batched_loss(model, batch), args.repeats)
    model.zero_grad()
    t_loop, l_loop = timed(lambda: loop_loss(model, features, collate), args.repeats)
    same = "ok" if abs(l_batched - l_loop) < 1e-3 else "DIFFERENT"
    print(f"same loss: batched {l_batched:.5f}, loop {l_loop:.5f} ({same})")
    print(f"forward+backward per step: batched {t_batched * 1000:.0f} ms, loop over candidates {t_loop * 1000:.0f} ms")
    print(f"speed-up of one batched pass: {t_loop / t_batched:.2f}x")


if __name__ == "__main__":
    main()
