"""Retry policy: which failures to retry, how long to wait. Pure functions, no I/O."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Optional, Tuple, TypeVar

from .._errors import SprigError

T = TypeVar("T")

#: 5xx statuses that will not change on retry (Not Implemented, HTTP Version Not Supported).
_FINAL_5XX = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx other than 501/505 may succeed later."""
    return status in (408, 429) or (500 <= status <= 599 and status not in _FINAL_5XX)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    Returns ``None`` when absent or unparseable, and never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, as analytics-python's consumer does.

    ``max_retries`` retries per request (so ``max_retries + 1`` attempts); backoff
    ``initial_backoff * 2**n`` capped at ``max_backoff``, with "equal jitter" (half fixed,
    half random) so a fleet does not retry in lockstep. ``Retry-After`` pauses do not spend
    a retry but are capped at ``max_retry_after`` each; everything a request waits is
    capped by ``max_total_wait``.
    """

    max_retries: int = 10
    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    max_retry_after: float = 300.0
    max_total_wait: float = 600.0

    def backoff(self, retry_number: int, rand: Optional[random.Random] = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * (2.0 ** min(retry_number, 62)))
        draw: float = (rand or random).random()
        return ceiling / 2 + draw * ceiling / 2


def next_delay(
    exc: BaseException, policy: RetryPolicy, retries_used: int, waited: float
) -> Optional[Tuple[float, int]]:
    """How long to wait before retrying after ``exc``, or ``None`` if it is final.

    Returns ``(delay, retries_used)``, with ``retries_used`` bumped unless the wait is a
    server-requested ``Retry-After`` pause (those spend no retry, only total wait).
    """
    if not getattr(exc, "retryable", False):
        return None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        delay = min(float(retry_after), policy.max_retry_after)
    elif retries_used >= policy.max_retries:
        return None
    else:
        delay = policy.backoff(retries_used)
        retries_used += 1
    if waited + delay > policy.max_total_wait:
        return None
    return delay, retries_used


def retry_call(
    send: Callable[[], T],
    policy: RetryPolicy,
    pause: Callable[[float], None],
    on_retry: Optional[Callable[[BaseException, float], None]] = None,
) -> T:
    """Call ``send()`` until it succeeds or fails for good (see :func:`next_delay`).

    ``pause(seconds)`` waits between attempts (the worker's is interruptible by shutdown);
    ``on_retry(exc, delay)`` is told of each retry. Errors other than :class:`SprigError`
    propagate at once.
    """
    retries_used = 0
    waited = 0.0
    while True:
        try:
            return send()
        except SprigError as exc:
            step = next_delay(exc, policy, retries_used, waited)
            if step is None:
                raise
            delay, retries_used = step
            waited += delay
            if on_retry is not None:
                on_retry(exc, delay)
            pause(delay)
