"""candidates=generate: sample responses per prompt, add the dataset's, score all with a reward plugin,
once, cached in ``OUTPUT_DIR/candidates.jsonl`` (written atomically) so ``--resume`` reuses them.

The cache's first line is a header ``{"rrhf_candidates": 1, "fingerprint": ..., "train": N, "eval": M}``;
each following line is a ranked record plus its split: ``{"split", "prompt", "responses", "scores",
"generated"}`` (``generated``: how many of the responses, first in the list, were sampled).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.errors import DataError, PluginError
from easyrlhf_core.kit.shapes import Message, Record
from easyrlhf_core.kit.rollout import Sampling

if TYPE_CHECKING:
    from easyrlhf_core.kit.bases import RewardFunction
    from easyrlhf_core.kit.context import RunContext

    from .config import RRHFConfig

CACHE_FILE = "candidates.jsonl"
CACHE_VERSION = 1
SCORE_CHUNK = 64


def cache_path(run: RunContext) -> Path:
    return run.output_dir / CACHE_FILE


def fingerprint(config: RRHFConfig, splits: dict[str, list[Record]]) -> str:
    """What the cached candidates depend on: generation and reward settings, and the prompts."""
    settings = {
        k: getattr(config, k)
        for k in (
            "num_generations",
            "keep_dataset_responses",
            "generation_model",
            "temperature",
            "top_p",
            "max_new_tokens",
            "max_length",
            "reward_model",
            "reward",
            "reward_options",
            "seed",
            "model",
        )
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for split in sorted(splits):
        for record in splits[split]:
            digest.update(json.dumps([split, record["prompt"], record["responses"]], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def read_cache(path: Path, expected: str) -> dict[str, list[Record]] | None:
    """The cached splits when ``path`` holds candidates for ``expected``; None otherwise."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        return None
    if header.get("rrhf_candidates") != CACHE_VERSION or header.get("fingerprint") != expected:
        return None
    splits: dict[str, list[Record]] = {"train": [], "eval": []}
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            splits[row.pop("split")].append(row)
        except (ValueError, KeyError) as exc:
            raise DataError(
                f"corrupt candidates cache ({type(exc).__name__}); delete the file to regenerate",
                file=path,
                line=number,
            ) from None
    if len(splits["train"]) != header.get("train") or len(splits["eval"]) != header.get("eval"):
        return None
    return splits


def write_cache(path: Path, key: str, splits: dict[str, list[Record]]) -> None:
    """Write the cache atomically: a temp file beside it, then rename."""
    header = {
        "rrhf_candidates": CACHE_VERSION,
        "fingerprint": key,
        "train": len(splits["train"]),
        "eval": len(splits["eval"]),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(header) + "\n")
            for split in ("train", "eval"):
                for record in splits[split]:
                    fh.write(json.dumps({"split": split, **record}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reward_function(run: RunContext) -> RewardFunction:
    """The reward plugin that scores candidates (``--reward-model PATH`` or ``--reward NAME``), as validation
    built it."""
    return run.config.build_reward(run.registry)


def score_all(
    reward: RewardFunction,
    prompts: list[list[Message]],
    completions: list[str],
    log: Any = lambda _m: None,
    columns: dict[str, list[Any]] | None = None,
) -> list[float]:
    """Scores in chunks (:func:`easyrlhf_core.kit.rewards.score_with_columns`: one number per completion, the
    records' extra columns handed over to rewards that read them)."""
    from easyrlhf_core.kit.rewards import score_with_columns

    scores: list[float] = []
    for start in range(0, len(completions), SCORE_CHUNK):
        part = slice(start, start + SCORE_CHUNK)
        scores.extend(
            score_with_columns(
                reward, prompts[part], completions[part], {k: v[part] for k, v in (columns or {}).items()}
            )
        )
        if len(completions) > SCORE_CHUNK:
            log(f"scored {len(scores)}/{len(completions)} candidates")
    return scores


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[list[Message]],
    config: RRHFConfig,
    log: Any = lambda _m: None,
    model_dir: str | None = None,
) -> list[list[str]]:
    """``num_generations`` sampled responses per prompt, through the rollout layer (``rollout_engine``; the vllm
    engine starts from ``model_dir``, the model's directory)."""
    import torch

    from easyrlhf_core.kit.chat_template import keep_last, prompt_ids
    from easyrlhf_core.kit.rollout import build_engine

    if config.num_generations == 0:
        return [[] for _ in prompts]
    torch.manual_seed(config.seed)
    sampling = sampling_config(config, tokenizer, model)
    engine = build_engine(
        config, model, tokenizer, model_dir=model_dir, precision=config.precision, seed=config.seed,
        max_model_len=config.max_length, log=log, share_prompts=config.prefix_sharing,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    n = config.num_generations
    try:
        max_prompt = max(config.max_length - config.max_new_tokens, 1)
        for start in range(0, len(prompts), config.generation_batch_size):
            batch = [
                keep_last(prompt_ids(tokenizer, p), max_prompt)
                for p in prompts[start : start + config.generation_batch_size]
            ]
            if engine.name != "transformers":
                sampling.seed = config.seed + start
            texts = engine.generate([ids for ids in batch for _ in range(n)], sampling).texts
            out.extend(texts[i * n : (i + 1) * n] for i in range(len(batch)))
            log(f"sampled candidates for {len(out)}/{len(prompts)} prompts")
    finally:
        model.train(was_training)
        engine.close()
    return out


def sampling_config(config: RRHFConfig, tokenizer: Any, model: Any) -> Sampling:
    """How candidates are sampled: the sampling options, stopping on the same end-of-turn ids as eval and ppo
    (:func:`easyrlhf_core.kit.causal_lm.stop_token_ids`)."""
    from easyrlhf_core.kit.causal_lm import stop_token_ids

    return Sampling.from_config(config, config.max_new_tokens, stop_token_ids(tokenizer, model), tokenizer.pad_token_id)


def build_candidates(
    records: list[Record],
    sampled: list[list[str]],
    reward: RewardFunction,
    keep_dataset_responses: bool,
    log: Any = lambda _m: None,
) -> list[Record]:
    """Ranked records: sampled (+ dataset) responses per prompt, every one scored by ``reward``."""
    responses = [list(s) + (list(r["responses"]) if keep_dataset_responses else []) for r, s in zip(records, sampled)]
    from easyrlhf_core.kit.rewards import record_columns

    flat_records = [r for r, rs in zip(records, responses) for _ in rs]
    flat_scores = score_all(
        reward,
        [r["prompt"] for r in flat_records],
        [x for rs in responses for x in rs],
        log,
        record_columns(flat_records, skip=("prompt", "responses", "scores", "generated")),
    )
    out, at = [], 0
    for record, sampled_here, rs in zip(records, sampled, responses):
        out.append(
            {
                "prompt": record["prompt"],
                "responses": rs,
                "scores": flat_scores[at : at + len(rs)],
                "generated": len(sampled_here),
            }
        )
        at += len(rs)
    return out


def generated_candidates(
    run: RunContext, policy: Any, tokenizer: Any, reward: RewardFunction
) -> dict[str, list[Record]]:
    """Train and eval ranked records for candidates=generate: from the cache, or sampled and scored now.

    Only the main process generates and writes; call inside ``TrainingArguments.main_process_first``
    so the other ranks then read the cache.
    """
    config = run.config
    splits = {"train": run.data.train, "eval": run.data.eval}
    key = fingerprint(config, splits)
    path = cache_path(run)
    cached = read_cache(path, key)
    if cached is not None:
        run.log(f"candidates: reusing {sum(map(len, cached.values()))} scored queries from {path}")
        return cached
    if path.exists():
        run.log(f"candidates: {path} was made with other settings or data; generating again")
    if not run.is_main_process:
        raise PluginError(f"candidates cache missing on a non-main rank; the main rank should have written {path}")
    from easyrlhf_core.kit.trainer_method import run_model_path

    generator, generator_tokenizer, generator_dir = policy, tokenizer, run_model_path(run)
    if config.generation_model is not None and config.num_generations > 0:
        from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model

        resolved = resolve_model(config.generation_model, log=run.log)
        run.log(f"candidates: sampling with {resolved.source}")
        generator_tokenizer = load_tokenizer(resolved.path, config.trust_remote_code)
        generator = load_causal_lm(resolved.path, config.trust_remote_code).to(policy.device)
        generator_dir = resolved.path
    run.log(
        f"candidates: sampling {config.num_generations} per prompt for {len(splits['train'])} train + "
        f"{len(splits['eval'])} eval prompts, scoring with '{reward.name}'"
    )
    result: dict[str, list[Record]] = {}
    for split, records in splits.items():
        sampled = sample_responses(
            generator, generator_tokenizer, [r["prompt"] for r in records], config, run.log, generator_dir
        )
        result[split] = build_candidates(records, sampled, reward, config.keep_dataset_responses, run.log)
    write_cache(path, key, result)
    run.log(f"candidates: {summary(result['train'])}; cached in {path}")
    return result


def summary(records: list[Record]) -> str:
    """Mean reward of sampled vs dataset responses (a quick look at what the ranking will teach)."""
    sampled = [s for r in records for s in r["scores"][: r["generated"]]]
    given = [s for r in records for s in r["scores"][r["generated"] :]]
    parts = [f"{len(records)} queries"]
    if sampled:
        parts.append(f"mean reward of sampled responses {sum(sampled) / len(sampled):.4g}")
    if given:
        parts.append(f"of dataset responses {sum(given) / len(given):.4g}")
    return ", ".join(parts)
