"""What online methods on TRL's trainers share (GRPO, RLOO, a plugin's own): several weighted rewards
from the reward plugins, handed to TRL as reward functions, with the dataset's extra columns, and a log of
sampled completions with their rewards; and which prompts leave room for a completion (PPO's too).

The reward plugins are the same ones PPO and RRHF use (:mod:`easyrlhf_core.reward_choice`): a registered
reward function, or a reward-model directory read by the one readout rule the ``rm`` method trains with.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import invalid, option
from .lm import response_text
from .training import RewardChoice

if TYPE_CHECKING:
    from .api import RewardFunction
    from .registry import Registry
    from .kit.context import RunContext
    from .shapes import Message, Record

#: Keys TRL adds to a reward function's keyword arguments that are not dataset columns.
TRL_REWARD_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}
SAMPLES_FILE = "samples.jsonl"
_SPEC_KEYS = {"reward", "reward_model", "weight", "options"}


@dataclass
class WeightedReward:
    """One of a run's rewards: the function, its weight in the sum, and the name its metrics carry."""

    reward: RewardFunction
    weight: float
    label: str


@dataclass
class RewardsChoice(RewardChoice):
    """:class:`~easyrlhf_core.training.RewardChoice` plus several rewards at once, each with a weight:
    ``--reward length --reward keyword`` or, in YAML, ``rewards: [{reward: length, weight: 0.5, options:
    {target: 20}}, {reward_model: runs/rm/model}]``. The score is the weighted sum."""

    rewards: list[dict[str, Any]] = option([], "Several rewards, summed with weights: a list of {reward: NAME or "
                                               "reward_model: PATH, weight: 1.0, options: {...}}; with "
                                               "reward/reward_model too, that one comes first with weight 1.")

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.reward_options and self.reward is None and self.reward_model is None and self.rewards:
            raise invalid("reward_options", "belong to --reward / --reward-model; with several rewards give each "
                                            "its own: rewards: [{reward: NAME, options: {...}}]")
        for i, spec in enumerate(self.rewards):
            where = f"rewards[{i}]"
            if not isinstance(spec, dict):
                raise invalid("rewards", f"{where} must be a mapping such as {{reward: length, weight: 1.0}}")
            unknown = sorted(set(spec) - _SPEC_KEYS)
            if unknown:
                raise invalid("rewards", f"{where} has unknown key(s) {', '.join(unknown)}; use reward or "
                                         f"reward_model, weight, options")
            if ("reward" in spec) == ("reward_model" in spec):
                raise invalid("rewards", f"{where} needs exactly one of reward (a name) and reward_model (a path)")
            weight = spec.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise invalid("rewards", f"{where}: weight must be a number, got {weight!r}")
            if not isinstance(spec.get("options", {}), dict):
                raise invalid("rewards", f"{where}: options must be a mapping")

    def reward_specs(self) -> list[dict[str, Any]]:
        """Every reward as ``{reward | reward_model, weight, options}``, the single one first."""
        specs = []
        if self.reward_model is not None or self.reward is not None:
            specs.append({"reward_model": self.reward_model, "reward": self.reward, "weight": 1.0,
                          "options": dict(self.reward_options)})
        specs.extend(self.rewards)
        return specs

    def build_rewards(self, registry: Registry | None = None) -> list[WeightedReward]:
        """The run's rewards, options checked (cheap: reward models load when they first score), a bad one
        reported at the file line or flag that set it."""
        from .errors import ConfigError
        from .registry import get_registry
        from .reward_choice import locate_options_error, make_reward

        registry = registry or get_registry()
        specs = self.reward_specs()
        if not specs:
            raise ConfigError("a reward is needed: --reward NAME (repeatable), --reward-model PATH, or a rewards: "
                              "list in the config", where="--reward")
        first_listed = len(specs) - len(self.rewards)  # specs[i] is rewards[i - first_listed] from here on
        out: list[WeightedReward] = []
        for i, spec in enumerate(specs):
            try:
                reward = make_reward(registry, spec.get("reward_model"), spec.get("reward"), spec.get("options", {}))
            except ConfigError as exc:
                if i < first_listed:
                    raise locate_options_error(exc, self, "reward_options", "reward_options") from None
                raise locate_options_error(exc, self, f"rewards[{i - first_listed}].options", "rewards") from None
            label = spec.get("reward") or Path(str(spec["reward_model"])).parent.name or "reward-model"
            if label in {r.label for r in out}:
                label = f"{label}-{len(out) + 1}"
            out.append(WeightedReward(reward, float(spec.get("weight", 1.0)), label))
        return out


def score_with_columns(reward: RewardFunction, prompts: list[list[Message]], completions: list[str],
                       columns: dict[str, list[Any]]) -> list[float]:
    """``reward.score``, handing over the dataset's extra columns (one list per column, a value per
    completion) when its ``score`` takes a ``columns`` argument; one float per completion, checked."""
    from .errors import PluginError

    parameters = inspect.signature(reward.score).parameters
    takes_columns = "columns" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    try:
        scores = list(reward.score(prompts, completions, columns=columns) if takes_columns
                      else reward.score(prompts, completions))
    except Exception as exc:
        from .errors import EasyRLHFError
        from .faults import RewardFailed, is_disk_full, is_out_of_memory

        if isinstance(exc, EasyRLHFError) or is_out_of_memory(exc) or is_disk_full(exc):
            raise
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise RewardFailed(f"reward '{reward.name}' ({type(reward).__module__}.{type(reward).__name__}) raised "
                           f"{type(exc).__name__}{': ' + text if text else ''} while scoring {len(completions)} "
                           f"completions; fix the reward plugin or its options", where="--reward") from exc
    if len(scores) != len(completions):
        raise PluginError(f"reward '{reward.name}' returned {len(scores)} scores for {len(completions)} completions; "
                          f"it must return one per completion", where="--reward")
    try:
        return [float(s) for s in scores]
    except (TypeError, ValueError):
        raise PluginError(f"reward '{reward.name}' returned a score that is not a number", where="--reward") from None


class TRLRewardFunc:
    """A reward plugin as TRL's online trainers call a reward function: ``(prompts, completions, **columns)``
    with conversational prompts and completions; returns one float per completion. TRL decodes completions
    with special tokens skipped; :func:`easyrlhf_core.lm.response_text` then gives the text every path's reward
    sees."""

    def __init__(self, weighted: WeightedReward, samples: SampleLog | None = None) -> None:
        self.weighted = weighted
        self.samples = samples
        self.__name__ = weighted.label  # TRL names the metrics rewards/<name>/mean after it

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        messages = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
        texts = [response_text(c[-1]["content"] if isinstance(c, list) else str(c)) for c in completions]
        columns = {k: v for k, v in kwargs.items() if k not in TRL_REWARD_KWARGS}
        scores = score_with_columns(self.weighted.reward, messages, texts, columns)
        if self.samples is not None and self.samples.training():
            state = kwargs.get("trainer_state")
            self.samples.record(int(getattr(state, "global_step", 0)) + 1, self.weighted.label, messages, texts, scores)
        return scores


def record_columns(records: list[dict[str, Any]], skip: tuple[str, ...] = ("prompt",)) -> dict[str, list[Any]]:
    """The extra fields of prompt records (``answer``, ...) as columns, one value per record, for
    :func:`score_with_columns` (PPO and RRHF hand them to the rewards as GRPO and RLOO do)."""
    keys = sorted({k for r in records for k in r if k not in skip})
    return {k: [r.get(k) for r in records] for k in keys}


def trl_reward_funcs(rewards: list[WeightedReward], samples: SampleLog | None = None
                     ) -> tuple[list[TRLRewardFunc], list[float]]:
    """``(reward_funcs, reward_weights)`` for a TRL online trainer (GRPOTrainer, RLOOTrainer)."""
    return [TRLRewardFunc(r, samples) for r in rewards], [r.weight for r in rewards]


def encode_prompts(tokenizer: Any, records: list[Record], max_prompt_tokens: int
                   ) -> tuple[list[int], list[list[int]]]:
    """Chat-template token ids of each record's prompt (generation prompt included), leaving out prompts
    longer than ``max_prompt_tokens``: ``(indices of the kept records, their ids)``."""
    from transformers.utils import logging as hf_logging

    from .chat import prompt_ids

    kept, encoded = [], []
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than model_max_length": such prompts are left out here
    try:
        for index, record in enumerate(records):
            ids = prompt_ids(tokenizer, record["prompt"])
            if len(ids) <= max_prompt_tokens:
                kept.append(index)
                encoded.append(ids)
    finally:
        hf_logging.set_verbosity(verbosity)
    return kept, encoded


def prompts_that_fit(run: RunContext, tokenizer: Any, records: list[Record], room: int, split: str, room_name: str
                     ) -> tuple[list[Record], list[list[int]]]:
    """The records whose prompt leaves room for a completion (at most ``room`` tokens, ``room_name`` saying
    which options set it, e.g. ``"max_length - max_new_tokens"``), with their prompt ids. The dropped count
    goes to the run's log; for the ``"training"`` split the kept count is ``run.train_examples_used`` (the
    summary's "N of M examples"), and none kept is a :class:`~easyrlhf_core.errors.DataError` naming
    ``max_length``."""
    from .errors import DataError

    kept, ids = encode_prompts(tokenizer, records, room)
    dropped = len(records) - len(kept)
    if dropped:
        run.log(f"data: dropped {dropped} {split} prompts longer than {room_name} = {room} tokens")
    if split == "training":
        if not kept:
            raise DataError(f"every training prompt is longer than {room_name} = {room} tokens; raise max_length",
                            where="max_length")
        run.train_examples_used = len(kept)
    return [records[i] for i in kept], ids


class SampleLog:
    """``OUTPUT_DIR/samples.jsonl``: the first ``per_step`` completions of each step, with every reward's
    score (one row each: ``step``, ``prompt``, ``completion``, ``rewards``). Main process only; on
    ``--resume`` the rows of the steps to be redone are cut first."""

    def __init__(self, path: Path, labels: list[str], per_step: int, enabled: bool, resume: bool) -> None:
        self.path, self.labels, self.per_step = path, labels, per_step
        self.enabled = enabled and per_step > 0
        self.resume = resume
        self._pending: dict[str, list[float]] = {}
        self._batch: tuple[int, list[list[Message]], list[str]] | None = None
        self._written_step: int | None = None
        self.trainer: Any = None  # set once the trainer exists: eval batches are scored too, and not logged

    def training(self) -> bool:
        model = getattr(self.trainer, "model", None)
        return model is None or bool(getattr(model, "training", True))

    def record(self, step: int, label: str, prompts: list[list[Message]], completions: list[str],
               scores: list[float]) -> None:
        if not self.enabled:
            return
        if self.resume and self._written_step is None:
            from .metrics import drop_rows_after

            drop_rows_after(self.path, step - 1)
            self.resume = False
        self._batch = (step, prompts, completions)
        self._pending[label] = scores
        if set(self._pending) >= set(self.labels):
            self._flush()

    def _flush(self) -> None:
        step, prompts, completions = self._batch  # type: ignore[misc]
        if self._written_step != step:
            with self.path.open("a", encoding="utf-8") as fh:
                for i in range(min(self.per_step, len(completions))):
                    fh.write(json.dumps({"step": step, "prompt": prompts[i], "completion": completions[i],
                                         "rewards": {k: v[i] for k, v in self._pending.items()}}) + "\n")
            self._written_step = step
        self._pending = {}
