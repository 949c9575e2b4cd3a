"""``easyrlhf eval --env NAME``: a policy plays the environment's held-out episodes; the success rate (the mean
episode reward, the environment's plus a ``--reward``'s on the transcript), turns and tool calls per episode,
each with a 95% interval (Wilson's for a 0/1 reward, a seeded bootstrap otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from easyrlhf_core.commands.eval.data import load_eval_data
from easyrlhf_core.commands.eval.report import EvalReport
from easyrlhf_core.kit.environments import build_env_options
from easyrlhf_core.kit.episodes import Episode, EpisodeSettings, episode_text, run_episodes
from easyrlhf_core.kit.model_dirs import ModelRef, load_ref_policy, load_ref_tokenizer
from easyrlhf_core.kit.shapes import Shape
from easyrlhf_core.kit.stats import bootstrap_interval, mean, wilson_interval

if TYPE_CHECKING:
    from easyrlhf_core.commands.eval.request import EvalRequest
    from easyrlhf_core.runtime.registry import Registry

Log = Callable[[str], None]


def interval(values: list[float], seed: int, share: bool = False) -> list[float]:
    """The 95% interval of the mean: Wilson's for a share (``share`` and every value 0 or 1), else the seeded
    bootstrap (counts such as turns)."""
    if not values:
        return [float("nan"), float("nan")]
    if share and all(v in (0.0, 1.0) for v in values):
        return list(wilson_interval(sum(values), len(values)))
    return list(bootstrap_interval(values, seed))


def evaluate_environment(request: EvalRequest, registry: Registry, policy: ModelRef, log: Log) -> EvalReport:
    """Held-out episodes of ``request.env`` played by ``policy`` (greedy unless ``--sample``)."""
    from easyrlhf_core.kit.causal_lm import stop_token_ids
    from easyrlhf_core.kit.rollout import RolloutOptions, Sampling, build_engine

    env_class = registry.get("environments", request.env or "")
    options = build_env_options(env_class, dict(request.env_options), where="--env-option")
    data = load_eval_data(
        registry, request.dataset, Shape.PROMPT, request.data_files, request.split, request.limit, request.seed
    )
    report = EvalReport(
        kind="environment",
        model=request.model,
        dataset=request.dataset,
        split=request.split,
        seed=request.seed,
        data_files=list(request.data_files),
        notes=list(data.notes),
    )
    report.judge = request.reward
    tokenizer = load_ref_tokenizer(policy, request.trust_remote_code, padding_side="left")
    log(f"loading {policy.flag} {policy.name}")
    model = load_ref_policy(policy, request.trust_remote_code)
    stops = stop_token_ids(tokenizer, model)
    engine = build_engine(
        RolloutOptions(rollout_engine=request.rollout_engine),  # type: ignore[arg-type]
        model,
        tokenizer,
        model_dir=policy.path,
        seed=request.seed,
        max_model_len=request.max_length,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    sampling = Sampling(request.max_new_tokens, stops, pad, greedy=not request.sample, seed=request.seed)
    settings = EpisodeSettings(request.max_turns, request.max_episode_tokens)
    records = list(data.records)
    log(f"{policy.flag}: {len(records)} episodes of '{request.env}'")
    episodes: list[Episode] = []
    size = request.batch_size
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        envs = [env_class(options) for _ in chunk]
        rows = [{k: v for k, v in r.items() if k != "prompt"} for r in chunk]
        indices = list(range(start, start + len(chunk)))
        episodes += run_episodes(
            engine, tokenizer, envs, [r["prompt"] for r in chunk], rows, sampling, settings, row_indices=indices
        )
    engine.close()
    scores = [e.env_reward or 0.0 for e in episodes]
    if request.reward is not None:
        scores = [a + b for a, b in zip(scores, judge_scores(request, registry, records, episodes))]
    report.prompts = len(episodes)
    set_metric(report, "success_rate", "success_ci95", scores, request.seed, share=True)
    set_metric(report, "turns_mean", "turns_ci95", [float(e.turns) for e in episodes], request.seed)
    set_metric(report, "tool_calls_mean", "tool_calls_ci95", [float(e.tool_calls) for e in episodes], request.seed)
    report.metrics["tool_failures_mean"] = mean([float(e.tool_failures) for e in episodes])
    report.metrics["finished_share"] = mean([float(e.done) for e in episodes])
    return report


def set_metric(report: EvalReport, key: str, ci_key: str, values: list[float], seed: int, share: bool = False) -> None:
    report.metrics[key] = mean(values)
    report.metrics[ci_key] = interval(values, seed, share)


def judge_scores(request: EvalRequest, registry: Registry, records: list[Any], episodes: list[Episode]) -> list[float]:
    """``--reward``'s scores of the transcripts, with the rows' columns."""
    from easyrlhf_core.kit.rewards import named_judge, record_columns, score_with_columns

    judge = named_judge(registry, request.reward or "", dict(request.reward_options))
    texts = [episode_text(e) for e in episodes]
    return score_with_columns(judge.reward, [r["prompt"] for r in records], texts, record_columns(records))
