"""The delivery engine under concurrency, against a loopback FakeSprig at a distance.

What several requests in flight must not break: a user's requests never overlap and their
events arrive in call order; a ``Retry-After`` pauses every lane; 429s without it shrink the
concurrency; the ``stats()`` invariant holds under 32 app threads with flushes and a
shutdown midway; a quiet process uses one connection. Also the unit-level pieces (lanes,
throttle) whose rules those depend on.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List

from segment.analytics import Client

from analytics_sprig import SprigDestination
from analytics_sprig.batching._lanes import Lanes, State
from analytics_sprig.batching._limits import MIN_RATE, Throttle
from analytics_sprig.sprig._mapping import SprigMerger
from analytics_sprig.testing import FakeSprig

MakeClient = Callable[..., Client]
MakeDestination = Callable[..., SprigDestination]

BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
BASE_MS = (BASE - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def track(user_id: str, n: int) -> Dict[str, Any]:
    """A normalized track message whose event name and timestamp identify call ``n``."""
    return {"type": "track", "userId": user_id, "event": f"E{n}",
            "timestamp": (BASE + timedelta(milliseconds=n)).isoformat(),
            "messageId": f"m-{n}", "integrations": {}, "context": {}}


def invariant(stats: Dict[str, int]) -> bool:
    return stats["received"] + stats["unspooled"] == (
        stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
        + stats["spooled"] + stats["pending"])


def user_posts(fake: FakeSprig) -> Dict[str, List[Any]]:
    posts: Dict[str, List[Any]] = defaultdict(list)
    for record in fake.requests:
        if record.path == "/v2/users" and record.json:
            posts[record.json["userId"]].append(record)
    return posts


# -- per-user order under concurrency -----------------------------------------------------


def test_a_users_requests_never_overlap_and_events_keep_call_order(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    fake_sprig.set_latency(0.05)
    destination = make_destination(flush_interval=0.01, max_concurrency=16)
    users, calls = 12, 40
    n = 0
    for step in range(calls):
        for u in range(users):
            destination.send(track(f"u{u}", n))
            n += 1
        if step % 5 == 4:
            time.sleep(0.03)  # some calls arrive while earlier requests are in flight
    assert destination.flush(timeout=30) is True

    posts = user_posts(fake_sprig)
    in_flight_at_once = 0
    for u in range(users):
        requests = posts[f"u{u}"]
        assert len(requests) >= 2  # the user had requests in flight and waiting
        # The client waits for each answer (50 ms after the server read the request)
        # before it sends that user's next request.
        for earlier, later in zip(requests, requests[1:]):
            assert later.time - earlier.time >= 0.045, (u, later.time - earlier.time)
        events = [e["event"] for r in requests for e in r.json["events"]]
        assert events == [f"E{i}" for i in range(u, users * calls, users)]
    # ... while different users' requests did overlap: several lanes were used.
    starts = sorted(r.time for rs in posts.values() for r in rs)
    for i, start in enumerate(starts):
        in_flight_at_once = max(in_flight_at_once,
                                sum(1 for s in starts[i:] if s < start + 0.04))
    assert in_flight_at_once >= 4
    stats = destination.stats()
    assert stats["delivered"] == users * calls and invariant(stats)


def test_calls_for_a_user_in_flight_merge_into_one_waiting_body(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    fake_sprig.set_latency(0.3)
    destination = make_destination(flush_interval=0.01)
    destination.send(track("busy", 0))
    assert fake_sprig.wait_for_requests(1, timeout=5)  # now in flight for 0.3 s
    for i in range(1, 51):
        destination.send(track("busy", i))
    assert destination.flush(timeout=10) is True
    bodies = [r.json for r in user_posts(fake_sprig)["busy"]]
    # One request in flight, one waiting body that took every later call: two requests.
    assert [len(b["events"]) for b in bodies] == [1, 50]
    assert destination.stats()["requests"] == 2


# -- rate limits ----------------------------------------------------------------------------


def test_retry_after_pauses_every_lane(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(flush_interval=0.01)
    destination.send(track("first", 0))
    assert destination.flush(timeout=5) is True
    fake_sprig.reset()
    fake_sprig.inject(status=429, count=1, retry_after=1)
    destination.send(track("limited", 1))
    assert fake_sprig.wait_for_requests(1, timeout=5)
    told_at = fake_sprig.requests[0].time
    time.sleep(0.05)
    for i in range(8):  # other users: their lanes must wait out the pause too
        destination.send(track(f"other-{i}", 2 + i))
    assert destination.flush(timeout=10) is True
    later = [r.time for r in fake_sprig.requests[1:]]
    assert len(later) == 9, [(r.json, r.status) for r in fake_sprig.requests]
    assert min(later) - told_at >= 0.95, [t - told_at for t in later]
    assert destination.stats()["delivered"] == 10  # "first" included


def test_429s_without_retry_after_shrink_concurrency_and_growth_follows_success(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    fake_sprig.set_latency(0.02)
    fake_sprig.set_rate_limit(20.0, burst=5)
    destination = make_destination(flush_interval=0.01, max_concurrency=16, max_retries=20,
                                   initial_backoff=0.05, max_backoff=0.5)
    lowest = [16]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest[0] = min(lowest[0], destination.stats()["concurrency"])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(120):
        destination.send(track(f"u{i}", i))
    assert destination.flush(timeout=30) is True
    stop.set()
    watcher.join(5)
    stats = destination.stats()
    assert stats["delivered"] == 120 and stats["dropped"] == stats["failed"] == 0
    assert lowest[0] <= 8  # halved at least once on the 429s
    throttled = fake_sprig.throttled
    assert 0 < throttled < stats["requests"] / 2, (throttled, stats["requests"])


# -- accounting under threads ---------------------------------------------------------------


def test_invariant_under_32_threads_with_flushes_and_a_shutdown_midway(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    fake_sprig.set_latency(0.01, jitter=0.005)
    client = make_client()
    destination = make_destination(flush_interval=0.01, max_queue_size=500)
    client.add_plugin(destination)
    stop = threading.Event()
    violations: List[Dict[str, int]] = []
    checks = [0]
    flushes = [0]
    calls = [0] * 32

    def app(t: int) -> None:
        i = 0
        while not stop.is_set() and i < 400:
            client.track(f"t{t}-u{i % 7}", f"E{i}")
            i += 1
            calls[t] = i
            if i % 50 == 0:
                destination.flush(timeout=0.05)
                flushes[0] += 1

    def watch() -> None:
        while not stop.is_set():
            stats = destination.stats()
            checks[0] += 1
            if not invariant(stats):
                violations.append(stats)

    threads = [threading.Thread(target=app, args=(t,)) for t in range(32)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    destination.shutdown(timeout=1.0)  # midway: later calls are dropped, not lost
    for thread in threads:
        thread.join(30)
    stop.set()
    watcher.join(5)

    assert violations == [] and checks[0] > 10 and flushes[0] > 0
    stats = destination.stats()
    assert invariant(stats) and stats["pending"] == 0, stats
    assert stats["received"] == sum(calls)  # every call reached the destination
    assert stats["dropped_shutdown"] > 0
    stored = sum(len(u["eventLog"]) for u in fake_sprig.users.values())
    # Everything delivered is stored; in-flight requests written off at the deadline may
    # have landed too.
    assert stats["delivered"] <= stored <= stats["delivered"] + stats["dropped_shutdown"]


def test_a_quiet_process_uses_one_sender_and_one_connection(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    destination = make_destination(flush_interval=0.01)
    before = {t for t in threading.enumerate() if t.name == "analytics-sprig-sender"}
    for i in range(5):
        destination.send(track("quiet", i))
        assert destination.flush(timeout=5) is True
    senders = {t for t in threading.enumerate()
               if t.name == "analytics-sprig-sender"} - before
    assert len(senders) == 1
    assert len({r.client for r in fake_sprig.requests}) == 1


class OwnedLock:
    """A lock that knows which thread holds it (``threading.Lock`` does not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: Any = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.owner = threading.get_ident()
        return got

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _is_owned(self) -> bool:  # what threading.Condition asks
        return self.owner == threading.get_ident()


def test_senders_are_started_outside_the_engine_lock(
    fake_sprig: FakeSprig, make_destination: MakeDestination, monkeypatch: Any
) -> None:
    # Thread.start() waits for the new thread to run; under the lock, a loaded machine
    # would stall the planner, the senders and every app thread's put() meanwhile.
    import analytics_sprig.batching._ledger as ledger_module

    locks: List[OwnedLock] = []

    class Threading:
        Condition = threading.Condition
        local = threading.local

        @staticmethod
        def Lock() -> OwnedLock:  # stands in for threading.Lock
            lock = OwnedLock()
            locks.append(lock)
            return lock

    monkeypatch.setattr(ledger_module, "threading", Threading)
    starts: List[bool] = []  # per sender start: whether its starter held the engine lock
    original_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "analytics-sprig-sender":
            starts.append(any(lock._is_owned() for lock in locks))
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    fake_sprig.set_latency(0.05)
    destination = make_destination(flush_interval=0.01, max_concurrency=8)
    assert locks, "the engine no longer takes its lock from the ledger: update this test"
    for n in range(400):
        destination.send(track(f"u{n % 40}", n))
    assert destination.flush(timeout=30) is True
    assert len(starts) >= 4  # several senders were started, by the planner and by senders
    assert not any(starts), starts
    assert destination.stats()["delivered"] == 400


def test_a_final_flush_without_new_threads_waits_for_a_body_a_sender_has_out(
    fake_sprig: FakeSprig, make_destination: MakeDestination, monkeypatch: Any
) -> None:
    # At interpreter exit on 3.12+ no thread can start, so flush() sends from its own
    # thread, while a sender started before still has a user's last body out. The flush
    # must wait for that answer, not return at once and have shutdown write it off.
    fake_sprig.set_latency(0.3)
    destination = make_destination(flush_interval=0.01)
    destination.send(track("busy", 0))
    assert fake_sprig.wait_for_requests(1, timeout=5)  # out for 0.3 s, in a sender thread
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:  # the engine's threads only: not the server's
        if thread.name.startswith("analytics-sprig-"):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    destination._worker._threads_refused = True  # what a refused start at exit records
    destination.send(track("other", 1))  # sent by the flush itself
    assert destination.flush(timeout=5) is True
    stats = destination.stats()
    assert stats["delivered"] == 2 and stats["pending"] == 0, stats
    assert sorted(user_posts(fake_sprig)) == ["busy", "other"]


# -- unit level -----------------------------------------------------------------------------


def test_lanes_keep_one_head_per_key_and_merge_only_into_unsent_bodies() -> None:
    lanes: Lanes[Any, Any] = Lanes(SprigMerger(), max_bodies=3, linger=0.5, max_linger=5.0)
    part = {"userId": "a", "events": [{"event": "E", "timestamp": 1}]}
    first = lanes.add("a", part, "r1", 0.0)
    assert first is not None and lanes.add("a", part, "r2", 0.1) is first  # merged
    assert lanes.next_ready(0.2, flushing=False) is None  # quiet for < linger
    assert lanes.next_ready(0.61, flushing=False) is first
    lanes.dispatch(first, 0.61)
    second = lanes.add("a", part, "r3", 0.7)  # the head is in flight: a new body
    assert second is not None and second is not first
    assert lanes.next_ready(10.0, flushing=True) is None  # not the head: never sent now
    lanes.add("b", part, "r4", 0.7)
    assert lanes.add("c", part, "r5", 0.7) is None  # a fourth body is beyond the bound
    assert lanes.add("a", part, "r6", 0.8) is second  # merging takes no slot
    assert lanes.finish(first) is True
    assert lanes.next_ready(10.0, flushing=True) in (second, lanes._lanes["b"][0])
    assert first.state is State.SENDING and second.refs == ["r3", "r6"]


def test_lanes_due_at_most_max_linger_after_the_first_call() -> None:
    lanes: Lanes[Any, Any] = Lanes(SprigMerger(), max_bodies=10, linger=0.5, max_linger=2.0)
    part = {"userId": "a", "events": [{"event": "E", "timestamp": 1}]}
    body = lanes.add("a", part, "r0", 0.0)
    for step in range(1, 30):  # a call every 0.1 s: never quiet for 0.5 s
        lanes.add("a", part, f"r{step}", step * 0.1)
        if step * 0.1 < 2.0:
            assert lanes.next_ready(step * 0.1, flushing=False) is None
    assert lanes.next_ready(2.95, flushing=False) is body


def test_throttle_halves_once_per_reaction_window_and_grows_back() -> None:
    throttle = Throttle(16, None)
    now = 100.0
    for i in range(40):  # 40 requests in the last second: the recent rate
        throttle.started(now - 1.0 + i * 0.025)
    throttle.throttled(now, started_at=now - 0.1)
    assert throttle.concurrency == 8 and throttle.rate is not None
    rate = throttle.rate
    assert 15 <= rate <= 25
    throttle.throttled(now + 0.01, started_at=now - 0.05)  # sent before the cut: no cut
    assert throttle.concurrency == 8 and throttle.rate == rate
    for _ in range(200):
        throttle.started(now + 1)
        throttle.succeeded(now + 1)
    assert throttle.concurrency == 16 and throttle.rate > rate
    assert throttle.wait(now + 1, in_flight=16) is None  # at the limit: wait for a slot


def test_throttle_never_goes_below_its_floor_and_pauses_every_lane() -> None:
    throttle = Throttle(4, None)
    for step in range(20):
        throttle.throttled(float(step), started_at=float(step))
    assert throttle.rate == MIN_RATE and throttle.concurrency == 1
    throttle.pause(100.0, 5.0)
    assert throttle.wait(100.0, in_flight=0) == 5.0


def test_hard_cap_paces_requests() -> None:
    throttle = Throttle(8, 10.0)
    assert throttle.wait(0.0, 0) == 0.0
    throttle.started(0.0)
    assert abs((throttle.wait(0.0, 1) or 0) - 0.1) < 1e-9
