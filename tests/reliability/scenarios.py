"""Fault and process scenarios shared by the reliability tests and ``figures.py``.

Every scenario is self-contained (it builds its own FakeSprig servers, a real
analytics-python ``Client`` and a ``SprigDestination``), runs outside pytest, and returns an
:class:`Outcome` with the figures: what was sent, what the destination says it did
(``stats()``), what the server actually stored, what ``on_error`` was told, and how long it
took. Tests assert on the outcome; ``figures.py`` prints it as a Markdown table.

Identity of a message: each one is a ``track`` with a unique timestamp, so the key
``(userId, epoch milliseconds)`` tells exactly which messages the server stored, how many
times (``duplicates``), and which are missing (``missing``); a missing message that
``on_error`` was not told about is ``silent_loss`` (must always be 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from segment.analytics import Client

import analytics_sprig
from analytics_sprig import SprigDestination
from analytics_sprig.testing import FakeSprig, RecordedRequest

API_KEY = "reliability-secret-key"
WRITE_KEY = "segment-write-key"
N_MESSAGES = 200
N_USERS = 50
EVENT = "Checkout Step"
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
BASE_MS = int(BASE.timestamp() * 1000)
#: Upper bound for one scenario's drain; only reached if something is broken.
DRAIN_TIMEOUT = 30.0

#: Tight retry settings so a scenario takes about a second: the retry budget of one request
#: is 10 retries with backoff 0.02 s doubling to 0.2 s (0.75-1.5 s in all, with jitter).
FAST: Dict[str, Any] = {
    "flush_interval": 0.02,
    "initial_backoff": 0.02,
    "max_backoff": 0.2,
    "max_retries": 10,
    "timeout": 2.0,
    "connect_timeout": 1.0,
    "shutdown_timeout": 2.0,
}

Key = Tuple[str, int]


@dataclass
class Outcome:
    """The figures of one scenario run."""

    name: str
    fault: str
    sent: int
    stats: Dict[str, int]
    stored: Counter  # key -> times the server stored that event
    expected: Set[Key]
    reported: Dict[str, Set[Key]]  # on_error reports by kind: "failed" / "dropped"
    seconds: float
    drained: bool = True
    invariant_checks: int = 0
    invariant_violations: List[Dict[str, int]] = field(default_factory=list)
    segment_received: Optional[int] = None
    statuses: Counter = field(default_factory=Counter)  # server answers to /v2/users
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.stats["delivered"]

    @property
    def failed(self) -> int:
        return self.stats["failed"]

    @property
    def dropped(self) -> int:
        return self.stats["dropped"]

    @property
    def skipped(self) -> int:
        return self.stats["skipped"]

    @property
    def duplicates(self) -> int:
        """Extra copies the server stored (a message stored 3 times counts 2)."""
        return sum(count - 1 for count in self.stored.values() if count > 1)

    @property
    def missing(self) -> Set[Key]:
        """Sent messages the server never stored."""
        return self.expected - set(self.stored)

    @property
    def unexpected(self) -> Set[Key]:
        """Stored events nobody sent (must be empty)."""
        return set(self.stored) - self.expected

    @property
    def silent_loss(self) -> Set[Key]:
        """Missing messages ``on_error`` was never told about (must be empty)."""
        told = self.reported.get("failed", set()) | self.reported.get("dropped", set())
        return self.missing - told

    def accounted(self) -> bool:
        """``delivered + failed + dropped + skipped == received`` with nothing pending."""
        s = self.stats
        return (s["pending"] == 0
                and s["delivered"] + s["failed"] + s["dropped"] + s["skipped"] == s["received"])

    def row(self) -> Dict[str, Any]:
        """The figures as a flat dict (for tables)."""
        return {
            "scenario": self.name,
            "fault": self.fault,
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.stats["pending"],
            "duplicates": self.duplicates,
            "missing": len(self.missing),
            "silent loss": len(self.silent_loss),
            "requests": self.stats["requests"],
            "retries": self.stats["retries"],
            "seconds": round(self.seconds, 2),
        }


# -- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port that nothing listens on (closed right after finding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def key_of(user_id: str, index: int) -> Key:
    return (user_id, BASE_MS + index)


def stamp(index: int) -> datetime:
    """Message ``index``'s timestamp: unique to the millisecond, so it identifies it."""
    return BASE + timedelta(milliseconds=index)


def message_id(index: int) -> str:
    """Message ``index``'s messageId: what ``on_error`` reports it by."""
    return f"msg-{index}"


def message_key(message: Mapping[str, Any]) -> Key:
    """The key of a message as ``on_error`` reports it (userId and messageId)."""
    index = int(str(message["messageId"]).rsplit("-", 1)[1])
    return (str(message["userId"]), BASE_MS + index)


def stored_events(sprig: FakeSprig) -> Counter:
    """``(userId, timestamp)`` -> how many times the server stored that event."""
    counts: Counter = Counter()
    for user_id, visitor in sprig.users.items():
        for event in visitor["eventLog"]:
            counts[(user_id, event["timestamp"])] += 1
    return counts


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


class ErrorLog:
    """An ``on_error`` callback that records which messages it was told about."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: List[Tuple[BaseException, List[Mapping[str, Any]]]] = []

    def __call__(self, error: BaseException, messages: List[Mapping[str, Any]]) -> None:
        with self._lock:
            self.calls.append((error, list(messages)))

    def by_kind(self) -> Dict[str, Set[Key]]:
        kinds: Dict[str, Set[Key]] = {"failed": set(), "dropped": set()}
        with self._lock:
            for error, messages in self.calls:
                kind = "dropped" if isinstance(error, analytics_sprig.MessageDropped) else "failed"
                kinds[kind].update(message_key(m) for m in messages)
        return kinds

    def kinds(self) -> Counter:
        """Messages reported, by error: class name, plus the reason of a drop."""
        counts: Counter = Counter()
        with self._lock:
            for error, messages in self.calls:
                name = type(error).__name__
                if isinstance(error, analytics_sprig.MessageDropped):
                    name += f":{error.reason}"
                counts[name] += len(messages)
        return counts

    def count(self) -> int:
        with self._lock:
            return sum(len(messages) for _, messages in self.calls)


class InvariantMonitor:
    """Samples ``stats()`` from another thread while a scenario runs.

    ``received == skipped + delivered + failed + dropped + pending`` must hold in every
    snapshot, not only at the end.
    """

    def __init__(self, destination: SprigDestination) -> None:
        self._destination = destination
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invariant-monitor", daemon=True)
        self.checks = 0
        self.violations: List[Dict[str, int]] = []

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            s = self._destination.stats()
            self.checks += 1
            total = s["skipped"] + s["delivered"] + s["failed"] + s["dropped"] + s["pending"]
            if s["received"] != total and len(self.violations) < 10:
                self.violations.append(s)

    def __enter__(self) -> InvariantMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def make_client(segment_url: str, **kwargs: Any) -> Client:
    """A real analytics-python client whose own ``/v1/batch`` goes to a loopback sink."""
    analytics_sprig.install()  # idempotent: a test elsewhere may have uninstalled it
    kwargs.setdefault("upload_interval", 0.05)
    kwargs.setdefault("max_retries", 3)
    return Client(WRITE_KEY, host=segment_url, **kwargs)


def stop_client(client: Client, timeout: float = 5.0) -> None:
    """Stop Segment's consumer threads and the plugins, each within ``timeout``."""
    for consumer in client.consumers or ():
        consumer.pause()
        if consumer.is_alive():
            consumer.join(timeout)
    analytics_sprig.pipeline_of(client).shutdown(timeout)


# -- fault scenarios -------------------------------------------------------------------


class Harness:
    """One fault scenario's world: the fake Sprig, the destination, hooks on requests."""

    def __init__(self, port: int) -> None:
        self.sprig = FakeSprig(api_key=API_KEY, port=port, on_request=self._on_request)
        self.url = f"http://127.0.0.1:{port}"
        self.destination: Optional[SprigDestination] = None
        self.timeout = FAST["timeout"]
        self._lock = threading.Lock()
        self._accepted = 0
        self._every: List[Tuple[int, Callable[[FakeSprig], None]]] = []
        #: Events in requests the server processed after the client had given up on them.
        self.late_events = 0
        self.statuses: Counter = Counter()

    def after_every(self, n: int, action: Callable[[FakeSprig], None]) -> None:
        """Run ``action(sprig)`` after every ``n``-th accepted ``/v2/users`` request."""
        self._every.append((n, action))

    def _on_request(self, record: RecordedRequest) -> None:
        if record.path != "/v2/users":
            return
        actions = []
        with self._lock:
            self.statuses[record.status] += 1
            if 200 <= record.status < 300:
                self._accepted += 1
                actions = [a for n, a in self._every if self._accepted % n == 0]
                # Processed later than the client waits: the client saw a read timeout.
                if time.monotonic() - record.time > self.timeout:
                    self.late_events += len(record.json.get("events", ()))
        for action in actions:
            action(self.sprig)

    def answered(self) -> int:
        """``/v2/users`` requests the server has finished with."""
        with self._lock:
            return sum(self.statuses.values())

    def stats(self) -> Dict[str, int]:
        assert self.destination is not None
        return self.destination.stats()


@dataclass(frozen=True)
class FaultScenario:
    """A fault class: how the server misbehaves and whether the outage fits the budget."""

    name: str
    fault: str
    fits_budget: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    start_up: bool = True  # False: the port is closed when sending starts
    prepare: Callable[[Harness], None] = lambda h: None  # before the first message
    during: Callable[[Harness], None] = lambda h: None  # after the last message is sent
    settle: Callable[[Harness], None] = lambda h: None  # after the drain, before counting


def _bursts(h: Harness) -> None:
    def burst(sprig: FakeSprig) -> None:
        for status in (500, 502, 503):
            sprig.inject(status=status, count=1)

    h.after_every(10, burst)


def _429_retry_after(h: Harness) -> None:
    h.after_every(10, lambda sprig: sprig.inject(status=429, count=2, retry_after=0.05))


def _429_bare(h: Harness) -> None:
    h.after_every(10, lambda sprig: sprig.inject(status=429, count=3))


def _resets(h: Harness) -> None:
    h.after_every(10, lambda sprig: sprig.inject(reset=True, count=2))


def _drops(h: Harness) -> None:
    h.after_every(10, lambda sprig: sprig.inject(drop=True, count=2))


def _late_answers(h: Harness) -> None:
    h.timeout = 0.4
    # Answered (and processed) after 1 s, while the client gives up after 0.4 s (not less:
    # with several requests in flight on a loaded 2-core machine, an ordinary answer can
    # take over 0.15 s, and each such timeout is one more duplicate).
    h.after_every(15, lambda sprig: sprig.inject(status=None, delay=1.0, count=1))


def _all_attempts_recorded(h: Harness) -> None:
    # The server still holds requests it processes late; count only once they are done.
    wait_until(lambda: h.answered() >= h.stats()["requests"], 10,
               "the server to finish the requests it answers late")


def _slow(h: Harness) -> None:
    h.sprig.set_delay(0.02)


def _start_after_retries(retries: int) -> Callable[[Harness], None]:
    def during(h: Harness) -> None:
        wait_until(lambda: h.stats()["retries"] >= retries, 10, f"{retries} retries")
        h.sprig.start()  # the same port: the server "comes back"

    return during


def _start_after_first_failure(h: Harness) -> None:
    wait_until(lambda: h.stats()["failed"] > 0, 10, "a request to exhaust its budget")
    h.sprig.start()


def _blackhole(h: Harness) -> None:
    h.sprig.blackhole(True)


def _unblackhole_after_retries(h: Harness) -> None:
    wait_until(lambda: h.stats()["retries"] >= 2, 10, "2 retries")
    h.sprig.blackhole(False)


def _unblackhole_after_drops(h: Harness) -> None:
    # Both: the worker is stuck on a request the server holds, and the queue overflowed.
    wait_until(lambda: h.sprig.requests and h.stats()["dropped"] > 0, 10,
               "a held request and a queue-full drop")
    h.sprig.blackhole(False)


FAULT_SCENARIOS: Dict[str, FaultScenario] = {
    s.name: s
    for s in (
        FaultScenario("healthy", "none (reference run)", True),
        FaultScenario("5xx-bursts", "after every 10th accepted request: 500, 502, 503",
                      True, prepare=_bursts),
        FaultScenario("429-retry-after", "after every 10th accepted request: 2 x 429 "
                      "with Retry-After: 0.05", True, prepare=_429_retry_after),
        FaultScenario("429-no-retry-after", "after every 10th accepted request: 3 x 429 "
                      "without Retry-After", True, prepare=_429_bare),
        FaultScenario("connection-reset", "after every 10th accepted request: 2 x TCP RST "
                      "instead of an answer", True, prepare=_resets),
        FaultScenario("connection-dropped", "after every 10th accepted request: 2 x "
                      "connection closed without an answer", True, prepare=_drops),
        FaultScenario("read-timeout", "after every 15th accepted request: one answer "
                      "1 s late (processed), client timeout 0.4 s", True,
                      options={"timeout": 0.4}, prepare=_late_answers,
                      settle=_all_attempts_recorded),
        FaultScenario("slow-server", "every answer 20 ms late (within the 2 s timeout)",
                      True, prepare=_slow),
        FaultScenario("down-then-up", "port closed at start; a server starts on it after "
                      "6 retries", True, start_up=False, during=_start_after_retries(6)),
        FaultScenario("hung-then-recovers", "server reads requests, never answers; "
                      "recovers after 2 retries (client timeout 0.5 s)", True,
                      # Not shorter: on a loaded 2-core machine an answer can take longer,
                      # and a timed-out request that was processed is a duplicate.
                      options={"timeout": 0.5}, prepare=_blackhole,
                      during=_unblackhole_after_retries),
        FaultScenario("down-beyond-budget", "port closed until the first request exhausts "
                      "its 10 retries, then up", False, start_up=False,
                      during=_start_after_first_failure),
        FaultScenario("down-throughout", "port closed for the whole run (budget: 2 "
                      "retries, backoff 0.01 s)", False, start_up=False,
                      options={"max_retries": 2, "initial_backoff": 0.01}),
        FaultScenario("queue-full", "server hung while 200 messages arrive, "
                      "max_queue_size=50; then recovers", False,
                      options={"max_queue_size": 50, "timeout": 0.5}, prepare=_blackhole,
                      during=_unblackhole_after_drops),
    )
}


def send_messages(client: Client, count: int = N_MESSAGES, users: int = N_USERS,
                  prefix: str = "user", offset: int = 0) -> Set[Key]:
    """``count`` tracks round-robin over ``users`` users; returns their keys."""
    keys: Set[Key] = set()
    for i in range(offset, offset + count):
        user_id = f"{prefix}-{i % users}"
        ok, _ = client.track(user_id, EVENT, {"step": i}, timestamp=stamp(i),
                             message_id=message_id(i))
        assert ok
        keys.add(key_of(user_id, i))
    return keys


def run_fault(name: str) -> Outcome:
    """Run one fault scenario: 200 tracks over 50 users through a real Client."""
    spec = FAULT_SCENARIOS[name]
    errors = ErrorLog()
    with FakeSprig() as segment_sink:  # Segment's own endpoint, always healthy
        h = Harness(free_port() if not spec.start_up else 0)
        if spec.start_up:
            h.sprig.start()
            h.url = h.sprig.url
        options = {**FAST, **spec.options}
        h.timeout = options["timeout"]
        spec.prepare(h)
        destination = SprigDestination(API_KEY, endpoint=h.url, on_error=errors, **options)
        h.destination = destination
        client = make_client(segment_sink.url)
        client.add_plugin(destination)
        try:
            with InvariantMonitor(destination) as monitor:
                started = time.perf_counter()
                expected = send_messages(client)
                spec.during(h)
                drained = destination.flush(timeout=DRAIN_TIMEOUT)
                seconds = time.perf_counter() - started
            spec.settle(h)
            client.flush(timeout=DRAIN_TIMEOUT)  # Segment's queue too: it must be unaffected
            stats = destination.stats()
            stored = stored_events(h.sprig)
            segment_received = len(segment_sink.segment_messages)
        finally:
            stop_client(client)
            h.sprig.stop()
    return Outcome(
        name=name, fault=spec.fault, sent=N_MESSAGES, stats=stats, stored=stored,
        expected=expected, reported=errors.by_kind(), seconds=seconds, drained=drained,
        invariant_checks=monitor.checks, invariant_violations=monitor.violations,
        segment_received=segment_received, statuses=Counter(h.statuses),
        extra={"late_events": h.late_events, "on_error_messages": errors.count(),
               "error_kinds": errors.kinds(), "fits_budget": spec.fits_budget},
    )


# -- process scenarios -----------------------------------------------------------------


@contextlib.contextmanager
def _world(**options: Any) -> Iterator[Tuple[FakeSprig, FakeSprig, Client, SprigDestination,
                                              ErrorLog]]:
    errors = ErrorLog()
    with FakeSprig() as segment_sink, FakeSprig(api_key=API_KEY) as sprig:
        destination = SprigDestination(API_KEY, endpoint=sprig.url, on_error=errors,
                                       **{**FAST, **options})
        client = make_client(segment_sink.url)
        client.add_plugin(destination)
        try:
            yield segment_sink, sprig, client, destination, errors
        finally:
            stop_client(client)


def run_threads(threads: int = 16, calls: int = 200) -> Outcome:
    """``threads`` app threads calling ``track`` ``calls`` times each, concurrently."""
    with _world() as (segment_sink, sprig, client, destination, errors):
        expected: Set[Key] = set()
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def app_thread(t: int) -> None:
            barrier.wait()
            keys = send_messages(client, calls, users=10, prefix=f"t{t}", offset=t * calls)
            with lock:
                expected.update(keys)

        workers = [threading.Thread(target=app_thread, args=(t,)) for t in range(threads)]
        with InvariantMonitor(destination) as monitor:
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            drained = destination.flush(timeout=DRAIN_TIMEOUT)
            seconds = time.perf_counter() - started
        client.flush(timeout=DRAIN_TIMEOUT)
        outcome = Outcome(
            name="threads", fault=f"{threads} threads x {calls} track() calls",
            sent=threads * calls, stats=destination.stats(), stored=stored_events(sprig),
            expected=expected, reported=errors.by_kind(), seconds=seconds, drained=drained,
            invariant_checks=monitor.checks, invariant_violations=monitor.violations,
            segment_received=len(segment_sink.segment_messages),
        )
    return outcome


_FORK_CHILD_CALLS = 100


def run_fork(children: int = 3, parent_calls: int = 300) -> Outcome:
    """``fork()`` while messages are pending; children and the parent send their own.

    The parent queues messages (the worker thread is running, a batch window is open) and
    forks. Each child uses the destination it inherited (as a pre-fork server's worker
    would), through a fresh Segment ``Client`` (analytics-python's own consumer thread does
    not survive ``fork()``), sends its own events, flushes and reports its ``stats()`` on a
    pipe. The parent keeps sending meanwhile. Every event must be stored exactly once.
    """
    if not hasattr(os, "fork"):
        raise RuntimeError("os.fork() is not available on this platform")
    with _world(flush_interval=0.5) as (segment_sink, sprig, client, destination, errors):
        started = time.perf_counter()
        expected = send_messages(client, 100, users=10, prefix="parent")
        pending_at_fork = destination.stats()["pending"]  # the window is still open
        pids: List[Tuple[int, int]] = []
        for c in range(children):
            read_end, write_end = os.pipe()
            with warnings.catch_warnings():
                # 3.12+ warns that forking a multi-threaded process may deadlock; this
                # test is about exactly that situation.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: never return into the caller (pytest)
                code = 1
                try:
                    # A child stuck on a lock copied mid-use (the hazard of forking a
                    # threaded process) dies instead of hanging the run.
                    signal.alarm(int(DRAIN_TIMEOUT) + 30)
                    os.close(read_end)
                    report = _fork_child(destination, c)
                    os.write(write_end, json.dumps(report).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            pids.append((pid, read_end))
            expected |= {key_of(f"child{c}-{i % 10}", 10_000 * (c + 1) + i)
                         for i in range(_FORK_CHILD_CALLS)}
        expected |= send_messages(client, parent_calls - 100, users=10, prefix="parent",
                                  offset=100)
        deadline = time.monotonic() + DRAIN_TIMEOUT + 30
        child_reports = [_collect_child(pid, read_end, deadline) for pid, read_end in pids]
        drained = destination.flush(timeout=DRAIN_TIMEOUT)
        seconds = time.perf_counter() - started
        client.flush(timeout=DRAIN_TIMEOUT)
        parent_stats = destination.stats()
        # The figures of the whole family: the parent's counters plus each child's.
        total = dict(parent_stats)
        for report in child_reports:
            for name, value in report.get("stats", {}).items():
                total[name] += value
        return Outcome(
            name="fork", fault=f"fork() x {children} with messages pending; children "
            f"{_FORK_CHILD_CALLS} calls each, parent {parent_calls}",
            sent=parent_calls + children * _FORK_CHILD_CALLS, stats=total,
            stored=stored_events(sprig), expected=expected, reported=errors.by_kind(),
            seconds=seconds, drained=drained,
            segment_received=len(segment_sink.segment_messages),
            extra={"children": child_reports, "parent_sent": parent_calls,
                   "parent_stats": parent_stats,
                   "pending_at_fork": pending_at_fork},
        )


def _collect_child(pid: int, read_end: int, deadline: float) -> Dict[str, Any]:
    """Read a child's report and reap it; kill it if it has not finished by ``deadline``."""
    chunks: List[bytes] = []
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    return {"exit": status, **(json.loads(data) if data else {})}


def _fork_child(destination: SprigDestination, c: int) -> Dict[str, Any]:
    """In a forked child: send this child's events through the inherited destination."""
    # analytics-python's HTTP session is module-global and not fork-aware: a child posting
    # to the parent's Segment host would share the parent's pooled socket. Its own sink
    # (another host:port) keeps Segment's traffic apart; Sprig's needs no such care.
    with FakeSprig() as segment_sink:
        client = make_client(segment_sink.url)
        client.add_plugin(destination)
        for i in range(_FORK_CHILD_CALLS):
            n = 10_000 * (c + 1) + i
            client.track(f"child{c}-{i % 10}", EVENT, timestamp=stamp(n), message_id=message_id(n))
        drained = destination.flush(timeout=DRAIN_TIMEOUT)
        stats = destination.stats()
        destination.shutdown(timeout=2)
        client.flush(timeout=5)
        stop_client(client)
        segment_received = len(segment_sink.segment_messages)
    return {"drained": drained, "stats": stats, "segment_received": segment_received}


def run_shutdown_under_load(timeout: float = 1.0) -> Outcome:
    """A producer thread calls ``track`` non-stop while ``shutdown(timeout)`` is called.

    The server answers each request 20 ms late, so work is pending at the deadline.
    """
    with _world() as (_segment_sink, sprig, client, destination, errors):
        sprig.set_delay(0.02)
        stop = threading.Event()
        sent: List[Key] = []

        def producer() -> None:
            i = 0
            while not stop.is_set() and i < 100_000:
                user_id = f"load-{i % 20}"
                client.track(user_id, EVENT, timestamp=stamp(i), message_id=message_id(i))
                sent.append(key_of(user_id, i))
                i += 1
                if i % 10 == 0:
                    time.sleep(0.001)  # ~10k calls/s at most: a busy app, not a fork bomb

        thread = threading.Thread(target=producer, name="producer")
        with InvariantMonitor(destination) as monitor:
            thread.start()
            wait_until(lambda: destination.stats()["delivered"] > 0, 10, "a delivery")
            began = time.perf_counter()
            destination.shutdown(timeout=timeout)
            shutdown_seconds = time.perf_counter() - began
            # The app keeps calling after shutdown: those calls are dropped, not queued.
            after = destination.stats()["received"]
            wait_until(lambda: destination.stats()["received"] >= after + 100, 10,
                       "calls after shutdown")
            stop.set()
            thread.join(10)
        # Stopping cuts short what the server still holds, so what it stored is final.
        sprig.stop()
        return Outcome(
            name="shutdown-under-load",
            fault=f"producer calling track() non-stop, server 20 ms per answer, "
            f"shutdown(timeout={timeout})",
            sent=len(sent), stats=destination.stats(), stored=stored_events(sprig),
            expected=set(sent), reported=errors.by_kind(), seconds=shutdown_seconds,
            invariant_checks=monitor.checks, invariant_violations=monitor.violations,
            extra={"shutdown_seconds": shutdown_seconds, "timeout": timeout,
                   "on_error_messages": errors.count(), "error_kinds": errors.kinds()},
        )


_EXIT_SCRIPT = r"""
import atexit, json, logging, sys, time
from datetime import datetime, timedelta, timezone

out_path, sprig_url, segment_url, count, key = sys.argv[1:6]
state = {}

reported = []

def on_error(error, messages):
    reported.extend([m["userId"], m["messageId"], type(error).__name__] for m in messages)

def report():
    # Registered first, so it runs last: after every final flush.
    with open(out_path, "w") as out:
        json.dump({"stats": state["destination"].stats(), "reported": reported,
                   "exit_seconds": time.monotonic() - state["script_end"]}, out)

atexit.register(report)
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(name)s: %(message)s")

from segment.analytics import Client
from analytics_sprig import SprigDestination

client = Client("segment-write-key", host=segment_url, upload_interval=0.05, max_retries=1)
destination = SprigDestination(key, endpoint=sprig_url, shutdown_timeout=1.0, on_error=on_error,
                               flush_interval=0.02, initial_backoff=0.02, max_backoff=0.2,
                               timeout=30.0)
state["destination"] = destination
client.add_plugin(destination)
base = datetime(2024, 1, 1, tzinfo=timezone.utc)
for i in range(int(count)):
    client.track("exit-%d" % (i % 10), "Checkout Step", timestamp=base + timedelta(milliseconds=i),
                 message_id="msg-%d" % i)
# No flush, no shutdown: the interpreter exits with the messages pending.
state["script_end"] = time.monotonic()
"""


def run_exit(blackholed: bool, count: int = N_MESSAGES) -> Outcome:
    """A subprocess queues ``count`` messages and exits without flushing."""
    with FakeSprig() as segment_sink, FakeSprig(api_key=API_KEY) as sprig, \
            tempfile.TemporaryDirectory() as tmp:
        sprig.blackhole(blackholed)
        out_path = os.path.join(tmp, "stats.json")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        began = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_SCRIPT, out_path, sprig.url, segment_sink.url,
             str(count), API_KEY],
            capture_output=True, text=True, timeout=60, env=env,
        )
        seconds = time.perf_counter() - began
        with open(out_path) as f:
            result = json.load(f)
        stored = stored_events(sprig)
        sprig.blackhole(False)
    expected = {key_of(f"exit-{i % 10}", i) for i in range(count)}
    return Outcome(
        name="exit-server-hung" if blackholed else "exit-server-up",
        fault=("interpreter exits with messages pending, server hung, shutdown_timeout=1"
               if blackholed else "interpreter exits with messages pending, server up"),
        sent=count, stored=stored, expected=expected,
        stats=result["stats"], reported=_exit_reported(result["reported"]), seconds=seconds,
        extra={"returncode": proc.returncode, "stderr": proc.stderr,
               "exit_seconds": result["exit_seconds"]},
    )


def _exit_reported(rows: List[List[str]]) -> Dict[str, Set[Key]]:
    kinds: Dict[str, Set[Key]] = {"failed": set(), "dropped": set()}
    for user_id, message, error in rows:
        kind = "dropped" if error == "MessageDropped" else "failed"
        kinds[kind].add(message_key({"userId": user_id, "messageId": message}))
    return kinds


PROCESS_SCENARIOS: Dict[str, Callable[[], Outcome]] = {
    "threads": run_threads,
    "fork": run_fork,
    "shutdown-under-load": run_shutdown_under_load,
    "exit-server-hung": lambda: run_exit(True),
    "exit-server-up": lambda: run_exit(False),
}
