"""Planning one Segment message for Sprig: route, filter, map. Pure: no I/O, no threads.

The one path every sender of Sprig requests shares: the delivery engine (on its planner
thread), ``replay`` and ``--dry-run``, and the demo's report. Planning never raises: a
message whose values misbehave is rejected as invalid, and only that message is lost.
"""

from __future__ import annotations

import fnmatch
from typing import (
    Any,
    Collection,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)

from .._errors import InvalidMessage
from ..batching._backend import Part, Plan, Reject, Skip
from ..batching._lanes import Body, plan_bodies
from ._mapping import (
    PAGE_NAMING,
    SCREEN_NAMING,
    EventNaming,
    Payload,
    SprigMerger,
    _text,
    event_name,
    map_message,
)
from ._routing import DEFAULT_TYPES, FailReason, SkipReason, skip_reason

#: What the engine keeps of a message while it waits: (messageId, type, userId, event).
Ref = Tuple[Optional[str], Optional[str], Optional[str], Optional[str]]
_REF_FIELDS = ("messageId", "type", "userId", "event")

_EVENT_TYPES = frozenset({"track", "page", "screen"})


class EventFilter:
    """``events=`` (allow-list) and ``ignore_events=`` (deny-list): exact names or globs."""

    def __init__(self, allow: Optional[Collection[str]], deny: Optional[Collection[str]]) -> None:
        self._allow = None if allow is None else _Patterns(allow)
        self._deny = None if deny is None else _Patterns(deny)

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return self._allow is not None or self._deny is not None

    def allows(self, name: str) -> bool:
        """Whether an event named ``name`` (as sent to Sprig) may be sent."""
        if self._allow is not None and not self._allow.match(name):
            return False
        return self._deny is None or not self._deny.match(name)


class _Patterns:
    def __init__(self, patterns: Iterable[str]) -> None:
        names = list(patterns)
        self._exact: FrozenSet[str] = frozenset(names)  # "Clicked [Buy]" matches itself too
        self._globs = [p for p in names if _is_glob(p)]

    def match(self, name: str) -> bool:
        return name in self._exact or any(fnmatch.fnmatchcase(name, g) for g in self._globs)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _safe_text(value: Any) -> Optional[str]:
    if value is None or type(value) is str:
        return value
    try:
        return _text(value)
    except Exception:
        return None


def ref_of(message: Any, event: Optional[str] = None) -> Ref:
    """A light reference to ``message`` (what ``on_error`` gets), without raising.

    ``event`` is the event name as sent to Sprig; without it, a track's own event name.
    """
    try:
        get = message.get
        kind = _safe_text(get("type"))
        if event is None and kind == "track":
            event = _safe_text(get("event")) or None
        return (_safe_text(get("messageId")), kind, _safe_text(get("userId")), event)
    except Exception:
        return (None, None, None, event)


def describe(refs: Iterable[Ref]) -> List[Dict[str, str]]:
    """References as the dicts ``on_error`` / ``on_delivered`` receive."""
    return [{field: value for field, value in zip(_REF_FIELDS, ref) if value is not None}
            for ref in refs]


class SprigPlanner:
    """Route, filter and map messages for one destination's options."""

    merger = SprigMerger()

    def __init__(
        self,
        *,
        types: FrozenSet[str] = DEFAULT_TYPES,
        page: EventNaming = PAGE_NAMING,
        screen: EventNaming = SCREEN_NAMING,
        events: Optional[Collection[str]] = None,
        ignore_events: Optional[Collection[str]] = None,
    ) -> None:
        self.types = types
        self._page = page
        self._screen = screen
        self._filter = EventFilter(events, ignore_events)

    def route(self, message: Mapping[str, Any]) -> Optional[SkipReason]:
        """Why ``message`` does not go to Sprig (``None``: it does). May raise."""
        return skip_reason(message, self.types)

    def plan(self, message: Mapping[str, Any]) -> Plan[Payload]:
        """Route, then :meth:`plan_routed`; never raises."""
        try:
            reason = self.route(message)
        except Exception as exc:
            return self.rejected(message, exc)
        if reason is not None:
            return Skip(reason)
        return self.plan_routed(message)

    def plan_routed(self, message: Mapping[str, Any]) -> Plan[Payload]:
        """Filter and map a message routing let through; never raises."""
        try:
            event: Optional[str] = None
            if message.get("type") in _EVENT_TYPES:
                event = event_name(message, self._page, self._screen)
                if event is None:
                    return Skip(SkipReason.UNMAPPABLE)
                if self._filter.active and not self._filter.allows(event):
                    return Skip(SkipReason.EVENT_FILTER)
            body = map_message(message, self._page, self._screen, event)
            if body is None:
                return Skip(SkipReason.UNMAPPABLE)
            return Part(body["userId"], body, ref_of(message, event))
        except Exception as exc:
            return self.rejected(message, exc)

    @staticmethod
    def rejected(message: Any, error: BaseException) -> Reject:
        """A message whose values misbehaved: failed as invalid (the error names no value)."""
        ref = ref_of(message)
        kind = ref[1] or "Segment"
        invalid = InvalidMessage(
            f"a {kind} message could not be read ({type(error).__name__} from one of its "
            "values); it was not sent"
        )
        return Reject(FailReason.INVALID, invalid, ref)

    def bodies(self, messages: Iterable[Mapping[str, Any]], plan: Optional[Any] = None
               ) -> Tuple[List[Body[Payload]], List[Union[Skip, Reject]]]:
        """Plan ``messages`` and coalesce them as if they waited together: the requests
        the destination makes for them (``--dry-run``, reports), and the other plans.

        ``plan(message)`` replaces :meth:`plan` (a destination adds its own plugins).
        """
        plan_one = self.plan if plan is None else plan
        items = []
        others: List[Union[Skip, Reject]] = []
        for message in messages:
            planned = plan_one(message)
            if isinstance(planned, Part):
                items.append((planned.key, planned.part, planned.ref))
            else:
                others.append(planned)
        return plan_bodies(self.merger, items), others
