"""The online kit: what every method that samples completions and scores them shares, on TRL's trainers
(:mod:`easyrlhf_core.kit.online_trl`: GRPO, RLOO, a plugin's own) or with its own loop (PPO):

- how completions are sampled: :class:`TokenSamplingOptions` (``temperature``, ``top_k``, ``top_p``, and the rule
  of a loss on the full softmax), :class:`SamplingOptions` (those plus ``max_new_tokens``);
- which prompts leave room for a completion: :func:`prompts_that_fit`;
- memory that is freed between iterations going back to the system: :func:`return_freed_memory`;
- ``samples.jsonl``: :class:`SampleLogOptions` (``num_sample_completions``) and :class:`SampleLog`, one row per
  logged completion, the same for every method::

      {"step": 3, "prompt": [{"role": "user", "content": "..."}], "completion": "...", "rewards": {"length": 0.8}}

  (``rewards``: each reward's own score, by its metrics label, before weights, penalties or normalisation).

Choosing, building, weighting, labelling and scoring the rewards is :mod:`easyrlhf_core.kit.rewards`, the same
for PPO, RRHF and ``easyrlhf eval``. Light at import time: the heavy imports live inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from easyrlhf_core.kit.config import invalid, option
from easyrlhf_core.kit.rollout import RolloutOptions

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext
    from easyrlhf_core.kit.shapes import Message, Record

__all__ = [
    "TokenSamplingOptions",
    "SamplingOptions",
    "check_sampling",
    "check_full_softmax_sampling",
    "SampleLogOptions",
    "SampleLog",
    "SAMPLES_FILE",
    "encode_prompts",
    "prompts_that_fit",
    "return_freed_memory",
]

#: The run file of sampled completions with their rewards (:class:`SampleLog`), one JSON object a line.
SAMPLES_FILE = "samples.jsonl"


# --------------------------------------------------------------------------------------------------
# Sampling options


@dataclass
class TokenSamplingOptions:
    """How each sampled token is picked (``temperature``, ``top_k``, ``top_p``); mix into a method config.
    Set the class attribute ``full_softmax`` on a method whose loss scores its samples on the full
    ``softmax(logits / temperature)`` (ppo, grpo, rloo): ``top_k`` and ``top_p`` must then stay off
    (:func:`check_full_softmax_sampling`). :meth:`sampling_settings` is what
    :func:`easyrlhf_core.kit.causal_lm.generation_config` takes (everything pinned: the model's own generation defaults
    never apply)."""

    temperature: float = option(1.0, "Sampling temperature.")
    top_k: int = option(
        0,
        "Sample from the k likeliest tokens; 0: off. Must stay 0 in ppo, grpo and rloo: their "
        "loss scores the full softmax, so top-k sampling would be off-policy.",
    )
    top_p: float = option(
        1.0,
        "Nucleus sampling mass; 1.0: off. Must stay 1.0 in ppo, grpo and rloo: their loss "
        "scores the full softmax, so nucleus sampling would be off-policy.",
    )

    #: True for a method whose loss scores the samples on the full softmax: top_k and top_p must stay off.
    full_softmax: ClassVar[bool] = False

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check_sampling(self)
        if self.full_softmax:
            check_full_softmax_sampling(self, getattr(self, "method_name", type(self).__name__))

    def sampling_settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass
class SamplingOptions(TokenSamplingOptions, RolloutOptions):
    """How a method samples responses: :class:`TokenSamplingOptions` plus ``max_new_tokens`` (a method whose
    default differs redeclares it with :func:`easyrlhf_core.kit.config.with_default`). The TRL online methods name
    the length ``max_completion_length``, as TRL does (:class:`easyrlhf_core.kit.online_trl.OnlineConfig`)."""

    max_new_tokens: int = option(128, "Longest sampled response, in tokens.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens <= 0:
            raise invalid("max_new_tokens", "must be a positive integer")


def check_sampling(config: Any) -> None:
    """``temperature`` > 0, ``top_k`` >= 0 and ``top_p`` in (0, 1] on any config that has them."""
    if config.temperature <= 0:
        raise invalid("temperature", "must be > 0")
    if config.top_k < 0:
        raise invalid("top_k", "must be >= 0 (0: off)")
    if not 0.0 < config.top_p <= 1.0:
        raise invalid("top_p", "must be in (0, 1]")


def check_full_softmax_sampling(config: Any, method: str) -> None:
    """The rule of every online method (ppo, grpo, rloo): the log-probs of the loss (ratios, KL) are computed on
    the full ``softmax(logits / temperature)``, so sampling must draw from exactly that: ``top_k`` 0 and
    ``top_p`` 1.0, else :class:`~easyrlhf_core.kit.errors.ConfigError` naming the option. Applied by
    :class:`TokenSamplingOptions` when ``full_softmax`` is set."""
    why = (
        "log-probs, ratios and KL are computed on the full softmax (logits / temperature), so {what} sampling "
        "would be off-policy; lower temperature to sharpen sampling instead"
    )
    if config.top_k != 0:  # sampling one distribution and scoring another is a wrong training signal
        raise invalid("top_k", f"must be 0 for {method}: " + why.format(what="top-k"))
    if config.top_p != 1.0:
        raise invalid("top_p", f"must be 1.0 for {method}: " + why.format(what="nucleus"))


# --------------------------------------------------------------------------------------------------
# Prompts


def encode_prompts(tokenizer: Any, records: list[Record], max_prompt_tokens: int) -> tuple[list[int], list[list[int]]]:
    """Chat-template token ids of each record's prompt (generation prompt included), leaving out prompts
    longer than ``max_prompt_tokens``: ``(indices of the kept records, their ids)``."""
    from transformers.utils import logging as hf_logging

    from easyrlhf_core.kit.chat_template import prompt_ids

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


def prompts_that_fit(
    run: RunContext, tokenizer: Any, records: list[Record], room: int, split: str, room_name: str
) -> tuple[list[Record], list[list[int]]]:
    """The records whose prompt leaves room for a completion (at most ``room`` tokens, ``room_name`` saying
    which options set it, e.g. ``"max_length - max_new_tokens"``), with their prompt ids. The dropped count
    goes to the run's log; for the ``"training"`` split the kept count is ``run.train_examples_used`` (the
    summary's "N of M examples"), and none kept is a :class:`~easyrlhf_core.kit.errors.DataError` naming
    ``max_length``."""
    from easyrlhf_core.kit.errors import DataError

    kept, ids = encode_prompts(tokenizer, records, room)
    dropped = len(records) - len(kept)
    if dropped:
        run.log(f"data: dropped {dropped} {split} prompts longer than {room_name} = {room} tokens")
    if split == "training":
        if not kept:
            raise DataError(
                f"every training prompt is longer than {room_name} = {room} tokens; raise max_length",
                where="max_length",
            )
        run.train_examples_used = len(kept)
    return [records[i] for i in kept], ids


# --------------------------------------------------------------------------------------------------
# samples.jsonl


@dataclass
class SampleLogOptions:
    """``num_sample_completions``: how many completions :class:`SampleLog` writes per step; mix into the config
    of a method that samples (its former name ``num_sample_generations`` is read too, with a notice)."""

    num_sample_completions: int = option(
        4,
        "Completions (with their rewards) written to samples.jsonl per step.",
        deprecated_names=("num_sample_generations",),
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.num_sample_completions < 0:
            raise invalid("num_sample_completions", "must be >= 0")


class SampleLog:
    """``OUTPUT_DIR/samples.jsonl``: the first ``per_step`` completions of each step, one row each: ``step``,
    ``prompt`` (its messages), ``completion`` (the text the rewards saw) and ``rewards`` (each reward's score by
    its label). Main process only; on ``--resume`` the rows of the steps to be redone are cut first.

    A loop that scores with every reward at once calls :meth:`write`; TRL, which calls each reward function in
    turn, goes through :meth:`record` (the row is written once every label has scored)."""

    def __init__(self, path: Path, labels: list[str], per_step: int, enabled: bool, resume: bool) -> None:
        self.path, self.labels, self.per_step = path, labels, per_step
        self.enabled = enabled and per_step > 0
        self.resume = resume
        self._pending: dict[str, list[float]] = {}
        self._written_step: int | None = None
        self.trainer: Any = None  # set once the trainer exists: eval batches are scored too, and not logged

    @classmethod
    def for_run(cls, run: RunContext, labels: list[str], per_step: int) -> SampleLog:
        """The run's ``samples.jsonl`` (written by the main process; cut back on ``--resume``)."""
        return cls(run.output_dir / SAMPLES_FILE, labels, per_step, enabled=run.is_main_process, resume=run.resume)

    def training(self) -> bool:
        """False while the trainer evaluates (its eval batches are not logged)."""
        model = getattr(self.trainer, "model", None)
        return model is None or bool(getattr(model, "training", True))

    def write(
        self, step: int, prompts: list[list[Message]], completions: list[str], rewards: dict[str, list[float]]
    ) -> None:
        """The first ``per_step`` completions of ``step``, each with every reward's score (``rewards``: label ->
        one score per completion). Once per step: a second call for a step already written is ignored."""
        if not self.enabled or self._written_step == step:
            return
        if self.resume:
            from easyrlhf_core.kit.metrics import drop_rows_after

            drop_rows_after(self.path, step - 1)
            self.resume = False
        with self.path.open("a", encoding="utf-8") as fh:
            for i in range(min(self.per_step, len(completions))):
                fh.write(
                    json.dumps(
                        {
                            "step": step,
                            "prompt": prompts[i],
                            "completion": completions[i],
                            "rewards": {k: float(v[i]) for k, v in rewards.items()},
                        }
                    )
                    + "\n"
                )
        self._written_step = step

    def record(
        self, step: int, label: str, prompts: list[list[Message]], completions: list[str], scores: list[float]
    ) -> None:
        """One reward's scores of ``step``'s completions; the rows are written when every label has scored."""
        if not self.enabled:
            return
        self._pending[label] = scores
        if set(self._pending) >= set(self.labels):
            self.write(step, prompts, completions, self._pending)
            self._pending = {}


# --------------------------------------------------------------------------------------------------
# Host memory

#: glibc's ``mallopt`` parameter: the size from which an allocation gets a mapping of its own
_M_MMAP_THRESHOLD = -3


def return_freed_memory(mmap_threshold: int = 1 << 20) -> bool:
    """Give freed memory back to the system, on Linux with glibc: from now on every allocation of
    ``mmap_threshold`` bytes or more (activations, logits) gets a mapping of its own, unmapped when it is
    freed, and what the heap holds free now is trimmed (``malloc_trim``). By default glibc raises its
    threshold as big blocks are freed and then keeps later ones on its heap, which an online loop's
    activations, freed after every update, grow with each iteration: measured on PPO with SmolLM2-135M,
    10.9 GB resident after the second update with 4.3 GB live, and a peak of 11.3 GB that this brings to 7.8
    (a threshold of 8 MiB: 8.7 GB; trimming alone: 9.3 GB). Fresh pages cost a page fault each: a forward and
    backward took 0-19% more CPU time in measurements on a busy machine. Call it once before a loop and
    between its phases. Returns whether it ran (False on other platforms, where nothing changes)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False
    mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    trim(0)
    return True
