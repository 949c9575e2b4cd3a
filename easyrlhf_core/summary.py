"""The end-of-run summary: what was trained on what, what changed, where the model is, what to run next.

Printed after training (main process) and written to ``OUTPUT_DIR/summary.json``. What changed comes from
the method (:meth:`easyrlhf_core.api.Method.what_changed`, a list of :class:`Finding`); for a policy trained
on preference pairs, :func:`held_out_pairs_change` scores the run's own held-out pairs with the start model
and with the trained one, with 95% intervals (Wilson for shares, bootstrap for the mean margin change).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kit.context import RunContext
    from .shapes import Record

__all__ = ["Finding", "held_out_pairs_change", "training_rows_finding"]

SUMMARY_FILE = "summary.json"


@dataclass
class Finding:
    """One thing training changed: ``text`` for people, ``figures`` (JSON values) for scripts."""

    text: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairScores:
    """Per held-out pair: the start model's and the trained model's per-token log-prob gap (chosen minus
    rejected), and the change in the summed chosen-minus-rejected margin (the implicit reward, over beta)."""

    before_gaps: list[float]
    after_gaps: list[float]
    margin_changes: list[float]


def score_pairs(
    start: Any, trained: Any, tokenizer: Any, records: list[Record], max_length: int, batch_size: int = 8
) -> PairScores:
    """Score ``records`` (preference pairs) with two causal LMs loaded for inference."""
    from .chat import split_completion
    from .evaluation.logprobs import completion_logprobs, pair_gaps, pair_margins

    examples = [split_completion(tokenizer, r["prompt"], r[side]) for side in ("chosen", "rejected") for r in records]
    before = completion_logprobs(start, examples, tokenizer.pad_token_id, batch_size, max_length)
    after = completion_logprobs(trained, examples, tokenizer.pad_token_id, batch_size, max_length)
    before_gaps, before_margins = pair_gaps(before), pair_margins(before)
    after_gaps, after_margins = pair_gaps(after), pair_margins(after)
    return PairScores(before_gaps, after_gaps, [a - b for a, b in zip(after_margins, before_margins)])


def pair_findings(scores: PairScores, seed: int) -> list[Finding]:
    """The summary lines for :class:`PairScores`: preference before -> after, how many pairs moved towards
    the chosen answer (shares: a 95% Wilson interval), and by how much (a 95% bootstrap interval over the pairs,
    seeded by ``seed``)."""
    from .evaluation.stats import bootstrap_interval, mean, pairwise

    n = len(scores.margin_changes)
    zeros = [0.0] * n
    before = pairwise(scores.before_gaps, zeros)
    after = pairwise(scores.after_gaps, zeros)
    moved = pairwise(scores.margin_changes, zeros)
    change = mean(scores.margin_changes)
    low, high = bootstrap_interval(scores.margin_changes, seed)
    return [
        Finding(
            f"prefers the human-chosen answer (per-token log-prob) on {before.accuracy:.2f} of {n} held-out "
            f"pairs before -> {after.accuracy:.2f} after [{after.ci95[0]:.2f}, {after.ci95[1]:.2f}]",
            {
                "held_out_pairs": n,
                "logprob_accuracy_before": before.accuracy,
                "logprob_accuracy_after": after.accuracy,
                "logprob_accuracy_after_ci95": list(after.ci95),
            },
        ),
        Finding(
            f"moved towards the chosen answer on {moved.accuracy:.2f} of them [{moved.ci95[0]:.2f}, "
            f"{moved.ci95[1]:.2f}] (0.50 = no change); the chosen-minus-rejected log-prob margin changed by "
            f"{change:+.3f} nats per pair [{low:+.3f}, {high:+.3f}]" + _verdict(moved.ci95, (low, high), n),
            {
                "moved_towards_chosen": moved.accuracy,
                "moved_towards_chosen_ci95": list(moved.ci95),
                "margin_change_mean": change,
                "margin_change_ci95": [low, high],
            },
        ),
    ]


def _verdict(moved_ci95: tuple[float, float], margin_ci95: tuple[float, float], n: int) -> str:
    """What the two intervals say together, in words: within noise only when neither excludes no change."""
    if margin_ci95[1] < 0:
        return "; the margin fell: on these pairs the model moved towards the rejected answers"
    if margin_ci95[0] > 0:
        return "; the margin rose: on these pairs the model moved towards the chosen answers"
    if moved_ci95[0] <= 0.5 <= moved_ci95[1]:
        return f"; within noise: {n} pairs cannot show a smaller change (more pairs and steps can)"
    return "; the mean margin change is within noise, the share of pairs that moved is not"


def training_rows_finding(run: RunContext, accuracy_key: str, margin_key: str, last: int = 5) -> list[Finding]:
    """What the last ``last`` logged training steps say (``metrics.jsonl``): the mean of ``accuracy_key``
    (pairs ranked the chosen way) and ``margin_key`` on the batches the model trained on."""
    from .metrics import read_metrics

    rows = (
        [r for r in read_metrics(run.metrics_path) if isinstance(r.get(accuracy_key), (int, float))]
        if run.metrics_path.is_file()
        else []
    )
    rows = rows[-last:]
    if not rows:
        return []
    accuracy = sum(float(r[accuracy_key]) for r in rows) / len(rows)
    margins = [float(r[margin_key]) for r in rows if isinstance(r.get(margin_key), (int, float))]
    margin = sum(margins) / len(margins) if margins else float("nan")
    return [
        Finding(
            f"on its own training batches (last {len(rows)} steps) it ranks the chosen answer first on "
            f"{accuracy:.2f} of pairs, reward margin {margin:+.3f}",
            {"train_steps_averaged": len(rows), "train_accuracy": accuracy, "train_margin": margin},
        )
    ]


def held_out_pairs_change(run: RunContext, max_pairs: int) -> list[Finding]:
    """For a causal LM trained on preference pairs: the first ``max_pairs`` of the run's eval pairs, scored by
    the start model (``--model``) and by the saved ``model/``. No eval pairs or ``max_pairs`` 0: nothing."""
    records = list(run.data.eval or [])[:max_pairs] if run.data is not None else []
    if not records or max_pairs <= 0:
        return []
    from .evaluation.loading import for_inference, quiet_transformers
    from .models import load_causal_lm, load_tokenizer, resolve_model

    trust = run.config.trust_remote_code
    with quiet_transformers():
        tokenizer = load_tokenizer(str(run.model_dir), trust_remote_code=trust)
        start = for_inference(load_causal_lm(resolve_model(run.config.model).path, trust_remote_code=trust))
        trained = for_inference(load_causal_lm(str(run.model_dir), trust_remote_code=trust))
        run.log(f"summary: scoring {len(records)} held-out pairs with the start and the trained model")
        scores = score_pairs(
            start,
            trained,
            tokenizer,
            records,
            run.config.max_length,
            batch_size=getattr(run.config, "per_device_eval_batch_size", 8),
        )
    return pair_findings(scores, run.config.seed)


# --------------------------------------------------------------------------------------------------
# The summary itself


@dataclass
class RunSummary:
    """What ``summary.json`` holds."""

    method: str
    model: str
    trained: str
    dataset: str
    train_examples: int
    train_examples_used: int | None  # None: all train_examples (the method dropped none)
    steps: int | None
    seconds: float
    output_dir: str
    model_dir: str
    changed: list[Finding] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary as a newcomer reads it."""
        steps = f", {self.steps} steps" if self.steps is not None else ""
        used, total = self.train_examples_used, self.train_examples
        count = (
            f"{used} of {total} {self.dataset} examples (the rest too long for max_length)"
            if used is not None and used != total
            else f"{total} {self.dataset} examples"
        )
        trained = f"  trained  {self.trained} on {count}{steps}, in {_duration(self.seconds)}"
        out = ["", "Summary", trained]
        for i, finding in enumerate(self.changed):
            out.append(f"  {'changed' if i == 0 else '':7}  {finding.text}")
        out.append(f"  model    {self.model_dir}")
        for i, command in enumerate(self.next_commands):
            out.append(f"  {'next' if i == 0 else '':7}  {command}")
        return out


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _is_reward_model(model_dir: Path) -> bool:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return any(str(a).endswith("SequenceClassification") for a in config.get("architectures") or [])


def next_commands(run: RunContext) -> list[str]:
    """What to run next with the trained model: talk to it, evaluate it, the full pipeline."""
    model = shlex.quote(str(run.model_dir))
    dataset = getattr(run.config, "dataset", "hh-rlhf") or "hh-rlhf"
    files = getattr(run.config, "data_files", None) or []
    data = f" --dataset {dataset}" + (f" --data-files {shlex.quote(','.join(files))}" if files else "")
    if _is_reward_model(run.model_dir):
        return [
            f"easyrlhf eval --model {model}{data}",
            f"easyrlhf run --method ppo --reward-model {model} --max-steps 10",
        ]
    from .models import DEFAULT_MODEL_ID

    start = shlex.quote(run.config.model or DEFAULT_MODEL_ID)  # the default's id finds the embedded copy offline
    compare, reference = f" --compare {start}", f" --reference {start}"
    return [
        f"easyrlhf chat {model}{compare}",
        f"easyrlhf eval --model {model}{reference}{data}",
        "easyrlhf run --method rlhf --max-steps 10   # the whole SFT -> RM -> PPO pipeline",
    ]


def lora_trained(run: RunContext) -> str | None:
    """``"LoRA r16"`` when the saved model really trained LoRA adapters (``run.lora_applied``, read from the
    model at save time), else None: ``--lora`` alone is never taken as proof."""
    lora = getattr(run.config, "lora", None)
    if not run.lora_applied or lora is None:
        return None
    return f"LoRA r{lora.r}"


def build_summary(run: RunContext, changed: list[Finding]) -> RunSummary:
    from .metrics import last_values

    config = run.config
    how = f"{run.method.name} ({lora_trained(run) or 'all weights'})"
    start = config.model or "SmolLM2-135M-Instruct (embedded default)"
    step = last_values(run.metrics_path).get("step")
    train = len(run.data.train) if run.data is not None and hasattr(run.data, "train") else 0
    return RunSummary(
        method=run.method.name,
        model=start,
        trained=f"{how} from {start}",
        dataset=str(getattr(config, "dataset", "")),
        train_examples=train,
        train_examples_used=run.train_examples_used,
        steps=int(step) if isinstance(step, (int, float)) else None,
        seconds=time.time() - run.started,
        output_dir=str(run.output_dir),
        model_dir=str(run.model_dir),
        changed=changed,
        next_commands=next_commands(run),
    )


def write_summary(run: RunContext, summary: RunSummary) -> Path:
    """``summary.json`` (written whole, atomically) and the summary on stderr."""
    path = run.output_dir / SUMMARY_FILE
    tmp = path.with_name(f".{SUMMARY_FILE}.tmp")
    tmp.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print("\n".join(summary.lines()), file=sys.stderr, flush=True)
    return path
