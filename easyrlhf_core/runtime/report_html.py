"""The HTML of ``report.html``: escaping (every text from a run is untrusted: completions, prompts, metric names),
the page around the sections, with its CSS and JS inlined (no network, no server), and the model card's
Markdown subset as HTML. What goes into the sections is :mod:`easyrlhf_core.runtime.report`."""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from typing import Any, Iterable

__all__ = ["esc", "script_json", "page", "table", "empty", "markdown_html"]

#: C0 control characters (but tab, newline, carriage return) and DEL: shown as their Unicode control pictures.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value: Any) -> str:
    """``value`` as HTML text: ``& < > " '`` escaped; control characters as visible symbols (U+2400...)."""
    text = _CONTROL.sub(lambda m: chr(0x2421 if m.group() == "\x7f" else 0x2400 + ord(m.group())), str(value))
    return html.escape(text, quote=True)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null (``JSON.parse`` refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    (so no ``</script>``), no line separators."""
    text = json.dumps(_finite(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for char, code in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, code)
    return text


def _asset(name: str) -> str:
    return resources.files("easyrlhf_core.runtime").joinpath("report_assets").joinpath(name).read_text(encoding="utf-8")


def page(title: str, header: str, nav: list[tuple[str, str]], body: str, data: dict[str, Any], footer: str) -> str:
    """The whole self-contained page: ``header`` and ``body`` are HTML, ``nav`` is (anchor id, label) pairs, and
    ``data`` (the charts) is embedded as JSON for the inlined script."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="easyrlhf">\n'
        f"<title>{esc(title)}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
        f'<header class="top">{header}</header>\n<nav class="toc">{links}</nav>\n<main>\n{body}\n</main>\n'
        f"<footer>{footer}</footer>\n"
        f'<script type="application/json" id="report-data">{script_json(data)}</script>\n'
        f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )


def table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of HTML cells (escape the text before): ``header`` the ``<th>`` cells, each row its ``<td>`` s."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f'<div class="scroll"><table{attr}>{thead}<tbody>{body}</tbody></table></div>'


def empty(anchor: str, text_html: str) -> str:
    """An empty state: what is missing and why, named by ``anchor`` (its element id)."""
    return f'<p class="empty" id="{esc(anchor)}">{text_html}</p>'


def _inline(text: str) -> str:
    """The card's inline Markdown, escaped first: ``code`` and **bold**."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_html(text: str, skip_sections: tuple[str, ...] = ()) -> str:
    """The Markdown a model card is written in (``#`` headings, ``|`` tables, fenced code, paragraphs) as escaped
    HTML; images are left out (the page loads nothing), as are the ``##`` sections named in ``skip_sections``."""
    out: list[str] = []
    lines = text.splitlines()
    i, skipping = 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            skipping = level == 2 and title in skip_sections
            if not skipping:
                out.append(f"<h{min(level + 2, 6)}>{_inline(title)}</h{min(level + 2, 6)}>")
            i += 1
            continue
        if skipping:
            i += 1
            continue
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append(f"<pre>{esc(chr(10).join(lines[i + 1 : end]))}</pre>")
            i = end + 1
            continue
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(b) for b in block if not ("-" in b and set(b.strip()) <= set("|:- "))]  # no |---|
            header, body = (rows[0], rows[1:]) if rows else ([], [])
            if not any(header):  # "| | |": a table without column names
                out.append(table([], ([_inline(c) for c in r] for r in body), cls="facts"))
            else:
                out.append(table([_inline(c) for c in header], ([_inline(c) for c in r] for r in body)))
            continue
        if line.strip() and not line.lstrip().startswith("!["):
            out.append(f"<p>{_inline(line.strip())}</p>")
        i += 1
    return "\n".join(out)
