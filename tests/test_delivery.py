"""The delivery engine against a loopback FakeSprig that fails on demand.

Each test tells the fake to misbehave (5xx, 429, resets, timeouts, a black hole, a wrong
key...) and checks that every message ends delivered, or failed/dropped with a reason and
reported through ``on_error``, with the ``stats()`` invariant intact. Timings use the
fixtures' short windows and backoffs; waits poll with deadlines.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from segment.analytics import Client

from analytics_sprig import (
    MessageDropped,
    SprigAPIError,
    SprigAuthError,
    SprigClient,
    SprigDestination,
    SprigNetworkError,
)
from analytics_sprig.testing import FakeSprig, RecordedRequest

MakeClient = Callable[..., Client]
MakeDestination = Callable[..., SprigDestination]
Message = Dict[str, Any]

BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
BASE_MS = (BASE - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def track(user_id: str, event: str, n: int = 0) -> Message:
    """A normalized Segment track message whose timestamp is BASE + ``n`` ms."""
    moment = BASE + timedelta(milliseconds=n)
    return {
        "type": "track",
        "userId": user_id,
        "event": event,
        "timestamp": moment.isoformat(timespec="milliseconds"),
        "messageId": str(uuid.uuid4()),
        "context": {},
        "integrations": {},
    }


def ref(message: Message) -> Dict[str, str]:
    """What ``on_error`` / ``on_delivered`` report for ``message``: a light reference."""
    keys = ("messageId", "type", "userId", "event")
    return {key: message[key] for key in keys if message.get(key) is not None}


class OnError:
    """An ``on_error`` callback recording ``(exception, messages)`` calls."""

    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, List[Message]]] = []
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException, messages: List[Message]) -> None:
        with self._lock:
            self.calls.append((exc, list(messages)))

    def messages(self, kind: type = BaseException, reason: Optional[str] = None) -> List[Message]:
        with self._lock:
            return [
                m for exc, ms in self.calls
                if isinstance(exc, kind) and reason in (None, getattr(exc, "reason", None))
                for m in ms
            ]


def sprig_requests(fake: FakeSprig) -> List[RecordedRequest]:
    return [r for r in fake.requests if r.path.startswith("/v2/")]


def event_log(fake: FakeSprig, user_id: str) -> List[Tuple[str, int]]:
    user = fake.users.get(user_id)
    return [] if user is None else [(e["event"], e["timestamp"]) for e in user["eventLog"]]


def check_invariant(stats: Dict[str, int]) -> None:
    accounted = (stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
                 + stats["pending"])
    assert stats["received"] == accounted, stats


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def worker_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("analytics-sprig")]


# -- retryable failures ----------------------------------------------------------------------


def test_5xx_burst_then_recovery_delivers_everything(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    destination = make_destination(on_error=errors)
    for status, count in ((503, 3), (500, 1), (502, 1), (504, 1), (408, 1)):
        fake_sprig.inject(status=status, count=count)
    messages = [track(f"u{i}", "Burst", i) for i in range(3)]
    for message in messages:
        destination.send(message)

    assert destination.flush(timeout=10) is True
    statuses = [r.status for r in sprig_requests(fake_sprig)]
    assert statuses == [503, 503, 503, 500, 502, 504, 408, 202, 202, 202]
    for i in range(3):
        assert event_log(fake_sprig, f"u{i}") == [("Burst", BASE_MS + i)]
    stats = destination.stats()
    assert (stats["delivered"], stats["failed"], stats["dropped"]) == (3, 0, 0)
    assert stats["retries"] == 7
    assert stats["requests"] == 10
    assert errors.calls == []
    check_invariant(stats)


def test_outage_shorter_than_the_retry_budget_loses_nothing(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    # >= 50 retries of >= 25 ms each: a budget well over a second.
    destination = make_destination(max_retries=50, connect_timeout=0.5)
    fake_sprig.stop()  # connection refused until it comes back on the same port
    sent = [track(f"user-{i % 4}", f"E{i}", i) for i in range(20)]
    for message in sent:
        destination.send(message)
    assert wait_until(lambda: destination.stats()["retries"] >= 3)
    fake_sprig.start()

    assert destination.flush(timeout=10) is True
    stats = destination.stats()
    assert (stats["delivered"], stats["failed"], stats["dropped"]) == (20, 0, 0)
    for user in range(4):
        expected = [(f"E{i}", BASE_MS + i) for i in range(user, 20, 4)]
        assert event_log(fake_sprig, f"user-{user}") == expected


def test_429_retry_after_is_honoured_and_spends_no_retry(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    # Two Retry-After pauses with max_retries=2: they spend no counted retry (the retry
    # budget is still whole for backoffs), but a request takes at most max_retries of them.
    destination = make_destination(max_retries=2)
    fake_sprig.inject(status=429, count=2, retry_after="0.15")
    destination.send(track("u1", "Limited"))

    assert destination.flush(timeout=10) is True
    requests = sprig_requests(fake_sprig)
    assert [r.status for r in requests] == [429, 429, 202]
    gaps = [b.time - a.time for a, b in zip(requests, requests[1:])]
    # Retry-After: 0.15 is taken as the 1 s floor: a tiny value never becomes a storm.
    assert all(gap >= 0.95 for gap in gaps), gaps
    stats = destination.stats()
    assert (stats["delivered"], stats["failed"], stats["retries"]) == (1, 0, 2)


def test_retry_after_pauses_beyond_max_retries_become_counted_backoffs(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    destination = make_destination(max_retries=1, on_error=errors)
    fake_sprig.inject(status=429, count=5, retry_after="0")
    destination.send(track("u1", "Limited"))
    assert destination.flush(timeout=10) is True
    # One Retry-After pause (>= 1 s), one counted backoff, then the retry budget is spent:
    # at most 2 * max_retries + 1 attempts whatever the server says.
    assert [r.status for r in sprig_requests(fake_sprig)] == [429, 429, 429]
    assert destination.stats()["failed"] == 1
    assert isinstance(errors.calls[0][0], SprigAPIError)


def test_retry_after_is_capped_by_max_retry_after(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(max_retry_after=0.05)
    fake_sprig.inject(status=503, count=1, retry_after=3600)
    started = time.monotonic()
    destination.send(track("u1", "Capped"))
    assert destination.flush(timeout=10) is True
    assert time.monotonic() - started < 3
    assert destination.stats()["delivered"] == 1


def test_retry_after_pauses_are_bounded_by_max_total_wait(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    destination = make_destination(max_total_wait=2.5, on_error=errors)
    fake_sprig.inject(status=429, count=5, retry_after="1")
    message = track("u1", "Too Patient")
    destination.send(message)

    assert destination.flush(timeout=10) is True
    # Waits of 1 + 1 fit in 2.5 s; a third would not, so the third 429 is final.
    assert [r.status for r in sprig_requests(fake_sprig)] == [429, 429, 429]
    assert destination.stats()["failed"] == 1
    [(exc, messages)] = errors.calls
    assert isinstance(exc, SprigAPIError) and exc.status_code == 429
    assert messages == [ref(message)]


def test_429_without_retry_after_backs_off_and_spends_retries(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    patient = make_destination(max_retries=3, initial_backoff=0.05, max_backoff=0.05)
    fake_sprig.inject(status=429, count=2)
    patient.send(track("u1", "Limited"))
    assert patient.flush(timeout=10) is True
    requests = sprig_requests(fake_sprig)
    assert [r.status for r in requests] == [429, 429, 202]
    # Equal jitter: each backoff is at least half of its 50 ms ceiling.
    assert all(b.time - a.time >= 0.024 for a, b in zip(requests, requests[1:]))
    assert patient.stats()["retries"] == 2

    fake_sprig.reset()
    errors = OnError()
    impatient = make_destination(max_retries=1, on_error=errors)
    fake_sprig.inject(status=429, count=2)
    impatient.send(track("u2", "Limited"))
    assert impatient.flush(timeout=10) is True
    assert [r.status for r in sprig_requests(fake_sprig)] == [429, 429]
    stats = impatient.stats()
    assert (stats["failed"], stats["retries"], stats["requests"]) == (1, 1, 2)
    assert isinstance(errors.calls[0][0], SprigAPIError)


@pytest.mark.parametrize("fault", [{"reset": True}, {"drop": True}], ids=["reset", "drop"])
def test_connection_reset_and_drop_are_retried(
    fake_sprig: FakeSprig, make_destination: MakeDestination, fault: Dict[str, bool]
) -> None:
    destination = make_destination()
    fake_sprig.inject(count=2, **fault)
    destination.send(track("u1", "Flaky"))

    assert destination.flush(timeout=10) is True
    assert [r.status for r in sprig_requests(fake_sprig)] == [0, 0, 202]
    assert event_log(fake_sprig, "u1") == [("Flaky", BASE_MS)]
    stats = destination.stats()
    assert (stats["delivered"], stats["retries"], stats["requests"]) == (1, 2, 3)


def test_read_timeout_is_retried_and_the_server_may_see_a_duplicate(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(timeout=0.2)
    # The first answer comes after the client gave up; the server still stores it.
    fake_sprig.inject(status=None, delay=0.6, count=1)
    destination.send(track("u1", "Slow"))

    assert destination.flush(timeout=10) is True
    stats = destination.stats()
    assert (stats["delivered"], stats["failed"], stats["retries"], stats["requests"]) == (
        1, 0, 1, 2)
    # Sprig has no idempotency key: delivery is at least once, and here twice.
    assert fake_sprig.wait_for(lambda s: len(event_log(s, "u1")) == 2, timeout=5)
    assert event_log(fake_sprig, "u1") == [("Slow", BASE_MS)] * 2


def test_blackholed_server_fails_after_the_retry_budget(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    destination = make_destination(timeout=0.2, max_retries=2, on_error=errors)
    fake_sprig.blackhole()
    message = track("u1", "Into The Void")
    destination.send(message)

    assert destination.flush(timeout=10) is True
    stats = destination.stats()
    assert (stats["failed"], stats["delivered"], stats["pending"]) == (1, 0, 0)
    assert (stats["requests"], stats["retries"]) == (3, 2)
    assert [r.status for r in sprig_requests(fake_sprig)] == [0, 0, 0]
    [(exc, messages)] = errors.calls
    assert isinstance(exc, SprigNetworkError)
    assert messages == [ref(message)]
    check_invariant(stats)


# -- final failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 422, 501, 505])
def test_final_statuses_fail_without_retry(
    fake_sprig: FakeSprig, make_destination: MakeDestination, status: int
) -> None:
    errors = OnError()
    destination = make_destination(on_error=errors)
    fake_sprig.inject(status=status, count=1, body={"error": "bad body"})
    doomed = track("u1", "Doomed")
    destination.send(doomed)
    assert destination.flush(timeout=10) is True

    [(exc, messages)] = errors.calls
    assert isinstance(exc, SprigAPIError) and not isinstance(exc, SprigAuthError)
    assert exc.status_code == status
    assert "bad body" in str(exc)
    assert messages == [ref(doomed)]
    assert [r.status for r in sprig_requests(fake_sprig)] == [status]

    # One message's final error does not affect the next one.
    destination.send(track("u2", "Fine"))
    assert destination.flush(timeout=10) is True
    stats = destination.stats()
    assert (stats["failed"], stats["delivered"], stats["retries"], stats["requests"]) == (
        1, 1, 0, 2)
    check_invariant(stats)


def test_flush_returns_after_on_error_ran_and_on_error_may_flush(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    inner: List[Tuple[bool, float]] = []
    reported = threading.Event()

    def on_error(exc: BaseException, messages: List[Message]) -> None:
        started = time.monotonic()
        # Re-entrant flush from the worker thread: must not wait for this very callback.
        inner.append((destination.flush(timeout=3), time.monotonic() - started))
        reported.set()

    destination = make_destination(on_error=on_error)
    fake_sprig.inject(status=422, count=1)
    destination.send(track("u1", "Invalid"))
    assert destination.flush(timeout=10) is True
    assert reported.is_set()  # flush() returned only once the failure was reported
    [(drained, elapsed)] = inner
    assert drained is True and elapsed < 1.0


def test_wrong_key_fails_logs_once_and_cools_down_without_requests(
    fake_sprig: FakeSprig, make_destination: MakeDestination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="analytics_sprig")
    secret = "wrong-key-5f3a9c"
    errors = OnError()
    destination = make_destination(api_key=secret, on_error=errors, auth_cooldown=60)
    destination.send(track("u0", "First"))
    assert destination.flush(timeout=10) is True
    assert [r.status for r in sprig_requests(fake_sprig)] == [401]

    later = [track(f"u{i}", "Later", i) for i in range(1, 6)]
    started = time.monotonic()
    for message in later:
        destination.send(message)
    assert destination.flush(timeout=10) is True
    assert time.monotonic() - started < 1.0  # flush never waits on the cool-down

    assert len(sprig_requests(fake_sprig)) == 1  # nothing touched the network
    stats = destination.stats()
    assert (stats["failed"], stats["requests"], stats["auth_errors"], stats["retries"]) == (
        6, 1, 1, 0)
    assert all(isinstance(exc, SprigAuthError) and exc.status_code == 401
               for exc, _ in errors.calls)
    failed_later = errors.messages(SprigAuthError)[1:]  # several lanes: any order
    assert sorted(failed_later, key=str) == sorted((ref(m) for m in later), key=str)

    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1
    text = loud[0].getMessage()
    assert "401" in text and "Development" in text and "wrong" in text
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert all(secret not in str(exc) and secret not in repr(exc) for exc, _ in errors.calls)
    assert secret not in repr(destination)


def test_after_the_cool_down_one_probe_goes_out(
    fake_sprig: FakeSprig, make_destination: MakeDestination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytics_sprig")
    destination = make_destination(api_key="another-wrong-key", auth_cooldown=0.3)
    destination.send(track("u0", "First"))
    assert destination.flush(timeout=10) is True
    failed_at = time.monotonic()
    assert len(sprig_requests(fake_sprig)) == 1

    time.sleep(max(0.0, failed_at + 0.35 - time.monotonic()))  # let the cool-down expire
    for i in range(1, 4):
        destination.send(track(f"u{i}", "Probe"))
    assert destination.flush(timeout=10) is True

    # The first batch probes (and is rejected again); the others fail in the new cool-down.
    assert [r.status for r in sprig_requests(fake_sprig)] == [401, 401]
    stats = destination.stats()
    assert (stats["failed"], stats["requests"], stats["auth_errors"]) == (4, 2, 2)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_403_then_key_accepted_again_after_the_cool_down(
    fake_sprig: FakeSprig, make_destination: MakeDestination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytics_sprig")
    errors = OnError()
    destination = make_destination(auth_cooldown=0.3, on_error=errors)
    fake_sprig.inject(status=403, count=1, body={"error": "Forbidden"})
    destination.send(track("u0", "Rejected"))
    assert destination.flush(timeout=10) is True
    failed_at = time.monotonic()
    destination.send(track("u1", "During Cool-down"))
    assert destination.flush(timeout=10) is True
    assert [r.status for r in sprig_requests(fake_sprig)] == [403]

    time.sleep(max(0.0, failed_at + 0.35 - time.monotonic()))
    for i in range(2, 5):
        destination.send(track(f"u{i}", "Accepted", i))
    assert destination.flush(timeout=10) is True
    assert [r.status for r in sprig_requests(fake_sprig)] == [403, 202, 202, 202]
    stats = destination.stats()
    assert (stats["failed"], stats["delivered"], stats["auth_errors"]) == (2, 3, 1)
    assert [exc.status_code for exc, _ in errors.calls] == [403, 403]  # type: ignore[attr-defined]
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1 and "403" in loud[0].getMessage()
    assert any("accepts the API key again" in r.getMessage() for r in caplog.records)


# -- rate limit, coalescing, ordering ------------------------------------------------------------


def test_rate_limit_delays_but_never_drops(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    # One lane: each request's arrival at the server shows the pacing (with several, a new
    # connection's setup skews arrivals although the sends are paced).
    destination = make_destination(max_requests_per_second=10, max_concurrency=1)
    started = time.monotonic()
    for i in range(5):
        destination.send(track(f"u{i}", "Paced", i))
    assert destination.flush(timeout=10) is True
    # Slots at +0, +0.1, ... +0.4 s: the fifth request cannot start before 0.4 s.
    assert time.monotonic() - started >= 0.39

    requests = sprig_requests(fake_sprig)
    assert len(requests) == 5
    # Arrivals at the server are paced too (with slack for scheduling jitter; the first
    # request also opens the connection, so it arrives late).
    assert requests[-1].time - requests[1].time >= 0.25
    stats = destination.stats()
    assert (stats["delivered"], stats["dropped"], stats["failed"]) == (5, 0, 0)


def test_coalescing_merges_one_users_calls_into_one_request(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    # A long window and a wake mark of exactly 11 messages: all 11 calls wait together.
    # A long window: all 11 calls wait together until the flush.
    destination = make_destination(flush_interval=30)
    client.add_plugin(destination)

    def at(n: int) -> datetime:
        return BASE + timedelta(milliseconds=n)

    client.identify("u1", {"plan": "free", "seats": 1, "email": "old@example.com"},
                    timestamp=at(1))
    client.track("u1", "Signed Up", timestamp=at(2))
    client.page("u1", name="Pricing", timestamp=at(3))
    client.identify("u1", {"plan": "pro", "company": {"name": "Acme"}}, timestamp=at(4))
    client.track("u1", "Trial Started", timestamp=at(5))
    client.track("u2", "Someone Else", timestamp=at(6))
    client.alias("anon-1", "u1", timestamp=at(7))
    client.track("u1", "Order Completed", context={"traits": {"email": "new@example.com"}},
                 timestamp=at(8))
    client.identify("u1", {"seats": 5}, timestamp=at(9))
    client.page("u1", timestamp=at(10))
    client.track("u1", "Order Completed", timestamp=at(11))

    assert destination.flush(timeout=10) is True
    bodies = sorted((r.json for r in sprig_requests(fake_sprig)), key=lambda b: b["userId"])
    assert bodies == [
        {
            "userId": "u1",
            "emailAddress": "new@example.com",
            "attributes": {"plan": "pro", "seats": 5, "company.name": "Acme"},
            "events": [
                {"event": "Signed Up", "timestamp": BASE_MS + 2},
                {"event": "Viewed Pricing Page", "timestamp": BASE_MS + 3},
                {"event": "Trial Started", "timestamp": BASE_MS + 5},
                {"event": "Order Completed", "timestamp": BASE_MS + 8},
                {"event": "Loaded a Page", "timestamp": BASE_MS + 10},
                {"event": "Order Completed", "timestamp": BASE_MS + 11},
            ],
        },
        {"userId": "u2", "events": [{"event": "Someone Else", "timestamp": BASE_MS + 6}]},
    ]
    stats = destination.stats()
    assert (stats["delivered"], stats["requests"]) == (11, 2)


def test_coalescing_respects_the_event_and_attribute_caps(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(flush_interval=30)
    for i in range(150):
        destination.send(track("busy", f"E{i}", i))
    for part in range(2):  # 60 + 60 distinct attributes cannot share one request
        destination.send({"type": "identify", "userId": "busy",
                          "timestamp": BASE.isoformat(),
                          "traits": {f"a{part}_{i}": i for i in range(60)}})

    assert destination.flush(timeout=10) is True
    bodies = [r.json for r in sprig_requests(fake_sprig)]
    assert [len(b.get("events", ())) for b in bodies] == [100, 50, 0]
    assert [len(b.get("attributes", ())) for b in bodies] == [0, 60, 60]
    events = [e["event"] for b in bodies for e in b.get("events", ())]
    assert events == [f"E{i}" for i in range(150)]
    assert set(bodies[1]["attributes"]) == {f"a0_{i}" for i in range(60)}
    assert set(bodies[2]["attributes"]) == {f"a1_{i}" for i in range(60)}
    assert destination.stats()["delivered"] == 152


def test_per_user_order_is_preserved_across_windows_and_retries(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(flush_interval=0.005)
    fake_sprig.inject(status=503, count=4)
    fake_sprig.inject(reset=True, count=2)
    for i in range(300):
        destination.send(track(f"u{i % 3}", f"E{i}", i))
        if i % 50 == 0:
            time.sleep(0.002)  # spread the calls over several batch windows
    assert destination.flush(timeout=20) is True

    for user in range(3):
        expected = [(f"E{i}", BASE_MS + i) for i in range(user, 300, 3)]
        assert event_log(fake_sprig, f"u{user}") == expected
    stats = destination.stats()
    assert (stats["delivered"], stats["retries"]) == (300, 6)


# -- concurrency and accounting -----------------------------------------------------------------


def test_eight_threads_tracking_concurrently_lose_and_duplicate_nothing(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    destination = make_destination()
    client.add_plugin(destination)
    threads_n, calls_n = 8, 250
    start = threading.Barrier(threads_n + 1)
    done = threading.Event()
    checks: List[int] = []
    violations: List[Dict[str, int]] = []

    def watch() -> None:
        while not done.is_set():
            stats = destination.stats()
            accounted = (stats["skipped"] + stats["delivered"] + stats["failed"]
                         + stats["dropped"] + stats["pending"])
            if stats["received"] != accounted:
                violations.append(stats)
            checks.append(stats["received"])
            time.sleep(0.001)

    def work(t: int) -> None:
        start.wait()
        for i in range(calls_n):
            n = t * calls_n + i
            ok, _ = client.track(f"user-{n % 10}", f"thread-{t}",
                                 timestamp=BASE + timedelta(milliseconds=n))
            assert ok

    watcher = threading.Thread(target=watch)
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    watcher.start()
    for worker in workers:
        worker.start()
    start.wait()
    for worker in workers:
        worker.join(30)
    assert client.flush(timeout=20) is True
    done.set()
    watcher.join(5)

    assert violations == []
    assert len(checks) > 10
    sent = Counter((f"thread-{n // calls_n}", BASE_MS + n) for n in range(threads_n * calls_n))
    seen: Counter[Tuple[str, int]] = Counter()
    for user in range(10):
        seen.update(event_log(fake_sprig, f"user-{user}"))
    assert seen == sent  # every call exactly once
    stats = destination.stats()
    assert (stats["received"], stats["delivered"]) == (2000, 2000)
    assert (stats["failed"], stats["dropped"], stats["pending"]) == (0, 0, 0)
    assert stats["requests"] < 2000  # coalesced
    segment_ids = [m["messageId"] for m in fake_sprig.segment_messages]
    assert len(segment_ids) == len(set(segment_ids)) == 2000


def test_queue_overflow_is_counted_and_reported(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    # One lane: the first body hangs in flight, the others wait (and can merge).
    destination = make_destination(max_queue_size=10, timeout=5, on_error=errors,
                                   max_concurrency=1)
    fake_sprig.blackhole()
    first = track("u-first", "Stuck")
    destination.send(first)
    assert fake_sprig.wait_for_requests(1, timeout=5)  # the worker now hangs on it

    # 25 more users: each needs a body of its own, and 10 bodies (the one in flight
    # included) is the bound. Calls for a user who has a waiting body would take no slot.
    overflow = [track(f"u{i}", "Overflow", i) for i in range(25)]
    for message in overflow:
        destination.send(message)
        check_invariant(destination.stats())
    assert wait_until(lambda: destination.stats()["dropped_queue_full"] == 16)
    destination.send(track("u0", "Merges", 99))  # u0 has a waiting body: no new slot
    assert wait_until(lambda: destination.stats()["pending"] == 11)
    time.sleep(0.2)  # the planner has placed it by now (a drop would show below)
    stats = destination.stats()
    assert (stats["received"], stats["pending"], stats["dropped_queue_full"]) == (27, 11, 16)
    # Dropped on the app's thread (the planner's inbox holds max_queue_size messages too)
    # or by the planner: which ones depends on timing, how many does not.
    dropped = errors.messages(MessageDropped, "queue_full")
    assert len(dropped) == 16
    assert all(m in [ref(o) for o in overflow] for m in dropped)
    assert all(len(ms) == 1 for _, ms in errors.calls)

    started = time.monotonic()
    destination.shutdown(timeout=0.3)
    assert time.monotonic() - started < 1.0
    stats = destination.stats()
    assert (stats["dropped_shutdown"], stats["dropped"], stats["pending"]) == (11, 27, 0)
    check_invariant(stats)
    dropped_at_shutdown = errors.messages(MessageDropped, "shutdown")
    assert len(dropped_at_shutdown) == 11
    assert {m["messageId"] for m in dropped_at_shutdown} >= {
        m["messageId"] for m in [first, *overflow[:9]]}


def test_shutdown_returns_within_its_timeout_when_sprig_hangs(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    destination = make_destination(timeout=10, on_error=errors)
    threads_before = set(worker_threads())
    fake_sprig.blackhole()
    pending = [track(f"u{i}", "Pending", i) for i in range(5)]
    for message in pending:
        destination.send(message)
    assert fake_sprig.wait_for_requests(5, timeout=5)  # one request per user, at once
    threads = set(worker_threads()) - threads_before
    assert threads

    started = time.monotonic()
    destination.shutdown(timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.5
    stats = destination.stats()
    assert (stats["dropped_shutdown"], stats["pending"], stats["delivered"]) == (5, 0, 0)
    check_invariant(stats)
    assert sorted(m["messageId"] for m in errors.messages(MessageDropped, "shutdown")) == sorted(
        m["messageId"] for m in pending)

    late = track("u-late", "After Shutdown")
    destination.send(late)
    assert destination.flush(timeout=1) is True
    stats = destination.stats()
    assert stats["dropped_shutdown"] == 6
    assert errors.messages(MessageDropped, "shutdown")[-1] == ref(late)
    check_invariant(stats)

    # Once Sprig answers again, the stopped workers must not send what they wrote off.
    fake_sprig.blackhole(False)
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert len(sprig_requests(fake_sprig)) == 5


def test_messages_written_off_at_shutdown_are_never_sent_afterwards(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    errors = OnError()
    # Three users, one lane; the first request takes a second to answer. No retries:
    # when shutdown writes them off, the sender finishes the slow request and must not
    # send the other two.
    destination = make_destination(flush_interval=30, max_concurrency=1, max_retries=0,
                                   on_error=errors)
    fake_sprig.inject(status=None, delay=1.0, count=1)
    threads_before = set(worker_threads())
    messages = [track(f"u{i}", "Late", i) for i in range(3)]
    for message in messages:
        destination.send(message)

    destination.shutdown(timeout=0.3)
    assert destination.stats()["dropped_shutdown"] == 3
    assert sorted(m["messageId"] for m in errors.messages(MessageDropped, "shutdown")) == sorted(
        m["messageId"] for m in messages)
    for thread in set(worker_threads()) - threads_before:
        thread.join(5)  # the slow request finishes; the sender must stop there
        assert not thread.is_alive()
    assert [r.json["userId"] for r in sprig_requests(fake_sprig)] in ([], ["u0"])
    assert set(fake_sprig.users) <= {"u0"}


def test_shutdown_delivers_what_it_can_then_drops_later_calls(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    errors = OnError()
    client = make_client()
    destination = make_destination(flush_interval=30, on_error=errors)
    client.add_plugin(destination)
    for i in range(5):
        client.track("u1", f"E{i}", timestamp=BASE + timedelta(milliseconds=i))
    assert destination.stats()["pending"] == 5

    destination.shutdown(timeout=5)  # flushes first
    assert event_log(fake_sprig, "u1") == [(f"E{i}", BASE_MS + i) for i in range(5)]
    client.track("u1", "Too Late")
    stats = destination.stats()
    assert (stats["delivered"], stats["dropped_shutdown"]) == (5, 1)
    [(exc, [message])] = errors.calls
    assert isinstance(exc, MessageDropped) and exc.reason == "shutdown"
    assert message["event"] == "Too Late"
    check_invariant(stats)


# -- processes ----------------------------------------------------------------------------------


def _child_after_fork(destination: SprigDestination, url: str) -> int:
    """Runs in the forked child; the exit code tells the parent what went wrong."""
    stats = destination.stats()
    if stats["received"] or stats["pending"]:
        return 3  # the parent's queue leaked into the child
    for i in range(3):
        destination.send(track("child", f"C{i}", 100 + i))
    if not destination.flush(timeout=10):
        return 4
    stats = destination.stats()
    if (stats["delivered"], stats["requests"]) != (3, 1):
        return 5
    user = SprigClient("test-key", endpoint=url).get_user("child")
    if user is None or sorted(e["event"] for e in user["events"]) != ["C0", "C1", "C2"]:
        return 6
    destination.shutdown(timeout=2)
    return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a threaded process
def test_fork_child_gets_a_fresh_worker_and_parent_keeps_its_queue(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(flush_interval=30)
    for i in range(5):
        destination.send(track("parent", f"P{i}", i))
    assert destination.stats()["pending"] == 5

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = _child_after_fork(destination, fake_sprig.url)
        except BaseException:
            code = 2
        finally:
            os._exit(code)

    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    assert destination.stats()["pending"] == 5  # the parent's queue is untouched
    assert destination.flush(timeout=10) is True
    assert event_log(fake_sprig, "parent") == [(f"P{i}", BASE_MS + i) for i in range(5)]
    assert event_log(fake_sprig, "child") == [(f"C{i}", BASE_MS + 100 + i) for i in range(3)]
    posts = [r.json["userId"] for r in sprig_requests(fake_sprig) if r.method == "POST"]
    assert posts == ["child", "parent"]


_EXIT_SCRIPT = textwrap.dedent("""
    import logging, sys
    from analytics_sprig import SprigDestination

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    url, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # A long window: nothing is sent before the interpreter exits.
    destination = SprigDestination("test-key", endpoint=url, flush_interval=30,
                                   shutdown_timeout=1, timeout=10)
    if mode == "module":
        import segment.analytics as analytics
        analytics.write_key = "write-key"
        analytics.host = url
        analytics.add_plugin(destination)
        for i in range(count):
            analytics.track("exit-user", "Exit %d" % i)
    else:
        for i in range(count):
            destination.send({"type": "track", "userId": "exit-user", "event": "Exit %d" % i,
                              "timestamp": "2024-05-01T12:00:00.00%d+00:00" % i})
    # No flush(), no shutdown(): the atexit hook must do it.
""")


def _run_exit_script(url: str, mode: str, count: int) -> Tuple[subprocess.CompletedProcess[str],
                                                                float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, url, mode, str(count)],
        capture_output=True, text=True, timeout=30,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("mode", ["destination", "module"])
def test_atexit_final_flush_delivers_pending_events(fake_sprig: FakeSprig, mode: str) -> None:
    result, _ = _run_exit_script(fake_sprig.url, mode, 3)
    assert result.returncode == 0, result.stderr
    assert sorted(event for event, _ in event_log(fake_sprig, "exit-user")) == [
        "Exit 0", "Exit 1", "Exit 2"]
    assert "test-key" not in result.stderr


def test_atexit_final_flush_is_bounded_when_sprig_is_unreachable(
    fake_sprig: FakeSprig,
) -> None:
    fake_sprig.blackhole()
    result, elapsed = _run_exit_script(fake_sprig.url, "destination", 7)
    assert result.returncode == 0, result.stderr
    assert elapsed < 5
    assert "7 message(s)" in result.stderr and "dropped" in result.stderr
    assert "test-key" not in result.stderr
    assert len(sprig_requests(fake_sprig)) >= 1
