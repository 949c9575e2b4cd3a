"""What online methods on TRL's trainers share (GRPO, RLOO, a plugin's own): the run's weighted rewards
handed to TRL as reward functions, with the dataset's extra columns, and a log of sampled completions with
their rewards; and which prompts leave room for a completion (PPO's too).

Choosing, building, weighting, labelling and scoring the rewards is :mod:`easyrlhf_core.rewards`, the same
for PPO, RRHF and ``easyrlhf eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .lm import response_text
from .rewards import WeightedReward, score_with_columns

if TYPE_CHECKING:
    from .kit.context import RunContext
    from .shapes import Message, Record

__all__ = ["trl_reward_funcs", "SampleLog", "SAMPLES_FILE", "prompts_that_fit", "encode_prompts"]

#: Keys TRL adds to a reward function's keyword arguments that are not dataset columns.
TRL_REWARD_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}
#: The run file of sampled completions with their rewards (:class:`SampleLog`), one JSON object a line.
SAMPLES_FILE = "samples.jsonl"


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
