"""The delivery engine: a bounded hand-off, one planner thread, a few sender threads.

Data flows one way: the app's thread appends a message to the *inbox* (a deque: no lock,
no I/O, no wait); the *planner* thread asks
the backend to route and map each message and merges it into its key's lane
(:mod:`._lanes`); *sender* threads, started lazily up to the throttle's concurrency, take
due lane heads and send them, parking retries and obeying the shared :class:`Throttle`.
Every outcome goes through the :class:`Ledger`.

Bounds: the inbox and the lanes each hold at most ``max_queue_size`` (messages, bodies);
every wait has a timeout; ``flush``/``shutdown`` return by their deadline; after ``fork()``
the child starts with an empty engine and no threads; at interpreter exit, pending
messages get a final flush bounded by ``shutdown_timeout``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Deque, Dict, Generic, List, Optional, Tuple, TypeVar

from ._backend import Backend, Part, Plan, Reject, Session, Skip
from ._lanes import Body, Lanes, plan_bodies
from ._ledger import DropReason, Ledger, OnDelivered, OnError, Outcome
from ._limits import Throttle
from ._retry import RetryPolicy, RetryState, next_delay
from ._spool import Spool
from ._spooling import PROBE_INTERVAL, SpoolGate

logger = logging.getLogger("analytics_sprig")

P = TypeVar("P")
B = TypeVar("B")

#: While messages keep coming, the planner takes them in batches this often instead of
#: being woken for each one (waking costs the app's thread ~0.5 µs per call).
PLAN_INTERVAL = 0.05
#: The planner places at most this many messages per hold of the lock (app threads wait
#: for it meanwhile), and reports what it dropped or rejected after each such chunk.
PLACE_CHUNK = 64
#: The planner's shortest sleep while it keeps time for busy senders (no busy loop).
SENDER_TIMER_MIN = 0.01
#: A spare sender thread with no work for this long exits (the last one stays).
IDLE_EXIT = 10.0
#: A lane head waits at most this many ``linger`` periods after its first message.
MAX_LINGER_FACTOR = 10

_live: weakref.WeakSet[BatchWorker[Any, Any]] = weakref.WeakSet()

_Report = Tuple[Outcome, List[Any], Optional[BaseException], Any]


class BatchWorker(Generic[P, B]):
    """Buffer, threads, limits and accounting behind one destination."""

    def __init__(
        self,
        backend: Backend[P, B, Any],
        *,
        max_queue_size: int,
        linger: float,
        max_concurrency: int,
        max_requests_per_second: Optional[float],
        retry: RetryPolicy,
        shutdown_timeout: float,
        on_error: Optional[OnError] = None,
        on_delivered: Optional[OnDelivered] = None,
        spool: Optional[Spool] = None,
    ) -> None:
        self._backend = backend
        self._gate = SpoolGate(spool) if spool is not None else None
        self._max_queue_size = max_queue_size
        self._linger = linger
        self._max_concurrency = max_concurrency
        self._max_rps = max_requests_per_second
        self._retry = retry
        self.shutdown_timeout = shutdown_timeout
        self._ledger = Ledger(
            name=backend.name,
            describe=backend.describe,
            skip_reasons=backend.skip_reasons,
            fail_reasons=backend.fail_reasons,
            on_error=on_error,
            on_delivered=on_delivered,
        )
        self._reset()
        _live.add(self)
        if self._gate is not None:
            self._start()  # rows an earlier process left in the spool go out first

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child."""
        ledger = self._ledger
        ledger.reset()
        self._lock = ledger.lock
        self._work = threading.Condition(self._lock)  # senders wait here
        self._arrivals = threading.Condition(self._lock)  # the planner waits here
        self._inbox: Deque[Any] = deque()
        self._planning: List[Any] = []  # popped from the inbox by the planner
        self._placed = 0  # how many of those are in their lanes already
        # Items handed to / placed by the planner, ever: a flush makes bodies due only
        # once the planner placed what had arrived before it (a half-planned user's body
        # would otherwise go out without the calls still in the inbox).
        self._handed = 0
        self._planned = 0
        self._flush_mark = 0
        self._epoch = 0  # bumped when everything pending is written off
        self._lanes: Lanes[P, B] = Lanes(
            self._backend.merger,
            max_bodies=self._max_queue_size,
            linger=self._linger,
            max_linger=self._linger * MAX_LINGER_FACTOR,
        )
        self._pressure = max(1, self._max_queue_size // 2)
        # A burst from a tight loop outruns the planner (it gets the GIL every 5 ms): as many
        # whole messages as bodies may wait for it, briefly.
        self._inbox_max = self._max_queue_size
        self._throttle = Throttle(self._max_concurrency, self._max_rps)
        self._planner: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        self._senders = 0
        self._to_start = 0  # senders counted in, not started yet
        self._threads_refused = False  # the interpreter refused a new thread (at exit)
        self._idle = 0
        self._in_flight = 0
        self._planner_asleep = False
        self._flushing = 0
        self._closed = False
        self._aborted = False
        self._sync_session: Optional[Session] = None
        self._sync_lock = threading.Lock()
        self._healthy = True  # the last attempt did not fail retryably (spool drains then)

    # -- the app's thread -----------------------------------------------------------------

    def skip(self, reason: Any) -> None:
        """Count a message the destination's routing skipped on the app's thread."""
        with self._lock:
            self._ledger.skip_received(reason)

    def account(self, plan: Plan[P]) -> None:
        """Count a message planned elsewhere that sends nothing: skipped, or rejected before
        it could be handed off (reported)."""
        with self._lock:
            self._ledger.received += 1
            self._ledger.pending += 1
        self._settle_plan(plan)

    def put(self, item: Any) -> None:
        """Hand ``item`` to the planner without blocking; drop it at the bound.

        No lock on this path: ``deque.append`` is atomic, and an item in the inbox counts
        as received and pending (``stats()`` adds ``len(inbox)`` under the lock, and the
        planner moves items out of it and into the counters under that same lock).
        """
        inbox = self._inbox
        if len(inbox) >= self._inbox_max or self._closed:
            self._drop_at_put(item)
            return
        inbox.append(item)
        if self._planner_asleep or self._planner is None:
            self._wake_planner()
        if self._closed:  # shut down meanwhile: this item must not wait forever
            self._sweep_inbox()

    def _wake_planner(self) -> None:
        with self._lock:
            if self._planner_asleep:
                self._planner_asleep = False
                self._arrivals.notify()
            start = self._planner is None
        if start:
            self._start()

    def _drop_at_put(self, item: Any) -> None:
        with self._lock:
            ledger = self._ledger
            ledger.received += 1
            ledger.pending += 1
            reason = DropReason.SHUTDOWN if self._closed else DropReason.QUEUE_FULL
            ledger.settle(Outcome.DROPPED, 1, reason)
            ledger.begin_report()
        self._report_drop(reason, [self._backend.ref(item)])

    def _take_inbox(self) -> List[Any]:
        """Move every item of the inbox into the counters (the caller holds the lock)."""
        inbox = self._inbox
        items = [inbox.popleft() for _ in range(len(inbox))]
        self._ledger.received += len(items)
        self._ledger.pending += len(items)
        self._handed += len(items)
        return items

    def _sweep_inbox(self) -> None:
        """Drop what reached the inbox after a shutdown (a call racing it)."""
        with self._lock:
            if not self._aborted:
                return  # the shutdown in progress still handles the inbox
            items = self._take_inbox()
            if not items:
                return
            self._ledger.settle(Outcome.DROPPED, len(items), DropReason.SHUTDOWN)
            self._ledger.begin_report()
        self._report_drop(DropReason.SHUTDOWN, [self._backend.ref(i) for i in items])

    def put_bodies(self, bodies: List[Tuple[str, B, List[Any]]]) -> None:
        """Queue bodies built elsewhere (a replay): each is sent as it is, in order."""
        with self._lock:
            now = time.monotonic()
            for key, payload, refs in bodies:
                self._ledger.received += len(refs)
                self._ledger.pending += len(refs)
                self._lanes.add_body(key, payload, refs, now)
            self._wake_senders(now, self._flushing_now())
        self._start_senders()
        self._start()

    def deliver_now(self, item: Any) -> None:
        """Plan and send ``item`` in the caller's thread (Segment's ``sync_mode``)."""
        ledger = self._ledger
        with self._lock:
            ledger.received += 1
            ledger.pending += 1
            if self._closed:
                ledger.settle(Outcome.DROPPED, 1, DropReason.SHUTDOWN)
                ledger.begin_report()
                closed = True
            else:
                closed = False
        if closed:
            self._report_drop(DropReason.SHUTDOWN, [self._backend.ref(item)])
            return
        plan = self._plan(item)
        if not isinstance(plan, Part):
            self._settle_plan(plan)
            return
        body: Body[B] = Body(plan.key, self._backend.merger.start(plan.key, plan.part),
                             [plan.ref], time.monotonic(), -1)
        with self._sync_lock:
            error = self._send_inline(body)
        outcome = Outcome.DELIVERED if error is None else Outcome.FAILED
        with self._lock:
            ledger.settle(outcome, 1)
            report = ledger.wants_report(outcome)
            if report:
                ledger.begin_report()
        if report:
            ledger.report(outcome, body.refs, error)

    def _send_inline(self, body: Body[B]) -> Optional[BaseException]:
        """Send with retries in this thread, sleeping between attempts."""
        state = RetryState()
        while True:
            if self._sync_session is None:
                self._sync_session = self._backend.open_session()
            error = self._attempt_once(body, self._sync_session)
            if error is None:
                return None
            step = next_delay(error, self._retry, state)
            if step is None:
                return error
            with self._lock:
                self._ledger.retries += 1
            time.sleep(step[0])

    # -- the planner thread ---------------------------------------------------------------

    def _start(self) -> bool:
        """Start the planner (and a first sender) if they are not running."""
        with self._lock:
            if self._planner is not None or self._aborted:
                return self._planner is not None
            thread = threading.Thread(target=self._plan_loop, name="analytics-sprig-planner",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: flush() works inline instead
                return False
            self._planner = thread
            self._threads.append(thread)
        return True

    def _plan_loop(self) -> None:
        while True:
            with self._lock:
                if not self._inbox and not self._aborted and not self._flushing:
                    # Let calls gather for a batch; nobody needs to wake us for them.
                    self._arrivals.wait(PLAN_INTERVAL)
                claim = self._claim_limit()
                while not self._inbox and not self._aborted and not claim:
                    self._planner_asleep = True
                    if self._inbox:
                        break  # appended before the app could see the flag: no wake-up
                    self._arrivals.wait(self._planner_timeout())
                    self._planner_asleep = False
                    self._wake_senders(time.monotonic(), self._flushing_now())
                    if self._to_start:
                        break
                    claim = self._claim_limit()
                self._planner_asleep = False
                if self._aborted:
                    return
                items = self._take_inbox()
                self._planning = items
                self._placed = 0
                epoch = self._epoch
            try:
                self._start_senders()
                if claim:
                    self._unspool(claim)
                if items:
                    self._plan_and_place(items, epoch)
            except Exception:  # a bug must not stop delivery for the process's life
                logger.exception("analytics_sprig planner error")
            finally:
                with self._lock:
                    if self._epoch == epoch:
                        self._planning = []  # whole messages: not kept a moment longer
                        self._placed = 0
                del items

    def _planner_timeout(self) -> Optional[float]:
        """How long the planner may sleep (the caller holds the lock).

        It also keeps time for the senders: a body that becomes due while every sender is
        in flight would otherwise wait for one of them to come back; at that moment the
        planner starts another sender (up to the concurrency).
        """
        timeouts: List[float] = []
        gate = self._gate
        now = time.monotonic()
        if gate is not None and gate.usable and not self._closed:
            timeouts.append(max(SENDER_TIMER_MIN, gate.next_wake() - now))
        if not self._idle and self._senders < self._throttle.concurrency:
            due = self._lanes.next_time()
            if due is not None:
                timeouts.append(max(SENDER_TIMER_MIN, due - now))
        return min(timeouts) if timeouts else None

    def _claim_limit(self) -> int:
        """How many spooled rows to claim back now (the caller holds the lock).

        While the destination fails, one row at a time, and only when nothing else is
        being sent: it probes, with its own retries, whether the outage is over.
        """
        gate = self._gate
        if gate is None or self._closed:
            return 0
        now = time.monotonic()
        if not self._healthy:
            if self._lanes.bodies or not gate.due(now, False):
                return 0
            gate.next_poll = now + PROBE_INTERVAL
            return 1
        room = self._pressure - self._lanes.bodies
        if room <= 0 or not gate.due(now, bool(self._flushing)):
            return 0
        return room

    def _unspool(self, limit: int) -> None:
        """Claim rows back from the spool into their lanes, oldest first."""
        gate = self._gate
        assert gate is not None
        rows, waiting = gate.claim(limit)
        with self._lock:
            now = time.monotonic()
            gate.claimed(now, len(rows), waiting)
            count = 0
            for row in rows:
                refs = [tuple(ref) if isinstance(ref, list) else ref for ref in row.refs]
                self._lanes.add_unspooled(row.key, row.payload, refs, now, row.id)
                count += len(refs)
            self._ledger.unspooled += count
            self._ledger.pending += count
            if rows:
                self._wake_senders(now, True)
        self._start_senders()

    def _plan(self, item: Any) -> Plan[P]:
        try:
            return self._backend.plan(item)
        except Exception as exc:  # plan() is total by contract; this guards against a bug
            logger.exception("%s could not plan a message", self._backend.name)
            return self._backend.rejected(item, exc)

    def _plan_and_place(self, items: List[Any], epoch: int) -> None:
        reports: List[_Report] = []
        try:
            for start in range(0, len(items), PLACE_CHUNK):
                chunk = items[start : start + PLACE_CHUNK]
                plans = [self._plan(item) for item in chunk]
                spooled: List[Part[P]] = []
                with self._lock:
                    if epoch != self._epoch:
                        return  # written off at a shutdown deadline while we planned
                    self._placed += len(chunk)
                    self._planned += len(chunk)
                    self._place(plans, reports, spooled)
                self._start_senders()
                if spooled:
                    self._store(plan_bodies(self._backend.merger,
                                            [(p.key, p.part, p.ref) for p in spooled]))
                done, reports[:] = list(reports), []
                for report in done:
                    self._ledger.report(*report)
        finally:
            for report in reports:
                self._ledger.report(*report)

    def _place(self, plans: List[Plan[P]], reports: List[_Report],
               spooled: List[Part[P]]) -> None:
        """Put planned messages in their lanes, or in ``spooled`` when they go to the spool
        (the caller holds the lock)."""
        ledger = self._ledger
        lanes = self._lanes
        gate = self._gate
        now = time.monotonic()
        started = 0
        for plan in plans:
            if isinstance(plan, Part):
                if gate is not None and plan.key in gate.keys:
                    spooled.append(plan)  # older calls of this key wait in the spool
                elif lanes.add(plan.key, plan.part, plan.ref, now) is not None:
                    started += 1
                elif gate is not None and gate.usable:
                    gate.keys.add(plan.key)
                    gate.has_rows = True
                    spooled.append(plan)  # beyond the memory bound: to disk, not lost
                else:
                    self._overflow(plan, reports)
            elif isinstance(plan, Skip):
                ledger.settle(Outcome.SKIPPED, 1, plan.reason)
            else:
                ledger.settle(Outcome.FAILED, 1, plan.reason)
                ledger.begin_report()
                reports.append((Outcome.FAILED, [plan.ref], plan.error, plan.reason))
        flushing = self._flushing_now()
        if started or flushing:
            # The planner starts a sender only when there is none: starting one waits for it
            # to run, and the planner must keep up with the app. Senders start the others.
            self._wake_senders(now, flushing, spawn=not self._senders)

    def _overflow(self, plan: Part[P], reports: List[_Report]) -> None:
        """A message needs a body beyond ``max_queue_size``: drop it (caller holds lock)."""
        self._ledger.settle(Outcome.DROPPED, 1, DropReason.QUEUE_FULL)
        self._ledger.begin_report()
        error = self._backend.dropped(
            DropReason.QUEUE_FULL,
            f"{self._backend.name} buffer is full (max_queue_size={self._max_queue_size} "
            "bodies); message dropped",
        )
        reports.append((Outcome.DROPPED, [plan.ref], error, DropReason.QUEUE_FULL))

    def _settle_plan(self, plan: Plan[P]) -> None:
        """Account for a pending message whose plan sends nothing (skip or reject)."""
        reports: List[_Report] = []
        with self._lock:
            if isinstance(plan, Skip):
                self._ledger.settle(Outcome.SKIPPED, 1, plan.reason)
            elif isinstance(plan, Reject):
                self._ledger.settle(Outcome.FAILED, 1, plan.reason)
                self._ledger.begin_report()
                reports.append((Outcome.FAILED, [plan.ref], plan.error, plan.reason))
        for report in reports:
            self._ledger.report(*report)

    # -- sender threads -------------------------------------------------------------------

    def _spawn_sender(self) -> None:
        """Count one more sender in; :meth:`_start_senders` starts it once the caller has
        released the lock (the caller holds it)."""
        if self._aborted:
            return
        self._senders += 1
        self._to_start += 1

    def _start_senders(self) -> None:
        """Start the senders counted in (never under the lock: ``Thread.start()`` waits for
        the new thread to run, which under GIL contention takes a while, and a planner or
        sender stuck holding the lock meanwhile would stall the whole engine)."""
        while True:
            with self._lock:
                if not self._to_start:
                    return
                self._to_start -= 1
                if self._aborted:
                    self._senders -= 1
                    continue
            thread = threading.Thread(target=self._send_loop, name="analytics-sprig-sender",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: flush() sends inline
                with self._lock:
                    self._senders -= 1 + self._to_start
                    self._to_start = 0
                    self._threads_refused = True
                    self._ledger.changed.notify_all()  # a waiting flush() sends inline
                return
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _flushing_now(self) -> bool:
        """Whether every lane head is due now: a flush (once what arrived before it is
        planned), a shutdown, or a buffer half full."""
        if self._lanes.bodies >= self._pressure:
            return True
        return bool(self._flushing or self._closed) and self._planned >= self._flush_mark

    def _next_body(self) -> Optional[Body[B]]:
        """Wait for the next body this thread may send; ``None``: the thread exits."""
        idle_since = time.monotonic()
        with self._lock:
            while not self._aborted:
                now = time.monotonic()
                flushing = self._flushing_now()
                throttle = self._throttle
                wait = throttle.wait(now, self._in_flight)
                if wait == 0:
                    body = self._lanes.next_ready(now, flushing)
                    if body is not None:
                        self._lanes.dispatch(body, now)
                        self._in_flight += 1
                        throttle.started(now)
                        self._wake_senders(now, flushing)
                        return body
                    due = self._lanes.next_time()
                    wait = None if due is None else max(0.0, due - now)
                if self._senders > 1 and now - idle_since >= IDLE_EXIT:
                    break
                self._idle += 1
                try:
                    self._work.wait(IDLE_EXIT if wait is None else min(wait, IDLE_EXIT))
                finally:
                    self._idle -= 1
            self._senders -= 1
            return None

    def _wake_senders(self, now: float, flushing: bool, spawn: bool = True) -> None:
        """Work may be ready: wake an idle sender, or start one more (caller holds lock).

        A sender that takes a body calls this again, so senders chain up quickly to the
        throttle's concurrency while ready work lasts.
        """
        if self._idle:
            if flushing:
                self._work.notify_all()
            else:
                self._work.notify()
            return
        if (self._senders > self._in_flight or self._senders >= self._throttle.concurrency
                or not spawn):
            return  # a sender is between bodies (it looks next), or the limit is reached
        if self._senders:
            lanes = self._lanes
            if not (flushing and lanes.has_waiting()):
                due = lanes.next_time()
                if due is None or due > now:
                    if due is not None and self._planner_asleep:
                        self._arrivals.notify()  # every sender is busy: the planner keeps time
                    return
        self._spawn_sender()

    def _send_loop(self) -> None:
        session: Optional[Session] = None
        try:
            while True:
                body = self._next_body()
                if body is None:
                    return
                self._start_senders()  # the ones taking this body may have asked for
                if session is None:
                    session = self._backend.open_session()
                self._attempt(body, session)
        except Exception:
            logger.exception("analytics_sprig sender thread failed")
            with self._lock:
                self._senders -= 1
        finally:
            if session is not None:
                try:
                    session.close()
                except Exception:
                    logger.debug("closing a session failed", exc_info=True)

    def _attempt_once(self, body: Body[B], session: Session) -> Optional[BaseException]:
        """One attempt; returns its error (``None``: sent). Counts the request."""
        backend = self._backend
        try:
            backend.precheck()
        except Exception as exc:
            return exc  # failed fast, without a request
        with self._lock:
            self._ledger.requests += 1
        try:
            backend.send(session, body.payload)
        except Exception as exc:
            return exc
        return None

    def _attempt(self, body: Body[B], session: Session) -> None:
        error = self._attempt_once(body, session)
        now = time.monotonic()
        # This thread owns the body while it is in flight: decide before taking the lock.
        step = None
        if error is not None:
            if body.retry is None:
                body.retry = RetryState()
            step = next_delay(error, self._retry, body.retry)
        gate = self._gate
        keep = (error is not None and step is None and gate is not None and gate.usable
                and (getattr(error, "retryable", False)
                     # a rejected key is this process's problem, not the rows': keep them
                     or (bool(body.spool_ids) and getattr(error, "deferrable", False))))
        if step is None and not keep and body.spool_ids and gate is not None:
            gate.done(body.spool_ids)  # before it counts as settled: flush() waits for it
        report: Optional[_Report] = None
        spool: List[Body[B]] = []
        with self._lock:
            self._in_flight -= 1
            self._work.notify()  # a slot is free: a waiting sender may go
            if body.written_off:
                return  # counted at a shutdown deadline while this attempt ran
            ledger = self._ledger
            throttle = self._throttle
            if error is None:
                throttle.succeeded(now)
                if not self._healthy:
                    self._healthy = True
                    if gate is not None:
                        gate.next_poll = 0.0  # the outage is over: claim back at once
                    self._arrivals.notify()
            elif getattr(error, "retryable", False) or getattr(error, "deferrable", False):
                self._healthy = False  # no more rows out of the spool until one succeeds
            if step is not None:
                delay, server_pause = step
                ledger.retries += 1
                if server_pause:
                    throttle.pause(now, delay)
                elif getattr(error, "throttled", False):
                    throttle.throttled(now, body.started)
                self._lanes.park(body, now + delay)
                logger.debug("%s request failed (%s); retrying in %.2fs",
                             self._backend.name, error, delay)
                return
            if keep and gate is not None:
                # Kept for later, with the bodies of its key behind it (they must not
                # overtake it).
                spool = [body, *self._lanes.take_lane(body.key, body)]
                self._lanes.finish(body)
                gate.keys.add(body.key)
                gate.has_rows = True
            else:
                outcome = Outcome.DELIVERED if error is None else Outcome.FAILED
                self._lanes.finish(body)
                ledger.settle(outcome, len(body.refs))
                if ledger.wants_report(outcome):
                    ledger.begin_report()
                    report = (outcome, body.refs, error, None)
        if spool:
            self._store(spool)
        elif report is not None:
            self._ledger.report(*report)

    def _store(self, bodies: List[Body[B]]) -> None:
        """Keep ``bodies`` (pending) in the spool and account for it (not under the lock)."""
        gate = self._gate
        assert gate is not None
        refused, evicted = gate.store(bodies)
        ledger = self._ledger
        reports: List[_Report] = []
        refused_ids = {id(body) for body in refused}
        kept = [ref for body in bodies if id(body) not in refused_ids for ref in body.refs]
        lost = [ref for body in refused for ref in body.refs]
        old = [ref for row in evicted for ref in row.refs]
        with self._lock:
            if kept:
                gate.has_rows = True
                self._arrivals.notify()  # the planner claims them back when it may
            ledger.settle(Outcome.SPOOLED, len(kept))
            if kept:
                ledger.begin_report()
                reports.append((Outcome.SPOOLED, kept, None, None))
            if old:  # rows of earlier runs pushed out of a full spool: out, and lost
                ledger.unspooled += len(old)
                ledger.pending += len(old)
            if lost or old:
                ledger.settle(Outcome.DROPPED, len(lost) + len(old), DropReason.SPOOL_FULL)
                ledger.begin_report()
                error = self._backend.dropped(
                    DropReason.SPOOL_FULL,
                    f"the spool is full or unusable (spool_max_bytes={gate.spool.max_bytes}); "
                    "message dropped",
                )
                reports.append((Outcome.DROPPED, lost + old, error, DropReason.SPOOL_FULL))
        for report in reports:
            ledger.report(*report)

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Send everything pending now; block until it settled or ``timeout`` passed.

        ``True`` when nothing is pending. Inside ``on_error`` / ``on_delivered`` it does
        not wait for the report it is part of.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        ledger = self._ledger
        reentrant = ledger.in_callback()
        with self._lock:
            if not ledger.busy() and not self._inbox and not self._spool_waits():
                return True
            self._flushing += 1
            self._flush_mark = self._handed + len(self._inbox)
            self._arrivals.notify()
            if self._lanes.bodies and not self._aborted:
                self._wake_senders(time.monotonic(), self._flushing_now())
            needs_start = self._planner is None and not self._aborted
        self._start_senders()
        try:
            if (needs_start and not self._start()) or self._threads_refused:
                self._drain_inline(deadline)
            with self._lock:

                def done() -> bool:
                    if self._inbox or (ledger.pending if reentrant else ledger.busy()):
                        return False
                    return not self._spool_waits()

                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                woke = ledger.changed.wait_for(lambda: done() or self._threads_refused,
                                               remaining)
                if woke and done():
                    return True
            # A sender could not start (interpreter exit): this thread sends.
            self._drain_inline(deadline)
            with self._lock:
                return done()
        finally:
            with self._lock:
                self._flushing -= 1

    def _spool_waits(self) -> bool:
        """Whether a flush should wait for rows in the spool: they are sent too, while the
        destination answers (the caller holds the lock)."""
        gate = self._gate
        return (gate is not None and gate.has_rows and not gate.stalled and gate.usable
                and self._healthy and not self._aborted and not self._closed)

    def _drain_inline(self, deadline: Optional[float]) -> None:
        """No sender thread can start (interpreter exit, Python 3.12+): send from this
        thread, planning too if there is no planner, until drained or ``deadline``."""
        session: Optional[Session] = None
        try:
            while deadline is None or time.monotonic() < deadline:
                items: List[Any] = []
                with self._lock:
                    if self._planner is None or not self._planner.is_alive():
                        items = self._take_inbox()
                        self._planning = items
                        self._placed = 0
                    epoch = self._epoch
                if items:
                    self._plan_and_place(items, epoch)
                with self._lock:
                    now = time.monotonic()
                    body = self._lanes.next_ready(now, True)
                    if body is not None:
                        self._lanes.dispatch(body, now)
                        self._in_flight += 1
                    due = self._lanes.next_time()
                    waiting = bool(self._inbox) or self._placed < len(self._planning)
                    # A sender started before exit still has a body out: once it settles,
                    # that user's next body may go, and the flush must not stop before.
                    elsewhere = self._in_flight > 0
                if body is not None:
                    if deadline is None:
                        if session is None:
                            session = self._backend.open_session()
                        self._attempt(body, session)
                    else:  # each attempt ends by the deadline, however slow the server
                        bounded = self._backend.open_session(deadline - time.monotonic())
                        try:
                            self._attempt(body, bounded)
                        finally:
                            bounded.close()
                elif waiting or elsewhere:
                    time.sleep(0.005)  # the planner is placing what arrived, or a sender sends
                elif due is None or (deadline is not None and due >= deadline):
                    return
                else:
                    time.sleep(max(0.0, due - time.monotonic()))
        finally:
            if session is not None:
                session.close()

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop the threads.

        Whatever is still pending at the deadline is dropped, counted and reported; later
        messages are dropped.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._aborted:
                return  # shut down already: threads left are finishing written-off work
            self._closed = True
            self._flush_mark = self._handed + len(self._inbox)
            idle = not self._threads and not self._ledger.busy() and not self._inbox
        if idle:
            return
        # With a spool, part of the time is kept for writing what is still pending.
        reserve = min(1.0, 0.2 * timeout) if self._gate is not None else 0.0
        if not self.flush(max(0.0, timeout - reserve)):
            self._write_off()
        with self._lock:
            self._aborted = True
            self._arrivals.notify_all()
            self._work.notify_all()
            threads = list(self._threads)
        self._sweep_inbox()
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._sync_lock:
            if self._sync_session is not None:
                self._sync_session.close()
                self._sync_session = None

    def _write_off(self) -> None:
        """A shutdown deadline passed: keep everything pending in the spool, or drop it."""
        with self._lock:
            bodies = self._lanes.take_all()
            unplanned = self._planning[self._placed :] + self._take_inbox()
            self._planning = []
            self._placed = 0
            self._epoch += 1
            gate = self._gate
            if gate is None or not gate.usable:
                refs = [ref for body in bodies for ref in body.refs]
                refs.extend(self._backend.ref(item) for item in unplanned)
                count = len(refs)  # not ledger.pending: a sync-mode send settles on its own
                if not count:
                    return
                self._ledger.settle(Outcome.DROPPED, count, DropReason.SHUTDOWN)
                self._ledger.begin_report()
        if gate is not None and gate.usable:
            plans = [self._plan(item) for item in unplanned]
            parts = [(p.key, p.part, p.ref) for p in plans if isinstance(p, Part)]
            for plan in plans:
                if not isinstance(plan, Part):
                    self._settle_plan(plan)
            self._store(bodies + plan_bodies(self._backend.merger, parts))
            return
        error = self._backend.dropped(
            DropReason.SHUTDOWN,
            f"{count} message{'' if count == 1 else 's'} still pending at the shutdown deadline",
        )
        self._ledger.report(Outcome.DROPPED, refs, error, DropReason.SHUTDOWN)

    def _report_drop(self, reason: DropReason, refs: List[Any]) -> None:
        if reason is DropReason.QUEUE_FULL:
            text = (f"{self._backend.name} queue is full (max_queue_size="
                    f"{self._max_queue_size}); message dropped")
        else:
            text = f"{self._backend.name} destination is shut down; message dropped"
        self._ledger.report(Outcome.DROPPED, refs, self._backend.dropped(reason, text), reason)

    def stats(self) -> Dict[str, int]:
        """A consistent snapshot of every counter."""
        with self._lock:
            stats = self._ledger.snapshot()
            waiting = len(self._inbox)  # handed off by the app, not yet taken by the planner
            stats["received"] += waiting
            stats["pending"] += waiting
            stats["in_flight"] = self._in_flight
            stats["concurrency"] = self._throttle.concurrency
            if self._gate is not None:
                stats["spool_reclaimed"] = self._gate.spool.reclaimed
        return stats

    def after_fork_in_child(self) -> None:
        """The child of ``fork()`` starts empty with no threads; the parent keeps its own."""
        self._reset()
        self._backend.after_fork_in_child()
        if self._gate is not None:
            self._gate.after_fork_in_child()


def _after_fork_in_child() -> None:
    for worker in list(_live):
        worker.after_fork_in_child()


def _shutdown_all_at_exit() -> None:
    for worker in list(_live):
        try:
            worker.shutdown(worker.shutdown_timeout)
        except Exception:
            logger.exception("analytics_sprig: error during the final flush at exit")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_all_at_exit)
