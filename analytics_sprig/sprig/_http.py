"""What an HTTP answer means for a retry: pure functions, no I/O."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Optional

#: 5xx statuses that will not change on retry (Not Implemented, HTTP Version Not Supported).
_FINAL_5XX = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx other than 501/505 may succeed later."""
    return status in (408, 429) or (500 <= status <= 599 and status not in _FINAL_5XX)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    Returns ``None`` when absent or unusable (garbage, NaN, infinities), and never a
    negative number. The retry policy applies its own floor and cap.
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
