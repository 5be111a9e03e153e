"""The ledger: the one place where every message's outcome is counted, logged and reported.

Like sentry-python's ``record_lost_event``: whatever path a message takes (skipped by
routing, delivered, failed for good, dropped at a bound, kept in the spool), it ends here
exactly once, so ``received + unspooled == skipped + delivered + failed + dropped +
spooled + pending`` holds at every moment (each counter changes under :attr:`lock`,
together with the state it describes). Callbacks (``on_error``, ``on_delivered``) run
outside the lock, isolated: an exception in them is logged, never raised.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger("analytics_sprig")

OnError = Callable[[BaseException, List[Any]], Any]
OnDelivered = Callable[[List[Any]], Any]
Describe = Callable[[Sequence[Any]], List[Any]]

#: A WARNING about one kind of loss at most this often; the ones in between are summed.
WARN_EVERY = 10.0


class Outcome(enum.Enum):
    """How a message ended (``pending`` is not an outcome: it has not ended yet)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DROPPED = "dropped"
    SKIPPED = "skipped"
    SPOOLED = "spooled"


class DropReason(str, enum.Enum):
    """Why the engine dropped a message; counted as ``dropped_<value>``."""

    QUEUE_FULL = "queue_full"
    SHUTDOWN = "shutdown"
    SPOOL_FULL = "spool_full"


class Ledger:
    """Counters for one destination, and the reporting of every loss.

    ``skip_reasons`` and ``fail_reasons`` are the backend's (its routing knows why it skips);
    their ``value`` names the ``skipped_<reason>`` / ``failed_<reason>`` counters.
    """

    def __init__(
        self,
        *,
        name: str,
        describe: Describe,
        skip_reasons: Iterable[enum.Enum],
        fail_reasons: Iterable[enum.Enum] = (),
        on_error: Optional[OnError] = None,
        on_delivered: Optional[OnDelivered] = None,
    ) -> None:
        self.name = name
        self._describe = describe
        self._skip_reasons = tuple(skip_reasons)
        self._fail_reasons = tuple(fail_reasons)
        self._on_error = on_error
        self._on_delivered = on_delivered
        self.reset()

    def reset(self) -> None:
        """Fresh counters and a fresh lock (at construction and in a forked child)."""
        self.lock = threading.Lock()
        #: Notified whenever ``pending`` or ``reporting`` drops; flush() waits on it.
        self.changed = threading.Condition(self.lock)
        self.received = 0
        self.unspooled = 0
        self.pending = 0
        self.reporting = 0
        self.requests = 0
        self.retries = 0
        self.counts: Dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.by_reason: Dict[Tuple[Outcome, str], int] = {}
        for reason in self._skip_reasons:
            self.by_reason[(Outcome.SKIPPED, reason.value)] = 0
        for reason in self._fail_reasons:
            self.by_reason[(Outcome.FAILED, reason.value)] = 0
        for reason in DropReason:
            self.by_reason[(Outcome.DROPPED, reason.value)] = 0
        self._local = threading.local()
        self._warned: Dict[Tuple[Outcome, str], float] = {}
        self._unwarned: Dict[Tuple[Outcome, str], int] = {}

    # -- counting (the caller holds ``lock``) ---------------------------------------------

    def settle(self, outcome: Outcome, count: int, reason: Optional[enum.Enum] = None) -> None:
        """``count`` pending messages ended as ``outcome``."""
        self.pending -= count
        self.counts[outcome] += count
        if reason is not None:
            key = (outcome, reason.value)
            self.by_reason[key] = self.by_reason.get(key, 0) + count
        if not self.pending:
            self.changed.notify_all()

    def skip_received(self, reason: enum.Enum) -> None:
        """A message arrived and was skipped at once (routing)."""
        self.received += 1
        self.counts[Outcome.SKIPPED] += 1
        key = (Outcome.SKIPPED, reason.value)
        self.by_reason[key] = self.by_reason.get(key, 0) + 1

    def snapshot(self) -> Dict[str, int]:
        """Every counter, as ``stats()`` shows them."""
        stats = {
            "received": self.received,
            "skipped": self.counts[Outcome.SKIPPED],
            "delivered": self.counts[Outcome.DELIVERED],
            "failed": self.counts[Outcome.FAILED],
            "dropped": self.counts[Outcome.DROPPED],
            "pending": self.pending,
            "requests": self.requests,
            "retries": self.retries,
            "spooled": self.counts[Outcome.SPOOLED],
            "unspooled": self.unspooled,
        }
        for (outcome, reason), count in self.by_reason.items():
            stats[f"{outcome.value}_{reason}"] = count
        return stats

    def busy(self) -> bool:
        """Whether messages are pending or being reported (the caller holds ``lock``)."""
        return bool(self.pending or self.reporting)

    def in_callback(self) -> bool:
        """Whether this thread is inside ``on_error`` / ``on_delivered`` (flush must not
        wait for the report it is part of)."""
        return bool(getattr(self._local, "active", False))

    # -- reporting (without the lock) -----------------------------------------------------

    def begin_report(self) -> None:
        """Called under the lock when a settle will be reported: flush() waits for it."""
        self.reporting += 1

    def report(
        self,
        outcome: Outcome,
        refs: Sequence[Any],
        error: Optional[BaseException] = None,
        reason: Optional[enum.Enum] = None,
    ) -> None:
        """Log an outcome and call the callback for it; ends a :meth:`begin_report`."""
        try:
            self._log(outcome, len(refs), error, reason)
            if not refs:
                return
            if outcome is Outcome.DELIVERED and self._on_delivered is not None:
                self._call(self._on_delivered, self._describe(refs))
            elif outcome in (Outcome.FAILED, Outcome.DROPPED) and self._on_error is not None:
                self._call(self._on_error, error, self._describe(refs))
        finally:
            with self.lock:
                self.reporting -= 1
                if not self.reporting:
                    self.changed.notify_all()

    def wants_report(self, outcome: Outcome) -> bool:
        """Whether :meth:`report` has anything to do for ``outcome`` (saves a round trip
        through the lock on the delivery path when there is no ``on_delivered``)."""
        return outcome is not Outcome.DELIVERED or self._on_delivered is not None

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        self._local.active = True
        try:
            callback(*args)
        except Exception:
            logger.exception("%s callback %s raised", self.name,
                             getattr(callback, "__name__", "callback"))
        finally:
            self._local.active = False

    def _log(
        self,
        outcome: Outcome,
        count: int,
        error: Optional[BaseException],
        reason: Optional[enum.Enum],
    ) -> None:
        if outcome is Outcome.DELIVERED or not count:
            return
        if outcome is Outcome.SKIPPED:
            logger.debug("%s: skipped %d message(s) (%s)", self.name, count,
                         reason.value if reason is not None else "")
            return
        key = (outcome, reason.value if reason is not None else type(error).__name__)
        now = time.monotonic()
        last = self._warned.get(key)
        if last is not None and now - last < WARN_EVERY:
            self._unwarned[key] = self._unwarned.get(key, 0) + count
            logger.debug("%s: %s %d message(s): %s", self.name, outcome.value, count, error)
            return
        self._warned[key] = now
        earlier = self._unwarned.pop(key, 0)
        also = f" (and {earlier} more since the last warning)" if earlier else ""
        if outcome is Outcome.SPOOLED:
            logger.info("%s: kept %d message(s) in the spool for later delivery%s",
                        self.name, count, also)
        elif outcome is Outcome.DROPPED:
            logger.warning("%s: dropped %d message(s): %s%s", self.name, count, error, also)
        else:
            logger.warning("%s: %d message(s) failed: %s%s", self.name, count, error, also)
