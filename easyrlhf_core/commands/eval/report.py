"""The result of an evaluation: one JSON object with stable keys, or a rich table.

Every metric key of the evaluated kind is always present; a metric that could not be computed is ``null``
and ``skipped`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from easyrlhf_core.kit.stats import PairwiseResult

#: Metric keys per kind, in display order.
REWARD_MODEL_METRICS = (
    "accuracy",
    "accuracy_ci95",
    "accuracy_ties",
    "mean_margin",
    "length_baseline_accuracy",
    "length_baseline_ci95",
    "length_baseline_ties",
)
POLICY_METRICS = (
    "logprob_accuracy",
    "logprob_ci95",
    "logprob_ties",
    "logprob_mean_margin",
    "implicit_reward_accuracy",
    "implicit_reward_ci95",
    "implicit_reward_ties",
    "implicit_reward_mean_margin",
    "reward_greedy_mean",
    "reward_sampled_mean",
    "reference_reward_greedy_mean",
    "win_rate",
    "win_rate_ci95",
    "win_rate_ties",
    "kl_per_token",
    "kl_per_sequence",
    "greedy_tokens_mean",
    "sampled_tokens_mean",
)


ENVIRONMENT_METRICS = (
    "success_rate",
    "success_ci95",
    "turns_mean",
    "turns_ci95",
    "tool_calls_mean",
    "tool_calls_ci95",
    "tool_failures_mean",
    "finished_share",
)
KIND_METRICS = {"reward_model": REWARD_MODEL_METRICS, "policy": POLICY_METRICS, "environment": ENVIRONMENT_METRICS}


@dataclass
class EvalReport:
    """What ``easyrlhf eval`` prints."""

    kind: Literal["reward_model", "policy", "environment"]
    model: str
    dataset: str
    split: str
    seed: int
    reference: str | None = None
    judge: str | None = None
    data_files: list[str] = field(default_factory=list)
    pairs: int = 0
    prompts: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in KIND_METRICS[self.kind]:
            self.metrics.setdefault(key, None)

    def set_pairwise(self, value_key: str, ci_key: str, ties_key: str, result: PairwiseResult) -> None:
        """A :class:`PairwiseResult` into its three metric keys."""
        self.metrics[value_key] = result.accuracy
        self.metrics[ci_key] = list(result.ci95)
        self.metrics[ties_key] = result.ties

    def skip(self, keys: tuple[str, ...], reason: str) -> None:
        """Record why ``keys`` are null (the first reason given for a key stays)."""
        for key in keys:
            if self.metrics.get(key) is None:
                self.skipped.setdefault(key, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "reference": self.reference,
            "judge": self.judge,
            "dataset": self.dataset,
            "data_files": list(self.data_files),
            "split": self.split,
            "seed": self.seed,
            "pairs": self.pairs,
            "prompts": self.prompts,
            "metrics": {k: _clean(v) for k, v in self.metrics.items()},
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Table

_ROWS: dict[str, list[tuple[str, str, str | None, str | None]]] = {
    "reward_model": [
        ("pairwise accuracy", "accuracy", "accuracy_ci95", "accuracy_ties"),
        ("mean score margin (chosen - rejected)", "mean_margin", None, None),
        ("longer-response-wins baseline", "length_baseline_accuracy", "length_baseline_ci95", "length_baseline_ties"),
    ],
    "policy": [
        ("log-prob preference accuracy (per token)", "logprob_accuracy", "logprob_ci95", "logprob_ties"),
        ("log-prob mean margin per token (nats)", "logprob_mean_margin", None, None),
        ("implicit-reward accuracy", "implicit_reward_accuracy", "implicit_reward_ci95", "implicit_reward_ties"),
        ("implicit-reward mean margin (nats)", "implicit_reward_mean_margin", None, None),
        ("mean reward, greedy answers", "reward_greedy_mean", None, None),
        ("mean reward, sampled answers", "reward_sampled_mean", None, None),
        ("mean reward, reference greedy answers", "reference_reward_greedy_mean", None, None),
        ("win rate vs reference", "win_rate", "win_rate_ci95", "win_rate_ties"),
        ("KL to reference per token (nats)", "kl_per_token", None, None),
        ("KL to reference per answer (nats)", "kl_per_sequence", None, None),
        ("greedy answer length (tokens)", "greedy_tokens_mean", None, None),
        ("sampled answer length (tokens)", "sampled_tokens_mean", None, None),
    ],
    "environment": [
        ("success rate (mean episode reward)", "success_rate", "success_ci95", None),
        ("assistant turns per episode", "turns_mean", "turns_ci95", None),
        ("tool calls per episode", "tool_calls_mean", "tool_calls_ci95", None),
        ("failed tool calls per episode", "tool_failures_mean", None, None),
        ("episodes that ended by themselves", "finished_share", None, None),
    ],
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_table(report: EvalReport, console: Any = None) -> None:
    """Print ``report`` as a rich table, then what was skipped and the notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    subject = {"reward_model": "reward model", "policy": "policy", "environment": "policy"}[report.kind]
    count = f"{report.pairs} pairs" + (f", {report.prompts} prompts" if report.kind == "policy" else "")
    if report.kind == "environment":
        count = f"{report.prompts} episodes"
    table = Table(title=f"{subject} {report.model} on {report.dataset} ({report.split}; {count})", title_justify="left")
    for column in ("metric", "value", "95% interval", "ties"):
        table.add_column(column)
    for label, key, ci_key, ties_key in _ROWS[report.kind]:  # labels: docs/eval.md maps them to JSON keys
        value = report.metrics.get(key)
        ci = report.metrics.get(ci_key) if ci_key else None
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
        ties = report.metrics.get(ties_key) if ties_key else None
        shown = _fmt(value) if value is not None else "[dim]skipped[/dim]"
        table.add_row(label, shown, interval, "" if ties is None else str(ties))
    console.print(table)
    if report.reference:
        console.print(f"reference: {report.reference}")
    if report.judge:
        console.print(f"judge: {report.judge}")
    for reason in dict.fromkeys(report.skipped.values()):
        keys = ", ".join(k for k, r in report.skipped.items() if r == reason)
        console.print(f"skipped ({keys}): {reason}")
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
