"""The charts of ``report.html`` as data (the page's script draws them): a run's ``metrics.jsonl`` rows grouped one
chart per key group, or several runs' curves of the same metric overlaid. A chart is a dict
``{"title", "series": [{"name", "x", "y"}], "note"}``; long series are thinned to :data:`MAX_POINTS`."""

from __future__ import annotations

import math
import re
from typing import Any

from easyrlhf_core.runtime.plots import KEY_PATTERN

__all__ = ["MAX_POINTS", "metric_series", "group_of", "run_charts", "compare_charts"]

#: Points per drawn series at most; a longer one keeps evenly spaced points, its first and last among them.
MAX_POINTS = 1500
#: Bookkeeping, not a curve: the Trainer's end-of-training and evaluation timings, epochs.
_NOT_CURVES = re.compile(r"(^|_)(runtime|samples_per_second|steps_per_second)$|(^|/)(total_flos|epoch)$")

Series = tuple[list[float], list[float]]


def metric_series(rows: list[dict[str, Any]]) -> dict[str, Series]:
    """metric name -> (steps, values) of every numeric metric worth a curve, in logged order."""
    out: dict[str, Series] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if _NOT_CURVES.search(key):
                continue
            xs, ys = out.setdefault(key, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    return out


def group_of(key: str) -> str:
    """The chart a metric is drawn in: its first ``/`` segment, an ``eval_`` metric with its training twin
    (``eval_loss`` with ``loss``, ``eval_rewards/margins`` with ``rewards/...``), the Trainer's end-of-training
    ``train_loss`` with ``loss``."""
    base = key.removeprefix("eval_")
    if base == "train_loss":
        return "loss"
    return base.split("/")[0] if "/" in base else base


def _rank(name: str) -> tuple[int, str]:
    """Loss first, then rewards, then the others, alphabetically."""
    if name.removeprefix("eval_").endswith("loss"):
        return (0, name)
    if name.startswith("reward") or name == "score":
        return (1, name)
    return (2, name)


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float | None], str]:
    """At most :data:`MAX_POINTS` points, values rounded to 6 significant digits; a note when thinned."""
    n = len(xs)
    keep = range(n) if n <= MAX_POINTS else sorted({round(i * (n - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)})
    out_x = [xs[i] for i in keep]
    out_y = [float(f"{ys[i]:.6g}") if math.isfinite(ys[i]) else None for i in keep]
    note = f"{len(out_x)} of {n} points drawn (evenly spaced)" if n > MAX_POINTS else ""
    return out_x, out_y, note


def _chart(title: str, named: list[tuple[str, Series]]) -> dict[str, Any]:
    series, notes = [], []
    for name, (xs, ys) in named:
        x, y, note = _thin(xs, ys)
        series.append({"name": name, "x": x, "y": y})
        if note:
            notes.append(f"{name}: {note}")
    return {"title": title, "series": series, "note": "; ".join(notes)}


def run_charts(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One run's charts, one per key group: (the groups holding a key metric -- loss, rewards, KL, accuracy ...
    as ``easyrlhf plot`` draws them --, the other groups: learning rate, gradient norm, token counts ...)."""
    curves = metric_series(rows)
    groups: dict[str, list[str]] = {}
    for key in curves:
        groups.setdefault(group_of(key), []).append(key)
    key_charts: list[dict[str, Any]] = []
    other_charts: list[dict[str, Any]] = []
    for group in sorted(groups, key=_rank):
        keys = sorted(groups[group], key=lambda k: (k.startswith("eval_"), k))
        chart = _chart(group, [(k, curves[k]) for k in keys])
        (key_charts if any(KEY_PATTERN.search(k) for k in keys) else other_charts).append(chart)
    return key_charts, other_charts


def compare_charts(runs: list[tuple[str, list[dict[str, Any]]]]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Several runs' curves overlaid: one chart per metric that at least two of ``runs`` (label, rows) logged,
    one series per run, key metrics first; and the metrics only one run logged (metric -> [its run's label])."""
    curves = [(label, metric_series(rows)) for label, rows in runs]
    keys = sorted({k for _, c in curves for k in c}, key=lambda k: (not KEY_PATTERN.search(k), _rank(k), k))
    charts, alone = [], {}
    for key in keys:
        having = [(label, c[key]) for label, c in curves if key in c]
        if len(having) >= 2:
            charts.append(_chart(key, having))
        else:
            alone[key] = [label for label, _ in having]
    return charts, alone
