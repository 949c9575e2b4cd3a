"""What changed in a run, as findings a method reports for the end-of-run summary (held-out pairs, training rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext
    from easyrlhf_core.kit.shapes import Record

__all__ = [
    "Finding",
    "PairScores",
    "beyond_noise",
    "score_pairs",
    "pair_findings",
    "training_rows_finding",
    "held_out_pairs_change",
]


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
    from easyrlhf_core.kit.chat_template import split_completion
    from easyrlhf_core.kit.completion_logprobs import completion_logprobs, pair_gaps, pair_margins

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
    from easyrlhf_core.kit.stats import bootstrap_interval, mean, pairwise

    n = len(scores.margin_changes)
    zeros = [0.0] * n
    before = pairwise(scores.before_gaps, zeros)
    after = pairwise(scores.after_gaps, zeros)
    moved = pairwise(scores.margin_changes, zeros)
    change = mean(scores.margin_changes)
    low, high = bootstrap_interval(scores.margin_changes, seed)
    return [
        Finding(
            f"prefers the chosen answer (per-token log-prob) on {before.accuracy:.2f} of {n} held-out "
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
                "beyond_noise": beyond_noise(moved.ci95, (low, high)),
                "moved_towards_chosen": moved.accuracy,
                "moved_towards_chosen_ci95": list(moved.ci95),
                "margin_change_mean": change,
                "margin_change_ci95": [low, high],
            },
        ),
    ]


def beyond_noise(moved_ci95: tuple[float, float], margin_ci95: tuple[float, float]) -> bool:
    """The verdict :func:`_verdict` words: a change beyond noise when either interval excludes no change (the
    share of pairs that moved excludes 0.50, or the mean margin change excludes 0)."""
    return not (moved_ci95[0] <= 0.5 <= moved_ci95[1]) or margin_ci95[0] > 0 or margin_ci95[1] < 0


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
    from easyrlhf_core.kit.metrics import read_metrics

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
    from easyrlhf_core.kit.model_dirs import for_inference, quiet_transformers
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model

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
            batch_size=run.config.eval_batch_size() if hasattr(run.config, "eval_batch_size") else 8,
        )
    return pair_findings(scores, run.config.seed)
