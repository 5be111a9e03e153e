"""Unit tests for ``analytics_sprig.sprig._mapping``: Segment message -> ``/v2/users`` body."""

from __future__ import annotations

import calendar
import copy
import json
import logging
import math
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import pytest

from analytics_sprig.batching._lanes import plan_bodies
from analytics_sprig.sprig._mapping import (
    MAX_ATTRIBUTES,
    MAX_EVENTS,
    EventNaming,
    SprigMerger,
    attributes_from_traits,
    epoch_millis,
    map_message,
    named_event,
)


class _Batch(NamedTuple):
    body: Dict[str, Any]
    messages: List[Any]


def coalesce(items: List[Tuple[Dict[str, Any], Dict[str, Any]]]) -> List[_Batch]:
    """The engine's merge rule (SprigMerger in a Lanes), with messages as references."""
    bodies = plan_bodies(SprigMerger(), [(body["userId"], body, message)
                                         for body, message in items])
    return [_Batch(b.payload, b.refs) for b in bodies]

# 2026-01-02T03:04:05.678Z as Unix epoch milliseconds.
KNOWN_MS = 1767323045678
assert calendar.timegm((2026, 1, 2, 3, 4, 5)) * 1000 + 678 == KNOWN_MS


def _attrs(traits: Mapping[Any, Any]) -> Dict[str, Any]:
    attributes, dropped = attributes_from_traits(traits)
    assert dropped == []
    return attributes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Opaque:
    """An object with no attribute mapping."""


# -- identify ---------------------------------------------------------------------------


def test_identify_body_shape() -> None:
    body = map_message(
        {
            "type": "identify",
            "userId": "user-1",
            "traits": {"email": "a@b.co", "plan": {"tier": "pro"}, "age": 30},
        }
    )
    assert body == {
        "userId": "user-1",
        "emailAddress": "a@b.co",
        "attributes": {"plan.tier": "pro", "age": 30},
    }


@pytest.mark.parametrize(
    ("traits", "email"),
    [
        pytest.param({"email": "a@b.co"}, "a@b.co", id="string"),
        pytest.param({"email": "Üñî@例え.jp"}, "Üñî@例え.jp", id="unicode"),
        pytest.param({"email": 5}, None, id="int"),
        pytest.param({"email": None}, None, id="None"),
        pytest.param({"email": ""}, None, id="empty"),
        pytest.param({"email": "   "}, None, id="blank"),
        pytest.param({"email": ["a@b.co"]}, None, id="list"),
        pytest.param({"email": {"work": "a@b.co"}}, None, id="dict"),
        pytest.param({"contact": {"email": "a@b.co"}}, None, id="nested-email-not-used"),
        pytest.param({"Email": "a@b.co"}, None, id="case-sensitive-key"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_identify_email(traits: Dict[str, Any], email: Optional[str]) -> None:
    body = map_message({"type": "identify", "userId": "u", "traits": traits})
    assert body is not None
    assert body.get("emailAddress") == email
    if email is not None:
        assert "email" not in body["attributes"]  # not repeated as an attribute
    else:
        assert "emailAddress" not in body


def test_identify_email_is_removed_without_mutating_traits() -> None:
    traits = {"email": "a@b.co", "name": "Ann"}
    body = map_message({"type": "identify", "userId": "u", "traits": traits})
    assert body == {"userId": "u", "emailAddress": "a@b.co", "attributes": {"name": "Ann"}}
    assert traits == {"email": "a@b.co", "name": "Ann"}


def test_nested_email_stays_an_attribute() -> None:
    body = map_message(
        {"type": "identify", "userId": "u", "traits": {"contact": {"email": "c@d.co"}}}
    )
    assert body == {"userId": "u", "attributes": {"contact.email": "c@d.co"}}


@pytest.mark.parametrize(
    "traits",
    [
        pytest.param(None, id="None"),
        pytest.param("not a dict", id="str"),
        pytest.param(["a", "b"], id="list"),
        pytest.param({}, id="empty"),
    ],
)
def test_identify_without_usable_traits_sends_empty_attributes(traits: Any) -> None:
    message: Dict[str, Any] = {"type": "identify", "userId": "u"}
    if traits is not None:
        message["traits"] = traits
    assert map_message(message) == {"userId": "u", "attributes": {}}


def test_engage_audience_booleans_stay_booleans() -> None:
    body = map_message(
        {
            "type": "identify",
            "userId": "u",
            "traits": {"high_value_users": True, "churn_risk": False},
        }
    )
    assert body is not None
    attributes = body["attributes"]
    assert attributes == {"high_value_users": True, "churn_risk": False}
    assert attributes["high_value_users"] is True
    assert attributes["churn_risk"] is False
    # And they serialize as JSON booleans, not 1/0 or strings.
    assert json.dumps(attributes) == '{"high_value_users": true, "churn_risk": false}'


# -- attributes -------------------------------------------------------------------------

_DT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        # Flattening.
        pytest.param({"plan": {"tier": "pro"}}, {"plan.tier": "pro"}, id="nested-one-level"),
        pytest.param(
            {"a": {"b": {"c": {"d": 1}}, "e": 2}, "f": 3},
            {"a.b.c.d": 1, "a.e": 2, "f": 3},
            id="nested-multi-level",
        ),
        pytest.param({"plan": {}}, {}, id="empty-nested-dict"),
        pytest.param({"a.b": 1, "a": {"c": 2}}, {"a.b": 1, "a.c": 2}, id="dotted-key-and-nested"),
        # Scalars kept as they are.
        pytest.param({"s": "x"}, {"s": "x"}, id="str"),
        pytest.param({"s": ""}, {"s": ""}, id="empty-str"),
        pytest.param({"i": 42}, {"i": 42}, id="int"),
        pytest.param({"i": 0}, {"i": 0}, id="int-zero"),
        pytest.param({"i": -7}, {"i": -7}, id="int-negative"),
        pytest.param({"i": 10**15}, {"i": 10**15}, id="int-large"),
        pytest.param({"f": 1.5}, {"f": 1.5}, id="float"),
        pytest.param({"f": -0.25}, {"f": -0.25}, id="float-negative"),
        pytest.param({"b": True}, {"b": True}, id="bool-true"),
        pytest.param({"b": False}, {"b": False}, id="bool-false"),
        # Dropped numbers and None.
        pytest.param({"f": math.nan, "k": 1}, {"k": 1}, id="nan-dropped"),
        pytest.param({"f": math.inf, "k": 1}, {"k": 1}, id="inf-dropped"),
        pytest.param({"f": -math.inf, "k": 1}, {"k": 1}, id="neg-inf-dropped"),
        pytest.param({"n": None, "k": 1}, {"k": 1}, id="none-dropped"),
        pytest.param({"p": {"n": None, "f": math.nan}}, {}, id="nested-none-nan-dropped"),
        # Lists / tuples / sets.
        pytest.param({"l": ["a", "b", "c"]}, {"l": "a,b,c"}, id="list-of-str"),
        pytest.param({"l": [1, 2.5, "x"]}, {"l": "1,2.5,x"}, id="list-mixed-scalars"),
        pytest.param({"l": [True, False]}, {"l": "true,false"}, id="list-of-bool"),
        pytest.param({"t": ("a", 1)}, {"t": "a,1"}, id="tuple"),
        pytest.param({"l": ["a", None, "b"]}, {"l": "a,b"}, id="list-none-items-skipped"),
        pytest.param({"l": [_DT]}, {"l": "2026-01-02T03:04:05.678000+00:00"}, id="list-datetime"),
        pytest.param({"l": [{"a": 1}], "k": 1}, {"k": 1}, id="list-with-dict-dropped"),
        pytest.param({"l": ["a", {"a": 1}]}, {}, id="list-mixed-with-dict-dropped"),
        pytest.param({"l": [["a"], ["b"]]}, {}, id="list-of-lists-dropped"),
        pytest.param({"l": [_Opaque()]}, {}, id="list-of-objects-dropped"),
        pytest.param({"s": {3, 1, 2}}, {"s": "1,2,3"}, id="set-of-int-sorted"),
        pytest.param({"s": frozenset({"b", "c", "a"})}, {"s": "a,b,c"}, id="frozenset-sorted"),
        # Datetimes.
        pytest.param({"d": _DT}, {"d": "2026-01-02T03:04:05.678000+00:00"}, id="datetime"),
        pytest.param({"d": datetime(2026, 1, 2, 3, 4, 5)}, {"d": "2026-01-02T03:04:05"},
                     id="naive-datetime"),
        pytest.param({"d": date(2026, 1, 2)}, {"d": "2026-01-02"}, id="date"),
        # Other objects dropped.
        pytest.param({"o": _Opaque(), "k": 1}, {"k": 1}, id="object-dropped"),
        pytest.param({"o": b"bytes", "k": 1}, {"k": 1}, id="bytes-dropped"),
        pytest.param({"o": 1j, "k": 1}, {"k": 1}, id="complex-dropped"),
        pytest.param({"o": len, "k": 1}, {"k": 1}, id="function-dropped"),
        # Reserved "!" keys.
        pytest.param({"!email": "x", "k": 1}, {"k": 1}, id="bang-key-dropped"),
        pytest.param({"!": "x"}, {}, id="bare-bang-dropped"),
        pytest.param({"!plan": {"tier": "pro"}}, {}, id="bang-parent-dropped"),
        pytest.param({"plan": {"!tier": "pro"}}, {"plan.!tier": "pro"},
                     id="bang-inside-nested-key-kept"),
        pytest.param({"a!": 1}, {"a!": 1}, id="bang-not-first-kept"),
        # Unicode.
        pytest.param(
            {"名前": "太郎", "émoji": "🎉"}, {"名前": "太郎", "émoji": "🎉"}, id="unicode"
        ),
        pytest.param({"ключ": {"вложен": "да"}}, {"ключ.вложен": "да"}, id="unicode-nested"),
        # Non-string keys are coerced to str.
        pytest.param({1: "one", 2.5: "x", (1, 2): "t"}, {"1": "one", "2.5": "x", "(1, 2)": "t"},
                     id="non-str-keys"),
        pytest.param({False: 0}, {"False": 0}, id="bool-key"),
        pytest.param({None: 1}, {"None": 1}, id="none-key"),
        pytest.param({"a": {1: {2: "x"}}}, {"a.1.2": "x"}, id="non-str-nested-keys"),
    ],
)
def test_attributes_from_traits(traits: Dict[Any, Any], expected: Dict[str, Any]) -> None:
    attributes = _attrs(traits)
    assert attributes == expected
    # Types are exact: True is not 1, 1 is not 1.0.
    assert {k: type(v) for k, v in attributes.items()} == {
        k: type(v) for k, v in expected.items()
    }
    # Every attribute is a JSON-encodable scalar keyed by a str.
    assert all(isinstance(k, str) for k in attributes)
    json.dumps(attributes, allow_nan=False)


def test_attribute_order_follows_traits() -> None:
    traits = {"z": 1, "a": {"y": 2, "b": 3}, "m": 4}
    assert list(_attrs(traits)) == ["z", "a.y", "a.b", "m"]


def test_sets_are_deterministic_whatever_the_insertion_order() -> None:
    words = [f"w{i:03d}" for i in range(50)]
    first = _attrs({"s": set(words)})
    second = _attrs({"s": set(reversed(words))})
    assert first == second == {"s": ",".join(sorted(words))}


def test_huge_string_kept_whole() -> None:
    value = "x" * 1_000_000
    assert _attrs({"blob": value}) == {"blob": value}


def test_deep_nesting_is_bounded_without_recursion_error() -> None:
    deep: Dict[str, Any] = {}
    cursor = deep
    for _ in range(1000):
        cursor["k"] = {}
        cursor = cursor["k"]
    cursor["leaf"] = "bottom"
    attributes = _attrs({"shallow": 1, "deep": deep})
    assert attributes["shallow"] == 1
    # The over-deep branch is dropped; whatever is kept is bounded in depth.
    assert all(key.count(".") <= 40 for key in attributes)
    assert "bottom" not in attributes.values()


def test_self_referencing_traits_terminate() -> None:
    traits: Dict[str, Any] = {"name": "loop"}
    traits["self"] = traits
    attributes = _attrs(traits)
    assert attributes["name"] == "loop"
    assert all(key.count(".") <= 40 for key in attributes)


def test_moderate_nesting_is_kept() -> None:
    deep: Dict[str, Any] = {"v": 1}
    for _ in range(10):
        deep = {"n": deep}
    assert _attrs(deep) == {"n." * 10 + "v": 1}


def test_attribute_cap_keeps_exactly_first_100() -> None:
    traits = {f"a{i:03d}": i for i in range(150)}
    attributes, dropped = attributes_from_traits(traits)
    assert dropped == [f"a{i:03d}" for i in range(100, 150)]
    assert len(attributes) == MAX_ATTRIBUTES == 100
    assert list(attributes) == [f"a{i:03d}" for i in range(100)]


def test_attribute_cap_counts_flattened_values() -> None:
    traits = {"g": {f"k{i}": i for i in range(60)}, "h": {f"k{i}": i for i in range(60)}}
    attributes, dropped = attributes_from_traits(traits)
    assert (len(attributes), len(dropped)) == (100, 20)
    assert "h.k39" in attributes and "h.k40" not in attributes


def test_attribute_cap_custom_limit() -> None:
    attributes, dropped = attributes_from_traits({"a": 1, "b": 2, "c": 3}, limit=2)
    assert (attributes, dropped) == ({"a": 1, "b": 2}, ["c"])


def test_identify_over_cap_keeps_100_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    traits: Dict[str, Any] = {"email": "a@b.co"}
    traits.update({f"t{i:03d}": i for i in range(150)})
    with caplog.at_level(logging.WARNING, logger="analytics_sprig"):
        body = map_message({"type": "identify", "userId": "u-cap", "traits": traits})
    assert body is not None
    assert body["emailAddress"] == "a@b.co"  # email does not count against the cap
    assert len(body["attributes"]) == 100
    assert list(body["attributes"]) == [f"t{i:03d}" for i in range(100)]
    warnings = [r for r in caplog.records if r.name == "analytics_sprig"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    text = warnings[0].getMessage()
    assert "50" in text and "100" in text and "u-cap" in text
    assert "'t100'" in text and "'t109'" in text and "and 40 more" in text


def test_identify_at_cap_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    traits = {f"t{i}": i for i in range(100)}
    with caplog.at_level(logging.WARNING, logger="analytics_sprig"):
        body = map_message({"type": "identify", "userId": "u", "traits": traits})
    assert body is not None and len(body["attributes"]) == 100
    assert not [r for r in caplog.records if r.name == "analytics_sprig"]


# -- timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param("2026-01-02T03:04:05.678+00:00", KNOWN_MS, id="utc-offset"),
        pytest.param("2026-01-02T03:04:05.678Z", KNOWN_MS, id="Z"),
        pytest.param("2026-01-02T03:04:05.678z", KNOWN_MS, id="lower-z"),
        pytest.param("2026-01-02T05:04:05.678+02:00", KNOWN_MS, id="plus-02"),
        pytest.param("2026-01-01T22:04:05.678-05:00", KNOWN_MS, id="minus-05"),
        pytest.param("2026-01-02T08:34:05.678+05:30", KNOWN_MS, id="plus-0530"),
        pytest.param("2026-01-02T03:04:05.678", KNOWN_MS, id="naive-is-utc"),
        pytest.param("2026-01-02 03:04:05.678+00:00", KNOWN_MS, id="space-separator"),
        pytest.param(" 2026-01-02T03:04:05.678Z ", KNOWN_MS, id="surrounding-space"),
        pytest.param("2026-01-02T03:04:05Z", KNOWN_MS - 678, id="no-fraction"),
        pytest.param("2026-01-02T03:04:05.6Z", KNOWN_MS - 78, id="1-digit"),
        pytest.param("2026-01-02T03:04:05.67Z", KNOWN_MS - 8, id="2-digits"),
        pytest.param("2026-01-02T03:04:05.678Z", KNOWN_MS, id="3-digits"),
        pytest.param("2026-01-02T03:04:05.6789Z", KNOWN_MS, id="4-digits"),
        pytest.param("2026-01-02T03:04:05.67891Z", KNOWN_MS, id="5-digits"),
        pytest.param("2026-01-02T03:04:05.678912Z", KNOWN_MS, id="6-digits"),
        pytest.param("2026-01-02T03:04:05.678912345Z", KNOWN_MS, id="9-digits-truncated"),
        pytest.param("2026-01-02T05:04:05.6+02:00", KNOWN_MS - 78, id="1-digit-with-offset"),
        pytest.param("1970-01-01T00:00:00Z", 0, id="epoch"),
        pytest.param("1970-01-01T00:00:00.001Z", 1, id="epoch-plus-1ms"),
        pytest.param("1969-12-31T23:59:59.999Z", -1, id="before-epoch"),
        pytest.param("2004-03-15T07:55:47.472+00:00", 1079337347472, id="float-trap-2004"),
        pytest.param("1987-02-24T12:51:47.341Z", 541169507341, id="float-trap-1987"),
        pytest.param("2039-03-08T19:46:13.411Z", 2183226373411, id="float-trap-2039"),
        pytest.param(_DT, KNOWN_MS, id="datetime-aware"),
        pytest.param(_DT.replace(tzinfo=None), KNOWN_MS, id="datetime-naive-is-utc"),
        pytest.param(_DT.astimezone(timezone(timedelta(hours=-8))), KNOWN_MS,
                     id="datetime-other-tz"),
        pytest.param(datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=timezone.utc), KNOWN_MS,
                     id="datetime-microseconds-floor"),
        pytest.param(1767323045, KNOWN_MS - 678, id="int-seconds"),
        pytest.param(KNOWN_MS, KNOWN_MS, id="int-millis"),
    ],
)
def test_epoch_millis(timestamp: Any, expected: int) -> None:
    result = epoch_millis(timestamp)
    assert type(result) is int
    assert result == expected


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), id="2026"),
        # Float arithmetic (timestamp() * 1000) is 1 ms short for 240 of these 1000 instants.
        pytest.param(datetime(2004, 11, 1, 22, 11, 33, tzinfo=timezone.utc), id="2004"),
        pytest.param(datetime(2039, 3, 8, 19, 46, 13, tzinfo=timezone.utc), id="2039"),
    ],
)
def test_epoch_millis_is_exact_for_every_millisecond(base: datetime) -> None:
    base_ms = calendar.timegm(base.timetuple()) * 1000
    for ms in range(1000):
        moment = base + timedelta(milliseconds=ms)
        assert epoch_millis(moment.isoformat(timespec="milliseconds")) == base_ms + ms
        assert epoch_millis(moment.isoformat().replace("+00:00", "Z")) == base_ms + ms
        assert epoch_millis(moment) == base_ms + ms


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(None, id="None"),
        pytest.param("", id="empty"),
        pytest.param("not a date", id="garbage"),
        pytest.param("2026-13-45T99:00:00Z", id="out-of-range"),
        pytest.param("yesterday", id="word"),
        pytest.param([], id="list"),
        pytest.param({}, id="dict"),
        pytest.param(True, id="bool"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
    ],
)
def test_unparseable_timestamp_is_now(timestamp: Any) -> None:
    before = _now_ms()
    result = epoch_millis(timestamp)
    after = _now_ms()
    assert type(result) is int
    assert before - 5 <= result <= after + 5


def test_unparseable_timestamp_uses_given_now() -> None:
    assert epoch_millis("garbage", now=_DT) == KNOWN_MS
    assert epoch_millis(None, now=_DT.replace(tzinfo=None)) == KNOWN_MS


# -- track ------------------------------------------------------------------------------


def test_track_body_shape_and_properties_not_sent() -> None:
    body = map_message(
        {
            "type": "track",
            "userId": "user-1",
            "event": "Order Completed",
            "properties": {"total": 10, "currency": "EUR"},
            "timestamp": "2026-01-02T03:04:05.678Z",
            "messageId": "m-1",
        }
    )
    assert body == {
        "userId": "user-1",
        "events": [{"event": "Order Completed", "timestamp": KNOWN_MS}],
    }
    assert type(body["events"][0]["timestamp"]) is int


@pytest.mark.parametrize(
    ("context", "email"),
    [
        pytest.param({"traits": {"email": "a@b.co"}}, "a@b.co", id="context-traits-email"),
        pytest.param({"traits": {"email": ""}}, None, id="empty"),
        pytest.param({"traits": {"email": 3}}, None, id="non-string"),
        pytest.param({"traits": {"name": "x"}}, None, id="no-email"),
        pytest.param({"traits": "a@b.co"}, None, id="traits-not-dict"),
        pytest.param({"ip": "1.2.3.4"}, None, id="no-traits"),
        pytest.param("nonsense", None, id="context-not-dict"),
        pytest.param(None, None, id="no-context"),
    ],
)
def test_track_email_from_context_traits(context: Any, email: Optional[str]) -> None:
    message: Dict[str, Any] = {
        "type": "track",
        "userId": "u",
        "event": "E",
        "timestamp": "2026-01-02T03:04:05.678Z",
    }
    if context is not None:
        message["context"] = context
    body = map_message(message)
    expected: Dict[str, Any] = {"userId": "u", "events": [{"event": "E", "timestamp": KNOWN_MS}]}
    if email is not None:
        expected["emailAddress"] = email
    assert body == expected


def test_track_without_timestamp_is_now() -> None:
    before = _now_ms()
    body = map_message({"type": "track", "userId": "u", "event": "E"})
    after = _now_ms()
    assert body is not None
    assert before - 5 <= body["events"][0]["timestamp"] <= after + 5


@pytest.mark.parametrize(
    "event",
    [
        pytest.param("", id="empty"),
        pytest.param(None, id="None"),
        pytest.param(42, id="int"),
        pytest.param(["E"], id="list"),
    ],
)
def test_track_without_usable_event_is_none(event: Any) -> None:
    assert map_message({"type": "track", "userId": "u", "event": event}) is None


def test_track_without_event_key_is_none() -> None:
    assert map_message({"type": "track", "userId": "u"}) is None


# -- page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "naming", "expected"),
    [
        pytest.param({"name": "Pricing"}, EventNaming(), "Viewed Pricing Page", id="named"),
        pytest.param({"name": "Pricing", "category": "Docs"}, EventNaming(),
                     "Viewed Pricing Page", id="named-with-category"),
        pytest.param({}, EventNaming(), "Loaded a Page", id="no-name"),
        pytest.param({"name": ""}, EventNaming(), "Loaded a Page", id="empty-name"),
        pytest.param({"name": None}, EventNaming(), "Loaded a Page", id="none-name"),
        pytest.param({"name": 7}, EventNaming(), "Loaded a Page", id="non-str-name"),
        pytest.param({"name": "Home"}, EventNaming("Saw {name}", "Saw a page"), "Saw Home",
                     id="custom-format"),
        pytest.param({}, EventNaming("Saw {name}", "Saw a page"), "Saw a page",
                     id="custom-default"),
        pytest.param({"name": "Home", "category": "Site"},
                     EventNaming("{category}/{name}", "x"), "Site/Home",
                     id="custom-with-category"),
        pytest.param({"name": "Home"}, EventNaming("{category}/{name}", "x"), "/Home",
                     id="custom-missing-category-empty"),
        pytest.param({"name": "Home", "category": None}, EventNaming("[{category}]{name}", "x"),
                     "[]Home", id="custom-none-category-empty"),
        pytest.param({"name": "{category}"}, EventNaming(), "Viewed {category} Page",
                     id="braces-in-name-not-reformatted"),
    ],
)
def test_page_event_name(message: Dict[str, Any], naming: EventNaming, expected: str) -> None:
    assert named_event(message, naming) == expected
    full = {"type": "page", "userId": "u", "timestamp": "2026-01-02T03:04:05.678Z", **message}
    assert map_message(full, naming) == {
        "userId": "u",
        "events": [{"event": expected, "timestamp": KNOWN_MS}],
    }


def test_page_defaults() -> None:
    assert EventNaming() == EventNaming("Viewed {name} Page", "Loaded a Page")
    body = map_message({"type": "page", "userId": "u", "name": "Home"})
    assert body is not None and body["events"][0]["event"] == "Viewed Home Page"


def test_page_properties_not_sent_and_email_from_context() -> None:
    body = map_message(
        {
            "type": "page",
            "userId": "u",
            "name": "Home",
            "properties": {"url": "https://example.com", "title": "Home"},
            "context": {"traits": {"email": "a@b.co"}},
            "timestamp": "2026-01-02T03:04:05.678Z",
        }
    )
    assert body == {
        "userId": "u",
        "emailAddress": "a@b.co",
        "events": [{"event": "Viewed Home Page", "timestamp": KNOWN_MS}],
    }


# -- alias, ids, other types ------------------------------------------------------------


def test_alias_sends_only_new_user_id() -> None:
    body = map_message(
        {
            "type": "alias",
            "userId": "new-id",
            "previousId": "old-id",
            "context": {"traits": {"email": "a@b.co"}},
        }
    )
    assert body == {"userId": "new-id"}


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        pytest.param("u-1", "u-1", id="str"),
        pytest.param(42, "42", id="int-stringified"),
        pytest.param(0, "0", id="int-zero"),
        pytest.param("ユーザー", "ユーザー", id="unicode"),
        pytest.param("a/b c", "a/b c", id="slash-space"),
    ],
)
def test_user_id_is_a_string(user_id: Any, expected: str) -> None:
    body = map_message({"type": "alias", "userId": user_id})
    assert body == {"userId": expected}


@pytest.mark.parametrize("call_type", ["identify", "track", "page", "alias"])
@pytest.mark.parametrize(
    "user_id",
    [pytest.param(None, id="None"), pytest.param("", id="empty"), pytest.param(..., id="absent")],
)
def test_no_user_id_maps_to_none(call_type: str, user_id: Any) -> None:
    message: Dict[str, Any] = {"type": call_type, "event": "E", "anonymousId": "anon"}
    if user_id is not ...:
        message["userId"] = user_id
    assert map_message(message) is None


@pytest.mark.parametrize("call_type", ["group", "unknown", None])
def test_unsupported_types_map_to_none(call_type: Any) -> None:
    message = {"type": call_type, "userId": "u", "event": "E", "name": "Home", "traits": {}}
    assert map_message(message) is None


@pytest.mark.parametrize(
    ("message", "event"),
    [
        pytest.param({"name": "Settings"}, "Viewed Settings Screen", id="named"),
        pytest.param({}, "Loaded a Screen", id="unnamed"),
        pytest.param({"name": 5}, "Loaded a Screen", id="non-str-name"),
    ],
)
def test_screen_maps_to_an_event(message: Dict[str, Any], event: str) -> None:
    full = {"type": "screen", "userId": "u", "timestamp": "2026-01-02T03:04:05.678Z", **message}
    assert map_message(full) == {"userId": "u", "events": [{"event": event,
                                                            "timestamp": KNOWN_MS}]}
    custom = EventNaming("Opened {name}", "Opened an app screen")
    assert map_message(full, screen=custom) == {
        "userId": "u",
        "events": [{"event": event.replace("Viewed ", "Opened ").replace(" Screen", "")
                    if message.get("name") == "Settings" else "Opened an app screen",
                    "timestamp": KNOWN_MS}],
    }


def test_map_message_does_not_mutate_message() -> None:
    message = {
        "type": "identify",
        "userId": "u",
        "traits": {"email": "a@b.co", "plan": {"tier": "pro"}, "tags": ["a", "b"]},
        "context": {"traits": {"email": "a@b.co"}},
    }
    before = copy.deepcopy(message)
    map_message(message)
    assert message == before


# -- coalesce ---------------------------------------------------------------------------


def _item(message: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    body = map_message(message)
    assert body is not None
    return body, message


def _identify(user: str, traits: Dict[str, Any]) -> Dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": traits}


def _track(user: str, event: str, ms: int = KNOWN_MS) -> Dict[str, Any]:
    stamp = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return {"type": "track", "userId": user, "event": event, "timestamp": stamp.isoformat()}


def test_coalesce_same_user_into_one_body() -> None:
    messages = [
        _identify("u", {"email": "old@b.co", "plan": "free", "age": 30}),
        _track("u", "A", KNOWN_MS),
        _identify("u", {"email": "new@b.co", "plan": "pro"}),
        _track("u", "B", KNOWN_MS + 1),
    ]
    batches = coalesce([_item(m) for m in messages])
    assert len(batches) == 1
    assert batches[0].body == {
        "userId": "u",
        "emailAddress": "new@b.co",
        "attributes": {"plan": "pro", "age": 30},  # later wins
        "events": [
            {"event": "A", "timestamp": KNOWN_MS},
            {"event": "B", "timestamp": KNOWN_MS + 1},
        ],
    }
    assert batches[0].messages == messages


def test_coalesce_different_users_stay_separate_in_first_seen_order() -> None:
    messages = [
        _track("u1", "A"),
        _identify("u2", {"x": 1}),
        _track("u1", "B"),
        _track("u3", "C"),
        _identify("u2", {"x": 2}),
    ]
    batches = coalesce([_item(m) for m in messages])
    assert [b.body["userId"] for b in batches] == ["u1", "u2", "u3"]
    assert [e["event"] for e in batches[0].body["events"]] == ["A", "B"]
    assert batches[1].body == {"userId": "u2", "attributes": {"x": 2}}
    assert batches[0].messages == [messages[0], messages[2]]
    assert batches[1].messages == [messages[1], messages[4]]
    assert batches[2].messages == [messages[3]]


def test_coalesce_alias_only_body() -> None:
    message = {"type": "alias", "userId": "u", "previousId": "p"}
    batches = coalesce([_item(message)])
    assert len(batches) == 1
    assert batches[0].body == {"userId": "u"}
    assert batches[0].messages == [message]


def test_coalesce_empty() -> None:
    assert coalesce([]) == []


def test_coalesce_splits_when_attributes_exceed_cap() -> None:
    first = _identify("u", {f"a{i:02d}": i for i in range(60)})
    other = _identify("v", {"x": 1})
    second = _identify("u", {f"b{i:02d}": i for i in range(60)})
    after = _track("u", "Later")
    batches = coalesce([_item(m) for m in (first, other, second, after)])
    bodies_for_u = [b for b in batches if b.body["userId"] == "u"]
    assert len(bodies_for_u) == 2
    assert [b.body["userId"] for b in batches] == ["u", "v", "u"]
    one, two = bodies_for_u
    assert list(one.body["attributes"]) == [f"a{i:02d}" for i in range(60)]
    assert list(two.body["attributes"]) == [f"b{i:02d}" for i in range(60)]
    # What follows the split rides in the second body, so the user's order is kept.
    assert two.body["events"] == [{"event": "Later", "timestamp": KNOWN_MS}]
    assert "events" not in one.body
    assert one.messages == [first]
    assert two.messages == [second, after]
    for batch in batches:
        assert len(batch.body.get("attributes", {})) <= MAX_ATTRIBUTES


def test_coalesce_overlapping_attributes_do_not_count_twice() -> None:
    first = _identify("u", {f"a{i:03d}": i for i in range(100)})
    second = _identify("u", {f"a{i:03d}": -i for i in range(100)})
    batches = coalesce([_item(first), _item(second)])
    assert len(batches) == 1
    attributes = batches[0].body["attributes"]
    assert len(attributes) == 100
    assert attributes["a099"] == -99


def test_coalesce_exactly_100_distinct_attributes_fit_in_one() -> None:
    first = _identify("u", {f"a{i}": i for i in range(50)})
    second = _identify("u", {f"b{i}": i for i in range(50)})
    third = _identify("u", {"c": 1})
    batches = coalesce([_item(m) for m in (first, second, third)])
    assert [len(b.body["attributes"]) for b in batches] == [100, 1]
    assert batches[1].messages == [third]


def test_coalesce_splits_events_over_cap() -> None:
    count = MAX_EVENTS + 50
    messages = [_track("u", f"E{i}", KNOWN_MS + i) for i in range(count)]
    batches = coalesce([_item(m) for m in messages])
    assert [len(b.body["events"]) for b in batches] == [MAX_EVENTS, 50]
    events: List[str] = [e["event"] for b in batches for e in b.body["events"]]
    assert events == [f"E{i}" for i in range(count)]
    assert [m for b in batches for m in b.messages] == messages
    stamps = [e["timestamp"] for b in batches for e in b.body["events"]]
    assert stamps == [KNOWN_MS + i for i in range(count)]


def test_coalesce_does_not_mutate_input_bodies() -> None:
    items = [
        _item(_identify("u", {"email": "a@b.co", "x": 1})),
        _item(_track("u", "A")),
        _item(_identify("u", {"x": 2, "y": 3})),
        _item(_track("u", "B")),
    ]
    snapshot = copy.deepcopy(items)
    batches = coalesce(items)
    assert items == snapshot
    # The merged body shares no dict/list with the first input body.
    merged = batches[0].body
    assert merged["attributes"] is not items[0][0]["attributes"]
    assert merged["events"] is not items[1][0]["events"]
    merged["attributes"]["z"] = 9
    merged["events"].append({"event": "C", "timestamp": 0})
    assert items == snapshot
