"""PNG curves of a run's metrics (``plots/``), from ``metrics.jsonl``; used at the end of a run and by
``easyrlhf plot RUN_DIR``. With several run dirs, ``easyrlhf plot`` overlays their curves (:func:`plot_compare`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from easyrlhf_core.kit.errors import EasyRLHFError
from easyrlhf_core.kit.metrics import read_metrics

#: Metrics worth a curve: loss and the methods' key signals.
KEY_PATTERN = re.compile(r"loss|accurac|margin|kl|score|reward|entropy|clipfrac|length", re.IGNORECASE)
PLOTS_DIR = "plots"


def series(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """metric name -> (steps, values) for numeric key metrics."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not KEY_PATTERN.search(key):
                continue
            xs, ys = out.setdefault(key, ([], []))
            xs.append(step)
            ys.append(float(value))
    return out


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Draw one PNG per key metric into ``run_dir/plots`` (or ``out_dir``); returns the files written."""
    plt = _pyplot()
    curves = series(read_metrics(run_dir / "metrics.jsonl"))
    out_dir = out_dir if out_dir is not None else run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (steps, values) in sorted(curves.items()):
        fig, ax = _axes(plt, key, f"{run_dir.name}: {key}")
        _curve(ax, steps, values)
        written.append(_save(plt, fig, out_dir, key))
    return written


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name; runs whose names collide are named ``parent/name`` (the full path if
    that still collides)."""
    paths = [Path(d).resolve() for d in run_dirs]
    twice = next((d for d, p in zip(run_dirs, paths) if paths.count(p) > 1), None)
    if twice is not None:
        raise EasyRLHFError("this run directory is given twice", where=str(twice))
    labels = [p.name for p in paths]
    for longer in (lambda p: f"{p.parent.name}/{p.name}", str):
        labels = [longer(p) if labels.count(label) > 1 else label for p, label in zip(paths, labels)]
    return labels


def compare_figures(run_dirs: list[Path]) -> list[tuple[str, Any]]:
    """``(metric, figure)`` for each key metric logged by at least two of ``run_dirs``: one line per run
    that logged it, labelled with :func:`run_labels`. The caller saves and closes the figures."""
    plt = _pyplot()
    labels = run_labels(run_dirs)
    runs = [(label, series(read_metrics(Path(d) / "metrics.jsonl"))) for d, label in zip(run_dirs, labels)]
    keys = sorted({key for _, curves in runs for key in curves})
    figures = []
    for key in keys:
        having = [(label, curves[key]) for label, curves in runs if key in curves]
        if len(having) < 2:
            continue
        fig, ax = _axes(plt, key, key)
        for label, (steps, values) in having:
            _curve(ax, steps, values, label=label)
        ax.legend()
        figures.append((key, fig))
    return figures


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Overlay the runs' curves: one PNG per key metric shared by at least two runs, into ``out_dir``;
    returns the files written."""
    plt = _pyplot()
    figures = compare_figures(run_dirs)
    if figures:
        out_dir.mkdir(parents=True, exist_ok=True)
    return [_save(plt, fig, out_dir, key) for key, fig in figures]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(plt: Any, key: str, title: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _curve(ax: Any, steps: list[float], values: list[float], label: str | None = None) -> None:
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, linewidth=1.5, label=label)


def _save(plt: Any, fig: Any, out_dir: Path, key: str) -> Path:
    """Save ``fig`` as ``out_dir/<key>.png`` and close it."""
    fig.tight_layout()
    path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".png")
    fig.savefig(path)
    plt.close(fig)
    return path
