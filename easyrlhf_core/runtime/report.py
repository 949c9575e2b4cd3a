"""``report.html``: one self-contained page per run (summary, curves, sampled completions, before/after on held-out
data, model card, config), written at the end of a run and by ``easyrlhf report RUN_DIR``; with several runs,
``easyrlhf report A B ...`` compares them on one page (summaries side by side, the same metrics' curves overlaid,
the config options that differ). Everything comes from the run directory's files; nothing is loaded over the
network when the page opens. The HTML pieces are :mod:`~easyrlhf_core.runtime.report_html`, the chart data
:mod:`~easyrlhf_core.runtime.report_charts`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easyrlhf_core.kit.errors import EasyRLHFError
from easyrlhf_core.kit.metrics import METRICS_FILE, read_metrics
from easyrlhf_core.runtime.plots import KEY_PATTERN
from easyrlhf_core.runtime.report_charts import compare_charts, run_charts
from easyrlhf_core.runtime.report_html import empty, esc, markdown_html, page, table
from easyrlhf_core.runtime.run import COMPLETE_FILE, CONFIG_FILE
from easyrlhf_core.runtime.summary import RunSummary, read_summary

__all__ = ["REPORT_FILE", "COMPARE_FILE", "RunFiles", "check_run_dir", "read_run", "write_report", "write_compare"]

REPORT_FILE = "report.html"
COMPARE_FILE = "report-compare.html"
SAMPLES_FILE = "samples.jsonl"  # easyrlhf_core.kit.online.SAMPLES_FILE, without importing the online kit
CARD_FILE = "README.md"
#: Rows of the samples table at most; a longer samples.jsonl is shown for evenly spaced steps.
MAX_SAMPLE_ROWS = 1000


@dataclass
class RunFiles:
    """What a run directory holds, read once for its report."""

    path: Path
    label: str
    rows: list[dict[str, Any]]
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None
    summary_problem: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    samples_total: int = 0
    samples_note: str = ""
    card: str | None = None
    complete: dict[str, Any] | None = None
    stages: list[str] = field(default_factory=list)  # sub-directories with their own report.html (a pipeline)

    @property
    def method(self) -> str:
        name = self.config.get("method") or (self.summary.method if self.summary else None)
        return str(name or (self.complete or {}).get("method") or "unknown method")


def check_run_dir(path: Path) -> None:
    """An :class:`EasyRLHFError` naming ``path`` unless it is a run directory with a ``metrics.jsonl`` (or a
    finished one that logged nothing)."""
    if not path.is_dir():
        what = "a file, not a directory" if path.exists() else "no such directory"
        raise EasyRLHFError(f"{what}; pass a run directory (the --output-dir of `easyrlhf run`)", where=str(path))
    if not (path / METRICS_FILE).is_file() and not (path / COMPLETE_FILE).is_file():
        if (path / CONFIG_FILE).is_file():
            raise EasyRLHFError(
                "no metrics.jsonl: this run has not logged a step yet, so there is nothing to report", where=str(path)
            )
        raise EasyRLHFError(
            "not a run directory (no metrics.jsonl, no config.yaml); pass the --output-dir of `easyrlhf run`",
            where=str(path),
        )


def read_run(path: Path, label: str | None = None) -> RunFiles:
    """Read what the report shows from run directory ``path`` (checked first: :func:`check_run_dir`)."""
    check_run_dir(path)
    metrics = path / METRICS_FILE
    run = RunFiles(
        path=path, label=label or path.resolve().name, rows=read_metrics(metrics) if metrics.is_file() else []
    )
    if (path / CONFIG_FILE).is_file():
        import yaml

        run.config_text = (path / CONFIG_FILE).read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(run.config_text)
        except yaml.YAMLError:
            loaded = None
        run.config = loaded if isinstance(loaded, dict) else {}
    try:
        run.summary = read_summary(path)
    except EasyRLHFError as exc:
        run.summary_problem = str(exc)
    _read_samples(run)
    if (path / CARD_FILE).is_file():
        run.card = (path / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    run.complete = _json_object(path / COMPLETE_FILE)
    stages = [p for p in path.iterdir() if p.is_dir() and (p / REPORT_FILE).is_file()]
    run.stages = [
        p.name for p in sorted(stages, key=lambda p: (not (p / COMPLETE_FILE).is_file(), _finished(p), p.name))
    ]
    return run


def _finished(stage: Path) -> float:
    """When a stage finished (its COMPLETE marker's time), to list a pipeline's stages in order."""
    marker = stage / COMPLETE_FILE
    return marker.stat().st_mtime if marker.is_file() else 0.0


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {} if path.is_file() else None
    return value if isinstance(value, dict) else {}


def _read_samples(run: RunFiles) -> None:
    """``samples.jsonl``'s rows; past :data:`MAX_SAMPLE_ROWS`, the rows of evenly spaced steps (first and last
    among them). Lines that are not a sample (cut short by a kill) are skipped and counted."""
    path = run.path / SAMPLES_FILE
    if not path.is_file():
        return
    rows, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and "completion" in row:
            rows.append(row)
        else:
            skipped += 1
    run.samples_total = len(rows)
    notes = [f"{skipped} line{'s' if skipped != 1 else ''} of samples.jsonl could not be read"] if skipped else []
    if len(rows) > MAX_SAMPLE_ROWS:
        steps = list(dict.fromkeys(r.get("step") for r in rows))
        keep = max(1, MAX_SAMPLE_ROWS * len(steps) // len(rows))
        picked = {steps[round(i * (len(steps) - 1) / max(keep - 1, 1))] for i in range(keep)}
        rows = [r for r in rows if r.get("step") in picked][:MAX_SAMPLE_ROWS]
        notes.insert(
            0,
            f"showing {len(rows)} of {run.samples_total} rows: {len(picked)} of {len(steps)} steps, evenly "
            f"spaced (every row is in samples.jsonl)",
        )
    run.samples = rows
    run.samples_note = "; ".join(notes)


# --------------------------------------------------------------------------------------------------
# Writing


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``run_dir``'s report (to ``run_dir/report.html``, or ``out``); returns the file written."""
    run = read_run(run_dir)
    return _write(out or run_dir / REPORT_FILE, build_report(run))


def write_compare(run_dirs: list[Path], out: Path) -> Path:
    """Write one page comparing the runs in ``run_dirs`` to ``out``; returns it."""
    from easyrlhf_core.runtime.plots import run_labels

    for path in run_dirs:
        check_run_dir(path)
    labels = run_labels(run_dirs)
    runs = [read_run(path, label) for path, label in zip(run_dirs, labels)]
    return _write(out, build_compare(runs, out))


def _write(path: Path, text: str) -> Path:
    """``text`` into ``path`` whole: a reader never sees half a page."""
    if path.is_dir():
        raise EasyRLHFError("is a directory; --out names the HTML file to write", where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------
# One run


def build_report(run: RunFiles) -> str:
    """The page for one run."""
    key_charts, other_charts = ([], []) if run.stages else run_charts(run.rows)
    charts = key_charts + other_charts
    sections = [
        ("summary", "Summary", _summary_section(run)),
        ("curves", "Curves", _stages_note(run, "curves") if run.stages else _curves_section(key_charts, other_charts)),
        ("samples", "Samples", _stages_note(run, "samples") if run.stages else _samples_section(run)),
        (
            "before-after",
            "Before and after",
            _stages_note(run, "before-after") if run.stages else _before_after_section(run),
        ),
        ("model-card", "Model card", _card_section(run)),
        ("config", "Config", _config_section(run)),
    ]
    status = (
        f'<span class="badge ok">complete {esc((run.complete or {}).get("finished", ""))}</span>'
        if run.complete is not None
        else '<span class="badge warn">not complete (no COMPLETE marker)</span>'
    )
    header = (
        f"<h1>{esc(run.label)}</h1>"
        f'<div class="meta">EasyRLHF run report &middot; method <b>{esc(run.method)}</b> &middot; {status} &middot; '
        f'<span class="mono">{esc(run.path.resolve())}</span></div>'
    )
    return _sectioned_page(f"{run.label}: EasyRLHF report", header, sections, charts, f"easyrlhf report {run.path}")


def _sectioned_page(title: str, header: str, sections: list[tuple[str, str, str]], charts: Any, command: str) -> str:
    """A report page: ``sections`` (anchor, title, html) in order and in the navigation, the charts' data, and
    the footer naming ``command``."""
    body = "\n".join(f'<section id="{anchor}"><h2>{name}</h2>\n{html}</section>' for anchor, name, html in sections)
    navigation = [(anchor, name) for anchor, name, _ in sections]
    return page(title, header, navigation, body, {"charts": charts}, _footer(command))


def _footer(command: str) -> str:
    from easyrlhf_core import __version__

    return (
        f"Written by easyrlhf {esc(__version__)} on {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} from the run "
        f"directory's files; self-contained (nothing is loaded when it opens). Rebuild it with "
        f"<code>{esc(command)}</code>."
    )


def _summary_section(run: RunFiles) -> str:
    parts = []
    summary = run.summary
    if summary is not None:
        parts.append(f'<pre class="summary" id="summary-text">{esc(chr(10).join(summary.lines()[2:]))}</pre>')
        facts = [
            [f"<b>{esc(k)}</b>", f'<span class="mono">{esc(v)}</span>'] for k, v in _summary_facts(summary).items()
        ]
        parts.append(table([], facts, cls="facts"))
        if summary.changed:
            items = "".join(f"<li>{esc(f.text)}{_figures(f.figures)}</li>" for f in summary.changed)
            parts.append(f"<h3>What changed</h3><ul>{items}</ul>")
    elif run.summary_problem:
        parts.append(empty("summary-empty", f"summary.json could not be read: {esc(run.summary_problem)}"))
    elif run.stages:
        parts.append(empty("summary-empty", "No summary.json: a pipeline's stages each write their own (below)."))
    else:
        why = "the run has not finished" if run.complete is None else "this run wrote none"
        parts.append(empty("summary-empty", f"No summary.json: {why}."))
    if run.stages:
        parts.append(f"<h3>Stages</h3><p>{_stage_links(run)}</p>")
    return "\n".join(parts)


def _stage_links(run: RunFiles, anchor: str = "") -> str:
    """Links to the stages' own pages, in the order they finished."""
    fragment = f"#{anchor}" if anchor else ""
    return " &middot; ".join(f'<a href="{esc(name)}/{REPORT_FILE}{fragment}">{esc(name)}</a>' for name in run.stages)


def _stages_note(run: RunFiles, anchor: str) -> str:
    """A pipeline's page: its metrics.jsonl holds one row per stage (each stage's last values, in the model card
    below); the curves, samples and held-out scores are on each stage's own page."""
    what = {"curves": "curves", "samples": "sampled completions", "before-after": "before/after"}[anchor]
    return empty(f"{anchor}-stages", f"A pipeline: the {what} are on each stage's page: {_stage_links(run, anchor)}.")


def _summary_facts(summary: RunSummary) -> dict[str, str]:
    """summary.json's facts, by name."""
    used, total = summary.train_examples_used, summary.train_examples
    return {
        "method": summary.method,
        "start model": summary.model,
        "trained": summary.trained,
        "dataset": summary.dataset,
        "training examples": f"{used} of {total}" if used is not None and used != total else str(total),
        "steps": "" if summary.steps is None else str(summary.steps),
        "time": f"{summary.seconds:.0f} s",
        "model": summary.model_dir,
        "run directory": summary.output_dir,
    }


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _figures(figures: dict[str, Any]) -> str:
    if not figures:
        return ""
    rows = [[f"<code>{esc(k)}</code>", f'<span class="mono">{esc(_value(v))}</span>'] for k, v in figures.items()]
    return f"<details><summary>figures</summary>{table(['figure', 'value'], rows)}</details>"


def _charts_grid(charts: list[dict[str, Any]], first: int) -> str:
    boxes = []
    for i, chart in enumerate(charts, start=first):
        note = f'<div class="note">{esc(chart["note"])}</div>' if chart["note"] else ""
        names = ", ".join(s["name"] for s in chart["series"])
        boxes.append(
            f'<div class="chart" data-chart="{i}" id="chart-{i}"><h3 title="{esc(names)}">{esc(chart["title"])}</h3>'
            f'<div class="plot"></div><div class="legend">{esc(names)}</div>{note}</div>'
        )
    return f'<div class="charts">{"".join(boxes)}</div>'


_NOSCRIPT = (
    '<noscript><p class="empty">The charts are drawn by this page\'s script: allow JavaScript for this file '
    "(the numbers are in metrics.jsonl).</p></noscript>"
)


def _curves_section(key_charts: list[dict[str, Any]], other_charts: list[dict[str, Any]]) -> str:
    if not key_charts and not other_charts:
        return empty("curves-empty", "No curves: metrics.jsonl holds no numeric metric with a step.")
    parts = [
        _NOSCRIPT,
        '<p class="note">One chart per metric group (<code>eval_</code> metrics with their training twins); hover '
        "for the values at a step, click a legend entry to hide or show its line.</p>",
    ]
    if key_charts:
        parts.append(_charts_grid(key_charts, 0))
    if other_charts:
        parts.append(
            f"<details{'' if key_charts else ' open'}><summary>Other metrics ({len(other_charts)} charts: learning "
            f"rate, gradient norm, counts ...)</summary>{_charts_grid(other_charts, len(key_charts))}</details>"
        )
    return "\n".join(parts)


def _messages(prompt: Any) -> str:
    """A prompt as its messages (role, then content), escaped; a plain string as it is."""
    if isinstance(prompt, list):
        return "\n".join(
            f'<span class="role">{esc(m.get("role", "?"))}:</span> {esc(m.get("content", ""))}'
            if isinstance(m, dict)
            else esc(m)
            for m in prompt
        )
    return esc(prompt)


def _samples_section(run: RunFiles) -> str:
    if not run.samples:
        why = (
            "samples.jsonl is empty"
            if (run.path / SAMPLES_FILE).is_file()
            else f"{esc(run.method)} does not sample completions (the online methods -- ppo, grpo, rloo, rrhf -- "
            "write samples.jsonl)"
        )
        return empty("samples-empty", f"No sampled completions: {why}.")
    labels = list(dict.fromkeys(k for r in run.samples for k in (r.get("rewards") or {})))
    ranges = {}
    for label in labels:
        values = [float(v) for r in run.samples if isinstance(v := (r.get("rewards") or {}).get(label), (int, float))]
        ranges[label] = (min(values), max(values)) if values else (0.0, 0.0)
    head = ['<th class="sortable" data-sort="num">step</th>', "<th>prompt</th>", "<th>completion</th>"] + [
        f'<th class="sortable" data-sort="num">{esc(label)}</th>' for label in labels
    ]
    body = []
    for row in run.samples:
        cells = [
            f'<td class="num">{esc(row.get("step", ""))}</td>',
            f'<td><div class="text">{_messages(row.get("prompt", ""))}</div></td>',
            f'<td><div class="text">{esc(row.get("completion", ""))}</div></td>',
        ]
        for label in labels:
            value = (row.get("rewards") or {}).get(label)
            cells.append(_reward_cell(value, ranges[label]))
        body.append("<tr>" + "".join(cells) + "</tr>")
    cols = '<col class="step"><col class="prompt"><col>' + '<col class="reward">' * len(labels)
    count = f"{len(run.samples)} rows"
    note = f'<p class="note">{esc(run.samples_note)}</p>' if run.samples_note else ""
    return (
        f'<p class="note">The completions sampled during training (samples.jsonl), with each reward\'s score; '
        f"click a step or reward heading to sort.</p>{note}"
        f'<div class="samples-tools"><input id="samples-filter" type="search" placeholder="filter rows by text" '
        f'aria-label="filter rows"><span id="samples-count">{count}</span></div>'
        f'<div class="scroll"><table class="samples" id="samples-table"><colgroup>{cols}</colgroup>'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _reward_cell(value: Any, bounds: tuple[float, float]) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f'<td class="num" data-v="">{esc("" if value is None else value)}</td>'
    low, high = bounds
    share = (float(value) - low) / (high - low) if high > low else 0.5
    shade = f"rgba(var(--good), {0.06 + 0.34 * share:.2f})"
    return f'<td class="num" data-v="{float(value)!r}" style="background: {shade}">{esc(_value(float(value)))}</td>'


def _held_out_figure(key: str) -> bool:
    """A finding's figure measured on held-out data (:func:`easyrlhf_core.kit.findings.pair_findings`'s)."""
    return key.endswith(("_before", "_after")) or "held_out" in key or "_change" in key or key.startswith("moved_")


def _before_after_section(run: RunFiles) -> str:
    """What the run's summary measured on held-out data before and after training; the answers themselves are an
    empty state until a method records them."""
    parts = []
    changed = run.summary.changed if run.summary else []
    measured = [f for f in changed if any(_held_out_figure(k) for k in f.figures)]
    if measured:
        parts.append("<h3>Held-out scores</h3><ul>" + "".join(f"<li>{esc(f.text)}</li>" for f in measured) + "</ul>")
        rows = []
        for finding in measured:
            for key, before in finding.figures.items():
                if key.endswith("_before") and (name := key.removesuffix("_before")) + "_after" in finding.figures:
                    after = finding.figures[name + "_after"]
                    interval = finding.figures.get(name + "_after_ci95", "")
                    rows.append([f"<code>{esc(name)}</code>"] + [esc(_value(v)) for v in (before, after, interval)])
        if rows:
            parts.append(table(["measure", "start model", "trained model", "trained: 95% interval"], rows))
    else:
        parts.append(
            empty(
                "before-after-scores-empty",
                f"No held-out scores: {esc(run.method)}'s summary measured nothing before and after training "
                "(DPO and IPO score their held-out pairs with the start and the trained model).",
            )
        )
    chat = next((c for c in (run.summary.next_commands if run.summary else []) if c.startswith("easyrlhf chat ")), "")
    tip = f" To see them side by side, run <code>{esc(chat)}</code>." if chat else ""
    parts.append("<h3>Answers on held-out prompts</h3>")
    parts.append(
        empty(
            "before-after-answers-empty",
            "No before/after answers: this run recorded no answers of the start and the trained model on held-out "
            f"prompts (no method records them yet).{tip}",
        )
    )
    return "\n".join(parts)


def _card_section(run: RunFiles) -> str:
    if run.card is None:
        return empty("model-card-empty", "No README.md (model card) in the run directory.")
    return (
        '<p class="note">The run directory\'s README.md, without its images.</p>'
        f'<div class="card">{markdown_html(run.card, skip_sections=("Curves",))}</div>'
    )


def _config_section(run: RunFiles) -> str:
    if run.config_text is None:
        return empty("config-empty", "No config.yaml in the run directory.")
    return (
        '<p class="note">config.yaml: the fully resolved config; run it again with '
        f"<code>easyrlhf run --config {esc(run.path / CONFIG_FILE)}</code>.</p>"
        f'<pre id="config-text">{esc(run.config_text)}</pre>'
    )


# --------------------------------------------------------------------------------------------------
# Several runs


def build_compare(runs: list[RunFiles], out: Path) -> str:
    """The page comparing ``runs``; links to their own reports are relative to ``out``'s directory."""
    charts, alone = compare_charts([(run.label, run.rows) for run in runs])
    sections = [
        ("summaries", "Summaries", _compare_summaries(runs, out)),
        ("curves", "Curves", _compare_curves(charts, alone)),
        ("config", "Config differences", _config_differences(runs)),
    ]
    names = ", ".join(f"{run.label} ({run.method})" for run in runs)
    header = f'<h1>Comparing {len(runs)} runs</h1><div class="meta">EasyRLHF comparison &middot; {esc(names)}</div>'
    command = "easyrlhf report " + " ".join(str(run.path) for run in runs) + f" --out {out}"
    return _sectioned_page(f"Comparing {len(runs)} runs: EasyRLHF report", header, sections, charts, command)


def _compare_summaries(runs: list[RunFiles], out: Path) -> str:
    def cell(run: RunFiles, key: str) -> str:
        s = run.summary
        if key == "method":
            return esc(run.method)
        if key == "status":
            return "complete" if run.complete is not None else "not complete"
        if key == "report":
            if not (run.path / REPORT_FILE).is_file():
                return ""
            href = os.path.relpath(run.path.resolve() / REPORT_FILE, out.resolve().parent)
            return f'<a href="{esc(Path(href).as_posix())}">report.html</a>'
        if s is None:
            return ""
        if key == "changed":
            return "<br>".join(esc(f.text) for f in s.changed)
        return esc(_summary_facts(s).get(key, ""))

    keys = ["method", "status", "trained", "dataset", "training examples", "steps", "time", "changed", "report"]
    rows = [[f"<b>{esc(k)}</b>"] + [cell(run, k) for run in runs] for k in keys]
    last = [{k: v for row in run.rows for k, v in row.items()} for run in runs]
    shared = sorted({k for values in last for k in values if KEY_PATTERN.search(k)})
    for key in (k for k in shared if sum(k in values for values in last) >= 2):
        rows.append(
            [f"final <code>{esc(key)}</code>"] + [esc(_value(values[key])) if key in values else "" for values in last]
        )
    grid = "".join(
        f'<div><h3>{esc(run.label)}</h3><pre class="summary">{esc(chr(10).join(run.summary.lines()[2:]))}</pre></div>'
        if run.summary
        else f"<div><h3>{esc(run.label)}</h3>{empty('summary-empty-' + str(i), 'No summary.json.')}</div>"
        for i, run in enumerate(runs)
    )
    return (
        table([""] + [esc(run.label) for run in runs], rows, cls="compare")
        + f'<h3>As each run printed it</h3><div class="compare-grid">{grid}</div>'
    )


def _compare_curves(charts: list[dict[str, Any]], alone: dict[str, list[str]]) -> str:
    parts = []
    if charts:
        parts += [
            _NOSCRIPT,
            '<p class="note">One chart per metric that two or more of the runs logged, one line per run.</p>',
            _charts_grid(charts, 0),
        ]
    else:
        parts.append(empty("curves-empty", "No metric is logged by two or more of these runs."))
    if alone:
        items = "".join(f"<li><code>{esc(k)}</code>: {esc(', '.join(v))}</li>" for k, v in alone.items())
        parts.append(
            f"<details><summary>Metrics only one run logged ({len(alone)})</summary><ul>{items}</ul></details>"
        )
    return "\n".join(parts)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _option(value: Any) -> str:
    """A config value as config.yaml spells it (JSON for lists and mappings)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _config_differences(runs: list[RunFiles]) -> str:
    configs = [_flatten(run.config) if run.config else {} for run in runs]
    missing = [run.label for run in runs if run.config_text is None]
    keys = list(dict.fromkeys(k for c in configs for k in c if k != "output_dir"))
    differing = [k for k in keys if len({json.dumps(c.get(k, "(not set)"), default=str) for c in configs}) > 1]
    parts = []
    if missing:
        parts.append(f'<p class="note">No config.yaml in: {esc(", ".join(missing))}.</p>')
    if differing:
        rows = [
            [f"<code>{esc(k)}</code>"]
            + [f'<span class="mono">{esc(_option(c.get(k, "(not set)")))}</span>' for c in configs]
            for k in differing
        ]
        parts.append(
            '<p class="note">The options whose values differ (output_dir aside).</p>'
            + table(["option"] + [esc(run.label) for run in runs], rows)
        )
    else:
        parts.append(empty("config-same", "The configs are the same (output_dir aside)."))
    return "\n".join(parts)
