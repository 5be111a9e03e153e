"""How fast the engine may send: concurrency, rate and pauses, shared by every lane.

A destination's rate limit is per API key, so one request's 429 concerns every lane:

- ``Retry-After`` on any answer pauses every lane until then (:meth:`Throttle.pause`).
- A 429 without it halves the rate and the concurrency (multiplicative decrease, once per
  reaction window: answers to requests started before the last cut do not cut again);
  successes grow both back (additive increase), as TCP does. The rate starts unlimited.
- ``max_requests_per_second`` is a hard cap on top.

Data and arithmetic only: callers pass ``now`` and hold the engine's lock.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Deque, Optional

#: The adaptive rate never goes below this many requests per second (Sprig's smallest
#: documented limit is 1,000 per 5 minutes, 3.3 per second).
MIN_RATE = 1.0
#: Each success adds ``max(RATE_STEP, 1 / rate)`` to the adaptive rate: it grows by at
#: least 1 request/s every second, and by 5 %/s above 20 requests/s (back from a halving
#: in 10-14 s), so a few 429s never leave the rate stuck low.
RATE_STEP = 0.05
#: Requests started within this many seconds make the "recent rate" a cut starts from.
RATE_WINDOW = 1.0


class Throttle:
    """Concurrency limit, adaptive rate, hard cap and global pause for one destination."""

    def __init__(self, max_concurrency: int, max_requests_per_second: Optional[float]) -> None:
        self.max_concurrency = max_concurrency
        self._hard_interval = 1.0 / max_requests_per_second if max_requests_per_second else 0.0
        self.limit = float(max_concurrency)
        self.rate: Optional[float] = None
        self.paused_until = 0.0
        self._next_slot = 0.0
        self._last_cut = -math.inf
        self._recent: Deque[float] = deque()
        self.cuts = 0

    @property
    def concurrency(self) -> int:
        """How many requests may be in flight now."""
        return max(1, int(self.limit))

    def _interval(self) -> float:
        adaptive = 1.0 / self.rate if self.rate else 0.0
        return max(adaptive, self._hard_interval)

    def wait(self, now: float, in_flight: int) -> Optional[float]:
        """Seconds until a request may start (0: now); ``None`` while the concurrency
        limit is reached (wait for a request to settle)."""
        if in_flight >= self.concurrency:
            return None
        start = max(self.paused_until, self._next_slot)
        return max(0.0, start - now)

    def started(self, now: float) -> None:
        """A request starts now (it took the slot :meth:`wait` allowed)."""
        self._next_slot = max(now, self._next_slot) + self._interval()
        recent = self._recent
        recent.append(now)
        while recent and recent[0] < now - RATE_WINDOW:
            recent.popleft()

    def _recent_rate(self, now: float) -> float:
        recent = self._recent
        while recent and recent[0] < now - RATE_WINDOW:
            recent.popleft()
        return len(recent) / RATE_WINDOW

    def succeeded(self, now: float) -> None:
        """A request succeeded: grow back towards the limits."""
        if self.limit < self.max_concurrency:
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / self.limit)
        if self.rate is not None:
            # Grow only while the rate binds: far above what is sent, it protects nothing.
            ceiling = 2.0 * self._recent_rate(now) + 1.0
            if self.rate < ceiling:
                self.rate += max(RATE_STEP, 1.0 / self.rate)

    def throttled(self, now: float, started_at: float) -> None:
        """A 429 without ``Retry-After``: halve rate and concurrency, once per window."""
        if started_at < self._last_cut:
            return  # sent before the last cut: that cut already answered this congestion
        self._last_cut = now
        self.cuts += 1
        current = self._recent_rate(now)
        if self.rate is not None:
            current = min(current, self.rate)
        self.rate = max(MIN_RATE, current / 2.0)
        self.limit = max(1.0, self.limit / 2.0)
        # Spread the next requests out at the new rate from now on.
        self._next_slot = max(self._next_slot, now + 1.0 / self.rate)

    def pause(self, now: float, seconds: float) -> None:
        """The server asked every request to wait ``seconds`` (``Retry-After``)."""
        self.paused_until = max(self.paused_until, now + seconds)
