"""The delivery worker: a bounded queue, one background thread, retries, and the counters.

Modelled on sentry-python's background worker and OpenTelemetry's batch processor: the
app's thread only appends to a deque under a lock; one daemon thread wakes every
``flush_interval`` (or when the queue fills up, or on ``flush()``), maps and coalesces what
is waiting, and sends it. Every message is counted exactly once as skipped, delivered,
failed, dropped or pending, and every counter changes under one lock, so ``stats()`` is a
consistent snapshot and ``received == skipped + delivered + failed + dropped + pending``
holds at every moment.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from .._errors import MessageDropped, SprigAuthError, SprigError
from ..batching._retry import RetryPolicy, retry_call
from ._api import SprigClient
from ._mapping import Batch, PageNaming, coalesce, map_message
from ._routing import SKIP_REASONS

logger = logging.getLogger("analytics_sprig")

Message = Mapping[str, Any]
OnError = Callable[[BaseException, List[Message]], Any]

_live: weakref.WeakSet[DeliveryWorker] = weakref.WeakSet()


class _Aborted(Exception):
    """The shutdown deadline passed while a batch was being sent."""


class DeliveryWorker:
    """Queue, thread and accounting behind one :class:`~analytics_sprig.SprigDestination`."""

    def __init__(
        self,
        api: SprigClient,
        *,
        max_queue_size: int,
        flush_interval: float,
        max_batch_size: int,
        retry: RetryPolicy,
        max_requests_per_second: Optional[float],
        auth_cooldown: float,
        shutdown_timeout: float,
        on_error: Optional[OnError],
        page: PageNaming,
    ) -> None:
        self._api = api
        self._max_queue_size = max_queue_size
        self._flush_interval = flush_interval
        self._max_batch_size = max_batch_size
        self._retry = retry
        self._min_interval = 1.0 / max_requests_per_second if max_requests_per_second else 0.0
        self._auth_cooldown = auth_cooldown
        self.shutdown_timeout = shutdown_timeout
        self._on_error = on_error
        self._page = page
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._abort = threading.Event()
        self._queue: Deque[Message] = deque()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._epoch = 0  # bumped when pending messages are written off at a deadline
        self._inflight = 0
        # The messages being sent (by id, since dicts are unhashable), so a shutdown
        # deadline can report them to on_error; and on_error calls still running, so
        # flush() returns only after failures were reported.
        self._sending: Dict[int, List[Message]] = {}
        self._reporting = 0
        self._local = threading.local()
        self._overflowing = False
        self._auth_until = 0.0
        self._auth_error: Optional[SprigAuthError] = None
        self._next_slot = 0.0
        self._inline_deadline: Optional[float] = None
        self._wake_at = max(1, min(self._max_batch_size, self._max_queue_size // 2))
        self.received = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.requests = 0
        self.retries = 0
        self.auth_errors = 0
        self.skipped: Dict[str, int] = dict.fromkeys((*SKIP_REASONS, "unmappable"), 0)
        self.dropped_by: Dict[str, int] = {"queue_full": 0, "shutdown": 0}

    # -- app thread -----------------------------------------------------------------------

    def skip(self, reason: str) -> None:
        """Count a message routing decided not to send."""
        with self._lock:
            self.received += 1
            self.skipped[reason] += 1

    def put(self, message: Message) -> None:
        """Queue ``message`` for the worker without blocking; drop it if the queue is full."""
        with self._lock:
            self.received += 1
            queue = self._queue
            if self._closed or len(queue) >= self._max_queue_size:
                reason = "shutdown" if self._closed else "queue_full"
                self.dropped += 1
                self.dropped_by[reason] += 1
                first = not self._overflowing
                self._overflowing = True
            else:
                queue.append(message)
                wake = len(queue) == self._wake_at
                if self._thread is not None and not wake:
                    return
                reason = ""
        if not reason:
            if self._thread is None:
                self._start()
            if wake:  # otherwise the batch window runs its course, so calls coalesce
                self._wake.set()
            return
        self._report_drop(reason, [message], loud=first)

    def deliver_now(self, message: Message) -> None:
        """Deliver in the caller's thread (Segment's ``sync_mode``)."""
        with self._lock:
            self.received += 1
            if self._closed:
                self.dropped += 1
                self.dropped_by["shutdown"] += 1
                closed = True
            else:
                self._inflight += 1
                self._hold([message])
                epoch = self._epoch
                closed = False
        if closed:
            self._report_drop("shutdown", [message], loud=False)
            return
        self._send_messages([message], epoch)

    # -- worker thread --------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="analytics-sprig", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: flush() drains inline instead
                return
            self._thread = thread

    def _run(self) -> None:
        while not self._abort.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # a bug here must not kill delivery for the process's life
                logger.exception("analytics_sprig worker error")
            if self._closed and not self._queue:
                return

    def _drain(self) -> None:
        """Send everything that is queued now, one chunk of ``max_batch_size`` at a time."""
        while not self._abort.is_set():
            deadline = self._inline_deadline
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self._lock:
                queue = self._queue
                if not queue:
                    self._overflowing = False
                    return
                chunk = [queue.popleft() for _ in range(min(len(queue), self._max_batch_size))]
                self._inflight += len(chunk)
                self._hold(chunk)
                epoch = self._epoch
            self._send_messages(chunk, epoch)

    def _send_messages(self, messages: Sequence[Message], epoch: int) -> None:
        items = []
        for message in messages:
            try:
                payload = map_message(message, self._page)
            except Exception:  # mapping is total by design; this guards against a bug
                logger.exception("could not map a %s message", message.get("type"))
                payload = None
            if payload is None:
                self._settle([message], epoch, "unmappable")
            else:
                items.append((payload, message))
        for batch in coalesce(items):
            try:
                self._send_batch(batch)
            except _Aborted:
                return
            except SprigError as exc:
                self._settle(batch.messages, epoch, "failed", exc)
            except Exception as exc:
                logger.exception("unexpected error sending to Sprig")
                self._settle(batch.messages, epoch, "failed", exc)
            else:
                self._settle(batch.messages, epoch, "delivered")

    def _pause(self, seconds: float) -> None:
        deadline = self._inline_deadline
        if deadline is not None and time.monotonic() + seconds > deadline:
            raise _Aborted  # draining inline at exit: never wait past the deadline
        if seconds > 0 and self._abort.wait(seconds):
            raise _Aborted

    def _send_batch(self, batch: Batch) -> None:
        """Send one request with retries; raise the final error, or ``_Aborted``."""

        def attempt() -> None:
            if self._abort.is_set():
                raise _Aborted  # shut down: these messages were already written off
            self._check_auth_cooldown()
            self._rate_limit()
            with self._lock:
                self.requests += 1
            try:
                self._api.upsert_user(batch.body)
            except SprigAuthError as exc:
                self._auth_failed(exc)
                raise

        retry_call(attempt, self._retry, self._pause, self._count_retry)

    def _count_retry(self, exc: BaseException, delay: float) -> None:
        with self._lock:
            self.retries += 1
        logger.debug("Sprig request failed (%s); retrying in %.2fs", exc, delay)

    def _check_auth_cooldown(self) -> None:
        error = self._auth_error
        if error is not None and time.monotonic() < self._auth_until:
            raise error  # fail fast: no request while the key is known to be rejected

    def _auth_failed(self, exc: SprigAuthError) -> None:
        first = self._auth_error is None
        self._auth_error = exc
        self._auth_until = time.monotonic() + self._auth_cooldown
        with self._lock:
            self.auth_errors += 1
        if first:
            logger.error(
                "Sprig rejected the API key (HTTP %d): it is wrong or revoked, or it belongs "
                "to another Sprig environment (a Development key used for Production, or the "
                "reverse). Messages fail without being sent for %.0fs, then one request "
                "probes again.",
                exc.status_code, self._auth_cooldown,
            )
        else:
            logger.warning("Sprig still rejects the API key (HTTP %d)", exc.status_code)

    def _rate_limit(self) -> None:
        if not self._min_interval:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._min_interval
        self._pause(slot - now)

    def _settle(
        self,
        messages: Sequence[Message],
        epoch: int,
        outcome: str,
        error: Optional[BaseException] = None,
    ) -> None:
        """Move ``messages`` from pending to ``outcome`` (once: a deadline may have won)."""
        count = len(messages)
        report = outcome == "failed" and error is not None
        with self._lock:
            if epoch != self._epoch:
                return  # already written off as dropped at a shutdown deadline
            self._inflight -= count
            self._release(messages)
            if outcome == "delivered":
                self.delivered += count
                if self._auth_error is not None:
                    self._auth_error = None
                    logger.info("Sprig accepts the API key again")
            elif outcome == "failed":
                self.failed += count
            else:
                self.skipped[outcome] += count
            if report:
                self._reporting += 1
            elif self._is_idle():
                self._idle.notify_all()
        if report and error is not None:
            self._local.reporting = True  # an on_error that calls flush() must not wait on itself
            try:
                logger.warning("%d message(s) failed to reach Sprig: %s", count, error)
                self._call_on_error(error, messages)
            finally:
                self._local.reporting = False
                with self._lock:
                    self._reporting -= 1
                    if self._is_idle():
                        self._idle.notify_all()
        elif outcome == "unmappable":
            logger.debug("skipped a %s message Sprig cannot represent", messages[0].get("type"))

    def _is_idle(self) -> bool:
        """Nothing queued, sent or being reported (the caller holds the lock)."""
        return not self._queue and not self._inflight and not self._reporting

    def _is_drained(self) -> bool:
        """Nothing queued or sent (the caller holds the lock)."""
        return not self._queue and not self._inflight

    def _hold(self, messages: Sequence[Message]) -> None:
        """Remember messages going in flight (the caller holds the lock)."""
        sending = self._sending
        for message in messages:
            sending.setdefault(id(message), []).append(message)

    def _release(self, messages: Sequence[Message]) -> None:
        """Forget settled in-flight messages (the caller holds the lock)."""
        sending = self._sending
        for message in messages:
            held = sending.get(id(message))
            if held:
                held.pop()
                if not held:
                    del sending[id(message)]

    def _call_on_error(self, error: BaseException, messages: Sequence[Message]) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(error, list(messages))
        except Exception:
            logger.exception("on_error callback raised")

    def _report_drop(self, reason: str, messages: List[Message], *, loud: bool) -> None:
        if reason == "queue_full":
            text = f"Sprig queue is full (max_queue_size={self._max_queue_size}); message dropped"
        else:
            text = "Sprig destination is shut down; message dropped"
        (logger.warning if loud else logger.debug)("%s", text)
        self._call_on_error(MessageDropped(reason, text), messages)

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing is pending or ``timeout`` passes; ``True`` when drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None and self._queue:
            self._start()
            if self._thread is None:
                # No thread can be started (interpreter exit): send from this thread.
                self._drain_inline(deadline)
        if self._queue:
            # Only when there is work: a spare wake-up would cut the next batch window short
            # and split calls that should coalesce.
            self._wake.set()
        reentrant = getattr(self._local, "reporting", False)
        with self._lock:
            drained: bool = self._idle.wait_for(
                self._is_drained if reentrant else self._is_idle,
                None if deadline is None else max(0.0, deadline - time.monotonic()),
            )
        return drained

    def _drain_inline(self, deadline: Optional[float]) -> None:
        self._inline_deadline = deadline
        try:
            self._drain()
        finally:
            self._inline_deadline = None

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop the thread.

        Whatever is still pending at the deadline is dropped, counted and reported.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            was_closed = self._closed
            self._closed = True
        if was_closed and self._thread is None:
            return
        drained = self.flush(timeout)
        if not drained:
            self._write_off()
        self._abort.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None
        self._api.close()

    def _write_off(self) -> None:
        """Count everything still pending as dropped (shutdown deadline)."""
        with self._lock:
            # In-flight messages first: they were queued before the ones still waiting.
            messages = [m for held in self._sending.values() for m in held]
            messages.extend(self._queue)
            count = len(self._queue) + self._inflight
            self._queue.clear()
            self._sending.clear()
            self._inflight = 0
            self._epoch += 1
            self.dropped += count
            self.dropped_by["shutdown"] += count
            self._idle.notify_all()
        if count:
            logger.warning(
                "Sprig destination shut down with %d message(s) undelivered; dropped them",
                count,
            )
            self._call_on_error(
                MessageDropped("shutdown", f"{count} message(s) pending at shutdown deadline"),
                messages,
            )

    def stats(self) -> Dict[str, int]:
        """A consistent snapshot of every counter (see ``SprigDestination.stats``)."""
        with self._lock:
            skipped = sum(self.skipped.values())
            stats = {
                "received": self.received,
                "skipped": skipped,
                "delivered": self.delivered,
                "failed": self.failed,
                "dropped": self.dropped,
                "pending": len(self._queue) + self._inflight,
                "requests": self.requests,
                "retries": self.retries,
                "auth_errors": self.auth_errors,
            }
            stats.update({f"skipped_{k}": v for k, v in self.skipped.items()})
            stats.update({f"dropped_{k}": v for k, v in self.dropped_by.items()})
        return stats

    def after_fork_in_child(self) -> None:
        """The child of ``fork()`` starts empty with no thread; the parent keeps its own."""
        self._reset()
        self._api.forget_connections()


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
