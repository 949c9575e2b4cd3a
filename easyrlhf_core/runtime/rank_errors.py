"""A failing rank reaches the user as one ``Error:`` line, the first rank's error, named.

Each launched rank that fails records its error line in ``$EASYRLHF_RANK_ERRORS/rank-N.json``
(:func:`record_rank_error`, called by the CLI's error handler, which then prints nothing itself, so two
failing ranks do not print two lines). The launcher runs in this module's process
(``python -m easyrlhf_core.runtime.rank_errors torchrun|accelerate ARGS``): torch's launcher (torchrun) or accelerate's,
called as a function instead of through its command-line entry point, so a failed rank ends it with an
exit code and a ``launcher.json`` naming the failed ranks, not torch elastic's ``ChildFailedError``
traceback; its own log lines are off unless ``--debug``. The parent process then reads the directory
(:func:`first_failure`) and prints one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Mapping

RANK_ERRORS_ENV = "EASYRLHF_RANK_ERRORS"
LAUNCHER_FILE = "launcher.json"
#: The launcher's own failure (before or around the ranks: a rendezvous port taken, ...), one line.
LAUNCHER_ERROR_FILE = "launcher-error.json"


def record_rank_error(message: str, code: int) -> bool:
    """In a launched rank: write its error line for the parent; False when there is nowhere to write it
    (not launched by ``easyrlhf run``), so the caller prints it."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder or not Path(folder).is_dir():
        return False
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "message": message,
        "code": code,
        "time": time.time(),
    }
    path = Path(folder) / f"rank-{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.rename(path)
    return True


def first_failure(folder: Path) -> tuple[str, int] | None:
    """``(error line without "Error: ", exit code)`` of the rank that failed first, from what the ranks
    and the launcher wrote into ``folder``; None when nothing failed there."""
    records = []
    for path in folder.glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if records:
        first = min(records, key=lambda r: (r["time"], r["rank"]))
        named = f"rank {first['rank']}: " if first.get("world_size", 1) > 1 else ""
        return f"{named}{first['message']}", int(first.get("code") or 1)
    try:
        return json.loads((folder / LAUNCHER_ERROR_FILE).read_text(encoding="utf-8"))["message"], 1
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        failures = json.loads((folder / LAUNCHER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not failures:
        return None
    first = min(failures, key=lambda f: (f["time"], f["rank"]))
    exitcode = int(first["exitcode"])
    if exitcode < 0:
        name = _signal_name(-exitcode)
        hints: dict[int, str] = {
            signal.SIGKILL: " (out of memory? see `dmesg`)",
            signal.SIGABRT: " (on GPUs: NCCL's watchdog ends a rank whose collective waited past "
            "collective_timeout; the rank's log names the call)",
        }
        hint = hints.get(-exitcode, "")
        return f"rank {first['rank']}: killed by {name}{hint}", 128 - exitcode
    return f"rank {first['rank']}: exited with code {exitcode} before reporting an error", exitcode or 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _write_failures(failures: Mapping[int, object]) -> None:
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder or not Path(folder).is_dir():
        return
    rows = [
        {"rank": int(rank), "exitcode": int(getattr(f, "exitcode", 1)), "time": float(getattr(f, "timestamp", 0) or 0)}
        for rank, f in failures.items()
    ]
    (Path(folder) / LAUNCHER_FILE).write_text(json.dumps(rows), encoding="utf-8")


def port_taken_message(port: int) -> str:
    """What to say when the rendezvous port is taken (before launching, or when the launcher finds it so)."""
    return (
        f"port {port} is taken on this machine (another run, or another program, listens on it); pass a "
        f"free one with --main-process-port, or leave the option out on one machine to pick a free one"
    )


def picked_port_taken_message(ports: list[int]) -> str:
    """What to say when every port picked free for the rendezvous (no ``--main-process-port`` on one
    machine) was taken by another program before the launcher could listen on it."""
    times = {1: "once", 2: "twice"}.get(len(ports), f"{len(ports)} times")
    return (
        f"--main-process-port: not given, so a free port was picked for the rendezvous, but another program "
        f"took it before the launcher could listen on it, {times} (port {', then '.join(map(str, ports))}); "
        f"run again, or pass a port kept free for this run with --main-process-port"
    )


def is_port_taken(error: BaseException) -> bool:
    """Whether the launcher failed because its rendezvous port is taken (torch's ``DistNetworkError``
    "... EADDRINUSE ..." / "... Address already in use ...")."""
    text = str(error)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def launcher_error_line(error: BaseException) -> str:
    """The launcher's own failure as one line: a taken rendezvous port named, anything else by its type."""
    text = " ".join(str(error).split())
    if is_port_taken(error):
        # libuv's store says "port: 29500", the other one "port=29500"
        found = re.search(r"\bport(?:: |=)(\d+)", text)
        if found:
            return port_taken_message(int(found.group(1)))
        return "the rendezvous port is taken on this machine; pass a free one with --main-process-port"
    return f"the launcher failed: {type(error).__name__}: {text}"


def launcher_port_taken(folder: Path) -> bool:
    """Whether the launcher recorded in ``folder`` that it failed because its rendezvous port is taken."""
    try:
        return json.loads((folder / LAUNCHER_ERROR_FILE).read_text(encoding="utf-8")).get("port_taken") is True
    except (OSError, ValueError, AttributeError):
        return False


def _write_launcher_error(error: BaseException) -> None:
    folder = os.environ.get(RANK_ERRORS_ENV)
    if folder and Path(folder).is_dir():
        record = {"message": launcher_error_line(error), "port_taken": is_port_taken(error)}
        (Path(folder) / LAUNCHER_ERROR_FILE).write_text(json.dumps(record), encoding="utf-8")
    else:
        print(f"Error: {launcher_error_line(error)}", file=sys.stderr)


def _quiet_launcher_logs() -> None:
    """torch elastic's warnings and errors about the ranks it stops ("failed (exitcode: 1) ...", "Sending
    process ... closing signal SIGTERM"): the parent prints the one line that matters."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed", "accelerate")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)


def main(argv: list[str]) -> int:
    """Run ``torchrun ARGS`` or ``accelerate ARGS`` (``accelerate launch``) in this process; its exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    which, args = argv[0], argv[1:]
    debug = "--debug" in args
    if which == "torchrun":
        from torch.distributed.run import parse_args, run

        def start() -> None:
            run(parse_args(args))
    else:
        from accelerate.commands.launch import launch_command, launch_command_parser

        def start() -> None:
            launch_command(launch_command_parser().parse_args(args))

    if not debug:
        _quiet_launcher_logs()
    try:
        start()
    except ChildFailedError as exc:
        if debug:
            print(exc, file=sys.stderr)
        _write_failures(exc.failures)
        _, failure = exc.get_first_failure()
        code = int(getattr(failure, "exitcode", 1))
        return 128 - code if code < 0 else code or 1
    except Exception as exc:  # noqa: BLE001  (the launcher itself: rendezvous store, bad arguments): one line, no traceback
        if debug:
            import traceback

            traceback.print_exc()
        _write_launcher_error(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
