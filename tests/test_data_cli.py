"""Bad data through the CLI: one exact ``Error: <file>:<line>: ...`` line, a nonzero exit, nothing written to
the output directory; ``--skip-bad-rows`` turns row errors into counted, reported skips. Probe methods (one
per shape, tests/data_helpers.py) stand in for the real methods."""

from __future__ import annotations

import gzip
import json

import pytest

from easyrlhf_core.runtime import registry
from tests.data_helpers import ProbePlugin, hh_row, write_jsonl


@pytest.fixture(autouse=True)
def probe_plugin():
    registry.register_plugin("data-probe", ProbePlugin)
    yield
    registry.unregister_plugin("data-probe")


def run(cli_run, out, *args, method="probe-preference"):
    return cli_run("run", "--method", method, "--output-dir", str(out), *args)


GOOD = [hh_row("first question", "first answer"), hh_row("second question", "second answer")]


def bad_input_cases(tmp_path):
    """(file, expected error after 'Error: ') for each bad input the issue lists."""
    cases = []
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1])[:40] + "\n", encoding="utf-8")
    cases.append(
        (
            truncated,
            f"{truncated}:2: invalid JSON at column 12: Unterminated string starting (it looks "
            "truncated); each line must be one complete JSON object",
        )
    )
    missing_field = write_jsonl(tmp_path / "missing_field.jsonl", [GOOD[0], {"chosen": GOOD[1]["chosen"]}])
    cases.append(
        (
            missing_field,
            f"{missing_field}:2: missing field 'rejected'; the row has: chosen; map another "
            "column with --set columns.rejected=<column>",
        )
    )
    wrong_type = write_jsonl(tmp_path / "wrong_type.jsonl", [GOOD[0], GOOD[1], {"chosen": 5, "rejected": "x"}])
    cases.append((wrong_type, f"{wrong_type}:3: field 'chosen' must be a transcript string, got a number"))
    bad_utf8 = tmp_path / "bad_utf8.jsonl"
    bad_utf8.write_bytes(json.dumps(GOOD[0]).encode() + b"\n" + b'{"chosen": "caf\xe9", "rejected": "x"}\n')
    cases.append((bad_utf8, f"{bad_utf8}:2: not valid UTF-8 (byte 0xe9 at column 16); re-save the file as UTF-8"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    cases.append((empty, f"{empty}:1: file is empty; expected one JSON object per line"))
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text(json.dumps(GOOD[0]) + "\n", encoding="utf-8")
    cases.append(
        (
            not_gzip,
            f"{not_gzip}:1: not a gzip file (Not a gzipped file (b'{{\"')); decompress it, or drop "
            "the .gz from its name if it is plain text",
        )
    )
    no_assistant = write_jsonl(
        tmp_path / "no_assistant.jsonl", [GOOD[0], {"chosen": "\n\nHuman: hello?", "rejected": "\n\nHuman: anyone?"}]
    )
    cases.append(
        (
            no_assistant,
            f"{no_assistant}:2: 'chosen' has no '\\n\\nAssistant: ' turn; each transcript "
            "must end with the assistant's reply",
        )
    )
    missing_file = tmp_path / "nowhere.jsonl"
    cases.append((missing_file, f"{missing_file}: file not found; check the --data-files path"))
    return cases


CASE_NAMES = [
    "truncated-json",
    "missing-field",
    "wrong-type",
    "invalid-utf8",
    "empty-file",
    "gz-not-gzip",
    "no-assistant-turn",
    "missing-file",
]


@pytest.mark.parametrize("case", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_bad_input_is_one_error_line_and_nothing_is_written(cli_run, tmp_path, case):
    path, expected = bad_input_cases(tmp_path)[case]
    out = tmp_path / "run"
    result = run(cli_run, out, "--data-files", str(path))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {expected}"]
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


def test_truncated_gzip_stream_names_the_line_it_stopped_at(cli_run, tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(("".join(json.dumps(r) + "\n" for r in GOOD * 200)).encode())
    path.write_bytes(data[: len(data) // 2])
    result = run(cli_run, tmp_path / "run", "--data-files", str(path))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {path}:") and "the gzip stream is damaged or cut short" in line
    assert int(line.split(":")[2]) > 1  # the rows before the cut were read
    assert not (tmp_path / "run").exists()


def test_skip_bad_rows_counts_and_reports_skips(cli_run, tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(GOOD[0]).encode(),
        json.dumps(GOOD[1]).encode()[:30],
        b'{"chosen": "\xff"}',
        json.dumps({"chosen": "\n\nHuman: x", "rejected": "\n\nHuman: y"}).encode(),
        json.dumps({"chosen": 1, "rejected": 2}).encode(),
        json.dumps(GOOD[1]).encode(),
    ]
    mixed.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "strict"
    strict = run(cli_run, out, "--data-files", str(mixed))
    assert strict.exit_code == 2 and strict.stderr.startswith(f"Error: {mixed}:2: invalid JSON")
    assert not out.exists()
    for flag in (["--skip-bad-rows"], ["--set", "skip_bad_rows=true"]):
        out = tmp_path / f"skip{len(flag)}"
        result = run(cli_run, out, "--data-files", str(mixed), "--set", "eval_fraction=0", *flag)
        assert result.exit_code == 0, result.stderr
        probe = json.loads((out / "probe.json").read_text())
        assert len(probe["train"]) == 2
        assert (
            f"[easyrlhf] data: skipped 4 bad rows (skip_bad_rows); first: {mixed}:2: invalid JSON at column"
            in result.stderr
        )


def test_embedded_sample_counts_are_printed_once_on_a_real_run(cli_run, tmp_path):
    out = tmp_path / "run"
    result = run(cli_run, out, "--set", "max_train_samples=10", method="probe-conversation")
    assert result.exit_code == 0, result.stderr
    expected = (
        "[easyrlhf] data: hh-rlhf: read 6240 pairs from the embedded sample (helpful-base, helpful-online, "
        "helpful-rejection-sampled test splits); dropped 36 identical pairs; 12 split at a divergent turn"
    )
    assert result.stderr.count(expected) == 1
    assert "[easyrlhf] data: hh-rlhf (conversation): 10 train / 200 eval examples" in result.stderr
    assert len(json.loads((out / "probe.json").read_text())["train"]) == 10


def test_a_dataset_without_the_methods_shape_is_a_config_error_before_anything_is_written(cli_run, tmp_path):
    orca = write_jsonl(
        tmp_path / "orca.jsonl",
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}],
    )
    out = tmp_path / "run"
    result = run(cli_run, out, "--dataset", "slimorca", "--data-files", str(orca))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --dataset: method 'probe-preference' needs preference pairs (prompt, chosen, rejected), but "
        "dataset 'slimorca' yields conversations (messages) for SFT, prompts for online generation; use one of: "
        "arithmetic, hh-rlhf, jsonl"
    ]
    assert not out.exists()
    for method in ("probe-conversation", "probe-prompt"):
        ok = run(
            cli_run,
            tmp_path / method,
            "--dataset",
            "slimorca",
            "--data-files",
            str(orca),
            "--set",
            "eval_fraction=0",
            method=method,
        )
        assert ok.exit_code == 0, ok.stderr
        assert len(json.loads((tmp_path / method / "probe.json").read_text())["train"]) == 1
