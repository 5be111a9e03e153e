"""Run every reliability scenario once and print the figures as a Markdown table.

Usage (from the repository root)::

    python tests/reliability/figures.py            # every scenario
    python tests/reliability/figures.py read-timeout fork   # some of them

The tests in this directory run the same scenarios and assert on them; this script only
reports, so the table in ``docs/reliability.md`` can be regenerated from the code it
describes.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scenarios  # run as a script: this directory is on sys.path

import analytics_sprig

COLUMNS = ("scenario", "fault", "sent", "delivered", "failed", "dropped", "duplicates",
           "missing", "silent loss", "requests", "retries", "seconds")


def runners() -> Dict[str, Callable[[], scenarios.Outcome]]:
    every: Dict[str, Callable[[], scenarios.Outcome]] = {
        name: (lambda name=name: scenarios.run_fault(name))  # type: ignore[misc]
        for name in scenarios.FAULT_SCENARIOS
    }
    every.update(scenarios.PROCESS_SCENARIOS)
    if not hasattr(os, "fork"):
        del every["fork"]
    return every


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("scenario", "fault") else "--:" for c in COLUMNS)
             + "|"]
    for row in rows:
        cells = [f"`{row['scenario']}`" if c == "scenario" else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    available = runners()
    names = argv or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        sys.stderr.write(f"unknown scenario(s): {unknown}; known: {list(available)}\n")
        return 2
    rows = []
    started = time.perf_counter()
    for name in names:
        outcome = available[name]()
        row = outcome.row()
        if name == "shutdown-under-load":
            row["seconds"] = round(outcome.extra["shutdown_seconds"], 2)
        rows.append(row)
    total = time.perf_counter() - started
    print(f"analytics-sprig {analytics_sprig.__version__}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(rows)} scenarios in {total:.1f} s")
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
