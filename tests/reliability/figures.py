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
           "missing", "silent loss", "requests", "retries", "seconds", "notes")


def notes(o: scenarios.Outcome) -> str:
    """What a row's numbers mean beyond the columns."""
    s, parts = o.stats, []
    answers = {k: v for k, v in sorted(o.statuses.items()) if k != 202}
    if answers:
        shown = ", ".join(f"{v} x {k or 'no answer'}" for k, v in answers.items())
        parts.append(f"server answers besides 202: {shown}")
    if o.duplicates:
        parts.append(f"{o.duplicates} duplicates = the events of requests processed after "
                     f"the client timed out ({o.extra.get('late_events')})")
    if s["dropped"]:
        parts.append(f"dropped: {s['dropped_queue_full']} queue full, "
                     f"{s['dropped_shutdown']} at/after shutdown")
    landed = len(set(o.stored) - o.missing) - s["delivered"]
    if landed > 0:
        parts.append(f"{landed} of the dropped reached Sprig anyway (in flight at the deadline)")
    if o.failed or o.dropped:
        told = len(o.reported["failed"]) + len(o.reported["dropped"])
        parts.append(f"on_error told about {told}")
    if "exit_seconds" in o.extra:
        parts.append(f"final flush at exit took {o.extra['exit_seconds']:.2f} s")
        logged = [line for line in o.extra["stderr"].splitlines() if "undelivered" in line]
        if logged:
            parts.append(f"log: `{logged[0].strip()}`")
    if "shutdown_seconds" in o.extra:
        parts.append(f"seconds = the shutdown() call; {o.sent} calls in all")
    if "children" in o.extra:
        parts.append("each child: 100 received, 100 delivered; parent: "
                     f"{o.extra['parent_stats']['delivered']} delivered")
    return "; ".join(parts)


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
             "|" + "|".join("---" if c in ("scenario", "fault", "notes") else "--:"
                            for c in COLUMNS)
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
        row["notes"] = notes(outcome)
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
