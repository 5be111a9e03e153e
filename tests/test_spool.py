"""The durable spool end to end: ``SprigDestination(spool=PATH)`` across outages, restarts,
processes, SIGKILL and fork(), and the ``analytics-sprig spool status|drain`` commands.

Everything runs against a FakeSprig on 127.0.0.1 with real SQLite files in tmp_path; the
process tests run real interpreters (``python -c``) that share one spool path. Messages are
identified by a unique event name each, and the fake's stored requests are counted per
event: a message missing there was lost, one seen twice was duplicated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from cli_support import assert_clean, run_cli
from segment.analytics import Client

from analytics_sprig import MessageDropped, SprigDestination
from analytics_sprig.batching import _spool, _spooling
from analytics_sprig.batching._spool import Spool, SpoolRow
from analytics_sprig.cli import _spool as spool_cli
from analytics_sprig.testing import FakeSprig

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "cli.md"
KEY = "test-key"  # conftest's fake_sprig expects it
USERS = "/v2/users"


# -- helpers --------------------------------------------------------------------------------


def stored_events(sprig: FakeSprig) -> Counter[str]:
    """Event name -> how many times Sprig accepted (stored) it."""
    counts: Counter[str] = Counter()
    for request in sprig.requests:
        if request.path == USERS and request.status == 202 and isinstance(request.json, dict):
            for event in request.json.get("events", []):
                counts[event["event"]] += 1
    return counts


def names(count: int, prefix: str = "E") -> List[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def track(i: int, users: int, prefix: str = "E") -> Dict[str, Any]:
    return {"type": "track", "userId": f"user-{i % users}", "event": f"{prefix}{i:05d}",
            "messageId": f"{prefix}-m-{i}", "timestamp": "2024-05-01T12:00:00Z"}


def accounted(stats: Dict[str, int]) -> bool:
    """The ledger's invariant with a spool."""
    return (stats["received"] + stats["unspooled"]
            == stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
            + stats["spooled"] + stats["pending"])


def spool_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        return int(conn.execute("SELECT count(*) FROM spool_rows").fetchone()[0])


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def down_sprig() -> Iterator[FakeSprig]:
    """A FakeSprig whose port is known but which is not serving (start() brings it up)."""
    server = FakeSprig(api_key=KEY)
    server.start()
    server.stop()
    yield server
    server.stop()


# -- scripts run as separate processes ------------------------------------------------------

#: Queues COUNT calls into a destination with a spool while Sprig is down, then exits
#: without calling shutdown: the engine's exit flush writes what is pending to the spool.
FILL = r'''
import atexit, json, logging, sys
holder = {}
def report():
    if "d" in holder:
        print("STATS " + json.dumps(holder["d"].stats()), flush=True)
# Registered before analytics_sprig is imported, so it runs after the engine's exit flush.
atexit.register(report)
logging.getLogger("segment").setLevel(logging.CRITICAL)
from analytics_sprig import SprigDestination
url, path, count, users, how, options = sys.argv[1:7]
count, users = int(count), int(users)
d = SprigDestination("test-key", endpoint=url, spool=path, **json.loads(options))
holder["d"] = d
if how == "client":
    from segment.analytics import Client
    client = Client("write-key", host=url, max_retries=0, timeout=1, upload_interval=0.1)
    client.add_plugin(d)
    for i in range(count):
        client.track(f"user-{i % users}", f"E{i:05d}", message_id=f"E-m-{i}")
else:
    for i in range(count):
        d.send({"type": "track", "userId": f"user-{i % users}", "event": f"E{i:05d}",
                "messageId": f"E-m-{i}", "timestamp": "2024-05-01T12:00:00Z"})
print("QUEUED", flush=True)
'''

#: Opens a destination on the spool (after GO exists, if given) and flushes until nothing
#: is left that it would send; prints its stats.
DRAIN = r'''
import json, os, sys, time
from analytics_sprig import SprigDestination
url, path, go, options = sys.argv[1:5]
print("READY", flush=True)
while go != "-" and not os.path.exists(go):
    time.sleep(0.005)
started = time.monotonic()
d = SprigDestination("test-key", endpoint=url, spool=path, **json.loads(options))
while not d.flush(timeout=1.0) and time.monotonic() < started + 60:
    pass
stats = d.stats()
stats["seconds"] = time.monotonic() - started
print("STATS " + json.dumps(stats), flush=True)
d.shutdown(timeout=5)
'''

FAST = {"flush_interval": 0.02, "timeout": 2.0, "connect_timeout": 0.5}


def python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def popen(script: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def stats_of(output: str) -> Dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("STATS ")]
    assert len(lines) == 1, output[-3000:]
    stats: Dict[str, Any] = json.loads(lines[0][6:])
    return stats


def fill(sprig: FakeSprig, path: Path, count: int, users: int, *, how: str = "send",
         **options: Any) -> Dict[str, Any]:
    """Queue ``count`` calls in a process while ``sprig`` is down; its stats at exit."""
    done = python(FILL, sprig.url, str(path), str(count), str(users), how,
                  json.dumps({**FAST, **options}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    stats = stats_of(done.stdout)
    assert stats["received"] == stats["spooled"] == count, stats
    assert stats["delivered"] == stats["failed"] == stats["dropped"] == stats["pending"] == 0
    assert accounted(stats)
    return stats


# -- 1. restart during an outage ------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.timeout(120)
def test_5000_calls_queued_during_an_outage_are_delivered_by_the_next_process(
    down_sprig: FakeSprig, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    # The first process exits through atexit with Sprig down; its retry budget is larger
    # than the exit flush, so what is pending at the deadline goes to the spool.
    started = time.monotonic()
    first = fill(down_sprig, path, 5000, 50, how="client", shutdown_timeout=2.0,
                 initial_backoff=0.5, max_backoff=5.0)
    filled = time.monotonic() - started
    assert first["dropped_shutdown"] == 0 and first["requests"] > 0
    assert spool_rows(path) > 0
    down_sprig.start()
    done = python(DRAIN, down_sprig.url, str(path), "-", json.dumps(FAST))
    assert done.returncode == 0, done.stderr[-3000:]
    second = stats_of(done.stdout)
    events = stored_events(down_sprig)
    assert set(events) == set(names(5000))  # 0 lost
    assert max(events.values()) == 1  # 0 duplicated
    assert second["unspooled"] == second["delivered"] == 5000, second
    assert second["received"] == second["failed"] == second["dropped"] == 0
    assert second["pending"] == second["spooled"] == 0 and second["spool_reclaimed"] == 0
    assert accounted(second)
    assert spool_rows(path) == 0
    print(f"\n5,000 calls: filled (process with Sprig down, exit flush) in {filled:.2f} s; "
          f"drained by the next process in {second['seconds']:.2f} s "
          f"({second['requests']} requests)")


# -- 2. an outage longer than the retry budget ----------------------------------------------


def test_an_outage_longer_than_the_retry_budget_ends_with_everything_delivered(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path
) -> None:
    fake_sprig.stop()
    errors: List[Any] = []
    destination = make_destination(spool=str(tmp_path / "spool.db"), max_retries=2,
                                   on_error=lambda exc, messages: errors.append(exc))
    for i in range(300):
        destination.send(track(i, 30))
    # Each body spends its retry budget (3 attempts) and goes to disk instead of failing.
    assert wait_until(lambda: destination.stats()["pending"] == 0, 5), destination.stats()
    stats = destination.stats()
    assert stats["spooled"] >= 300 and stats["failed"] == stats["dropped"] == 0, stats
    # Calls made while those users have rows in the spool go there too, behind them.
    for i in range(300, 400):
        destination.send(track(i, 30))
    assert wait_until(lambda: destination.stats()["pending"] == 0, 5), destination.stats()
    fake_sprig.start()
    # A probe row finds Sprig back (within PROBE_INTERVAL); the rest follows at once.
    assert fake_sprig.wait_for(lambda s: len(stored_events(s)) > 0, 8), destination.stats()
    assert destination.flush(5)
    events = stored_events(fake_sprig)
    assert set(events) == set(names(400)) and max(events.values()) == 1
    stats = destination.stats()
    assert stats["delivered"] == 400 and stats["failed"] == stats["dropped"] == 0, stats
    assert stats["spooled"] == stats["unspooled"] >= 400  # probes go out and back in
    assert stats["pending"] == 0 and accounted(stats)
    assert errors == []  # nothing was lost, so nothing was reported
    # Each user's calls reached Sprig in the order they were made.
    for user, visitor in fake_sprig.users.items():
        logged = [entry["event"] for entry in visitor["eventLog"]]
        assert logged == sorted(logged), user
    # Delivered rows have left the file when flush() returns.
    assert spool_rows(tmp_path / "spool.db") == 0


# -- engine behaviour found by these tests (kept as regression tests) -------------------------


def test_after_a_successful_probe_the_rest_is_claimed_within_a_poll_interval(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path
) -> None:
    fake_sprig.stop()
    destination = make_destination(spool=str(tmp_path / "spool.db"), max_retries=0)
    for i in range(40):
        destination.send(track(i, 20))
    assert wait_until(lambda: destination.stats()["pending"] == 0, 5)
    fake_sprig.start()
    assert fake_sprig.wait_for(lambda s: len(stored_events(s)) > 0, 8)
    probed = time.monotonic()
    assert fake_sprig.wait_for(lambda s: len(stored_events(s)) == 40, 4)
    assert time.monotonic() - probed < _spooling.POLL_INTERVAL + 1.0


def test_flush_returns_once_delivered_rows_are_gone_from_the_file(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    original = Spool.delete

    def slow_delete(self: Spool, ids: Any) -> None:
        time.sleep(0.3)  # a busy disk: the delete of delivered rows takes a while
        original(self, ids)

    monkeypatch.setattr(Spool, "delete", slow_delete)
    destination = make_destination(spool=str(path))
    assert destination.flush(5)
    assert destination.stats()["delivered"] == 8
    assert spool_rows(path) == 0


def test_spooled_rows_survive_a_process_whose_key_sprig_rejects(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    destination = make_destination(spool=str(path), api_key="revoked-key")
    destination.flush(3)
    destination.shutdown(2)
    assert destination.stats()["auth_errors"] > 0
    assert spool_rows(path) == 4  # put back, not deleted: the key was wrong, not the rows


def test_rows_spooled_by_another_process_are_sent_by_a_healthy_one(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_spooling, "RECHECK_INTERVAL", 1.0)  # 60 s in production
    path = tmp_path / "spool.db"
    destination = make_destination(spool=str(path))
    assert destination.flush(2)  # the start-up look: nothing there
    make_spool(path, SAMPLE_ROWS)  # e.g. a gunicorn worker that shut down during an outage
    assert fake_sprig.wait_for(lambda s: len(stored_events(s)) == 8, 4)


def test_flush_does_not_spin_on_rows_another_process_holds(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    other = Spool(str(path))
    assert [row.key for row in other.claim(1)] == ["u-1"]  # u-1's later row must wait
    claims = [0]
    original = Spool.claim

    def counted(self: Spool, limit: int) -> Any:
        claims[0] += 1
        return original(self, limit)

    monkeypatch.setattr(Spool, "claim", counted)
    try:
        destination = make_destination(spool=str(path))
        destination.flush(1.0)
    finally:
        other.close()
    assert claims[0] <= 10, f"{claims[0]} claims in one flush(1.0)"


# -- 3. two processes draining one spool ----------------------------------------------------


@pytest.mark.reliability
@pytest.mark.timeout(120)
def test_two_processes_draining_one_spool_deliver_each_row_once(
    down_sprig: FakeSprig, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    fill(down_sprig, path, 240, 120, max_retries=0)
    rows = spool_rows(path)
    assert rows >= 120
    down_sprig.start()
    down_sprig.set_latency(0.05)
    go = tmp_path / "go"
    # Small buffers: each claims a few rows at a time, so both take part.
    options = json.dumps({**FAST, "max_queue_size": 40})
    drainers = [popen(DRAIN, down_sprig.url, str(path), str(go), options) for _ in range(2)]
    for drainer in drainers:
        assert drainer.stdout is not None and drainer.stdout.readline() == "READY\n"
    go.touch()
    results = [drainer.communicate(timeout=60) for drainer in drainers]
    stats = []
    for drainer, (out, err) in zip(drainers, results):
        assert drainer.returncode == 0, err[-3000:]
        stats.append(stats_of(out))
    events = stored_events(down_sprig)
    assert set(events) == set(names(240)) and max(events.values()) == 1
    assert sum(s["delivered"] for s in stats) == 240
    assert sum(s["unspooled"] for s in stats) == 240
    assert all(s["delivered"] > 0 for s in stats), stats  # both drained part of it
    for s in stats:
        assert s["unspooled"] == s["delivered"] and s["spool_reclaimed"] == 0, s
        assert s["failed"] == s["dropped"] == s["pending"] == s["spooled"] == 0
        assert accounted(s)
    assert spool_rows(path) == 0


# -- 4. SIGKILL mid-drain -------------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.timeout(120)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_process_killed_mid_drain_loses_nothing_and_duplicates_only_bodies_in_flight(
    concurrency: int, down_sprig: FakeSprig, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    fill(down_sprig, path, 600, 60, max_retries=0)
    down_sprig.start()
    down_sprig.set_latency(0.3)  # each request takes a while: the kill finds some in flight
    options = {**FAST, "max_queue_size": 20, "max_concurrency": concurrency}
    victim = popen(DRAIN, down_sprig.url, str(path), "-", json.dumps(options))
    assert down_sprig.wait_for(lambda s: len(stored_events(s)) >= 30, 20)
    time.sleep(0.15)  # half a latency: requests are on the wire
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.communicate(timeout=10)  # reaped: its pid is gone
    assert victim.returncode == -signal.SIGKILL
    time.sleep(0.4)  # the requests it had in flight still land (the server got them)
    before = stored_events(down_sprig)
    down_sprig.set_latency(0.0)
    done = python(DRAIN, down_sprig.url, str(path), "-", json.dumps(FAST))
    assert done.returncode == 0, done.stderr[-3000:]
    after = stats_of(done.stdout)
    events = stored_events(down_sprig)
    assert set(events) == set(names(600))  # nothing that was in the spool is lost
    duplicated = {name for name, count in events.items() if count > 1}
    assert all(events[name] == 2 for name in duplicated)
    # Bodies (requests) of the killed process whose messages were sent again.
    victim_bodies = [
        {event["event"] for event in request.json.get("events", [])}
        for request in down_sprig.requests
        if request.path == USERS and request.status == 202 and request.time < killed_at
    ]
    twice = [body for body in victim_bodies if body & duplicated]
    assert all(body <= duplicated for body in twice)  # a body is re-sent whole
    assert sum(len(body) for body in twice) == len(duplicated)
    # The bound: at most one body per request the killed process could have in flight,
    # and never more than the rows the next process reclaimed from it.
    assert len(twice) <= concurrency, (len(twice), after)
    assert after["spool_reclaimed"] >= 1, after  # it had claimed rows when it died
    assert len(twice) <= after["spool_reclaimed"]
    assert after["delivered"] == after["unspooled"] == 600 - sum(before.values()) + len(
        duplicated), (after, len(duplicated))
    assert after["failed"] == after["dropped"] == after["pending"] == 0 and accounted(after)
    assert spool_rows(path) == 0
    print(f"\nSIGKILL mid-drain (max_concurrency={concurrency}): {len(twice)} request(s) "
          f"({len(duplicated)} messages) sent twice; the next process reclaimed "
          f"{after['spool_reclaimed']} rows")


# -- 5. bounded -----------------------------------------------------------------------------


def test_a_full_spool_drops_the_oldest_rows_counts_and_reports_them(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination], tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    fake_sprig.stop()
    dropped: List[Tuple[BaseException, List[Any]]] = []
    lock = threading.Lock()

    def on_error(exc: BaseException, messages: List[Any]) -> None:
        with lock:
            dropped.append((exc, messages))

    destination = make_destination(spool=str(path), spool_max_bytes=1500, max_retries=0,
                                   on_error=on_error)
    # One user each: one row each (~100 bytes). The first five fit...
    for i in range(5):
        destination.send(track(i, 1000))
    assert wait_until(lambda: destination.stats()["spooled"] >= 5
                      and destination.stats()["pending"] == 0, 5)
    assert destination.stats()["dropped"] == 0
    # ... twenty more do not: the oldest rows make room.
    for i in range(5, 25):
        destination.send(track(i, 1000))
    assert wait_until(lambda: destination.stats()["pending"] == 0
                      and destination.stats()["received"] == 25, 5)
    stats = destination.stats()
    assert stats["dropped_spool_full"] == stats["dropped"] > 0, stats
    assert stats["failed"] == 0 and accounted(stats)
    lost = [message["event"] for exc, messages in dropped for message in messages]
    assert all(isinstance(exc, MessageDropped) and exc.reason == "spool_full"
               for exc, _ in dropped)
    assert "spool_max_bytes=1500" in str(dropped[0][0])
    assert len(lost) == len(set(lost)) == stats["dropped_spool_full"]
    early = set(names(5))
    assert early <= set(lost), lost  # the oldest went first
    info = spool_cli.read_spool(str(path))
    assert info is not None and 0 < info.bytes <= 1500
    destination.shutdown(timeout=2)
    # The next process delivers what was kept: together with what was reported, all of it.
    fake_sprig.start()
    again = make_destination(spool=str(path))
    assert again.flush(5)
    events = stored_events(fake_sprig)
    assert max(events.values()) == 1
    assert set(events) | set(lost) == set(names(25)) and not set(events) & set(lost)
    assert again.stats()["delivered"] == 25 - len(lost)


# -- 6. a corrupt spool file ----------------------------------------------------------------


def test_a_corrupt_spool_file_is_moved_aside_and_the_app_never_sees_an_exception(
    fake_sprig: FakeSprig, make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "spool.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    caplog.set_level(logging.WARNING, logger="analytics_sprig")
    client = make_client()
    destination = make_destination(spool=str(path), max_retries=0)
    client.add_plugin(destination)
    for i in range(20):
        client.track(f"user-{i % 4}", f"E{i:05d}")
    assert client.flush(timeout=5) is True
    assert set(stored_events(fake_sprig)) == set(names(20))
    loud = [r for r in caplog.records if r.name == "analytics_sprig"
            and r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    line = loud[0].getMessage()
    assert "unreadable" in line and "moved it aside to" in line and "fresh spool" in line
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("spool.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    # The fresh spool works: during an outage calls go to it.
    fake_sprig.stop()
    for i in range(20, 25):
        client.track("user-9", f"E{i:05d}")
    assert wait_until(lambda: destination.stats()["spooled"] >= 5
                      and destination.stats()["pending"] == 0, 5), destination.stats()
    info = spool_cli.read_spool(str(path))
    assert info is not None and info.messages == 5


# -- 7. the hot path never touches the disk -------------------------------------------------


def test_a_healthy_destination_with_a_spool_never_touches_the_file(
    fake_sprig: FakeSprig, make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "spool.db"
    calls: List[Tuple[str, str]] = []
    for method in ("put", "claim", "keys_waiting", "delete", "release", "status"):
        original = getattr(Spool, method)

        def recorded(self: Spool, *args: Any, _name: str = method, _original: Any = original,
                     **kwargs: Any) -> Any:
            calls.append((_name, threading.current_thread().name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Spool, method, recorded)
    client = make_client()
    destination = make_destination(spool=str(path))
    client.add_plugin(destination)
    # At construction the planner looks once for rows an earlier process left.
    assert wait_until(lambda: len(calls) >= 2, 5)
    assert destination.flush(2)
    assert [name for name, _ in calls] == ["claim", "keys_waiting"]
    assert all(thread == "analytics-sprig-planner" for _, thread in calls)
    files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    for i in range(500):
        client.track(f"user-{i % 25}", f"E{i:05d}")
    assert client.flush(timeout=5) is True
    time.sleep(1.2)  # a poll interval: a healthy engine with an empty spool does not poll
    assert set(stored_events(fake_sprig)) == set(names(500))
    assert destination.stats()["delivered"] == 500
    assert [name for name, _ in calls] == ["claim", "keys_waiting"]
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
            for p in tmp_path.iterdir()} == files


# -- 8. fork() ------------------------------------------------------------------------------

FORK = r'''
import json, os, sys, time
from analytics_sprig.batching import _spool, _spooling, _worker
_worker.PROBE_INTERVAL = 0.3  # Sprig comes back quickly in this test
from analytics_sprig import SprigDestination
url, path, marks = sys.argv[1:4]
d = SprigDestination("test-key", endpoint=url, spool=path, max_retries=0, flush_interval=0.02,
                     connect_timeout=0.5)
assert d.flush(5)  # the start-up claim: this process's connection is open
spool = d._worker._gate.spool
parent_conn = spool._conn
assert parent_conn is not None

def publish(name, facts):
    # Written whole, then renamed: the test polls for the name and must never read half.
    tmp = os.path.join(marks, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(facts))
    os.replace(tmp, os.path.join(marks, name))

def run(role):
    for i in range(30):
        d.send({"type": "track", "userId": f"{role}-{i % 3}", "event": f"{role}{i:05d}",
                "messageId": f"{role}-{i}"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = d.stats()
        if s["received"] == 30 and s["pending"] == 0 and s["spooled"] - s["unspooled"] == 30:
            break
        time.sleep(0.02)
    facts = {"spooled": d.stats()["spooled"], "own": spool._conn is not None
             and spool._conn is not parent_conn,
             "abandoned": any(c is parent_conn for c in _spool._ABANDONED),
             "stats_then": d.stats()}  # for the test's failure message
    publish(role + ".spooled", facts)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(marks, "up")) and time.monotonic() < deadline:
        time.sleep(0.01)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if d.flush(0.5) and _spool.Spool(path).status().rows == 0:
            break
    d.shutdown(5)
    publish(role + ".json", {**facts, **d.stats()})

pid = os.fork()
if pid == 0:
    try:
        run("child")
    finally:
        os._exit(0)
run("parent")
os.waitpid(pid, 0)
'''


@pytest.mark.reliability
@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_after_fork_the_child_uses_the_spool_on_its_own_connection(
    down_sprig: FakeSprig, tmp_path: Path
) -> None:
    path, marks = tmp_path / "spool.db", tmp_path / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    # A session of its own: the forked child is killed with it if the test fails.
    process = subprocess.Popen([sys.executable, "-c", FORK, down_sprig.url, str(path),
                                str(marks)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        assert wait_until(lambda: all((marks / f"{role}.spooled").exists()
                                      for role in ("parent", "child")), 20), (
            process.poll(), process.stderr.read() if process.poll() is not None
            and process.stderr else "")
        spooled = {role: json.loads((marks / f"{role}.spooled").read_text())
                   for role in ("parent", "child")}
        assert spooled["child"]["own"] is True and spooled["child"]["abandoned"] is True

        def messages() -> int:
            info = spool_cli.read_spool(str(path))
            return 0 if info is None else info.messages

        # Both wrote to the same file. On failure the message shows what each process saw.
        assert wait_until(lambda: messages() == 60, 10), (messages(), spooled)
        down_sprig.start()
        (marks / "up").touch()
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    results = [json.loads((marks / f"{role}.json").read_text()) for role in ("parent", "child")]
    events = stored_events(down_sprig)
    assert set(events) == set(names(30, "parent")) | set(names(30, "child"))
    assert max(events.values()) == 1
    assert sum(r["delivered"] for r in results) == 60
    for r in results:
        assert r["received"] == 30 and r["failed"] == r["dropped"] == r["pending"] == 0, r
        assert r["spool_reclaimed"] == 0 and accounted(r)
    assert sum(r["spooled"] for r in results) == sum(r["unspooled"] for r in results)
    assert spool_rows(path) == 0


# -- the CLI: spool status ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPRIG_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "100")





def body(user: str, *events: str) -> Dict[str, Any]:
    return {"userId": user,
            "events": [{"event": e, "timestamp": 1714564800000 + n} for n, e in enumerate(events)]}


def make_spool(path: Path, rows: List[Tuple[str, List[str]]], age: float = 0.0) -> None:
    """A spool as a destination leaves it: one row per (user, events), oldest first."""
    created = time.time() - age
    spool = Spool(str(path))
    stored = spool.put([
        SpoolRow(user, body(user, *events),
                 [[f"{e}-id", "track", user, e] for e in events], created + n)
        for n, (user, events) in enumerate(rows)
    ])
    assert stored == []
    spool.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SAMPLE_ROWS = [("u-1", ["Signed In", "Order Completed"]), ("u-2", ["Viewed Pricing Page"]),
               ("u-1", ["Signed Out"]), ("u-3", ["Signed Up", "Invited", "Upgraded", "Paid"])]


README = ROOT / "README.md"
DOC_KEY = "local-key"  # the key of the documents' serve-fake


def spool_examples(path: Path) -> List[List[str]]:
    """The code blocks of ``path`` that show ``spool`` commands on a spool with rows.

    tests/test_readme.py runs the samples that start with ``$ `` in one shell session, where
    no command can fill a spool; these start with a ``# `` line saying what the file holds
    instead, and are rendered here, each on a fresh copy of that file.
    """
    found: List[List[str]] = []
    block: List[str] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if inside and block and block[0].startswith("# ") and any(
                    text.startswith("$ analytics-sprig spool ") for text in block):
                found.append(block)
            block, inside = [], not inside
        elif inside:
            block.append(line)
    return found


@pytest.mark.parametrize("doc", [README, CLI_DOC], ids=lambda p: p.name)
def test_the_documented_spool_examples_match_real_output(
    doc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    examples = spool_examples(doc)
    assert len(examples) == 2, "a status and a drain of a spool with rows"
    monkeypatch.setenv("SPRIG_API_KEY", DOC_KEY)
    with FakeSprig(api_key=DOC_KEY) as sprig:
        for number, lines in enumerate(examples):
            directory = tmp_path / str(number)
            directory.mkdir()
            monkeypatch.chdir(directory)
            commands = [i for i, line in enumerate(lines) if line.startswith("$ ")]
            name = lines[commands[0]].split()[4]
            make_spool(directory / name, SAMPLE_ROWS, age=5 * 3600 + 60)
            for index, end in zip(commands, [*commands[1:], len(lines)]):
                argv = lines[index][2:].replace("127.0.0.1:8765", f"127.0.0.1:{sprig.port}")
                code, out, err = run_cli(capsys, *argv.split()[1:])
                assert code == 0, out + err
                assert (out + err).splitlines() == lines[index + 1:end], (
                    f"{doc.name}: {lines[index]}\n{out}{err}")


def test_status_reads_the_file_without_changing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_spool(tmp_path / "spool.db", SAMPLE_ROWS, age=5 * 3600 + 60)
    before = digest(tmp_path / "spool.db")
    code, out, err = run_cli(capsys, "spool", "status", "spool.db")
    assert_clean(code, out, err, 0)
    assert "oldest row  5 hours old" in out
    # Same bytes, and no WAL files left behind.
    assert digest(tmp_path / "spool.db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]


def test_status_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS, age=90)
    code, out, err = run_cli(capsys, "spool", "status", str(path), "--json")
    assert_clean(code, out, err, 0)
    document = json.loads(out)
    assert document["exists"] is True and document["rows"] == 4
    assert document["messages"] == 8 and document["claimed"] == 0
    assert document["bytes"] == Spool(str(path)).status().bytes
    assert 90 <= document["oldest_age_seconds"] < 120
    code, out, err = run_cli(capsys, "spool", "status", str(tmp_path / "none.db"), "--json")
    assert_clean(code, out, err, 0)
    assert json.loads(out) == {"path": str(tmp_path / "none.db"), "exists": False, "rows": 0,
                               "messages": 0, "bytes": 0, "claimed": 0,
                               "oldest_age_seconds": None}


def test_status_counts_rows_claimed_by_a_running_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    holder = Spool(str(path))
    assert len(holder.claim(2)) == 2
    try:
        code, out, err = run_cli(capsys, "spool", "status", str(path))
    finally:
        holder.close()
    assert_clean(code, out, err, 0)
    assert re.search(r"^  claimed            2  \(taken by a process that is sending them",
                     out, re.MULTILINE), out
    assert "oldest row  under a minute old" in out


def test_status_of_a_missing_file_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "spool", "status", str(tmp_path / "spool.db"))
    assert_clean(code, out, err, 0)
    assert out == f"Spool status: {tmp_path / 'spool.db'}: no such file, nothing is waiting\n"
    assert list(tmp_path.iterdir()) == []


def test_status_of_an_empty_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS[:1])
    spool = Spool(str(path))
    spool.delete([row.id for row in spool.claim(10)])
    spool.close()
    code, out, err = run_cli(capsys, "spool", "status", str(path))
    assert_clean(code, out, err, 0)
    assert out == f"Spool status: {path}: empty, nothing is waiting\n"


def test_status_counts_a_tampered_row_without_its_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        conn.execute("UPDATE spool_rows SET refs = '{not json' WHERE id = "
                     "(SELECT min(id) FROM spool_rows)")
        conn.commit()
    count = spool_cli._count_messages

    class NoJson:
        """A connection to a SQLite built without JSON functions."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str) -> Any:
            if "json_" in sql:
                raise sqlite3.OperationalError("no such function: json_valid")
            return self.conn.execute(sql)

    for json_functions in (True, False):
        if not json_functions:  # then the references are counted in Python
            monkeypatch.setattr(spool_cli, "_count_messages", lambda conn: count(NoJson(conn)))
        code, out, err = run_cli(capsys, "spool", "status", str(path))
        assert_clean(code, out, err, 0)
        assert "  rows               4  (6 messages)" in out, out


@pytest.mark.parametrize("age, text", [(0, "under a minute"), (59.9, "under a minute"),
                                       (60, "1 minute"), (3599, "59 minutes"),
                                       (3600, "1 hour"), (47 * 3600, "47 hours"),
                                       (2 * 86400, "2 days"), (400 * 86400, "400 days")])
def test_ages_are_rounded_down_to_one_unit(age: float, text: str) -> None:
    assert spool_cli.age_text(age) == text


# -- the CLI: hostile spool files, for both commands ------------------------------------------


def _foreign_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('not a spool')")
        conn.commit()


def _damaged_spool(path: Path) -> None:
    make_spool(path, [(f"u-{i}", [f"E{i}"] * 20) for i in range(300)])
    data = bytearray(path.read_bytes())
    for offset in range(8192, len(data), 4096):  # scribble over every page after the first two
        data[offset + 100:offset + 400] = os.urandom(300)
    path.write_bytes(bytes(data))


def _newer_schema(path: Path) -> None:
    make_spool(path, SAMPLE_ROWS)
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        conn.execute(f"PRAGMA user_version={_spool.SCHEMA_VERSION + 1}")


def _fifo(path: Path) -> None:
    os.mkfifo(str(path))


def _loop(path: Path) -> None:
    os.symlink(str(path), str(path))


HOSTILE: Dict[str, Tuple[Callable[[Path], None], int, str]] = {
    "garbage bytes": (lambda p: p.write_bytes(os.urandom(10000)), 2, "is not a readable spool"),
    "a short text file": (lambda p: p.write_bytes(b"hello\n"), 2, "is not a readable spool"),
    "a SQLite header then junk": (lambda p: p.write_bytes(b"SQLite format 3\x00"
                                                          + os.urandom(5000)), 2, "spool"),
    "another program's database": (_foreign_database, 2, "is not an analytics-sprig spool"),
    "a damaged spool": (_damaged_spool, 2, "spool"),
    "a spool of a newer version": (_newer_schema, 2, "was written by a newer analytics-sprig"),
    "a directory": (lambda p: p.mkdir(), 2, "is a directory"),
    "a FIFO": (_fifo, 2, "is not a regular file"),
    "a symlink loop": (_loop, 2, "cannot read"),
    "an empty file": (lambda p: p.write_bytes(b""), 0, "empty, nothing"),
}


@pytest.mark.parametrize("command", ["status", "drain"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_spool_file_that_cannot_be_used_is_one_line_and_left_as_it_is(
    name: str, command: str, tmp_path: Path, fake_sprig: FakeSprig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if name == "a FIFO" and not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo")
    make, expected, text = HOSTILE[name]
    path = tmp_path / "spool.db"
    make(path)
    kept = sorted(p.name for p in tmp_path.iterdir())
    content = digest(path) if path.is_file() else None
    args = ["spool", command, str(path)]
    if command == "drain":
        args += ["--api-key", KEY, "--endpoint", fake_sprig.url]
    code, out, err = run_cli(capsys, *args)
    assert_clean(code, out, err, expected)
    assert text in (err if expected else out), out + err
    # Never moved aside, never rewritten, nothing sent.
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    if content is not None:
        assert digest(path) == content
    assert [r for r in fake_sprig.requests if r.path == USERS] == []


@pytest.mark.parametrize("path", ["nul\x00byte.db", "\udcff-surrogate.db", "dir/under/x.db",
                                  "spool.db/inside-a-file"])
@pytest.mark.parametrize("command", ["status", "drain"])
def test_odd_paths(path: str, command: str, tmp_path: Path, fake_sprig: FakeSprig,
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spool.db").write_bytes(b"")
    args = ["spool", command, path]
    if command == "drain":
        args += ["--api-key", KEY, "--endpoint", fake_sprig.url]
    code, out, err = run_cli(capsys, *args)
    # A missing file is fine (0); a NUL byte or a path through a file is not (2).
    expected = 2 if "\x00" in path or path.startswith("spool.db/") else 0
    assert_clean(code, out, err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]  # nothing created


@pytest.mark.parametrize(
    "args",
    [["spool"], ["spool", "bogus"], ["spool", "status"], ["spool", "status", "a", "b"],
     ["spool", "drain"], ["spool", "drain", "x.db", "--max-retries", "-1"],
     ["spool", "drain", "x.db", "--max-requests-per-second", "0"],
     ["spool", "drain", "x.db", "--endpoint", "ftp://example.com", "--api-key", "k"],
     ["spool", "drain", "x.db", "--endpoint", "http://example.com", "--api-key", "k"],
     ["spool", "drain", "x.db"]],
)
def test_bad_spool_command_lines_exit_2_with_one_line(
    args: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert_clean(code, out, err, 2)
    assert list(tmp_path.iterdir()) == []


# -- the CLI: spool drain -------------------------------------------------------------------


def test_drain_sends_everything_and_prints_the_summary(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS, age=600)
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", fake_sprig.url)
    assert_clean(code, out, err, 0)
    assert err == ""
    assert out.splitlines() == [
        f"Spool drain summary: {path}",
        "  rows before        4  (8 messages)",
        "  delivered          8  in 3 requests",  # u-1's two rows went out as one
        "  failed             0",
        "  dropped            0",
        "  rows left          0",
    ]
    # One GET checked the key before anything was taken; then each row once, in order.
    assert fake_sprig.requests[0].method == "GET"
    for user, visitor in fake_sprig.users.items():  # users in any order, each one's in order
        assert [e["event"] for e in visitor["eventLog"]] == [
            e for u, events in SAMPLE_ROWS if u == user for e in events]
    assert sorted(fake_sprig.users) == ["u-1", "u-2", "u-3"]
    assert spool_rows(path) == 0


def test_drain_of_a_missing_or_empty_spool_sends_nothing(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", fake_sprig.url)
    assert_clean(code, out, err, 0)
    assert out == f"Spool drain: {path}: no such file, nothing to send\n"
    assert list(tmp_path.iterdir()) == [] and fake_sprig.requests == []


def test_drain_with_a_rejected_key_takes_nothing_from_the_spool(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    content = digest(path)
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", "wrong-key",
                             "--endpoint", fake_sprig.url)
    assert_clean(code, out, err, 1)
    assert err.splitlines()[-1] == ("analytics-sprig: error: Sprig rejected the API key; check "
                                    f"--api-key or SPRIG_API_KEY; nothing was taken from {path}")
    assert "wrong-key" not in out + err
    assert digest(path) == content and spool_rows(path) == 4
    assert [r.path for r in fake_sprig.requests] == ["/v2/users/analytics-sprig-key-check"]


def test_drain_while_sprig_is_down_leaves_the_spool_as_it_was(
    tmp_path: Path, down_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", down_sprig.url)
    assert_clean(code, out, err, 1)
    assert "cannot reach Sprig at http://127.0.0.1:" in err
    assert err.rstrip().endswith(f"nothing was taken from {path}")
    assert spool_rows(path) == 4


def test_drain_that_sprig_keeps_refusing_puts_the_rows_back_and_exits_1(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    fake_sprig.inject(503, count=1000, path=USERS)
    started = time.monotonic()
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", fake_sprig.url, "--max-retries", "0")
    assert time.monotonic() - started < 10
    assert_clean(code, out, err, 1)
    assert re.search(r"^  delivered          0  in \d+ requests?$", out, re.MULTILINE), out
    assert re.search(r"^  put back           \d+  \(Sprig did not take them yet\)$", out,
                     re.MULTILINE), out
    assert "  rows left          4  (8 messages)" in out
    assert err.splitlines()[-1] == (f"analytics-sprig: error: 4 rows still in {path} (Sprig did "
                                    "not take them, or another process is sending them); run "
                                    "the drain again later")
    assert spool_rows(path) == 4
    # Once Sprig takes them, a second drain sends them all, once.
    fake_sprig.reset()
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", fake_sprig.url)
    assert_clean(code, out, err, 0)
    assert sorted(stored_events(fake_sprig).elements()) == sorted(
        e for _, events in SAMPLE_ROWS for e in events)


def test_an_interrupted_drain_puts_what_it_did_not_send_back(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, [(f"u-{i}", [f"E{i:05d}"]) for i in range(50)])
    fake_sprig.blackhole()  # requests hang: the drain is interrupted mid-flight
    real_flush = SprigDestination.flush
    calls = [0]

    def flush(self: SprigDestination, timeout: Optional[float] = None) -> bool:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real_flush(self, timeout)

    monkeypatch.setattr(SprigDestination, "flush", flush)
    # The key check is a GET, not blackholed... so let it through first.
    monkeypatch.setattr(spool_cli, "_check_key", lambda key, endpoint: None)
    code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                             "--endpoint", fake_sprig.url)
    assert code == 130, out + err
    assert "Traceback" not in out + err
    assert "Interrupted: what was not sent is back in the spool." in out
    fake_sprig.blackhole(False)
    # Nothing was delivered (every request hung) and every row is back, unclaimed.
    info = spool_cli.read_spool(str(path))
    assert info is not None and info.rows == 50 and info.claimed == 0, info


def test_drain_shows_a_progress_counter_on_a_terminal(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)

    class Terminal:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(spool_cli.importlib, "import_module", _no_rich)
    code, out, _ = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                           "--endpoint", fake_sprig.url)
    assert code == 0
    assert "draining: 8 of 8 messages settled" in terminal.text
    assert terminal.text.endswith("\r")  # the counter is wiped before the summary
    assert "Spool drain summary" in out


def _no_rich(name: str) -> Any:
    raise ImportError(name)


def test_drain_alongside_a_running_app_sends_only_what_it_claims(
    tmp_path: Path, fake_sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, SAMPLE_ROWS)
    app = Spool(str(path))
    held = app.claim(1)  # the app is sending u-1's first row: u-1's rows wait for it
    try:
        code, out, err = run_cli(capsys, "spool", "drain", str(path), "--api-key", KEY,
                                 "--endpoint", fake_sprig.url)
    finally:
        app.close()
    assert_clean(code, out, err, 1)
    assert held[0].key == "u-1"
    events = stored_events(fake_sprig)
    assert set(events) == {"Viewed Pricing Page", "Signed Up", "Invited", "Upgraded", "Paid"}
    assert "  rows left          2  (3 messages)" in out
    assert "another process is sending them" in err
