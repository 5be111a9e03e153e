"""Segment message -> Sprig ``POST /v2/users`` body, and how bodies merge: pure, no I/O.

Nothing here raises on odd input: every value is kept, coerced or dropped by the rules in
the design (see :func:`attributes_from_traits`); a value whose ``__str__``/``__eq__``/
``__hash__`` raises costs only that value, never the message.
"""

from __future__ import annotations

import logging
import math
import re
from collections import abc
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

logger = logging.getLogger("analytics_sprig")

#: Sprig stores at most 100 attribute values per user; we send at most that many per request.
MAX_ATTRIBUTES = 100
#: Sprig documents no cap on events per request; this keeps bodies small and bounded.
MAX_EVENTS = 100
#: Deeper nesting than this is dropped (a guard against pathological input).
MAX_DEPTH = 32

DEFAULT_PAGE_EVENT_FORMAT = "Viewed {name} Page"
DEFAULT_PAGE_EVENT_DEFAULT = "Loaded a Page"
DEFAULT_SCREEN_EVENT_FORMAT = "Viewed {name} Screen"
DEFAULT_SCREEN_EVENT_DEFAULT = "Loaded a Screen"
#: The overflow warning names at most this many of the dropped attributes.
_NAMED_IN_WARNING = 10

Payload = Dict[str, Any]
_FRACTION = re.compile(r"(\.\d+)")
#: Ints longer than this (about 4200 digits) are dropped; see ``_scalar``.
_MAX_INT_BITS = 14_000
#: Epoch milliseconds of ``datetime.max`` (the year 9999), bound of a numeric timestamp.
_MAX_MILLIS = 253_402_300_800_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def _scalar(value: Any) -> Any:
    """A value Sprig accepts as an attribute, or ``None`` to drop it."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        # Python (3.11+) refuses to write ints over 4300 digits: such a body is no JSON.
        return value if value.bit_length() <= _MAX_INT_BITS else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return None


def _joined(values: Iterable[Any], sort: bool = False) -> Optional[str]:
    parts: List[str] = []
    for item in values:
        if item is None:
            continue
        if isinstance(item, bool):
            parts.append("true" if item else "false")
            continue
        scalar = _scalar(item)
        if scalar is None:
            return None  # a list holding dicts/lists/NaN is not a list of scalars
        parts.append(scalar if type(scalar) is str else _text(scalar))
    if sort:
        parts.sort()  # sets: a stable order (sorting the items by repr() can raise)
    return ",".join(parts)


def _text(value: Any) -> str:
    """``value`` as an exact ``str`` (a str subclass may override ``__str__``/``__hash__``)."""
    if type(value) is str:  # nearly always: no call at all
        return value
    if isinstance(value, str):
        return str.__str__(value)
    return str(value)


def _flatten(prefix: str, traits: Mapping[Any, Any], out: Dict[str, Any], depth: int) -> None:
    for raw_key, value in traits.items():
        try:
            key = prefix + _text(raw_key)
            if isinstance(value, abc.Mapping):
                if depth < MAX_DEPTH:
                    _flatten(key + ".", value, out, depth + 1)
                continue
            if not key or key.startswith("!"):
                continue  # "!"-keys are reserved by Sprig
            if isinstance(value, (list, tuple, set, frozenset)):
                converted = _joined(value, sort=isinstance(value, (set, frozenset)))
            else:
                converted = _scalar(value)
        except Exception:  # a hostile key or value: drop that one attribute only
            logger.debug("dropped an attribute whose value could not be read", exc_info=True)
            continue
        if converted is not None:
            out[key] = converted


def attributes_from_traits(
    traits: Mapping[Any, Any], limit: int = MAX_ATTRIBUTES, *, without: Tuple[str, ...] = ()
) -> Tuple[Dict[str, Any], List[str]]:
    """Flatten Segment traits into Sprig attributes; return ``(attributes, dropped_names)``.

    Nested dicts become dotted keys (``plan.tier``); str/int/float/bool are kept (booleans
    stay booleans, NaN/inf dropped); datetimes become ISO strings; ``None`` is dropped;
    lists of scalars are joined with ``,``; other values are dropped; keys starting with
    ``!`` and the keys in ``without`` are dropped; the first ``limit`` attributes are kept
    and the names of the others returned.
    """
    flat: Dict[str, Any] = {}
    _flatten("", traits, flat, 0)
    for name in without:
        flat.pop(name, None)
    if len(flat) <= limit:
        return flat, []
    names = list(flat)
    return {name: flat[name] for name in names[:limit]}, names[limit:]


def epoch_millis(timestamp: Any, now: Optional[datetime] = None) -> int:
    """Unix epoch milliseconds of an ISO-8601 string, ``datetime`` or number.

    Naive times are taken as UTC. Unparseable input gives ``now`` (as Segment does for a
    call without a timestamp).
    """
    moment: Optional[datetime] = None
    if isinstance(timestamp, datetime):
        moment = timestamp
    elif isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        # Comparing with an int bound: math.isfinite() raises OverflowError on huge ints,
        # and NaN, infinities and times past the year 9999 fall through to ``now``.
        if -_MAX_MILLIS < timestamp < _MAX_MILLIS:
            # Numbers above 1e11 are already milliseconds (1e11 s is the year 5138).
            return round(timestamp if timestamp > 1e11 else timestamp * 1000)
    elif isinstance(timestamp, str):
        moment = _parse_iso(timestamp)
    if moment is None:
        moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=timezone.utc)
    # Integer arithmetic: float ``timestamp() * 1000`` is 1 ms short for some instants.
    return (moment - _EPOCH) // _ONE_MS


def _parse_iso(text: str) -> Optional[datetime]:
    try:  # what analytics-python writes (isoformat, milliseconds) parses as it is
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python < 3.11 only parses 3 or 6 fractional digits.
    text = _FRACTION.sub(lambda m: (m.group(1) + "000000")[:7], text, count=1)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _email(value: Any) -> Optional[str]:
    if isinstance(value, str) and value.strip():
        return _text(value)
    return None


@dataclass(frozen=True)
class EventNaming:
    """How page (or screen) calls are named as Sprig events."""

    name_format: str = DEFAULT_PAGE_EVENT_FORMAT
    default: str = DEFAULT_PAGE_EVENT_DEFAULT


PAGE_NAMING = EventNaming()
SCREEN_NAMING = EventNaming(DEFAULT_SCREEN_EVENT_FORMAT, DEFAULT_SCREEN_EVENT_DEFAULT)


def named_event(message: Mapping[str, Any], naming: EventNaming = PAGE_NAMING) -> str:
    """``Viewed {name} Page`` when the call has a name, else ``Loaded a Page`` (or the
    ``naming`` given, e.g. :data:`SCREEN_NAMING`)."""
    name = message.get("name")
    if isinstance(name, str) and name:
        category = message.get("category")
        # Only a str: format() of any other object may raise (or run its __format__).
        category = _text(category) if isinstance(category, str) else ""
        return naming.name_format.format(name=_text(name), category=category)
    return naming.default


def event_name(message: Mapping[str, Any], page: EventNaming = PAGE_NAMING,
               screen: EventNaming = SCREEN_NAMING) -> Optional[str]:
    """The Sprig event a track/page/screen call becomes (``None`` for other calls or a
    track without an event name)."""
    kind = message.get("type")
    if kind == "track":
        event = message.get("event")
        return _text(event) if isinstance(event, str) and event else None
    if kind == "page":
        return named_event(message, page)
    if kind == "screen":
        return named_event(message, screen)
    return None


def map_message(
    message: Mapping[str, Any],
    page: EventNaming = PAGE_NAMING,
    screen: EventNaming = SCREEN_NAMING,
    event: Optional[str] = None,
) -> Optional[Payload]:
    """Map one normalized Segment message to a ``/v2/users`` body (``None``: nothing to send).

    identify -> ``{userId, emailAddress?, attributes}``; track, page and screen -> ``{userId,
    emailAddress?, events: [{event, timestamp}]}``; alias -> ``{userId}``. ``event`` is the
    event name when the caller already computed it (:func:`event_name`).
    """
    user_id = message.get("userId")
    if user_id is None or user_id == "":
        return None
    try:
        payload: Payload = {"userId": _text(user_id)}
    except ValueError:  # an int id too long to write as text (Python 3.11+)
        return None
    kind = message.get("type")
    if kind == "identify":
        traits = message.get("traits")
        traits = traits if isinstance(traits, abc.Mapping) else {}
        email = _email(traits.get("email"))
        if email is not None:
            payload["emailAddress"] = email
        attributes, dropped = attributes_from_traits(
            traits, without=("email",) if email is not None else ()
        )
        if dropped:
            shown = ", ".join(repr(name) for name in dropped[:_NAMED_IN_WARNING])
            more = len(dropped) - _NAMED_IN_WARNING
            logger.warning(
                "identify for userId %r has %d attribute%s over Sprig's cap of %d; dropped %s%s",
                payload["userId"], len(dropped), "" if len(dropped) == 1 else "s",
                MAX_ATTRIBUTES, shown, f" and {more} more" if more > 0 else "",
            )
        payload["attributes"] = attributes
        return payload
    if kind == "alias":
        return payload
    if event is None:
        event = event_name(message, page, screen)
    if event is None:
        return None
    context = message.get("context")
    # ``type() is dict`` first: what Segment's normalizing gives, without the ABC's check.
    if type(context) is dict or isinstance(context, abc.Mapping):
        traits = context.get("traits")
        if type(traits) is dict or isinstance(traits, abc.Mapping):
            email = _email(traits.get("email"))
            if email is not None:
                payload["emailAddress"] = email
    payload["events"] = [{"event": event, "timestamp": epoch_millis(message.get("timestamp"))}]
    return payload


def _fits(body: Payload, part: Payload) -> bool:
    attrs = part.get("attributes")
    if attrs:
        have = body.get("attributes", {})
        new_keys = sum(1 for key in attrs if key not in have)
        if len(have) + new_keys > MAX_ATTRIBUTES:
            return False
    events = part.get("events")
    return not events or len(body.get("events", ())) + len(events) <= MAX_EVENTS


class SprigMerger:
    """How ``/v2/users`` bodies for one user merge: attributes in call order (later wins),
    events appended in call order, at most 100 of each per body (then a new body starts).
    Parts are never mutated."""

    def start(self, key: str, part: Payload) -> Payload:
        """A new body holding ``part``."""
        body: Payload = {"userId": key}
        self.merge(body, part)
        return body

    def merge(self, body: Payload, part: Payload) -> bool:
        """Merge ``part`` into ``body`` if the caps allow; ``False`` (unchanged) if not."""
        if not _fits(body, part):
            return False
        if "emailAddress" in part:
            body["emailAddress"] = part["emailAddress"]
        if "attributes" in part:
            body.setdefault("attributes", {}).update(part["attributes"])
        if "events" in part:
            body.setdefault("events", []).extend(part["events"])
        return True
