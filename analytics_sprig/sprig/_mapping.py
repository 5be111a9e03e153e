"""Segment message -> Sprig ``POST /v2/users`` body: pure functions, no I/O.

Nothing here raises on odd input: every value is kept, coerced or dropped by the rules in
the design (see :func:`attributes_from_traits`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
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
        parts.append(str(scalar))
    if sort:
        parts.sort()  # sets: a stable order (sorting the items by repr() can raise)
    return ",".join(parts)


def _flatten(prefix: str, traits: Mapping[Any, Any], out: Dict[str, Any], depth: int) -> None:
    for raw_key, value in traits.items():
        try:
            key = f"{prefix}{raw_key}"
        except ValueError:  # an int key too long to write (see _scalar)
            continue
        if isinstance(value, Mapping):
            if depth < MAX_DEPTH:
                _flatten(key + ".", value, out, depth + 1)
            continue
        if not key or key.startswith("!"):
            continue  # "!"-keys are reserved by Sprig
        if isinstance(value, (list, tuple, set, frozenset)):
            joined = _joined(value, sort=isinstance(value, (set, frozenset)))
            if joined is not None:
                out[key] = joined
            continue
        scalar = _scalar(value)
        if scalar is not None:
            out[key] = scalar


def attributes_from_traits(
    traits: Mapping[Any, Any], limit: int = MAX_ATTRIBUTES
) -> Tuple[Dict[str, Any], int]:
    """Flatten Segment traits into Sprig attributes; return ``(attributes, n_over_cap)``.

    Nested dicts become dotted keys (``plan.tier``); str/int/float/bool are kept (booleans
    stay booleans, NaN/inf dropped); datetimes become ISO strings; ``None`` is dropped;
    lists of scalars are joined with ``,``; other values are dropped; keys starting with
    ``!`` are dropped; the first ``limit`` attributes are kept, the rest counted.
    """
    flat: Dict[str, Any] = {}
    _flatten("", traits, flat, 0)
    over = len(flat) - limit
    if over <= 0:
        return flat, 0
    return dict(list(flat.items())[:limit]), over


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
        return value
    return None


@dataclass(frozen=True)
class PageNaming:
    """How page calls are named as Sprig events."""

    name_format: str = DEFAULT_PAGE_EVENT_FORMAT
    default: str = DEFAULT_PAGE_EVENT_DEFAULT


_DEFAULT_PAGE_NAMING = PageNaming()


def page_event_name(message: Mapping[str, Any], page: PageNaming = _DEFAULT_PAGE_NAMING) -> str:
    """``Viewed {name} Page`` when the page call has a name, else ``Loaded a Page``."""
    name = message.get("name")
    if isinstance(name, str) and name:
        category = message.get("category")
        # Only a str: format() of any other object may raise (or run its __format__).
        category = category if isinstance(category, str) else ""
        return page.name_format.format(name=name, category=category)
    return page.default


def map_message(
    message: Mapping[str, Any], page: PageNaming = _DEFAULT_PAGE_NAMING
) -> Optional[Payload]:
    """Map one normalized Segment message to a ``/v2/users`` body (``None``: nothing to send).

    identify -> ``{userId, emailAddress?, attributes}``; track and page -> ``{userId,
    emailAddress?, events: [{event, timestamp}]}``; alias -> ``{userId}``.
    """
    user_id = message.get("userId")
    if user_id is None or user_id == "":
        return None
    try:
        payload: Payload = {"userId": str(user_id)}
    except ValueError:  # an int id too long to write as text (Python 3.11+)
        return None
    kind = message.get("type")
    if kind == "identify":
        traits = message.get("traits")
        traits = traits if isinstance(traits, Mapping) else {}
        email = _email(traits.get("email"))
        if email is not None:
            payload["emailAddress"] = email
            traits = {k: v for k, v in traits.items() if k != "email"}
        attributes, over = attributes_from_traits(traits)
        if over:
            logger.warning(
                "identify for userId %r has %d attributes over Sprig's cap of %d; dropped them",
                payload["userId"], over, MAX_ATTRIBUTES,
            )
        payload["attributes"] = attributes
        return payload
    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str) or not event:
            return None
    elif kind == "page":
        event = page_event_name(message, page)
    elif kind == "alias":
        return payload
    else:
        return None
    context = message.get("context")
    if isinstance(context, Mapping):
        traits = context.get("traits")
        if isinstance(traits, Mapping):
            email = _email(traits.get("email"))
            if email is not None:
                payload["emailAddress"] = email
    payload["events"] = [{"event": event, "timestamp": epoch_millis(message.get("timestamp"))}]
    return payload


@dataclass
class Batch:
    """One ``/v2/users`` request body and the Segment messages it carries."""

    body: Payload
    messages: List[Mapping[str, Any]] = field(default_factory=list)


def _fits(batch: Payload, payload: Payload) -> bool:
    attrs = payload.get("attributes")
    if attrs:
        have = batch.get("attributes", {})
        new_keys = sum(1 for key in attrs if key not in have)
        if len(have) + new_keys > MAX_ATTRIBUTES:
            return False
    events = payload.get("events")
    return not events or len(batch.get("events", ())) + len(events) <= MAX_EVENTS


def _merge(batch: Payload, payload: Payload) -> None:
    if "emailAddress" in payload:
        batch["emailAddress"] = payload["emailAddress"]
    if "attributes" in payload:
        batch.setdefault("attributes", {}).update(payload["attributes"])
    if "events" in payload:
        batch.setdefault("events", []).extend(payload["events"])


def coalesce(items: Iterable[Tuple[Payload, Mapping[str, Any]]]) -> List[Batch]:
    """Merge bodies for the same ``userId`` into as few requests as the caps allow.

    Attributes merge in call order (later wins), events are appended in call order, and a
    user's requests keep their order. Bodies are not mutated.
    """
    open_batches: Dict[str, Batch] = {}
    batches: List[Batch] = []
    for payload, message in items:
        user_id = payload["userId"]
        batch = open_batches.get(user_id)
        if batch is None or not _fits(batch.body, payload):
            batch = Batch({"userId": user_id})
            open_batches[user_id] = batch
            batches.append(batch)
        _merge(batch.body, payload)
        batch.messages.append(message)
    return batches
