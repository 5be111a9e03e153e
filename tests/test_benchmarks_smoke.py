"""Each benchmark script runs end to end with ``--quick`` and prints its RATIO line(s).

Timing is never asserted (the figures of a tiny run on a shared machine mean nothing);
what is checked is that the script works: it exits 0, prints a well-formed ratio line per
target, and its own internal checks (no message lost, counters adding up) did not raise.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RATIO = re.compile(
    r"^RATIO (?P<name>[a-z0-9_]+)=(?P<value>\S+) target=(?P<op><=|>=)(?P<bound>[0-9.]+) "
    r"(?P<verdict>PASS|FAIL)$"
)

# script -> the ratio names it must print, in order; a trailing "?" marks a name printed
# only by some versions of the code under test (the spool variant needs ``spool=``).
EXPECTED = {
    "hot_path.py": ["hot_path_noop_plugin", "hot_path_sprig_shipped", "hot_path_sprig",
                    "hot_path_sprig_spool?"],
    "throughput.py": ["throughput"],
    "coalescing.py": ["coalescing_requests", "coalescing_drain"],
    "latency.py": ["latency_drain"],
    "steady.py": ["steady_dropped", "steady_drain_seconds"],
    "rate_limited.py": ["rate_limited_dropped", "rate_limited_429_share"],
    "memory.py": ["memory_growth_after_cap", "memory_track100_vs_track"],
    "spool.py": ["spool_time_vs_json", "spool_bytes_vs_json"],
}


def expected_names(script: str, printed: int) -> List[str]:
    """The names ``script`` must print when it printed ``printed`` ratio lines."""
    names = EXPECTED[script]
    required = [name for name in names if not name.endswith("?")]
    optional = [name[:-1] for name in names if name.endswith("?")]
    assert names == required + [name + "?" for name in optional], "optional names go last"
    assert len(required) <= printed <= len(names), f"{script} printed {printed} ratio lines"
    return required + optional[: printed - len(required)]

if not BENCHMARKS.is_dir():  # e.g. tests run from an installed sdist without benchmarks/
    pytest.skip("benchmarks/ is not present", allow_module_level=True)


def run_quick(script: str) -> List[str]:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS.parent,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout.splitlines()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick_run_prints_its_ratio(script: str) -> None:
    lines = run_quick(script)
    ratio_lines = [line for line in lines if line.startswith("RATIO ")]
    assert ratio_lines, lines
    names = expected_names(script, len(ratio_lines))
    # The ratio line(s) come last.
    assert lines[-len(ratio_lines):] == ratio_lines
    for line, name in zip(ratio_lines, names):
        match = RATIO.match(line)
        assert match is not None, line
        assert match["name"] == name
        value = float(match["value"])
        assert math.isfinite(value) and value >= 0
        # The verdict is consistent with the printed value and target (not with a speed).
        bound = float(match["bound"])
        met = value <= bound if match["op"] == "<=" else value >= bound
        # Values are printed rounded to 3 decimals; only judge clear cases.
        if abs(value - bound) > 0.001:
            assert (match["verdict"] == "PASS") == met, line


def test_every_benchmark_script_is_smoke_tested() -> None:
    scripts = {path.name for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_")}
    assert scripts == set(EXPECTED)
