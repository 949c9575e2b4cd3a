"""PNG curves of a run's metrics (``plots/``), from ``metrics.jsonl``; used at the end of a run and by
``easyrlhf plot RUN_DIR``."""

from __future__ import annotations

import re
from pathlib import Path

from .metrics import read_metrics

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


def plot_run(run_dir: Path) -> list[Path]:
    """Draw one PNG per key metric into ``run_dir/plots``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = series(read_metrics(run_dir / "metrics.jsonl"))
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    written = []
    for key, (steps, values) in sorted(curves.items()):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{run_dir.name}: {key}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
