"""Property-based fuzzing of the mapping and of the whole ``track()/identify()`` path.

Whatever an app passes as traits, properties, ids or timestamps:

- ``map_message`` / ``attributes_from_traits`` never raise, and every body they produce is
  one Sprig accepts (strict JSON, ``userId`` a string, at most 100 attributes of allowed
  types, no ``!`` keys, events ``{event: str, timestamp: int}``);
- through a real analytics-python ``Client`` with the plugin installed, a call raises
  exactly when the same call raises on a client without plugins (Segment's own argument
  checks), never because of the plugin; and everything the plugin then sends is accepted by
  a FakeSprig that enforces Sprig's rules.

Runs derandomized with no example database, so CI is deterministic.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import SprigDestination
from analytics_sprig.batching._lanes import plan_bodies
from analytics_sprig.sprig._mapping import (
    MAX_ATTRIBUTES,
    SprigMerger,
    attributes_from_traits,
    map_message,
)
from analytics_sprig.testing import FakeSprig

API_KEY = "fuzz-key"

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
# The whole-path tests deliver every example over loopback: fewer, still deterministic.
FUZZ_PATH = settings(FUZZ, max_examples=120)

# -- strategies -----------------------------------------------------------------------

HUGE_INTS = st.one_of(
    st.sampled_from([2**53 + 1, 2**63, -(2**63) - 1, 10**30, -(10**40), 2**1000]),
    # Beyond Python's int-to-str limit (4300 digits, 3.11+); built lazily, since even
    # repr() of such a number raises there.
    st.integers(min_value=4301, max_value=4400).map(lambda digits: 10**digits),
)
integers = st.one_of(st.integers(), HUGE_INTS)
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=10),  # non-ASCII
    st.text(max_size=5).map(lambda t: "!" + t),  # Sprig-reserved names
    st.just("x" * 5000),  # huge strings
    st.sampled_from(["", " ", "email", "a.b", "\x00", "\ud800", "☃", "😀" * 3]),
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda m: timezone(timedelta(minutes=m)))
datetimes = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.one_of(st.just(timezone.utc), offsets)),
    st.sampled_from([datetime.min, datetime.max,
                     datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
                     datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))]),
)
hashable_leaves = st.one_of(st.none(), st.booleans(), integers, floats, texts,
                            st.binary(max_size=10), st.dates())
leaves = st.one_of(hashable_leaves, datetimes)
keys = st.one_of(texts, st.integers(), st.tuples(st.integers(), st.integers()),
                 st.booleans(), st.none(), st.floats(allow_nan=False))


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.frozensets(hashable_leaves, max_size=5),
        st.sets(hashable_leaves, max_size=5),
        st.dictionaries(keys, children, max_size=6),
    )


values = st.recursive(leaves, _containers, max_leaves=8)

def _wide(shape: Tuple[int, int]) -> Dict[str, Any]:
    """``groups`` nested dicts of ``width`` values: up to 240 attributes once flattened."""
    width, groups = shape
    group = {f"k{i}": (i if i % 3 else f"v{i}") for i in range(width)}
    return group if groups == 1 else {f"g{j}": dict(group) for j in range(groups)}


traits = st.one_of(
    st.dictionaries(keys, values, max_size=6),
    st.dictionaries(texts, st.dictionaries(keys, values, max_size=3), max_size=3),
    # Many attributes at once, to cross Sprig's cap of 100 (built, not drawn: fast).
    st.tuples(st.integers(1, 160), st.integers(1, 6)).map(_wide),
)


# No lone surrogates here: hypothesis's text() leaves them out, and one in a log line would
# break pytest-xdist's report transport (tests/test_api_client.py covers them in bodies).
ids = st.one_of(texts, st.integers(), HUGE_INTS, floats)
timestamps = st.one_of(st.none(), datetimes, st.dates(), texts, integers, floats,
                       st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456789Z",
                                        "0001-01-01T00:00:00+01:00", "nonsense"]))
emails = st.one_of(texts, st.sampled_from(["a@b.co", "ü@bücher.example", " ", "x" * 300]),
                   integers, st.none())


@st.composite
def raw_messages(draw: st.DrawFn) -> Dict[str, Any]:
    """A Segment-like message with anything in any field (what ``send()`` may be given)."""
    message: Dict[str, Any] = {
        "type": draw(st.sampled_from(["identify", "track", "page", "alias", "screen",
                                      "group", "bogus", None])),
        "userId": draw(st.one_of(ids, st.none(), values)),
        "timestamp": draw(timestamps),
    }
    if draw(st.booleans()):
        message["traits"] = draw(st.one_of(traits, values))
    if draw(st.booleans()):
        message["event"] = draw(st.one_of(texts, values))
    if draw(st.booleans()):
        message["name"] = draw(st.one_of(texts, values))
        message["category"] = draw(st.one_of(texts, values))
    if draw(st.booleans()):
        context = draw(st.one_of(values, st.fixed_dictionaries(
            {"traits": st.one_of(values, st.fixed_dictionaries({"email": emails}))})))
        message["context"] = context
    if draw(st.booleans()):
        message["properties"] = draw(values)
    return message


# -- what a valid body is ------------------------------------------------------------


def assert_valid_body(body: Mapping[str, Any]) -> None:
    """The rules of Sprig's ``POST /v2/users`` (see SPRIG_API.md)."""
    json.dumps(body, allow_nan=False)  # strict JSON: no NaN/inf, str keys only
    assert set(body) <= {"userId", "emailAddress", "attributes", "events"}, body.keys()
    assert isinstance(body["userId"], str) and body["userId"]
    if "emailAddress" in body:
        assert isinstance(body["emailAddress"], str)
    attributes = body.get("attributes", {})
    assert isinstance(attributes, dict)
    assert len(attributes) <= MAX_ATTRIBUTES
    for key, value in attributes.items():
        assert isinstance(key, str) and key and not key.startswith("!"), key
        assert isinstance(value, (str, int, float, bool)), (key, value)
        if isinstance(value, float):
            assert math.isfinite(value)
    for event in body.get("events", []):
        assert set(event) == {"event", "timestamp"}
        assert isinstance(event["event"], str)
        assert isinstance(event["timestamp"], int) and not isinstance(event["timestamp"], bool)


# -- the mapping, directly -----------------------------------------------------------


@FUZZ
@given(traits=st.one_of(traits, st.dictionaries(keys, values)), limit=st.integers(0, 120))
def test_attributes_from_traits_is_total_and_keeps_sprig_rules(
    traits: Dict[Any, Any], limit: int
) -> None:
    attributes, dropped = attributes_from_traits(traits, limit)
    over = len(dropped)
    assert len(attributes) <= limit and not set(dropped) & set(attributes)
    if over:
        assert len(attributes) == limit
    assert_valid_body({"userId": "u", "attributes": attributes} if limit <= MAX_ATTRIBUTES
                      else {"userId": "u"})
    for key, value in attributes.items():
        assert isinstance(key, str) and not key.startswith("!")
        assert isinstance(value, (str, int, float, bool))


@FUZZ
@given(messages=st.lists(raw_messages(), min_size=1, max_size=3))
def test_map_message_is_total_and_every_body_is_valid(messages: List[Dict[str, Any]]) -> None:
    items: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []
    for message in messages:
        body = map_message(message)
        if body is None:
            continue
        assert_valid_body(body)
        items.append((body, message))
    # Coalescing bodies of the same user keeps them valid (caps included).
    bodies = plan_bodies(SprigMerger(), [(b["userId"], b, m) for b, m in items])
    for body in bodies:
        assert_valid_body(body.payload)
        assert len(body.payload.get("events", ())) <= 100


# -- the whole path, through real clients ----------------------------------------------


class ErrorRecords(logging.Handler):
    """Keeps ERROR records of the analytics_sprig logger (a swallowed exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class World:
    """One FakeSprig (Sprig and Segment), a plugin client and a plain baseline client."""

    def __init__(self, sprig: FakeSprig) -> None:
        analytics_sprig.install()
        self.sprig = sprig
        self.errors: List[Tuple[BaseException, List[Any]]] = []
        self.destination = SprigDestination(
            API_KEY, endpoint=sprig.url, flush_interval=0.01, initial_backoff=0.01,
            max_backoff=0.05, max_retries=3, timeout=5.0,
            on_error=lambda exc, msgs: self.errors.append((exc, msgs)),
        )
        self.client = Client("write-key", host=sprig.url, upload_interval=0.05, max_retries=1)
        self.client.add_plugin(self.destination)
        # The reference: analytics-python's own behaviour, with no plugins, sending nothing.
        self.baseline = Client("write-key", send=False)
        self.sprig_seen = 0
        self.handler = ErrorRecords()

    def start_example(self) -> None:
        self.handler.records.clear()
        self.errors.clear()

    def new_sprig_requests(self) -> List[Any]:
        requests = [r for r in self.sprig.requests if r.path.startswith("/v2/")]
        fresh, self.sprig_seen = requests[self.sprig_seen:], len(requests)
        return fresh


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    logger = logging.getLogger("analytics_sprig")
    with FakeSprig(api_key=API_KEY) as sprig:
        w = World(sprig)
        logger.addHandler(w.handler)
        try:
            yield w
        finally:
            for consumer in w.client.consumers or ():
                consumer.pause()
                consumer.join(5)
            w.destination.shutdown(timeout=5)
            logger.removeHandler(w.handler)


def outcome(method: Callable[..., Any], kwargs: Dict[str, Any]) -> Optional[type]:
    """The exception class ``method(**kwargs)`` raises, or ``None``."""
    try:
        method(**_copy(kwargs))
    except Exception as exc:
        return type(exc)
    return None


@st.composite
def calls(draw: st.DrawFn) -> Tuple[str, Dict[str, Any]]:
    """One public call with arbitrary (sometimes invalid) arguments."""
    kind = draw(st.sampled_from(["identify", "track", "page", "alias", "group", "screen"]))
    user_id = draw(st.one_of(ids, st.none()))
    kwargs: Dict[str, Any] = {}
    if kind == "alias":
        kwargs = {"previous_id": draw(st.one_of(ids, st.none())), "user_id": user_id}
    else:
        kwargs["user_id"] = user_id
        if user_id is None or draw(st.booleans()):
            kwargs["anonymous_id"] = draw(st.one_of(texts, st.none()))
    if kind in ("identify", "group"):
        kwargs["traits"] = draw(st.one_of(traits, st.none(), values))
    if kind == "group":
        kwargs["group_id"] = draw(st.one_of(ids, st.none()))
    if kind == "track":
        kwargs["event"] = draw(st.one_of(texts, st.none(), values))
    if kind in ("track", "page", "screen"):
        kwargs["properties"] = draw(st.one_of(st.dictionaries(keys, values, max_size=8),
                                              st.none(), values))
    if kind in ("page", "screen"):
        kwargs["name"] = draw(st.one_of(texts, st.none()))
        kwargs["category"] = draw(st.one_of(texts, st.none()))
    if draw(st.booleans()):
        kwargs["timestamp"] = draw(st.one_of(datetimes, st.dates(), texts))
    if draw(st.booleans()):
        kwargs["context"] = draw(st.one_of(
            st.fixed_dictionaries({"traits": st.fixed_dictionaries({"email": emails})}),
            st.dictionaries(texts, values, max_size=3)))
    if draw(st.booleans()):
        kwargs["integrations"] = draw(st.dictionaries(
            st.sampled_from(["All", "Sprig", "Sprig Cloud", "UserLeap", "Mixpanel"]),
            st.one_of(st.booleans(), st.dictionaries(texts, texts, max_size=2), texts),
            max_size=3))
    return kind, kwargs


def _copy(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    # analytics-python writes into the context dict it is given; give each client its own.
    out = dict(kwargs)
    if isinstance(out.get("context"), dict):
        out["context"] = json.loads(json.dumps(out["context"], default=str))
    return out


@FUZZ_PATH
@given(batch=st.lists(calls(), min_size=1, max_size=3))
def test_client_calls_never_raise_because_of_the_plugin(
    world: World, batch: List[Tuple[str, Dict[str, Any]]]
) -> None:
    world.start_example()
    for kind, kwargs in batch:
        expected = outcome(getattr(world.baseline, kind), kwargs)
        got = outcome(getattr(world.client, kind), kwargs)
        # Only analytics-python's own checks may raise, and exactly when they do anyway.
        assert got is expected, (kind, kwargs, expected, got)
    assert analytics_sprig.pipeline_of(world.client).plugin_errors == 0
    assert world.destination.flush(timeout=10)
    for request in world.new_sprig_requests():
        # FakeSprig enforces Sprig's body rules: anything but 2xx is a mapping bug.
        assert 200 <= request.status < 300, (request.status, request.body[:300])
        assert_valid_body(request.json)
    stats = world.destination.stats()
    assert stats["received"] == (stats["skipped"] + stats["delivered"] + stats["failed"]
                                 + stats["dropped"] + stats["pending"])
    assert stats["failed"] == stats["dropped"] == stats["pending"] == 0, stats
    assert not world.errors
    assert not world.handler.records, [r.getMessage() for r in world.handler.records]


@FUZZ_PATH
@given(messages=st.lists(raw_messages(), min_size=1, max_size=3))
def test_send_of_arbitrary_messages_never_raises_and_sends_only_valid_bodies(
    world: World, messages: List[Dict[str, Any]]
) -> None:
    """``SprigDestination.send()`` (replaying exported events) with anything in any field."""
    world.start_example()
    for message in messages:
        world.destination.send(message)
    assert world.destination.flush(timeout=10)
    for request in world.new_sprig_requests():
        assert 200 <= request.status < 300, (request.status, request.body[:300])
        assert_valid_body(request.json)
    stats = world.destination.stats()
    assert stats["failed"] == stats["dropped"] == stats["pending"] == 0, stats
    assert not world.handler.records, [r.getMessage() for r in world.handler.records]


def test_known_awkward_values_map_as_documented() -> None:
    """A few of the inputs above, pinned: what the fuzzer explores, with exact results."""
    body = map_message({
        "type": "identify", "userId": 7, "timestamp": "2024-01-01T00:00:00Z",
        "traits": {
            "email": "a@b.co", "!email": "x", "n": float("nan"), "inf": float("inf"),
            "big": 2**63, "b": b"bytes", "when": datetime(2024, 1, 2, tzinfo=timezone.utc),
            "day": date(2024, 1, 3), "tags": {"b", "a"}, "t": (1, True, None), "none": None,
            1: "int key", (1, 2): "tuple key", "deep": {"er": {"est": 1}},
        },
    })
    assert body is not None
    assert_valid_body(body)
    assert body["userId"] == "7" and body["emailAddress"] == "a@b.co"
    attributes = body["attributes"]
    assert attributes["big"] == 2**63
    assert attributes["when"] == "2024-01-02T00:00:00+00:00"
    assert attributes["day"] == "2024-01-03"
    assert attributes["tags"] == "a,b"
    assert attributes["t"] == "1,true"
    assert attributes["1"] == "int key" and attributes["(1, 2)"] == "tuple key"
    assert attributes["deep.er.est"] == 1
    assert not {"n", "inf", "b", "none", "!email"} & set(attributes)
