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
import threading
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


def code_version() -> str:
    """Where ``analytics_sprig`` is imported from, and which commit that is.

    A git checkout gives ``<commit>`` (``+dirty`` when ``analytics_sprig/`` has uncommitted
    changes); an exported snapshot may hold a ``REVISION`` file naming its commit.
    """
    import analytics_sprig

    root = os.path.dirname(os.path.dirname(os.path.abspath(analytics_sprig.__file__)))
    revision_file = os.path.join(root, "REVISION")
    if os.path.exists(revision_file):
        with open(revision_file, encoding="utf-8") as handle:
            return f"{root} (snapshot of {handle.read().strip()})"
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--",
                                "analytics_sprig"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return root
    if not commit:
        return root
    return f"{root} at {commit}{'+dirty' if dirty else ''}"


def load_average() -> str:
    """The 1-minute load average (the machine is shared: noise shows here), if known."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "?"


def header(title: str, **settings: Any) -> None:
    """Print what is being run, where and when, on which code."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"== {title}")
    print(
        f"   {now}; Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{os.cpu_count()} CPUs; {platform.system()} {platform.machine()}; "
        f"load {load_average()}"
    )
    print(f"   analytics_sprig: {code_version()}")
    if settings:
        print("   " + ", ".join(f"{key}={value}" for key, value in settings.items()))


def finish(passed: bool, strict: bool) -> None:
    """Exit 1 on a missed target only when ``--strict`` was given."""
    if strict and not passed:
        sys.exit(1)


# -- a fake Sprig (and Segment) server in a child process ----------------------------------

# The child serves analytics_sprig.testing.FakeSprig (its keyword options as JSON in argv[2])
# and answers one command per stdin line: "count" -> JSON {path: n}, "reset" -> "ok",
# "throttled" -> n, "log" -> JSON [[time, status, path], ...] (time.monotonic() when each
# request was read: one clock for all processes on Linux), "blackhole" -> "ok".
# Closing stdin stops it.
_SERVER_CODE = r"""
import collections, json, sys
from analytics_sprig.testing import FakeSprig
sprig = FakeSprig(api_key=sys.argv[1], **json.loads(sys.argv[2])).start()
print(sprig.url, flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "count":
        print(json.dumps(collections.Counter(r.path for r in sprig.requests)), flush=True)
    elif command == "reset":
        sprig.reset()
        print("ok", flush=True)
    elif command == "throttled":
        print(sprig.throttled, flush=True)
    elif command == "log":
        print(json.dumps([[r.time, r.status, r.path] for r in sprig.requests]), flush=True)
    elif command == "blackhole":
        sprig.blackhole(True)
        print("ok", flush=True)
sprig.stop()
"""


class ServerProcess:
    """A :class:`~analytics_sprig.testing.FakeSprig` running in a child process.

    The server's CPU time is then not taken from the benchmarked process (on one GIL it
    would be, and would penalise whichever variant makes more requests), much as the real
    Sprig and Segment APIs run elsewhere. It answers ``/v2/users`` and Segment's
    ``/v1/batch`` on 127.0.0.1; ``latency``/``jitter`` (seconds) delay every answer, both
    APIs alike, and ``rate_limit`` (requests/s, with ``rate_limit_burst`` and
    ``rate_limit_retry_after``) is Sprig's token bucket (see ``FakeSprig``).
    """

    def __init__(self, api_key: str = API_KEY, **options: Any) -> None:
        self.options = {key: value for key, value in options.items() if value is not None}
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CODE, api_key, json.dumps(self.options)],
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

    def throttled(self) -> int:
        """Requests the rate limit answered with 429 since the start or the last reset."""
        return int(self._ask("throttled"))

    def log(self) -> List[Tuple[float, int, str]]:
        """``(time read, status, path)`` of every request, in arrival order."""
        return [(float(t), int(status), str(path))
                for t, status, path in json.loads(self._ask("log"))]

    def blackhole(self) -> None:
        """From now on, read requests and never answer them."""
        self._ask("blackhole")

    def reset(self) -> None:
        """Forget recorded requests and stored users (latency and rate limit stay)."""
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


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n), at least 1
    return float(ordered[min(rank, len(ordered)) - 1])


# -- a paced load through a real Client ----------------------------------------------------


class PacedLoad:
    """``users`` users each calling ``rate`` times a second for ``seconds``, paced.

    Calls are spread evenly: user ``u``'s ``k``-th call is due at ``start + (k + u /
    users) / rate``. ``producers`` threads share the users (user ``u`` belongs to thread ``u
    % producers``), each making its calls when due (sleeping in between), through
    ``call(user_id, k)``, which must return the call's messageId. ``called`` maps each
    messageId to ``time.monotonic()`` just before its call; ``lags`` holds how late each
    call started against its schedule (a producer starved of the GIL shows here).
    """

    def __init__(self, users: int, rate: float, seconds: float, producers: int = 1) -> None:
        self.users = users
        self.rate = rate
        self.seconds = seconds
        self.producers = max(1, producers)
        self.called: Dict[str, float] = {}
        self.lags: List[float] = []
        self.started = 0.0
        self.ended = 0.0

    @property
    def total(self) -> int:
        """How many calls the load makes."""
        return self.users * round(self.seconds * self.rate)

    def run(self, call: Callable[[str, int], str]) -> None:
        """Make every call (blocks until the last one returned)."""
        per_user = round(self.seconds * self.rate)
        start = time.monotonic() + 0.05
        self.started = start
        errors: List[BaseException] = []

        def produce(index: int) -> None:
            schedule = sorted(
                ((k + u / self.users) / self.rate, u, k)
                for u in range(index, self.users, self.producers)
                for k in range(per_user)
            )
            called = self.called
            lags = self.lags
            clock = time.monotonic
            try:
                for offset, user, k in schedule:
                    due = start + offset
                    now = clock()
                    if due > now:
                        time.sleep(due - now)
                        now = clock()
                    lags.append(now - due)
                    called[call(f"user-{user}", k)] = now
            except BaseException as exc:  # reported by run()
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(i,), name=f"producer-{i}")
                   for i in range(self.producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.ended = time.monotonic()
        if errors:
            raise errors[0]


class DeliveryClock:
    """When each message was delivered, by messageId (``time.monotonic()``).

    For Sprig, pass :meth:`on_delivered` as the destination's ``on_delivered`` (called once
    the answer arrived). For analytics-python, :meth:`watch_segment` wraps each consumer's
    ``request`` so a batch's messages are stamped once its POST returned.
    """

    def __init__(self) -> None:
        self.delivered: Dict[str, float] = {}

    def on_delivered(self, messages: List[Dict[str, Any]]) -> None:
        """``on_delivered`` callback of a :class:`~analytics_sprig.SprigDestination`."""
        now = time.monotonic()
        delivered = self.delivered
        for message in messages:
            delivered[message["messageId"]] = now

    def watch_segment(self, client: Any) -> None:
        """Stamp the messages of every batch a client's consumers send from now on."""
        delivered = self.delivered
        for consumer in client.consumers or ():
            original = consumer.request

            def request(batch: List[Dict[str, Any]], original: Any = original) -> Any:
                result = original(batch)
                now = time.monotonic()
                for item in batch:
                    delivered[item["messageId"]] = now
                return result

            consumer.request = request

    def delays(self, called: Dict[str, float]) -> List[float]:
        """Seconds from each call to its delivery (calls not delivered are left out)."""
        delivered = self.delivered
        return [delivered[m] - t for m, t in called.items() if m in delivered]


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    """Poll ``predicate`` every ``step`` seconds until true or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
