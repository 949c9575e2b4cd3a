"""report.html: a finished run writes one self-contained page (summary, curves, samples, before/after, model card,
config) with every text escaped; `easyrlhf report` rebuilds it and compares runs; bad input is one Error line; in a
real browser (headless Chromium) the script draws the charts."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from easyrlhf_core.kit.testing import run_cli
from easyrlhf_core.runtime.report import MAX_SAMPLE_ROWS, read_run
from easyrlhf_core.runtime.report_html import esc
from easyrlhf_core.runtime.summary import read_summary
from tests.subprocess_runs import write_rows

#: What a page that loads nothing must not hold: a script, style or frame from elsewhere, any http(s) or
#: protocol-relative src/href, CSS imports and url() loads.
EXTERNAL = re.compile(
    r"<script\b[^>]*\bsrc\s*=|<link\b|<iframe\b|<object\b|<embed\b|@import|url\s*\("
    r"|\b(?:src|href|action|poster)\s*=\s*[\"']?\s*(?:https?:|//)",
    re.IGNORECASE,
)
HOSTILE = '</script><script>alert("pwned")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is faster on one thread (conftest's one_torch_thread)."""


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, str]:
    """A 3-step GRPO run (samples.jsonl with keyword rewards): its directory and its log."""
    base = tmp_path_factory.mktemp("report-grpo")
    questions = ["What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "Can you help?"]
    rows = [{"prompt": [{"role": "user", "content": f"{q} ({i})"}]} for i in range(4) for q in questions]
    data = write_rows(base / "prompts.jsonl", rows)
    out = base / "grpo"
    result = run_cli(
        *("run", "--method", "grpo", "--model", str(tiny_model_dir), "--dataset", "jsonl", "--data-files", str(data)),
        *("--output-dir", str(out), "--reward", "keyword", "--set", "reward_options={pattern: e}", "--max-steps", "3"),
        *("--set", "eval_fraction=0", "--set", "max_completion_length=8", "--set", "save_steps=0"),
        *("--set", "per_device_train_batch_size=8", "--set", "num_generations=4"),
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return out, result.stderr


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A 3-step DPO run on the embedded hh-rlhf sample: held-out pairs scored before and after, no samples."""
    out = tmp_path_factory.mktemp("report-dpo") / "dpo"
    result = run_cli(
        *("run", "--method", "dpo", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "3"),
        *("--set", "max_train_samples=16", "--set", "max_eval_samples=8", "--set", "max_length=128"),
        *("--set", "summary_pairs=8", "--set", "save_steps=0"),
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return out


def page_data(page: str) -> dict:
    """The JSON the page's script draws from."""
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.DOTALL)
    assert match is not None
    return json.loads(match.group(1))


def assert_self_contained(page: str) -> None:
    assert EXTERNAL.search(page) is None, EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    assert page.count("<script") == 2  # the embedded data and the inline script
    assert "<style>" in page


def test_a_finished_run_writes_a_self_contained_report(grpo_run):
    out, log = grpo_run
    report = out / "report.html"
    assert f"report: {report}" in log
    page = report.read_text(encoding="utf-8")
    assert_self_contained(page)
    summary = read_summary(out)
    assert summary is not None
    trained_line = summary.lines()[2]  # "  trained  grpo (all weights) from ... on 16 jsonl examples, 3 steps, in N s"
    assert trained_line.startswith("  trained  grpo") and esc(trained_line) in page
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    last = samples[-1]
    assert f'<div class="text">{esc(last["completion"])}</div>' in page
    assert esc(last["prompt"][0]["content"]) in page
    assert f'data-v="{float(last["rewards"]["keyword"])!r}"' in page
    assert '<table class="samples" id="samples-table">' in page and page.count('<tr><td class="num">') == len(samples)
    assert esc((out / "config.yaml").read_text(encoding="utf-8")) in page
    assert "Key hyperparameters" in page and "<code>num_generations</code>" in page  # the model card's facts
    charts = page_data(page)["charts"]
    loss = next(c for c in charts if c["title"] == "loss")
    assert loss["series"][0]["name"] == "loss" and loss["series"][0]["x"] == [1.0, 2.0, 3.0]
    rewards = next(c for c in charts if c["title"] == "rewards")
    assert {s["name"] for s in rewards["series"]} == {"rewards/keyword/mean", "rewards/keyword/std"}
    assert 'id="before-after-scores-empty"' in page and 'id="before-after-answers-empty"' in page


def test_a_pairs_run_shows_its_held_out_scores_and_says_it_has_no_samples(dpo_run):
    page = (dpo_run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    summary = json.loads((dpo_run / "summary.json").read_text(encoding="utf-8"))
    figures = {k: v for f in summary["changed"] for k, v in f["figures"].items()}
    before, after = figures["logprob_accuracy_before"], figures["logprob_accuracy_after"]
    assert f"<tr><td><code>logprob_accuracy</code></td><td>{before:.4g}</td><td>{after:.4g}</td>" in page
    assert all(esc(f["text"]) in page for f in summary["changed"])
    assert 'id="samples-empty"' in page and "dpo does not sample completions" in page
    assert 'id="before-after-answers-empty"' in page
    assert f"easyrlhf chat {dpo_run / 'model'} --compare" in page  # how to see the answers side by side


def test_untrusted_text_is_escaped(tmp_path):
    run = tmp_path / "hostile"
    write_rows(run / "metrics.jsonl", [{"step": 1, "loss": 1.0, "loss<b>x</b>": 2.0}, {"step": 2, "loss": 0.5}])
    sample = {"step": 1, "prompt": [{"role": "user", "content": HOSTILE}], "completion": HOSTILE + "\x07"}
    write_rows(run / "samples.jsonl", [{**sample, "rewards": {"<i>label</i>": 1.0}}])
    (run / "config.yaml").write_text(f"method: grpo\nreward_options: {json.dumps({'pattern': HOSTILE})}\n")
    (run / "README.md").write_text(
        f"# hostile\n\n| | |\n|---|---|\n| base model | `{HOSTILE}` |\n\n![x](plots/x.png)\n"
    )
    result = run_cli("report", str(run))
    assert result.exit_code == 0, result.stderr
    page = (run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "<img" not in page and "<script>alert" not in page
    assert html.escape(HOSTILE) + "\u2407" in page  # the completion, escaped; BEL shown as its control picture
    assert "&lt;i&gt;label&lt;/i&gt;" in page and "<i>label" not in page
    data = page_data(page)  # the metric name inside the embedded JSON cannot end the script
    assert any(s["name"] == "loss<b>x</b>" for c in data["charts"] for s in c["series"])
    assert "loss<b>" not in page


def test_report_rebuilds_a_run_s_page(grpo_run):
    out, _ = grpo_run
    (out / "report.html").unlink()
    result = run_cli("report", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "report.html")]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert esc(read_summary(out).lines()[2]) in page and "samples-table" in page


def test_report_compares_runs(grpo_run, dpo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grpo, _ = grpo_run
    result = run_cli("report", str(grpo), str(dpo_run))
    assert result.exit_code == 0, result.stderr
    compare = tmp_path / "report-compare.html"
    assert result.stdout.splitlines() == ["report-compare.html"] and compare.is_file()
    page = compare.read_text(encoding="utf-8")
    assert_self_contained(page)
    for run in (grpo, dpo_run):
        assert esc(read_summary(run).lines()[2]) in page  # both summaries, side by side
    loss = next(c for c in page_data(page)["charts"] if c["title"] == "loss")
    assert [s["name"] for s in loss["series"]] == ["grpo", "dpo"]  # the same metric, overlaid
    assert "<tr><td><code>method</code></td>" in page  # a config difference
    assert f'<a href="{os.path.relpath(grpo / "report.html", tmp_path)}">report.html</a>' in page  # relative links
    out = tmp_path / "elsewhere" / "cmp.html"
    assert run_cli("report", str(grpo), str(dpo_run), "--out", str(out)).exit_code == 0 and out.is_file()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "no such directory"),
        (lambda d: d, "not a run directory (no metrics.jsonl, no config.yaml)"),
        (lambda d: (d / "config.yaml").write_text("method: dpo\n") and d, "no metrics.jsonl"),
        (lambda d: (d / "a-file").write_text("x") and d / "a-file", "a file, not a directory"),
    ],
)
def test_a_bad_run_dir_is_one_error_line_naming_it(tmp_path, make, message):
    bad = make(tmp_path)
    ok = tmp_path / "ok"
    write_rows(ok / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    for args in ([str(bad)], [str(ok), str(bad)]):
        result = run_cli("report", *args)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"Error: {bad}: {message}") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "report-compare.html").exists()


def test_a_finished_run_that_logged_nothing_still_gets_a_page(tmp_path):
    (tmp_path / "config.yaml").write_text("method: echo\n")
    (tmp_path / "COMPLETE").write_text("{}\n")
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="curves-empty"' in page and "method: echo" in page and 'class="badge ok"' in page


def test_a_pipeline_page_links_its_stages_in_the_order_they_finished(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [{"step": 1, "sft/loss": 2.0}, {"step": 2, "rm/loss": 0.7}])
    for i, stage in enumerate(("sft", "rm")):
        write_rows(tmp_path / stage / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
        assert run_cli("report", str(tmp_path / stage)).exit_code == 0
        (tmp_path / stage / "COMPLETE").write_text("{}\n")
        os.utime(tmp_path / stage / "COMPLETE", (1000 + i, 1000 + i))
    assert run_cli("report", str(tmp_path)).exit_code == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    links = '<a href="sft/report.html#curves">sft</a> &middot; <a href="rm/report.html#curves">rm</a>'
    assert f'id="curves-stages">A pipeline: the curves are on each stage\'s page: {links}' in page
    assert page_data(page)["charts"] == []  # one row of last values per stage: no curves of its own


def test_a_report_that_fails_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    from easyrlhf_core.runtime import lifecycle, report

    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    logged: list[str] = []
    lifecycle.write_run_report(SimpleNamespace(output_dir=tmp_path, log=logged.append))
    assert logged == ["warning: could not write report.html: OSError: disk full"]


def test_a_long_samples_log_shows_evenly_spaced_steps(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    rows = [
        {"step": s, "prompt": "p", "completion": f"c{s}-{i}", "rewards": {"r": 1.0}}
        for s in range(1, 1001)
        for i in range(4)
    ]
    write_rows(tmp_path / "samples.jsonl", rows)
    with (tmp_path / "samples.jsonl").open("a") as fh:
        fh.write('{"step": 1001, "prom')  # a line cut short by a kill
    run = read_run(tmp_path)
    steps = sorted({r["step"] for r in run.samples})
    assert len(run.samples) <= MAX_SAMPLE_ROWS and steps[0] == 1 and steps[-1] == 1000 and len(steps) == 250
    assert all(sum(r["step"] == s for r in run.samples) == 4 for s in steps)  # whole steps
    assert run.samples_note.startswith("showing 1000 of 4000 rows: 250 of 1000 steps")
    assert "1 line of samples.jsonl could not be read" in run.samples_note


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def as_dumped(text: str) -> str:
    """``text`` as the browser serialises a text node (quotes are not escaped there)."""
    return esc(text).replace("&quot;", '"').replace("&#x27;", "'")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_a_browser_renders_the_report(grpo_run, tmp_path):
    out, _ = grpo_run
    url = (out / "report.html").resolve().as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, profile=tmp_path / "profile").stdout
    summary = read_summary(out)
    assert as_dumped(summary.lines()[2]) in dom
    last = json.loads((out / "samples.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert f'<div class="text">{as_dumped(last["completion"])}</div>' in dom
    charts = len(page_data((out / "report.html").read_text(encoding="utf-8"))["charts"])
    assert f'data-charts-drawn="{charts}"' in dom  # the script ran over every chart ...
    loss_chart = re.search(r'<div class="chart"[^>]*data-rendered="svg"[^>]*>.*?</svg>', dom, re.DOTALL)
    assert loss_chart is not None and '<path d="M' in loss_chart.group(0)  # ... and drew lines
    assert 'data-interactive="yes"' in dom  # the samples table can be filtered and sorted
    shot = tmp_path / "report.png"
    chromium(
        "--virtual-time-budget=5000", f"--screenshot={shot}", "--window-size=1200,900", url, profile=tmp_path / "p2"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more than that
        assert colors is None or len(colors) > 50  # text, lines and shading, not a blank page
