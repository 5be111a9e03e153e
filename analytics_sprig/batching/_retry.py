"""Retry policy: which failures to retry, how long to wait. Pure functions, no I/O.

Errors say what they allow through three attributes, read with ``getattr`` so this module
knows no backend: ``retryable`` (may succeed later), ``retry_after`` (seconds the server
asked for, or ``None``) and ``throttled`` (the server's rate limit answered).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, TypeVar

T = TypeVar("T")

#: A server's ``Retry-After`` is never taken as shorter than this (unless ``max_retry_after``
#: is): ``Retry-After: 0.000001`` must not turn into a request storm.
RETRY_AFTER_FLOOR = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, as analytics-python's consumer does.

    ``max_retries`` counted retries per request, each after ``initial_backoff * 2**n``
    seconds (capped at ``max_backoff``) with "equal jitter" (half fixed, half random) so a
    fleet does not retry in lockstep. A server's ``Retry-After`` is a pause that spends no
    retry, clamped to [min(1 s, ``max_retry_after``), ``max_retry_after``]; at most
    ``max_retries`` such pauses per request, so a request makes at most
    ``2 * max_retries + 1`` attempts whatever the server says. ``max_retry_after=0``
    ignores ``Retry-After`` (counted backoff instead). Everything one request waits is
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


class RetryState:
    """What one request has used of its retry budget so far."""

    __slots__ = ("pauses", "retries", "waited")

    def __init__(self, retries: int = 0, pauses: int = 0, waited: float = 0.0) -> None:
        self.retries = retries
        self.pauses = pauses
        self.waited = waited


def next_delay(
    exc: BaseException, policy: RetryPolicy, state: RetryState
) -> Optional[Tuple[float, bool]]:
    """How long to wait before retrying after ``exc``, or ``None`` if it is final.

    Returns ``(delay, server_pause)``; ``server_pause`` is true when the delay is the
    server's ``Retry-After`` (the caller may pause every request, not only this one).
    Updates ``state``.
    """
    if not getattr(exc, "retryable", False):
        return None
    retry_after = getattr(exc, "retry_after", None)
    cap = policy.max_retry_after
    if retry_after is not None and cap > 0 and state.pauses < policy.max_retries:
        delay = min(cap, max(float(retry_after), min(RETRY_AFTER_FLOOR, cap)))
        server_pause = True
    elif state.retries < policy.max_retries:
        delay = policy.backoff(state.retries)
        server_pause = False
    else:
        return None
    if state.waited + delay > policy.max_total_wait:
        return None
    if server_pause:
        state.pauses += 1
    else:
        state.retries += 1
    state.waited += delay
    return delay, server_pause


def retry_call(
    send: Callable[[], T],
    policy: RetryPolicy,
    pause: Callable[[float], None],
    on_retry: Optional[Callable[[BaseException, float], None]] = None,
) -> T:
    """Call ``send()`` in this thread until it succeeds or fails for good.

    ``pause(seconds)`` waits between attempts; ``on_retry(exc, delay)`` is told of each
    retry. The final error propagates.
    """
    state = RetryState()
    while True:
        try:
            return send()
        except Exception as exc:
            step = next_delay(exc, policy, state)
            if step is None:
                raise
            delay = step[0]
            if on_retry is not None:
                on_retry(exc, delay)
            pause(delay)
