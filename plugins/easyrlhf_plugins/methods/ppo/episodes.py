"""PPO on an environment (``env``): each rollout row is a multi-turn episode (:mod:`easyrlhf_core.kit.episodes`).
The environment's tokens are attended to but never trained on: the rollout's ``mask`` (policy loss, KL,
advantages, value targets) is the episode's ``env_mask``, its ``attention`` every token; the episode's reward
(the environment's plus the reward plugin's on the transcript) sits on the model's last token. The trainer is a
:class:`.trainer.PPOTrainer`, typed loosely here (that module imports this one)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from easyrlhf_core.kit.causal_lm import left_pad, right_pad
from easyrlhf_core.kit.episodes import Episode, EpisodeSettings, episode_text, run_episodes
from easyrlhf_core.kit.rewards import record_columns, score_with_columns

from .rollout import Rollout, record_rollout

if TYPE_CHECKING:
    from easyrlhf_core.kit.shapes import Record


def play(trainer: Any, records: list[Record], updates: int) -> list[Episode]:
    """One episode per record, on the trainer's rollout engine (inside its ``generating`` block), by the policy
    after ``updates`` updates."""
    config = trainer.config
    envs = [config.new_environment(trainer.run.registry) for _ in records]
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    with trainer.accelerator.autocast():
        return run_episodes(
            trainer.engine,
            trainer.tokenizer,
            envs,
            [r["prompt"] for r in records],
            rows,
            trainer.sampling(updates),
            EpisodeSettings(config.max_turns, config.max_episode_tokens),
        )


def episode_scores(trainer: Any, records: list[Record], episodes: list[Episode]) -> list[float]:
    """Each episode's reward: the environment's, plus the reward plugin's on the transcript when one is given."""
    totals = [e.env_reward or 0.0 for e in episodes]
    if trainer.reward_fn is not None:
        texts = [episode_text(e) for e in episodes]
        extra = score_with_columns(trainer.reward_fn, [r["prompt"] for r in records], texts, record_columns(records))
        totals = [a + b for a, b in zip(totals, extra)]
    return totals


def episode_rollout(trainer: Any, iteration: int) -> tuple[Rollout, list[Record], list[str], dict[str, float]]:
    """:meth:`Any.rollout` for an environment run."""
    device = trainer.accelerator.device
    records = [trainer.prompts[i] for i in trainer.batch_indices(iteration)]
    trainer.unwrapped.eval()
    start = time.perf_counter()
    with trainer.generating():
        episodes = play(trainer, records, iteration - 1)
    generated = time.perf_counter()
    pad = trainer.tokenizer.pad_token_id
    queries, query_mask = left_pad([e.prompt_ids for e in episodes], pad)
    responses, attention = right_pad([e.completion_ids or [pad] for e in episodes], pad)
    trained, _ = right_pad([e.env_mask or [0] for e in episodes], 0)
    trained = trained * attention
    finished = torch.tensor([e.done for e in episodes])
    scores = episode_scores(trainer, records, episodes)
    scored = time.perf_counter()
    with trainer.accelerator.autocast():
        result = record_rollout(
            trainer.unwrapped.policy,
            trainer.reference,
            trainer.unwrapped.value_model,
            queries.to(device),
            query_mask.to(device),
            responses.to(device),
            trainer.stop_ids,
            trainer.config.temperature,
            trainer.config.forward_batch_size,
            lambda _responses, _mask: torch.tensor(scores, dtype=torch.float32, device=device),
            episode_masks=(trained.to(device), attention.to(device), finished.to(device)),
            pack=trainer.pack,
            pad_token_id=pad,
        )
    finished_at = time.perf_counter()
    timings = {
        "time/generate": generated - start,
        "time/score": scored - generated,
        "time/forward": finished_at - scored,
        **episode_metrics(episodes),
    }
    return result, records, [episode_text(e) for e in episodes], timings


def episode_metrics(episodes: list[Episode], prefix: str = "episodes/") -> dict[str, float]:
    """Means over the episodes: turns, tool calls, tool failures, the share that ended by themselves, the
    environment's reward."""
    n = max(1, len(episodes))
    return {
        f"{prefix}turns": sum(e.turns for e in episodes) / n,
        f"{prefix}tool_calls": sum(e.tool_calls for e in episodes) / n,
        f"{prefix}tool_failures": sum(e.tool_failures for e in episodes) / n,
        f"{prefix}done": sum(float(e.done) for e in episodes) / n,
        f"{prefix}env_reward": sum(e.env_reward or 0.0 for e in episodes) / n,
    }


def episode_evaluate(trainer: Any, iteration: int) -> None:
    """Held-out episodes: mean reward, turns, tool calls (``eval/...``)."""
    if not trainer.eval_prompts:
        return
    mine = [trainer.eval_prompts[i] for i in range(trainer.rank, len(trainer.eval_prompts), trainer.world)]
    size = trainer.config.per_device_eval_batch_size
    totals = torch.zeros(5, device=trainer.accelerator.device)  # score, turns, tool calls, failures, count
    with trainer.generating():
        trainer.engine_sync.before_rollout(trainer.unwrapped.policy, iteration)  # every rank pushes (ZeRO-3: together)
        for start in range(0, len(mine), size):
            records = mine[start : start + size]
            episodes = play(trainer, records, iteration)
            scores = episode_scores(trainer, records, episodes)
            totals += torch.tensor(
                [
                    sum(scores),
                    sum(e.turns for e in episodes),
                    sum(e.tool_calls for e in episodes),
                    sum(e.tool_failures for e in episodes),
                    len(episodes),
                ],
                device=totals.device,
                dtype=totals.dtype,
            )
    totals = trainer.accelerator.reduce(totals, reduction="sum")
    count = max(float(totals[4]), 1.0)
    names = ("eval/score", "eval/turns", "eval/tool_calls", "eval/tool_failures")
    trainer.run.log_metrics(iteration, {name: float(totals[i]) / count for i, name in enumerate(names)})
