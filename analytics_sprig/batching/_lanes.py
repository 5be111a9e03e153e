"""Keyed lanes: the bounded buffer of bodies waiting to be sent. Data only: no threads, no
clock (callers pass ``now``), no I/O.

Each key (a user, for Sprig) has a lane: a FIFO of bodies. Only a lane's head is ever sent,
so a key's requests never overlap and never overtake each other. A new part merges into
the lane's last body while that body has never been sent and the backend's ``merge`` says
it fits; otherwise it starts a new body, if the buffer has room (``max_bodies`` counts
every body, in flight included).

A head body is *due* once its key has been quiet for ``linger`` seconds, or ``max_linger``
after its first part, or at once when it is full or the caller flushes: calls for a busy
user coalesce into one request instead of one each. Retried bodies are *parked* until
their backoff ends.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from typing import Any, Dict, Generic, Iterator, List, Optional, Protocol, Tuple, TypeVar

from ._retry import RetryState

P = TypeVar("P")  # a part: what one message contributes
B = TypeVar("B")  # a body: what one request sends
P_in = TypeVar("P_in", contravariant=True)


class Merger(Protocol[P_in, B]):
    """How a backend builds bodies out of parts (pure; called under the engine's lock)."""

    def start(self, key: str, part: P_in) -> B:
        """A new body holding ``part``."""

    def merge(self, body: B, part: P_in) -> bool:
        """Merge ``part`` into ``body`` in place if it fits; ``False`` (unchanged) if not."""


class State(enum.Enum):
    """Where a body is in its life."""

    WAITING = "waiting"  # in its lane, maybe merging more parts
    SENDING = "sending"  # an attempt is in flight
    PARKED = "parked"  # waiting for a retry's backoff to end


class Body(Generic[B]):
    """One request's worth of work for one key, with what it carries."""

    __slots__ = (
        "created",
        "full",
        "key",
        "not_before",
        "payload",
        "refs",
        "retry",
        "sealed",
        "seq",
        "spool_ids",
        "started",
        "state",
        "updated",
        "written_off",
    )

    def __init__(self, key: str, payload: B, refs: List[Any], now: float, seq: int) -> None:
        self.key = key
        self.payload = payload
        self.refs = refs
        self.created = now
        self.updated = now
        self.seq = seq
        self.state = State.WAITING
        self.full = False  # a part did not fit: no reason to wait any longer
        self.sealed = False  # built elsewhere (spool, replay): takes no more parts
        self.started = 0.0  # when the current attempt began
        self.not_before = 0.0
        self.retry: Optional[RetryState] = None  # made at the first failure
        self.spool_ids: List[int] = []
        self.written_off = False  # counted as dropped/spooled while an attempt was running

    def __repr__(self) -> str:  # keys may be user ids: no payload, no key in reprs
        return f"<Body {self.state.value} with {len(self.refs)} message(s)>"


_Entry = Tuple[float, int, Body[Any]]


class Lanes(Generic[P, B]):
    """Every waiting body, by key, with the heaps that find the next one to send."""

    def __init__(self, merger: Merger[P, B], *, max_bodies: int, linger: float,
                 max_linger: float) -> None:
        self._merger = merger
        self.max_bodies = max_bodies
        self._linger = linger
        self._max_linger = max_linger
        # A list per key, not a deque: lanes hold one or two bodies, and an empty deque
        # alone costs ~600 bytes per waiting user.
        self._lanes: Dict[str, List[Body[B]]] = {}
        self._waiting: List[_Entry] = []  # lane heads never sent, by due time
        self._parked: List[_Entry] = []  # bodies between retries, by end of backoff
        self._seq = itertools.count()
        self.bodies = 0
        self.messages = 0

    # -- filling --------------------------------------------------------------------------

    def add(self, key: str, part: P, ref: Any, now: float) -> Optional[Body[B]]:
        """Merge ``part`` into ``key``'s last body or start a new one.

        Returns the body it went into, or ``None`` if it needs a new body and the buffer is
        full (the caller drops or spools it).
        """
        lane = self._lanes.get(key)
        if lane:
            tail = lane[-1]
            if tail.state is State.WAITING and not tail.sealed:
                if self._merger.merge(tail.payload, part):
                    tail.refs.append(ref)
                    tail.updated = now
                    self.messages += 1
                    return tail
                if not tail.full:
                    tail.full = True
                    if lane[0] is tail:  # its heap entry says "later": it is due now
                        self._push_waiting(tail)
        if self.bodies >= self.max_bodies:
            return None
        return self._append(key, self._merger.start(key, part), [ref], now, sealed=False)

    def add_body(self, key: str, payload: B, refs: List[Any], now: float,
                 spool_ids: Optional[List[int]] = None) -> Body[B]:
        """Append a body built elsewhere (the spool, a replay); it takes no more parts.

        It may exceed ``max_bodies``: the caller checks room first.
        """
        body = self._append(key, payload, refs, now, sealed=True)
        if spool_ids:
            body.spool_ids = spool_ids
        return body

    def add_unspooled(self, key: str, payload: B, refs: List[Any], now: float,
                      spool_id: int) -> Body[B]:
        """Append a body claimed back from the spool, merged into the previous one of the
        same key when that one came from the spool too, was not sent yet, and fits."""
        lane = self._lanes.get(key)
        if lane:
            tail = lane[-1]
            if (tail.sealed and tail.spool_ids and tail.state is State.WAITING
                    and self._merger.merge(tail.payload, payload)):  # type: ignore[arg-type]
                tail.refs.extend(refs)
                tail.spool_ids.append(spool_id)
                self.messages += len(refs)
                return tail
        return self.add_body(key, payload, refs, now, [spool_id])

    def _append(self, key: str, payload: B, refs: List[Any], now: float, *,
                sealed: bool) -> Body[B]:
        body = Body(key, payload, refs, now, next(self._seq))
        body.sealed = sealed
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = []
        lane.append(body)
        self.bodies += 1
        self.messages += len(refs)
        if len(lane) == 1:
            self._push_waiting(body)
        return body

    def _due(self, body: Body[B]) -> float:
        if body.full or body.sealed:
            return body.created
        return min(body.updated + self._linger, body.created + self._max_linger)

    def _push_waiting(self, body: Body[B]) -> None:
        heapq.heappush(self._waiting, (self._due(body), body.seq, body))

    # -- choosing what to send ------------------------------------------------------------

    def _is_head(self, body: Body[B]) -> bool:
        lane = self._lanes.get(body.key)
        return bool(lane) and lane[0] is body  # type: ignore[index]

    def next_ready(self, now: float, flushing: bool) -> Optional[Body[B]]:
        """The next body to send now, or ``None``. Parked retries whose backoff ended go
        first; then due heads (every head, when ``flushing``), oldest due first."""
        parked = self._parked
        while parked and parked[0][0] <= now:
            body = heapq.heappop(parked)[2]
            if body.state is State.PARKED and self._is_head(body):
                return body
        waiting = self._waiting
        while waiting:
            due, _, body = waiting[0]
            if body.state is not State.WAITING or not self._is_head(body):
                heapq.heappop(waiting)  # stale: already sent or written off
                continue
            if not flushing and due > now:
                fresh = self._due(body)  # merges since it was pushed only push it later
                if fresh > now:
                    if fresh != due:
                        heapq.heapreplace(waiting, (fresh, body.seq, body))
                        continue
                    return None
            heapq.heappop(waiting)
            return body
        return None

    def next_time(self) -> Optional[float]:
        """When :meth:`next_ready` may next return a body without a flush (a lower bound;
        ``None``: nothing waits)."""
        times = [heap[0][0] for heap in (self._waiting, self._parked) if heap]
        return min(times) if times else None

    def has_waiting(self) -> bool:
        """Whether some lane head waits (a flush would send it now)."""
        return bool(self._waiting)

    # -- moving bodies along --------------------------------------------------------------

    @staticmethod
    def dispatch(body: Body[B], now: float) -> None:
        """``body`` goes in flight."""
        body.state = State.SENDING
        body.started = now

    def park(self, body: Body[B], not_before: float) -> None:
        """``body`` waits for its retry until ``not_before``."""
        body.state = State.PARKED
        body.not_before = not_before
        heapq.heappush(self._parked, (not_before, body.seq, body))

    def finish(self, body: Body[B]) -> bool:
        """Remove ``body`` (its lane's head) for good; ``True`` if the lane's next body
        became its head."""
        lane = self._lanes.get(body.key)
        if not lane or lane[0] is not body:
            return False
        del lane[0]
        self.bodies -= 1
        self.messages -= len(body.refs)
        if not lane:
            del self._lanes[body.key]
            return False
        self._push_waiting(lane[0])
        return True

    def take_lane(self, key: str, after: Body[B]) -> List[Body[B]]:
        """Remove and return the bodies behind ``after`` in ``key``'s lane."""
        lane = self._lanes.get(key)
        if not lane or lane[0] is not after:
            return []
        taken = list(itertools.islice(lane, 1, None))
        for body in taken:
            body.written_off = True
            self.bodies -= 1
            self.messages -= len(body.refs)
        while len(lane) > 1:
            lane.pop()
        return taken

    def take_all(self) -> List[Body[B]]:
        """Remove and return every body (in flight included), each lane in order."""
        bodies = [body for lane in self._lanes.values() for body in lane]
        for body in bodies:
            body.written_off = True
        self._lanes.clear()
        self._waiting.clear()
        self._parked.clear()
        self.bodies = 0
        self.messages = 0
        return bodies

    def __iter__(self) -> Iterator[Body[B]]:
        """Every body, lane by lane, each lane in order (lanes in first-seen order)."""
        for lane in self._lanes.values():
            yield from lane

    def __len__(self) -> int:
        return self.bodies


def plan_bodies(merger: Merger[P, B], items: Any) -> List[Body[B]]:
    """Coalesce ``(key, part, ref)`` items into bodies, as the engine's lanes would when
    they wait together (for dry runs and reports): in the order each body was started."""
    lanes: Lanes[P, B] = Lanes(merger, max_bodies=1 << 62, linger=0.0, max_linger=0.0)
    for key, part, ref in items:
        lanes.add(key, part, ref, 0.0)
    return sorted(lanes, key=lambda body: body.seq)
