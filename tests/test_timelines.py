"""End to end: destination timelines, event filters, screens, the double-delivery guard and
``on_delivered`` (issue 13), with a real Segment ``Client`` and a ``SprigDestination``, both
talking to a loopback FakeSprig (Sprig's ``/v2`` and Segment's ``/v1/batch`` at once).

Each test checks both sides: what Segment's servers received (``fake.segment_messages``) and
what Sprig received (``fake.users`` / ``fake.requests``), plus the destination's counters.
"""

from __future__ import annotations

import ast
import copy
import io
import logging
import re
import threading
import tokenize
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import segment.analytics
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import SprigDestination, hookimpl
from analytics_sprig.testing import FakeSprig

MakeClient = Callable[..., Client]
MakeDestination = Callable[..., SprigDestination]
Message = Dict[str, Any]

DOC = Path(__file__).resolve().parent.parent / "docs" / "destinations.md"
CLOUD_OFF = {"Sprig": False, "Sprig Cloud": False, "UserLeap": False}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- helpers --------------------------------------------------------------------------------------


def millis(message: Message) -> int:
    """Epoch milliseconds of a normalized message's ISO timestamp (exact integer math)."""
    return (datetime.fromisoformat(message["timestamp"]) - EPOCH) // timedelta(milliseconds=1)


def sprig_events(fake: FakeSprig) -> Dict[str, List[str]]:
    """Event names Sprig stored, by userId, in the order received (users without events
    are left out)."""
    return {user_id: [e["event"] for e in visitor["eventLog"]]
            for user_id, visitor in fake.users.items() if visitor["eventLog"]}


def segment_by_id(fake: FakeSprig) -> Dict[str, Message]:
    """What Segment's ``/v1/batch`` received, by messageId (each exactly once)."""
    received: Dict[str, Message] = {}
    for message in fake.segment_messages:
        assert message["messageId"] not in received, "Segment received a message twice"
        received[message["messageId"]] = message
    return received


def check_invariant(stats: Dict[str, int]) -> None:
    accounted = (stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
                 + stats["pending"])
    assert stats["received"] == accounted, stats


def by_id(ref: Message) -> str:
    return str(ref["messageId"])


def flush_all(client: Client, destination: SprigDestination) -> None:
    assert client.flush(timeout=10) is True
    assert destination.flush(timeout=10) is True


class Delivered:
    """An ``on_delivered`` callback recording every batch of light references (thread-safe:
    senders call it from their own threads)."""

    def __init__(self) -> None:
        self.batches: List[List[Message]] = []
        self._lock = threading.Lock()

    def __call__(self, messages: List[Message]) -> None:
        with self._lock:
            self.batches.append(list(messages))

    @property
    def refs(self) -> List[Message]:
        with self._lock:
            return [ref for batch in self.batches for ref in batch]


# -- destination-scoped plugins -------------------------------------------------------------------


class ForSprig:
    """What the README's example does: for Sprig only, rename an event, strip a PII trait,
    and drop internal calls; records what its hooks saw."""

    def __init__(self) -> None:
        self.clients: List[Any] = []
        self.after: List[Tuple[str, Optional[str], bool]] = []

    @hookimpl
    def analytics_before(self, message: Message, client: Any) -> Optional[bool]:
        self.clients.append(client)
        if message.get("event") == "Internal Ping":
            return False
        if message.get("event") == "Order Completed":
            message["event"] = "Purchase"
        return None

    @hookimpl
    def analytics_enrich(self, message: Message) -> None:
        traits = message.get("traits")
        if isinstance(traits, dict):
            traits.pop("ssn", None)
            traits["plan"]["seats"] = 0  # a nested change: proves the copy is deep

    @hookimpl
    def analytics_after(self, message: Message, success: bool) -> None:
        self.after.append((message["type"], message.get("event"), success))


class Recorder:
    """Another destination on the client: keeps the very dicts it was handed."""

    def __init__(self) -> None:
        self.messages: List[Message] = []

    @hookimpl
    def analytics_destination(self, message: Message) -> None:
        self.messages.append(message)


def test_scoped_plugin_renames_strips_and_drops_for_sprig_only(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination()
    for_sprig = ForSprig()
    assert sprig.add_plugin(for_sprig) is for_sprig
    other = Recorder()
    client.add_plugin(sprig)
    client.add_plugin(other)

    calls = [
        client.identify("u-1", {"email": "ada@example.com", "ssn": "078-05-1120",
                                "plan": {"tier": "pro", "seats": 3}}),
        client.track("u-1", "Order Completed", {"total": 10}),
        client.track("u-2", "Internal Ping"),
        client.track("u-2", "Signed Up"),
    ]
    assert all(ok for ok, _ in calls)
    queued = [message for _, message in calls]  # the dicts Segment's queue holds
    before = copy.deepcopy(queued)

    # Sprig first: its plugins have run by now, before Segment's consumer sent anything
    # they could have changed.
    assert sprig.flush(timeout=10) is True
    assert queued == before, "a destination plugin changed Segment's own message"
    assert other.messages == before, "a destination plugin changed another destination's call"
    assert client.flush(timeout=10) is True

    # Segment's servers got every call as the app made it.
    received = segment_by_id(fake_sprig)
    assert received == {message["messageId"]: message for message in before}
    assert received[before[0]["messageId"]]["traits"]["ssn"] == "078-05-1120"
    assert received[before[1]["messageId"]]["event"] == "Order Completed"

    # Sprig got the changed calls, without the dropped one.
    users = fake_sprig.users
    assert users["u-1"]["emailAddress"] == "ada@example.com"
    assert users["u-1"]["attributes"] == {"plan.tier": "pro", "plan.seats": 0}
    assert sprig_events(fake_sprig) == {"u-1": ["Purchase"], "u-2": ["Signed Up"]}
    bodies = [r.json for r in fake_sprig.requests if r.path == "/v2/users"]
    assert "078-05-1120" not in repr(bodies)
    assert "Internal Ping" not in repr(bodies)

    assert for_sprig.clients == [client] * 4
    assert for_sprig.after == [("identify", None, True), ("track", "Purchase", True),
                               ("track", "Signed Up", True)]
    stats = sprig.stats()
    assert (stats["received"], stats["delivered"], stats["skipped"]) == (4, 3, 1)
    assert stats["skipped_plugin"] == 1
    assert stats["plugin_errors"] == 0
    check_invariant(stats)


def test_scoped_plugin_returning_a_dict_replaces_the_call(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    class Replace:
        @hookimpl
        def analytics_before(self, message: Message) -> Message:
            return {**message, "event": f"Sprig: {message['event']}", "userId": "u-sprig"}

    client = make_client()
    sprig = make_destination()
    sprig.add_plugin(Replace())
    client.add_plugin(sprig)
    client.track("u-app", "Opened")
    flush_all(client, sprig)

    assert sprig_events(fake_sprig) == {"u-sprig": ["Sprig: Opened"]}
    [segment] = fake_sprig.segment_messages
    assert (segment["userId"], segment["event"]) == ("u-app", "Opened")
    assert sprig.stats()["delivered"] == 1


def test_scoped_plugins_run_after_routing_on_the_planner_thread(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    """Routing is not redone after the hooks: opting out in the copy does not drop it."""
    threads: List[threading.Thread] = []

    class OptOutTooLate:
        @hookimpl
        def analytics_before(self, message: Message) -> None:
            threads.append(threading.current_thread())
            message["integrations"] = {"Sprig": False}

    for sync_mode in (False, True):
        client = make_client(sync_mode=sync_mode)
        sprig = make_destination()
        sprig.add_plugin(OptOutTooLate())
        client.add_plugin(sprig)
        client.track(f"u-{sync_mode}", "Still Sent")
        flush_all(client, sprig)
        assert sprig.stats()["delivered"] == 1

    assert sprig_events(fake_sprig) == {"u-False": ["Still Sent"], "u-True": ["Still Sent"]}
    assert threads[0] is not threading.current_thread()  # the planner thread
    assert threads[1] is threading.current_thread()  # sync_mode: the calling thread


class StripSsn:
    @hookimpl
    def analytics_before(self, message: Message, client: Any) -> None:
        message["traits"].pop("ssn", None)
        message["traits"]["client"] = repr(client)


def identify_message(user_id: str) -> Message:
    return {"type": "identify", "userId": user_id, "messageId": f"m-{user_id}",
            "timestamp": "2026-01-02T03:04:05.678Z", "integrations": {}, "context": {},
            "traits": {"ssn": "078-05-1120", "plan": "pro"}}


def test_scoped_plugins_run_for_send(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    sprig = make_destination()
    sprig.add_plugin(StripSsn())
    message = identify_message("u-send")
    sprig.send(message)
    assert sprig.flush(timeout=10) is True

    assert fake_sprig.users["u-send"]["attributes"] == {"plan": "pro", "client": "None"}
    assert message["traits"]["ssn"] == "078-05-1120"  # the caller's dict is untouched


def test_scoped_plugins_run_for_send_batch(
    fake_sprig: FakeSprig, make_destination: MakeDestination
) -> None:
    sprig = make_destination()
    sprig.add_plugin(StripSsn())
    sprig.send_batch([identify_message("u-batch")])
    assert sprig.flush(timeout=10) is True

    assert "ssn" not in fake_sprig.users["u-batch"]["attributes"]


def test_after_hook_says_whether_the_call_was_queued_for_sprig(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination(events=["Kept"])
    seen = ForSprig()
    sprig.add_plugin(seen)
    client.add_plugin(sprig)
    client.identify("u-1", {"plan": {"tier": "free"}})
    client.track("u-1", "Kept")
    client.track("u-1", "Filtered Out")
    flush_all(client, sprig)

    assert seen.after == [("identify", None, True), ("track", "Kept", True),
                          ("track", "Filtered Out", False)]
    assert sprig_events(fake_sprig) == {"u-1": ["Kept"]}
    assert sprig.stats()["skipped_event_filter"] == 1


class Broken:
    """Every hook raises."""

    @hookimpl
    def analytics_before(self, message: Message) -> None:
        raise RuntimeError("before")

    @hookimpl
    def analytics_enrich(self, message: Message) -> None:
        raise RuntimeError("enrich")

    @hookimpl
    def analytics_after(self, message: Message, success: bool) -> None:
        raise RuntimeError("after")


@pytest.mark.parametrize("broken_first", [True, False], ids=["broken-first", "broken-last"])
def test_a_raising_plugin_does_not_stop_delivery(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination,
    caplog: pytest.LogCaptureFixture, broken_first: bool,
) -> None:
    client = make_client()
    sprig = make_destination()
    good = ForSprig()
    for plugin in ((Broken(), good) if broken_first else (good, Broken())):
        sprig.add_plugin(plugin)
    client.add_plugin(sprig)

    with caplog.at_level(logging.ERROR, logger="analytics_sprig"):
        client.track("u-1", "Order Completed")
        client.track("u-2", "Signed Up")
        flush_all(client, sprig)

    # Both calls delivered, the good plugin's rename applied despite its broken neighbour.
    assert sprig_events(fake_sprig) == {"u-1": ["Purchase"], "u-2": ["Signed Up"]}
    assert len(fake_sprig.segment_messages) == 2
    stats = sprig.stats()
    assert stats["delivered"] == 2
    assert stats["plugin_errors"] == 6  # three hooks, two calls
    assert analytics_sprig.pipeline_of(client).plugin_errors == 0  # the client's own: none
    assert sum("raised" in record.getMessage() for record in caplog.records) == 6
    check_invariant(stats)


def test_a_plugin_with_a_destination_hook_is_refused(make_destination: MakeDestination) -> None:
    sprig = make_destination()
    with pytest.raises(ValueError, match="analytics_destination"):
        sprig.add_plugin(Recorder(), name="recorder")
    with pytest.raises(ValueError):
        sprig.add_plugin(make_destination())
    assert sprig.find_plugin(Recorder) is None
    assert sprig.find_plugin("recorder") is None
    assert sprig.find_plugins(object) == []


class Tagger:
    """Appends a suffix to track events (for Sprig only)."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    @hookimpl
    def analytics_before(self, message: Message) -> None:
        if message["type"] == "track":
            message["event"] += self.suffix


class SpecialTagger(Tagger):
    pass


def test_find_plugin_by_class_and_name_and_remove_plugin(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination()
    first = Tagger(" A")
    special = SpecialTagger(" B")
    sprig.add_plugin(first, name="first")
    sprig.add_plugin(special)
    client.add_plugin(sprig)

    assert sprig.find_plugin(Tagger) is first
    assert sprig.find_plugin(SpecialTagger) is special
    assert sprig.find_plugins(Tagger) == [first, special]
    assert sprig.find_plugins((SpecialTagger, ForSprig)) == [special]
    assert sprig.find_plugin("first") is first
    assert sprig.find_plugin("nope") is None and sprig.find_plugins("nope") == []
    with pytest.raises(TypeError):
        sprig.find_plugin(42)  # type: ignore[arg-type]
    # Scoped: the client does not see the destination's plugins, nor the reverse.
    assert client.find_plugin(Tagger) is None
    assert client.find_plugin(SprigDestination) is sprig
    assert sprig.find_plugin(SprigDestination) is None

    client.track("u-1", "One")
    assert sprig.flush(timeout=10) is True
    sprig.remove_plugin(first)
    sprig.remove_plugin(first)  # not registered any more: no error
    assert sprig.find_plugin("first") is None and sprig.find_plugins(Tagger) == [special]
    client.track("u-2", "Two")
    assert sprig.flush(timeout=10) is True
    sprig.remove_plugin(special)
    assert sprig.find_plugins(Tagger) == []
    client.track("u-3", "Three")
    flush_all(client, sprig)

    events = sprig_events(fake_sprig)
    assert events["u-1"] in (["One A B"], ["One B A"])  # both ran (order: pluggy's LIFO)
    assert events["u-2"] == ["Two B"]
    assert events["u-3"] == ["Three"]
    assert sorted(m["event"] for m in fake_sprig.segment_messages) == ["One", "Three", "Two"]


def test_scoped_lifecycle_hooks_and_adding_twice(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    calls: List[str] = []

    class Lifecycle:
        @hookimpl
        def analytics_flush(self, timeout: Optional[float]) -> None:
            calls.append("flush")

        @hookimpl
        def analytics_shutdown(self, timeout: Optional[float]) -> None:
            calls.append("shutdown")

    client = make_client()
    sprig = make_destination()
    plugin = Lifecycle()
    sprig.add_plugin(plugin)
    sprig.add_plugin(plugin)  # a no-op
    assert sprig.find_plugins(Lifecycle) == [plugin]
    client.add_plugin(sprig)
    client.track("u-1", "Opened")
    assert client.flush(timeout=10) is True
    client.shutdown(timeout=10)
    assert calls == ["flush", "shutdown"]
    assert sprig_events(fake_sprig) == {"u-1": ["Opened"]}


# -- event filters --------------------------------------------------------------------------------

# (call kind, userId, event or page/screen name); every call reaches Segment.
FILTER_CALLS: List[Tuple[str, str, Optional[str]]] = [
    ("identify", "u-1", None),
    ("alias", "u-1", None),
    ("track", "u-1", "Signed Up"),
    ("track", "u-1", "Order Completed"),
    ("track", "u-1", "Order Refunded"),
    ("track", "u-1", "Orders Exported"),  # "Order *" needs the space
    ("track", "u-1", "order completed"),  # case-sensitive
    ("track", "u-1", "Heartbeat"),
    ("track", "u-1", "Clicked [Buy]"),  # an exact name holding glob characters
    ("page", "u-1", "Pricing"),  # "Viewed Pricing Page"
    ("page", "u-1", "Admin Users"),  # "Viewed Admin Users Page"
    ("page", "u-1", None),  # "Loaded a Page"
    ("screen", "u-1", "Home"),  # "Viewed Home Screen"
    ("screen", "u-1", None),  # "Loaded a Screen"
]
ALL_EVENTS = ["Signed Up", "Order Completed", "Order Refunded", "Orders Exported",
              "order completed", "Heartbeat", "Clicked [Buy]", "Viewed Pricing Page",
              "Viewed Admin Users Page", "Loaded a Page", "Viewed Home Screen",
              "Loaded a Screen"]


def make_call(client: Client, kind: str, user_id: str, name: Optional[str]) -> Message:
    if kind == "identify":
        ok, message = client.identify(user_id, {"plan": "pro"})
    elif kind == "alias":
        ok, message = client.alias("anon-1", user_id)
    elif kind == "track":
        ok, message = client.track(user_id, name)
    elif kind == "page":
        ok, message = client.page(user_id, name=name)
    else:
        ok, message = client.screen(user_id, name=name)
    assert ok
    return message  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        pytest.param(
            {"events": ["Signed Up", "Order *", "Clicked [Buy]", "Viewed * Screen"]},
            ["Signed Up", "Order Completed", "Order Refunded", "Clicked [Buy]",
             "Viewed Home Screen"],
            id="allow-exact-and-globs",
        ),
        pytest.param(
            {"ignore_events": ["Heartbeat", "order *", "Viewed Admin* Page", "Loaded a *",
                               "Clicked [Buy]"]},
            ["Signed Up", "Order Completed", "Order Refunded", "Orders Exported",
             "Viewed Pricing Page", "Viewed Home Screen"],
            id="deny-exact-and-globs",
        ),
        pytest.param(
            {"events": ["Order *", "Viewed * Page", "Loaded a Screen"],
             "ignore_events": ["Order Refunded", "Viewed Admin* Page"]},
            ["Order Completed", "Viewed Pricing Page", "Loaded a Screen"],
            id="allow-and-deny",
        ),
        pytest.param({}, ALL_EVENTS, id="no-filter"),
        pytest.param({"events": ()}, [], id="empty-allow-list-keeps-no-event"),
    ],
)
def test_event_filters(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination,
    options: Dict[str, Any], kept: List[str],
) -> None:
    client = make_client()
    sprig = make_destination(types=("identify", "track", "page", "alias", "screen"), **options)
    client.add_plugin(sprig)
    sent = [make_call(client, *call) for call in FILTER_CALLS]
    flush_all(client, sprig)

    # Sprig: the kept events in call order; identify and alias are never filtered.
    assert sprig_events(fake_sprig) == ({"u-1": kept} if kept else {})
    assert fake_sprig.users["u-1"]["attributes"] == {"plan": "pro"}
    # Segment: everything, unfiltered.
    assert set(segment_by_id(fake_sprig)) == {m["messageId"] for m in sent}
    stats = sprig.stats()
    assert stats["skipped_event_filter"] == len(ALL_EVENTS) - len(kept)
    assert stats["delivered"] == 2 + len(kept)
    assert stats["skipped"] == stats["skipped_event_filter"]
    check_invariant(stats)


def test_filters_see_the_name_a_scoped_plugin_gave(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination(events=["Purchase"])  # the name as sent to Sprig
    sprig.add_plugin(ForSprig())  # renames "Order Completed" to "Purchase"
    client.add_plugin(sprig)
    client.track("u-1", "Order Completed")
    client.track("u-1", "Purchase Refunded")
    flush_all(client, sprig)

    assert sprig_events(fake_sprig) == {"u-1": ["Purchase"]}
    assert sprig.stats()["skipped_event_filter"] == 1


# -- screens --------------------------------------------------------------------------------------


def test_screens_are_skipped_as_a_type_by_default(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination()
    client.add_plugin(sprig)
    _, screen = client.screen("u-1", name="Home")
    client.track("u-1", "Opened")
    flush_all(client, sprig)

    assert sprig_events(fake_sprig) == {"u-1": ["Opened"]}
    assert screen["messageId"] in segment_by_id(fake_sprig)  # Segment still gets it
    stats = sprig.stats()
    assert (stats["skipped_type"], stats["delivered"], stats["skipped_unmappable"]) == (1, 1, 0)
    check_invariant(stats)


@pytest.mark.parametrize(
    ("options", "named", "unnamed"),
    [
        pytest.param({}, "Viewed Home Screen", "Loaded a Screen", id="default-naming"),
        pytest.param({"screen_event_format": "{category} / {name}",
                      "screen_event_default": "App Opened"},
                     "Onboarding / Home", "App Opened", id="custom-naming"),
    ],
)
def test_screens_become_events(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination,
    options: Dict[str, Any], named: str, unnamed: str,
) -> None:
    client = make_client()
    sprig = make_destination(types=("track", "screen"), **options)
    client.add_plugin(sprig)
    _, with_name = client.screen("u-1", category="Onboarding", name="Home",
                                 properties={"step": 1})
    _, without = client.screen("u-2")
    _, page = client.page("u-3", name="Pricing")  # page is not among these types
    flush_all(client, sprig)

    bodies = {r.json["userId"]: r.json for r in fake_sprig.requests if r.path == "/v2/users"}
    assert bodies == {
        "u-1": {"userId": "u-1", "events": [{"event": named, "timestamp": millis(with_name)}]},
        "u-2": {"userId": "u-2", "events": [{"event": unnamed, "timestamp": millis(without)}]},
    }
    assert set(segment_by_id(fake_sprig)) == {
        m["messageId"] for m in (with_name, without, page)}
    stats = sprig.stats()
    assert (stats["delivered"], stats["skipped_type"]) == (2, 1)
    check_invariant(stats)


# -- the double-delivery guard --------------------------------------------------------------------


def test_disable_cloud_destination_marks_only_forwarded_calls(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination(disable_cloud_destination=True)
    client.add_plugin(sprig)

    # Forwarded to Sprig: Segment's copy must say the three names are false.
    amplitude_off = {"Amplitude": False}
    only_sprig = {"All": False, "Sprig": True}
    sprig_options = {"Sprig": {"some": "option"}}
    forwarded = [
        make_call(client, "identify", "u-1", None),
        client.track("u-1", "Order Completed", integrations=amplitude_off)[1],
        client.page("u-1", name="Pricing", integrations=only_sprig)[1],
        client.track("u-1", "Signed Up", integrations=sprig_options)[1],
        make_call(client, "alias", "u-1", None),
    ]
    # Not forwarded: Segment's copy keeps the integrations the app gave.
    opted_out = {"Sprig": False}
    userleap_out = {"UserLeap": False}
    all_off = {"All": False, "Mixpanel": True}
    anonymous_on = {"Amplitude": True}
    group_on = {"Sprig": True}
    skipped = [
        (client.track("u-2", "Opted Out", integrations=opted_out)[1], opted_out),
        (client.track("u-2", "Old Name Out", integrations=userleap_out)[1], userleap_out),
        (client.track("u-2", "All Off", integrations=all_off)[1], all_off),
        (client.track(anonymous_id="anon-9", event="Anonymous",
                      integrations=anonymous_on)[1], anonymous_on),
        (client.group("u-2", "g-1", {"name": "Acme"}, integrations=group_on)[1], group_on),
        (client.screen("u-2", name="Home")[1], {}),  # screen is not in types here
    ]
    app_dicts = [amplitude_off, only_sprig, sprig_options, opted_out, userleap_out, all_off,
                 anonymous_on, group_on]
    flush_all(client, sprig)

    # The app's own dicts are untouched.
    assert app_dicts == [{"Amplitude": False}, {"All": False, "Sprig": True},
                         {"Sprig": {"some": "option"}}, {"Sprig": False}, {"UserLeap": False},
                         {"All": False, "Mixpanel": True}, {"Amplitude": True},
                         {"Sprig": True}]

    received = segment_by_id(fake_sprig)
    assert len(received) == len(forwarded) + len(skipped)
    expected_forwarded: List[Dict[str, Any]] = [{}, amplitude_off, only_sprig, sprig_options, {}]
    for message, app in zip(forwarded, expected_forwarded):
        assert received[message["messageId"]]["integrations"] == {**app, **CLOUD_OFF}, message
    for message, app in skipped:
        # Exactly what the app gave: the guard left these alone.
        assert received[message["messageId"]]["integrations"] == app, message

    # Sprig still receives the forwarded calls (routing saw the app's integrations).
    assert sprig_events(fake_sprig) == {
        "u-1": ["Order Completed", "Viewed Pricing Page", "Signed Up"]}
    assert fake_sprig.users["u-1"]["attributes"] == {"plan": "pro"}
    stats = sprig.stats()
    assert stats["delivered"] == len(forwarded)
    assert (stats["skipped_integrations"], stats["skipped_anonymous"],
            stats["skipped_type"]) == (3, 1, 2)
    check_invariant(stats)


def test_without_the_guard_segment_gets_the_apps_integrations(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination()  # disable_cloud_destination defaults to False
    client.add_plugin(sprig)
    _, message = client.track("u-1", "Order Completed", integrations={"Amplitude": False})
    flush_all(client, sprig)

    assert segment_by_id(fake_sprig)[message["messageId"]]["integrations"] == {
        "Amplitude": False}
    assert sprig_events(fake_sprig) == {"u-1": ["Order Completed"]}


def test_guard_covers_screens_when_sent_and_works_in_sync_mode(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client(sync_mode=True)
    sprig = make_destination(disable_cloud_destination=True, types=("track", "screen"))
    client.add_plugin(sprig)
    _, screen = client.screen("u-1", name="Home")
    _, page = client.page("u-1", name="Pricing")  # page not in types: not forwarded
    # sync_mode: both sides were sent before the calls returned.
    received = segment_by_id(fake_sprig)
    assert received[screen["messageId"]]["integrations"] == CLOUD_OFF
    assert received[page["messageId"]]["integrations"] == {}
    assert sprig_events(fake_sprig) == {"u-1": ["Viewed Home Screen"]}


def test_guard_is_decided_by_routing_not_by_filters_or_plugins(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    """A call the plugin forwards but its filters or scoped plugins then skip reaches
    neither Sprig nor the cloud destination: once the plugin owns Sprig delivery, its
    filters decide for the whole source (documented in docs/destinations.md)."""
    client = make_client()
    sprig = make_destination(disable_cloud_destination=True, ignore_events=["Heartbeat"])
    sprig.add_plugin(ForSprig())  # drops "Internal Ping"
    client.add_plugin(sprig)
    _, heartbeat = client.track("u-1", "Heartbeat")
    _, ping = client.track("u-1", "Internal Ping")
    flush_all(client, sprig)

    received = segment_by_id(fake_sprig)
    assert received[heartbeat["messageId"]]["integrations"] == CLOUD_OFF
    assert received[ping["messageId"]]["integrations"] == CLOUD_OFF
    assert sprig_events(fake_sprig) == {}
    stats = sprig.stats()
    assert (stats["skipped_event_filter"], stats["skipped_plugin"]) == (1, 1)


class ConsentPlugin:
    """A client plugin that replaces the integrations dict (a common style)."""

    @hookimpl
    def analytics_enrich(self, message: Message) -> None:
        message["integrations"] = {**message["integrations"], "Amplitude": False}


def test_guard_with_an_enrich_plugin_registered_before_the_destination(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    client.add_plugin(ConsentPlugin())  # registered first: its enrich runs after the guard
    sprig = make_destination(disable_cloud_destination=True)
    client.add_plugin(sprig)
    _, message = client.track("u-1", "Order Completed")
    flush_all(client, sprig)

    assert segment_by_id(fake_sprig)[message["messageId"]]["integrations"] == {
        **CLOUD_OFF, "Amplitude": False}
    assert sprig_events(fake_sprig) == {"u-1": ["Order Completed"]}


def test_guard_with_integration_options_segment_normalizes(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    sprig = make_destination(disable_cloud_destination=True)
    client.add_plugin(sprig)
    _, message = client.track("u-1", "Order Completed",
                              integrations={"Webhooks": {"ids": ("a", "b")}})
    flush_all(client, sprig)

    assert segment_by_id(fake_sprig)[message["messageId"]]["integrations"] == {
        **CLOUD_OFF, "Webhooks": {"ids": ["a", "b"]}}
    assert sprig_events(fake_sprig) == {"u-1": ["Order Completed"]}


def test_guard_with_consent_style_plugins_as_documented(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    """The workarounds docs/destinations.md gives for the limitation above work."""

    class InPlace:
        @hookimpl
        def analytics_enrich(self, message: Message) -> None:
            message["integrations"]["Amplitude"] = False

    client = make_client()
    client.add_plugin(InPlace())  # before the destination, but changes the dict in place
    sprig = make_destination(disable_cloud_destination=True)
    seen: List[Message] = []

    class SeeIntegrations:
        @hookimpl
        def analytics_before(self, message: Message) -> None:
            seen.append(message["integrations"])

    sprig.add_plugin(SeeIntegrations())
    client.add_plugin(sprig)
    client.add_plugin(ConsentPlugin())  # after the destination: replaces before the guard
    app = {"Mixpanel": True}
    _, message = client.track("u-1", "Order Completed", integrations=app)
    flush_all(client, sprig)

    assert segment_by_id(fake_sprig)[message["messageId"]]["integrations"] == {
        "Mixpanel": True, "Amplitude": False, **CLOUD_OFF}
    assert sprig_events(fake_sprig) == {"u-1": ["Order Completed"]}
    assert app == {"Mixpanel": True}
    # The destination's plugins see the integrations the call had before the marking.
    assert seen == [{"Mixpanel": True, "Amplitude": False}]


# -- on_delivered ---------------------------------------------------------------------------------


def test_on_delivered_reports_every_delivered_message_once(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    delivered = Delivered()
    client = make_client()
    # A long window: every call of a user coalesces, whatever the load; flush sends at once.
    sprig = make_destination(on_delivered=delivered, flush_interval=0.5,
                             types=("identify", "track", "page", "alias", "screen"),
                             ignore_events=["Heartbeat"])
    client.add_plugin(sprig)
    sent: List[Message] = []
    for n in range(4):  # several calls per user: they coalesce into fewer requests
        user = f"u-{n % 2}"
        sent.append(client.track(user, f"Step {n}")[1])
        sent.append(client.page(user, name="Pricing")[1])
    sent.append(client.identify("u-0", {"plan": "pro"})[1])
    sent.append(client.screen("u-1", name="Home")[1])
    client.track("u-1", "Heartbeat")  # filtered: not delivered, not reported
    client.track(anonymous_id="anon", event="Anonymous")  # skipped: not reported
    flush_all(client, sprig)

    stats = sprig.stats()
    refs = delivered.refs
    assert len(refs) == stats["delivered"] == len(sent)
    assert stats["requests"] < len(sent)  # coalesced, yet each message reported
    names = {"page": "Viewed Pricing Page", "screen": "Viewed Home Screen"}
    expected = [{"messageId": m["messageId"], "type": m["type"], "userId": m["userId"]}
                for m in sent]
    for ref, m in zip(expected, sent):
        event = m.get("event") or names.get(m["type"])
        if event:
            ref["event"] = event
    assert sorted(refs, key=by_id) == sorted(expected, key=by_id)
    check_invariant(stats)


def test_on_delivered_counts_renamed_and_reports_the_name_sent(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    delivered = Delivered()
    client = make_client()
    sprig = make_destination(on_delivered=delivered)
    sprig.add_plugin(ForSprig())
    client.add_plugin(sprig)
    _, order = client.track("u-1", "Order Completed")
    client.track("u-1", "Internal Ping")  # dropped by the plugin
    flush_all(client, sprig)

    assert delivered.refs == [{"messageId": order["messageId"], "type": "track",
                               "userId": "u-1", "event": "Purchase"}]
    assert sprig.stats()["delivered"] == 1


def test_a_raising_on_delivered_is_logged_not_raised(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: List[int] = []

    def on_delivered(messages: List[Message]) -> None:
        calls.append(len(messages))
        raise RuntimeError("callback bug")

    client = make_client()
    sprig = make_destination(on_delivered=on_delivered)
    client.add_plugin(sprig)
    with caplog.at_level(logging.ERROR, logger="analytics_sprig"):
        client.track("u-1", "First")
        flush_all(client, sprig)
        client.track("u-2", "Second")
        flush_all(client, sprig)

    assert sum(calls) == 2 == sprig.stats()["delivered"]
    assert sprig_events(fake_sprig) == {"u-1": ["First"], "u-2": ["Second"]}
    assert any("on_delivered" in r.getMessage() and r.exc_info for r in caplog.records)


def test_on_error_gets_the_same_light_references(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    errors: List[Tuple[BaseException, List[Message]]] = []
    delivered = Delivered()
    client = make_client()
    sprig = make_destination(on_error=lambda exc, messages: errors.append((exc, messages)),
                             on_delivered=delivered, max_retries=0)
    client.add_plugin(sprig)
    fake_sprig.inject(400, path="/v2/users")  # permanent: the first request fails
    _, failed = client.page("u-1", name="Pricing")
    assert sprig.flush(timeout=10) is True
    _, ok = client.page("u-2", name="Pricing")
    flush_all(client, sprig)

    assert [messages for _, messages in errors] == [[
        {"messageId": failed["messageId"], "type": "page", "userId": "u-1",
         "event": "Viewed Pricing Page"}]]
    assert delivered.refs == [{"messageId": ok["messageId"], "type": "page", "userId": "u-2",
                               "event": "Viewed Pricing Page"}]
    stats = sprig.stats()
    assert (stats["failed"], stats["delivered"]) == (1, 1)
    assert "test-key" not in repr(errors)


# -- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"events": "Order *"}, id="events-str"),
        pytest.param({"events": b"Order *"}, id="events-bytes"),
        pytest.param({"events": [5]}, id="events-int-item"),
        pytest.param({"events": [""]}, id="events-empty-name"),
        pytest.param({"events": 5}, id="events-int"),
        pytest.param({"ignore_events": "Heartbeat"}, id="ignore-events-str"),
        pytest.param({"ignore_events": [None]}, id="ignore-events-none-item"),
        pytest.param({"disable_cloud_destination": "yes"}, id="guard-str"),
        pytest.param({"disable_cloud_destination": 1}, id="guard-int"),
        pytest.param({"on_delivered": 5}, id="on-delivered-int"),
        pytest.param({"on_error": "print"}, id="on-error-str"),
    ],
)
def test_wrong_option_types_are_type_errors(
    make_destination: MakeDestination, options: Dict[str, Any]
) -> None:
    with pytest.raises(TypeError) as info:
        make_destination(**options)
    assert next(iter(options)) in str(info.value)
    assert "test-key" not in str(info.value)


def test_valid_filter_collections_are_accepted(make_destination: MakeDestination) -> None:
    for events in (["A"], ("A", "B *"), {"A"}, frozenset({"A"}), {"A": 1}.keys()):
        make_destination(events=events, ignore_events=events)
    make_destination(events=None, ignore_events=None, disable_cloud_destination=False,
                     on_delivered=None)


# -- the examples of docs/destinations.md ---------------------------------------------------------


def python_blocks(path: Path) -> Iterator[Tuple[int, str]]:
    """``(line, code)`` of each fenced ``python`` block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start: Optional[int] = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            yield start, "\n".join(lines[start:number - 1]) + "\n"
            start = None


def expected_output(code: str) -> List[str]:
    """The comment ending each top-level ``print(...)``: what it must print."""
    comments = {token.start[0]: token.string[1:].strip()
                for token in tokenize.generate_tokens(io.StringIO(code).readline)
                if token.type == tokenize.COMMENT}
    expected = []
    for node in ast.parse(code).body:
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "print"):
            assert node.end_lineno in comments, f"print on line {node.lineno} has no # output"
            expected.append(comments[node.end_lineno])
    return expected


DOC_BLOCKS = list(python_blocks(DOC))


def test_the_doc_has_examples() -> None:
    assert len(DOC_BLOCKS) >= 5
    assert all(expected_output(code) for _, code in DOC_BLOCKS)


@pytest.mark.parametrize(("line", "code"), DOC_BLOCKS, ids=[f"line-{n}" for n, _ in DOC_BLOCKS])
def test_doc_example_runs_as_written(
    fake_sprig: FakeSprig, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], line: int, code: str,
) -> None:
    made: List[SprigDestination] = []

    class LocalSprig(SprigDestination):
        """The documented class, pointed at the fake (the doc's key is a placeholder)."""

        def __init__(self, api_key: str, **options: Any) -> None:
            assert api_key == "SPRIG_API_KEY"
            options.setdefault("flush_interval", 0.02)
            super().__init__("test-key", endpoint=fake_sprig.url, **options)
            made.append(self)

    def local_client(write_key: str, **options: Any) -> Client:
        assert write_key == "SEGMENT_WRITE_KEY"
        return make_client(**options)

    monkeypatch.setattr(analytics_sprig, "SprigDestination", LocalSprig)
    monkeypatch.setattr(segment.analytics, "Client", local_client)
    try:
        exec(compile(code, f"{DOC.name}:{line}", "exec"), {"__name__": "doc_example"})
    finally:
        for destination in made:
            destination.shutdown(timeout=2)
    printed = capsys.readouterr().out.splitlines()
    assert printed == expected_output(code)
    assert made, "the example made no SprigDestination"
    assert fake_sprig.segment_messages, "nothing reached Segment"
    assert not re.search(r"test-key|SPRIG_API_KEY", repr(fake_sprig.segment_messages))
