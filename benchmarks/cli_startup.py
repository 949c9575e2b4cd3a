"""CLI start-up: how long `easyrlhf list-plugins`, `easyrlhf run --help` and `easyrlhf eval --help` take,
against `trl dpo --help` (TRL's own CLI) measured in the same run.

    python benchmarks/cli_startup.py [--repeats 7] [--markdown FILE]

Each command runs once untimed (warm file cache), then ``--repeats`` times; the table shows the median wall
time and the ratio to TRL's median. Commands run from the venv of the Python that runs this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "easyrlhf list-plugins": [str(BIN / "easyrlhf"), "list-plugins"],
    "easyrlhf run --help": [str(BIN / "easyrlhf"), "run", "--help"],
    "easyrlhf eval --help": [str(BIN / "easyrlhf"), "eval", "--help"],
    "trl dpo --help": [str(BIN / "trl"), "dpo", "--help"],
}
BASELINE = "trl dpo --help"


def time_command(argv: list[str], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` runs (after one warm-up); a failing command stops the benchmark."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", type=Path, help="Also write the table (with machine and command) here.")
    args = parser.parse_args()

    medians = {}
    rows = []
    for name, argv in COMMANDS.items():
        times = time_command(argv, args.repeats)
        medians[name] = statistics.median(times)
        rows.append((name, medians[name], min(times), max(times)))
    base = medians[BASELINE]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{date.today().isoformat()}; load average {os.getloadavg()[0]:.1f} at the end (shared machine); "
        f"{args.repeats} runs each after one warm-up",
        "",
        "| command | median (s) | min (s) | max (s) | vs `trl dpo --help` |",
        "|---|---|---|---|---|",
    ]
    for name, median, low, high in rows:
        lines.append(f"| `{name}` | {median:.3f} | {low:.3f} | {high:.3f} | {median / base:.3f}x |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        command = "python benchmarks/cli_startup.py " + " ".join(sys.argv[1:])
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# CLI start-up\n\nCommand: `{command.strip()}`\n\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
