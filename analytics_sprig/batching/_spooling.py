"""The engine's side of a durable spool: what goes in, what comes back, and when.

What cannot be delivered is kept in a :class:`~._spool.Spool` instead of being lost: bodies
still pending at a shutdown deadline, bodies whose retry budget ran out on a retryable
error, and calls that would be dropped at the memory bound. Per-key order is kept: once a
key has rows in the spool, its later calls go there too (behind them), until its rows are
claimed back into memory, oldest first.

The disk is touched only from background threads and at shutdown. While rows are known
to wait, they are claimed every second (only a probe row every 5 s during an outage);
otherwise a healthy process looks for rows other processes left once a minute (one read
transaction) and never writes unless it has something to keep.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, List, Set, Tuple

from ._lanes import Body
from ._spool import ClaimedRow, Spool, SpoolRow

#: While rows wait in the spool and the destination is healthy, claim some this often.
POLL_INTERVAL = 1.0
#: A healthy process with an empty spool looks for rows other processes left this often.
RECHECK_INTERVAL = 60.0
#: While the destination fails, one spooled row probes it this often.
PROBE_INTERVAL = 5.0
#: At most this many rows are claimed at once.
CLAIM_BATCH = 500


class SpoolGate:
    """One engine's use of one :class:`Spool` (state guarded by the engine's lock)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.reset()

    def reset(self) -> None:
        """Fresh state (at construction and in a forked child)."""
        #: Keys with rows in the spool: their new calls go there too, to keep their order.
        self.keys: Set[str] = set()
        #: Rows may wait in the file (unknown at start: look once).
        self.has_rows = True
        #: Rows wait, but the last claim got none (another process holds their keys).
        self.stalled = False
        self.next_poll = 0.0
        self.next_check = 0.0

    @property
    def usable(self) -> bool:
        """Whether the spool can be used (it turns unusable after a disk failure)."""
        return self.spool.usable

    def due(self, now: float, flushing: bool) -> bool:
        """Whether the planner should claim rows now (the caller checks health and room)."""
        if not self.usable:
            return False
        if not self.has_rows:
            return now >= self.next_check
        return now >= self.next_poll or (flushing and not self.stalled)

    def claimed(self, now: float, got: int, waiting: Set[str]) -> None:
        """Note what a claim found."""
        self.keys = waiting
        self.has_rows = bool(got) or bool(waiting)
        self.stalled = not got and bool(waiting)
        self.next_poll = max(self.next_poll, now + POLL_INTERVAL)
        self.next_check = now + RECHECK_INTERVAL

    def next_wake(self) -> float:
        """When the planner should next consider claiming."""
        return self.next_poll if self.has_rows else self.next_check

    # -- disk (never under the engine's lock) ---------------------------------------------

    def store(self, bodies: Iterable[Body[Any]]) -> Tuple[List[Body[Any]], List[SpoolRow]]:
        """Keep ``bodies`` in the spool (rows claimed from it are released instead).

        Returns the bodies that did not fit (refused) and the older rows evicted to make
        room (beyond ``max_bytes``).
        """
        wall = time.time()
        release: List[int] = []
        rows: List[SpoolRow] = []
        by_row: List[Body[Any]] = []
        for body in bodies:
            if body.spool_ids:
                release.extend(body.spool_ids)  # back in the file, in their old place
            else:
                rows.append(SpoolRow(body.key, body.payload, list(body.refs),
                                     wall - (time.monotonic() - body.created)))
                by_row.append(body)
        if release:
            self.spool.release(release)
        returned = self.spool.put(rows) if rows else []
        mine = {id(row): body for row, body in zip(rows, by_row)}
        refused = [mine[id(row)] for row in returned if id(row) in mine]
        evicted = [row for row in returned if id(row) not in mine]
        return refused, evicted

    def claim(self, limit: int) -> Tuple[List[ClaimedRow], Set[str]]:
        """Claim up to ``limit`` rows (oldest first) and read which keys still wait."""
        rows = self.spool.claim(min(limit, CLAIM_BATCH))
        waiting = self.spool.keys_waiting()
        return rows, waiting

    def done(self, ids: List[int]) -> None:
        """Rows delivered or failed for good: delete them."""
        if ids:
            self.spool.delete(ids)

    def after_fork_in_child(self) -> None:
        """Forget the parent's connection and state."""
        self.spool.after_fork_in_child()
        self.reset()
