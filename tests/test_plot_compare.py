"""``easyrlhf plot RUN_DIR [RUN_DIR ...]``: several runs overlaid, one figure per shared key metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easyrlhf_core.runtime.plots import compare_figures, run_labels

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, rows: list[dict]) -> Path:
    """A run directory holding just ``metrics.jsonl`` (one JSON object per logged step)."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return run_dir


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    """dpo and ppo share ``loss`` and ``rewards/margins``; ``kl`` is ppo's only, ``learning_rate`` is no key metric."""
    dpo = write_run(
        tmp_path / "dpo-run",
        [{"step": s, "loss": 1.0 / s, "rewards/margins": 0.1 * s, "learning_rate": 1e-5} for s in (1, 2, 3)],
    )
    ppo = write_run(
        tmp_path / "ppo-run",
        [{"step": s, "loss": 2.0 / s, "rewards/margins": 0.2 * s, "kl": 0.01 * s} for s in (1, 2, 3, 4)],
    )
    return [dpo, ppo]


def lines_by_metric(run_dirs: list[Path]) -> dict[str, list[tuple[str, int]]]:
    """metric -> [(legend label, points)] of each line of its figure."""
    import matplotlib.pyplot as plt

    out = {}
    for key, fig in compare_figures(run_dirs):
        (ax,) = fig.axes
        _, legend = ax.get_legend_handles_labels()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == legend
        out[key] = [(line.get_label(), len(line.get_xdata())) for line in ax.get_lines()]
        plt.close(fig)
    return out


def test_figures_overlay_the_shared_metrics(two_runs):
    assert lines_by_metric(two_runs) == {
        "loss": [("dpo-run", 3), ("ppo-run", 4)],
        "rewards/margins": [("dpo-run", 3), ("ppo-run", 4)],
    }


def test_a_metric_two_of_three_runs_share_gets_their_two_lines(two_runs, tmp_path):
    third = write_run(tmp_path / "grpo-run", [{"step": 1, "kl": 0.5}, {"step": 2, "kl": 0.4}])
    lines = lines_by_metric([*two_runs, third])
    assert lines["kl"] == [("ppo-run", 4), ("grpo-run", 2)]
    assert [label for label, _ in lines["loss"]] == ["dpo-run", "ppo-run"]


def test_duplicate_run_names_are_told_apart_by_parent(tmp_path):
    runs = [tmp_path / "week1" / "dpo", tmp_path / "week2" / "dpo", tmp_path / "ppo"]
    assert run_labels(runs) == ["week1/dpo", "week2/dpo", "ppo"]
    same_parent = [tmp_path / "a" / "x" / "dpo", tmp_path / "b" / "x" / "dpo"]
    assert run_labels(same_parent) == [str(p.resolve()) for p in same_parent]


def test_plot_two_runs_writes_one_png_per_shared_metric(cli_run, two_runs, tmp_path):
    out = tmp_path / "compare"
    result = cli_run("plot", *map(str, two_runs), "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    expected = [out / "loss.png", out / "rewards_margins.png"]
    assert result.stdout.splitlines() == [str(p) for p in expected]
    assert sorted(out.iterdir()) == expected
    assert all(p.read_bytes()[:8] == PNG for p in expected)
    assert not any((run / "plots").exists() for run in two_runs)  # the runs' own plots are left alone


def test_plot_several_runs_defaults_to_plots_compare_here(cli_run, two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli_run("plot", *map(str, two_runs))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(Path("plots-compare") / "loss.png"),
        str(Path("plots-compare") / "rewards_margins.png"),
    ]
    assert (tmp_path / "plots-compare" / "loss.png").read_bytes()[:8] == PNG


def test_plot_runs_sharing_no_metric_say_so(cli_run, tmp_path):
    a = write_run(tmp_path / "a", [{"step": 1, "loss": 1.0}])
    b = write_run(tmp_path / "b", [{"step": 1, "kl": 1.0}])
    result = cli_run("plot", str(a), str(b), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 0 and result.stdout == ""
    assert "no numeric key metric is logged by two or more of these runs" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plot_one_run_with_output_dir(cli_run, two_runs, tmp_path):
    out = tmp_path / "elsewhere"
    result = cli_run("plot", str(two_runs[1]), "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["kl.png", "loss.png", "rewards_margins.png"]
    assert not (two_runs[1] / "plots").exists()


def test_plot_errors_are_one_line(cli_run, two_runs, tmp_path):
    result = cli_run("plot", str(two_runs[0]), str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path / 'missing'}: no metrics.jsonl here; is this a run directory?\n"
    result = cli_run("plot", str(two_runs[0]), str(two_runs[0]))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {two_runs[0]}: this run directory is given twice\n"
