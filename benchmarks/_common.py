"""Helpers shared by the benchmark scripts (not a benchmark itself).

Every benchmark compares variants measured in the same process and the same run, with
garbage collection collected-then-disabled while timing (GC pauses of whatever happens to
be alive otherwise land on a random variant), variants interleaved and rotated over
several rounds, and medians reported. The result is a ratio, printed last as::

    RATIO <name>=<value> target=<op><bound> PASS|FAIL
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")

#: The Sprig API key every benchmark uses against its local fake server.
API_KEY = "bench-sprig-key"
#: The Segment write key (the fake accepts any).
WRITE_KEY = "bench-write-key"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collect garbage, then keep the collector off for the duration of the block."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def timed(function: Callable[[], Any]) -> float:
    """Seconds ``function()`` takes, with GC collected and disabled around it."""
    with gc_paused():
        start = time.perf_counter()
        function()
        return time.perf_counter() - start


def timed_cpu(function: Callable[[], Any]) -> Tuple[float, float]:
    """``(wall seconds, CPU seconds of this whole process)`` of ``function()``, GC paused.

    CPU time counts every thread of the process (a destination's worker included), not the
    server, which runs in a child process.
    """
    with gc_paused():
        cpu = time.process_time()
        start = time.perf_counter()
        function()
        return time.perf_counter() - start, time.process_time() - cpu


def rotations(variants: Sequence[T], rounds: int) -> Iterator[List[T]]:
    """Yield ``rounds`` orderings of ``variants``, each rotated by one from the last.

    Every variant runs first, second, ... equally often, so a warm-up or drift effect
    that favours a position is spread over all of them.
    """
    items = list(variants)
    for index in range(rounds):
        shift = index % len(items)
        yield items[shift:] + items[:shift]


def median(values: Sequence[float]) -> float:
    """The median (``statistics.median``), named here for readability."""
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``min..max`` of ``values``, for showing how noisy a series was."""
    return f"{min(values):.3g}..{max(values):.3g}"


def ratio_line(name: str, value: float, op: str, bound: float) -> bool:
    """Print the final ``RATIO`` line; return whether the target is met."""
    passed = value <= bound if op == "<=" else value >= bound
    print(f"RATIO {name}={value:.3f} target={op}{bound:g} {'PASS' if passed else 'FAIL'}")
    return passed


def header(title: str, **settings: Any) -> None:
    """Print what is being run, where and when."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"== {title}")
    print(
        f"   {now}; Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{os.cpu_count()} CPUs; {platform.system()} {platform.machine()}"
    )
    if settings:
        print("   " + ", ".join(f"{key}={value}" for key, value in settings.items()))


def finish(passed: bool, strict: bool) -> None:
    """Exit 1 on a missed target only when ``--strict`` was given."""
    if strict and not passed:
        sys.exit(1)


# -- a fake Sprig (and Segment) server in a child process ----------------------------------

# The child serves analytics_sprig.testing.FakeSprig and answers one command per stdin
# line: "count" -> JSON {path: n}, "reset" -> "ok". Closing stdin stops it.
_SERVER_CODE = r"""
import collections, json, sys
from analytics_sprig.testing import FakeSprig
sprig = FakeSprig(api_key=sys.argv[1]).start()
print(sprig.url, flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "count":
        print(json.dumps(collections.Counter(r.path for r in sprig.requests)), flush=True)
    elif command == "reset":
        sprig.reset()
        print("ok", flush=True)
sprig.stop()
"""


class ServerProcess:
    """A :class:`~analytics_sprig.testing.FakeSprig` running in a child process.

    The server's CPU time is then not taken from the benchmarked process (on one GIL it
    would be, and would penalise whichever variant makes more requests), much as the real
    Sprig and Segment APIs run elsewhere. It answers ``/v2/users`` and Segment's
    ``/v1/batch`` on 127.0.0.1.
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CODE, api_key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"fake server did not start (got {self.url!r})")

    def _ask(self, command: str) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._process.stdout.readline().strip()

    def counts(self) -> Dict[str, int]:
        """Requests received so far, by path."""
        counts: Dict[str, int] = json.loads(self._ask("count"))
        return counts

    def reset(self) -> None:
        """Forget recorded requests and stored users."""
        self._ask("reset")

    def close(self) -> None:
        """Stop the child process."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stop_segment_consumers(client: Any) -> None:
    """Stop analytics-python's consumer threads so Segment's network is never measured.

    The client keeps ``send=True`` (so the pipeline's destination hooks run, as in
    production) and its calls still land on its queue; nothing takes them off.
    """
    for consumer in client.consumers or ():
        consumer.pause()
        with contextlib.suppress(RuntimeError):  # never started
            consumer.join()


def clear_segment_queue(client: Any) -> None:
    """Empty a client's (consumer-less) queue between timed blocks, outside the timing."""
    q = client.queue
    with q.mutex:
        q.queue.clear()
        q.unfinished_tasks = 0
        q.not_full.notify_all()
        q.all_tasks_done.notify_all()


def describe(values: Sequence[float], unit: str = "", scale: float = 1.0) -> str:
    """``median (min..max)`` of ``values`` times ``scale``."""
    scaled = [v * scale for v in values]
    return f"{median(scaled):.3f}{unit} (min {min(scaled):.3f}, max {max(scaled):.3f})"


def optional_int(value: Optional[int], default: int) -> int:
    """``value`` unless ``None``."""
    return default if value is None else value
