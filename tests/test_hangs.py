"""A run that hangs is never silent: a second Ctrl-C / SIGTERM ends it at once (one line, the newest complete
checkpoint intact), on one process and through the launcher (issue 26, faults during training)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.subprocess_runs import RunningProcess, toy_pair, trainer_run_args, write_rows

#: Loaded first by every process of the child run (``sitecustomize`` on ``PYTHONPATH``): the second
#: step-end stop check (step 2's) blocks, as a step waiting in a collective that never completes does.
BLOCK_AT_STEP_2 = """
import time
import easyrlhf_core.kit.stopping as _run

_requested = _run.StopSignals.requested
_calls = []

def requested(self, device=None):
    _calls.append(1)
    if len(_calls) == 2:
        time.sleep(3600)
    return _requested(self, device)

_run.StopSignals.requested = requested
"""


@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_second_sigterm_ends_a_blocked_run_at_once_with_the_checkpoint_intact(
    num_processes, tiny_model_dir, tmp_path, monkeypatch
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_AT_STEP_2, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(site))
    data = write_rows(tmp_path / "pairs.jsonl", [toy_pair(i) for i in range(16)])
    out = tmp_path / "run"
    args = [
        *trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=20),
        "--set",
        "save_steps=1",
        "--set",
        "eval_fraction=0",
    ]
    running = RunningProcess(args, num_processes=num_processes)
    checkpoint = out / "checkpoints" / "checkpoint-1"
    running.wait_until(lambda: (checkpoint / "COMPLETE").is_file(), what="checkpoint-1")
    time.sleep(3)  # step 2 is blocked now
    running.signal(signal.SIGTERM)
    time.sleep(2)  # a second signal, not a repeat of the first
    assert running.process.poll() is None, running.log()  # the first one waits for the step, which never ends
    started = time.monotonic()
    running.signal(signal.SIGTERM)
    result = running.wait(timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 143, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert errors == [
        f"Error: SIGTERM: stopped at once by a second signal (the step in progress is lost); the "
        f"newest complete checkpoint, {checkpoint}, is intact: continue with --resume"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "model.safetensors").is_file()


#: Rank 1 gets stuck before step 2's stop check (a collective every rank joins at each step's end).
RANK_1_STUCK_AT_STEP_2 = """
import os, time
import easyrlhf_core.kit.stopping as _run

_requested = _run.StopSignals.requested
_calls = []

def requested(self, device=None):
    _calls.append(1)
    if len(_calls) == 2 and os.environ.get("RANK") == "1":
        time.sleep(600)
    return _requested(self, device)

_run.StopSignals.requested = requested
"""


def test_a_collective_waiting_past_collective_timeout_is_one_line_naming_the_rank_and_the_call(
    tiny_model_dir, tmp_path, monkeypatch
):
    from tests.subprocess_runs import run_easyrlhf

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RANK_1_STUCK_AT_STEP_2, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(site))
    data = write_rows(tmp_path / "pairs.jsonl", [toy_pair(i) for i in range(16)])
    out = tmp_path / "run"
    args = [
        *trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=20),
        "--set",
        "save_steps=1",
        "--set",
        "eval_fraction=0",
        "--set",
        "collective_timeout=20",
    ]
    started = time.monotonic()
    result = run_easyrlhf(args, num_processes=2, timeout=400)
    assert time.monotonic() - started < 300
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    checkpoint = out / "checkpoints" / "checkpoint-1"
    assert errors == [
        f"Error: rank 0: all_reduce waited longer than collective_timeout=20s for the other ranks, "
        f"which never joined it (one is stuck, was killed or lost its network, or the ranks ran "
        f"different code paths); the newest complete checkpoint, {checkpoint}, is intact: continue "
        f"with --resume (raise collective_timeout if a step can legitimately take that long)"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert (checkpoint / "COMPLETE").is_file()


def test_collective_timeout_must_be_positive(cli_run, tmp_path):
    result = cli_run("run", "--method", "sft", "--output-dir", str(tmp_path / "o"), "--set", "collective_timeout=0")
    assert result.exit_code == 2
    assert "'collective_timeout' must be > 0 (seconds)" in result.stderr


def test_one_signal_seen_late_by_the_watcher_is_not_a_second_one(monkeypatch):
    from easyrlhf_core.kit.stopping import StopSignals
    from easyrlhf_core.runtime import run as run_module

    clock = [100.0]
    monkeypatch.setattr(run_module.time, "monotonic", lambda: clock[0])
    stop = StopSignals(log=lambda _m: None)
    stop._handle(signal.SIGTERM, None)  # the Python handler, in the main thread
    assert stop.received == signal.SIGTERM
    clock[0] += 5.0  # the watcher thread reads the same signal late (the main thread held the GIL)
    assert stop._note(signal.SIGTERM) is False
    clock[0] += 0.5  # a repeat within the window (the launcher forwarding it): still one
    assert stop._note(signal.SIGTERM) is False
    clock[0] += 2.0  # a real second signal
    assert stop._note(signal.SIGTERM) is True


def test_a_rank_aborted_names_the_nccl_watchdog(tmp_path):
    import json

    from easyrlhf_core.runtime.rank_errors import LAUNCHER_FILE, first_failure

    (tmp_path / LAUNCHER_FILE).write_text(json.dumps([{"rank": 0, "exitcode": -6, "time": 1.0}]))
    line, code = first_failure(tmp_path)
    assert line.startswith("rank 0: killed by SIGABRT (on GPUs: NCCL's watchdog ends a rank") and code == 134
