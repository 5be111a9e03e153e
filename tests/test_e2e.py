"""End to end: a real Segment ``Client`` with a ``SprigDestination``, both on a loopback fake.

The FakeSprig plays Sprig (``/v2``) and Segment (``/v1/batch``) at once, so each test can
check what reached Sprig, byte for byte, and that everything still reached Segment.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List

import pytest
from segment.analytics import Client

from analytics_sprig import SprigDestination, __version__
from analytics_sprig.testing import FakeSprig

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

MakeClient = Callable[..., Client]
MakeDestination = Callable[..., SprigDestination]


def millis(message: Dict[str, Any]) -> int:
    """Epoch milliseconds of a message's ISO timestamp, computed exactly (no floats)."""
    moment = datetime.fromisoformat(message["timestamp"])
    return (moment - EPOCH) // timedelta(milliseconds=1)


def sprig_bodies(fake: FakeSprig) -> Dict[str, Dict[str, Any]]:
    """The ``/v2/users`` bodies Sprig received, by userId (each user sent exactly once)."""
    bodies: Dict[str, Dict[str, Any]] = {}
    for request in fake.requests:
        if request.path == "/v2/users":
            user_id = request.json["userId"]
            assert user_id not in bodies, f"{user_id} was sent twice"
            bodies[user_id] = request.json
    return bodies


def check_invariant(stats: Dict[str, int]) -> None:
    accounted = (stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
                 + stats["pending"])
    assert stats["received"] == accounted, stats


def test_routing_mapping_headers_and_paths(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    destination = make_destination()
    client.add_plugin(destination)

    sent: List[Dict[str, Any]] = []  # messages that must reach Sprig
    skipped: Dict[str, List[Dict[str, Any]]] = {"integrations": [], "type": [], "anonymous": []}

    def call(bucket: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ok, message = method(*args, **kwargs)
        assert ok
        bucket.append(message)
        return message

    identify = call(sent, client.identify, "u-identify", {
        "email": "ada@example.com",
        "name": "Ada",
        "plan": {"tier": "pro", "seats": 3, "trial": {"days": 14}},
        "vip": True,
        "churn_risk_audience": False,  # Engage audiences stay booleans
        "score": 1.5,
        "tags": ["a", "b", 3],
        "!reserved": "x",
        "nothing": None,
        "nested_list": [{"no": "dicts"}],
        "city": "Zürich ☃",
    })
    track = call(sent, client.track, "u-track", "Order Completed", {"total": 10},
                 context={"traits": {"email": "t@example.com"}})
    page = call(sent, client.page, "u-page", name="Pricing", properties={"path": "/pricing"})
    page_unnamed = call(sent, client.page, "u-page-2")
    alias = call(sent, client.alias, "anon-previous", "u-alias")
    opt_in_all_false = call(sent, client.track, "u-all-false-sprig-true", "Opted In",
                            integrations={"All": False, "Sprig": True})
    opt_in_dict = call(sent, client.identify, "u-dict", {"plan": "free"},
                       integrations={"All": False, "Sprig Cloud": {"apiKey": "other"}})
    opt_in_userleap = call(sent, client.track, "u-userleap", "Legacy Name",
                           integrations={"All": False, "UserLeap": True})
    other_destination_off = call(sent, client.track, "u-other-off", "Other Off",
                                 integrations={"Mixpanel": False})
    int_user = call(sent, client.track, 42, "Numeric Id")  # ids are stringified

    for integrations in ({"Sprig": False}, {"Sprig Cloud": False}, {"UserLeap": False},
                         {"All": False}, {"All": False, "Amplitude": True},
                         {"Sprig": True, "UserLeap": False},  # opt-out wins among aliases
                         {"All": True, "Sprig Cloud": False}):
        call(skipped["integrations"], client.track, "u-opted-out", "Secret",
             integrations=integrations)
    call(skipped["integrations"], client.identify, "u-opted-out", {"secret": True},
         integrations={"All": False})
    call(skipped["type"], client.group, "u-group", "g-1", {"name": "Acme"})
    call(skipped["type"], client.screen, "u-screen", name="Home")
    call(skipped["anonymous"], client.track, anonymous_id="anon-1", event="Anonymous")
    call(skipped["anonymous"], client.identify, anonymous_id="anon-1", traits={"a": 1})
    call(skipped["anonymous"], client.page, anonymous_id="anon-1", name="Landing")

    assert client.flush(timeout=10) is True

    expected = {
        "u-identify": {
            "userId": "u-identify",
            "emailAddress": "ada@example.com",
            "attributes": {
                "name": "Ada",
                "plan.tier": "pro",
                "plan.seats": 3,
                "plan.trial.days": 14,
                "vip": True,
                "churn_risk_audience": False,
                "score": 1.5,
                "tags": "a,b,3",
                "city": "Zürich ☃",
            },
        },
        "u-track": {
            "userId": "u-track",
            "emailAddress": "t@example.com",
            "events": [{"event": "Order Completed", "timestamp": millis(track)}],
        },
        "u-page": {
            "userId": "u-page",
            "events": [{"event": "Viewed Pricing Page", "timestamp": millis(page)}],
        },
        "u-page-2": {
            "userId": "u-page-2",
            "events": [{"event": "Loaded a Page", "timestamp": millis(page_unnamed)}],
        },
        "u-alias": {"userId": "u-alias"},
        "u-all-false-sprig-true": {
            "userId": "u-all-false-sprig-true",
            "events": [{"event": "Opted In", "timestamp": millis(opt_in_all_false)}],
        },
        "u-dict": {"userId": "u-dict", "attributes": {"plan": "free"}},
        "u-userleap": {
            "userId": "u-userleap",
            "events": [{"event": "Legacy Name", "timestamp": millis(opt_in_userleap)}],
        },
        "u-other-off": {
            "userId": "u-other-off",
            "events": [{"event": "Other Off", "timestamp": millis(other_destination_off)}],
        },
        "42": {
            "userId": "42",
            "events": [{"event": "Numeric Id", "timestamp": millis(int_user)}],
        },
    }
    assert sprig_bodies(fake_sprig) == expected
    assert identify["userId"] == "u-identify" and alias["userId"] == "u-alias"
    assert opt_in_dict["integrations"]["Sprig Cloud"] == {"apiKey": "other"}

    sprig_requests = [r for r in fake_sprig.requests if r.path.startswith("/v2/")]
    assert len(sprig_requests) == len(expected)
    for request in sprig_requests:
        assert request.method == "POST"
        assert request.path == "/v2/users"
        assert request.status == 202
        assert request.headers["authorization"] == "API-Key test-key"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith(f"analytics-sprig/{__version__} ")
        assert "test-key" not in request.headers["user-agent"]

    # Opted-out, anonymous, group and screen calls never reached Sprig ...
    assert not {"u-opted-out", "u-group", "u-screen"} & set(fake_sprig.users)
    assert all(r.json.get("userId") for r in sprig_requests)
    # ... but every call, Sprig's or not, still reached Segment unchanged.
    every_message = sent + [m for bucket in skipped.values() for m in bucket]
    segment_ids = [m["messageId"] for m in fake_sprig.segment_messages]
    assert sorted(segment_ids) == sorted(m["messageId"] for m in every_message)
    segment_requests = [r for r in fake_sprig.requests if r.path == "/v1/batch"]
    assert segment_requests and all(
        "authorization" in r.headers and "API-Key" not in r.headers["authorization"]
        for r in segment_requests
    )

    stats = destination.stats()
    assert stats["received"] == len(every_message)
    assert stats["delivered"] == len(sent)
    assert stats["requests"] == len(expected)
    assert stats["skipped"] == sum(len(bucket) for bucket in skipped.values())
    for reason, bucket in skipped.items():
        assert stats[f"skipped_{reason}"] == len(bucket), reason
    assert stats["skipped_unmappable"] == 0
    assert (stats["failed"], stats["dropped"], stats["pending"], stats["retries"]) == (0, 0, 0, 0)
    check_invariant(stats)


def test_custom_types_and_page_naming(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client()
    destination = make_destination(types=("page", "screen"),
                                   page_event_format="{category}: {name}",
                                   page_event_default="Some Page")
    client.add_plugin(destination)
    _, page = client.page("u-1", category="Docs", name="Install")
    _, unnamed = client.page("u-2")
    client.track("u-3", "Not Sent")  # track is not among the configured types
    _, screen = client.screen("u-4", name="Home")  # screens become events when asked for

    assert client.flush(timeout=10) is True
    assert sprig_bodies(fake_sprig) == {
        "u-1": {"userId": "u-1", "events": [{"event": "Docs: Install",
                                             "timestamp": millis(page)}]},
        "u-2": {"userId": "u-2", "events": [{"event": "Some Page",
                                             "timestamp": millis(unnamed)}]},
        "u-4": {"userId": "u-4", "events": [{"event": "Viewed Home Screen",
                                             "timestamp": millis(screen)}]},
    }
    stats = destination.stats()
    assert stats["delivered"] == 3
    assert stats["skipped_type"] == 1
    assert stats["skipped_unmappable"] == 0
    check_invariant(stats)


def test_sync_mode_delivers_before_the_call_returns(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client(sync_mode=True)
    # A long batch window: only synchronous delivery can make the request appear at once.
    destination = make_destination(flush_interval=30)
    client.add_plugin(destination)

    _, message = client.track("u-sync", "Synchronous")
    # No waiting: the request is recorded before the fake answers it.
    users = [r.json for r in fake_sprig.requests if r.path == "/v2/users"]
    assert users == [{"userId": "u-sync",
                      "events": [{"event": "Synchronous", "timestamp": millis(message)}]}]
    assert [m["messageId"] for m in fake_sprig.segment_messages] == [message["messageId"]]
    stats = destination.stats()
    assert (stats["received"], stats["delivered"], stats["pending"]) == (1, 1, 0)

    client.track("u-sync", "Skipped", integrations={"Sprig": False})
    assert len([r for r in fake_sprig.requests if r.path == "/v2/users"]) == 1
    assert destination.stats()["skipped_integrations"] == 1


def test_send_false_sends_nothing_anywhere(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination
) -> None:
    client = make_client(send=False)
    destination = make_destination()
    client.add_plugin(destination)
    ok, _ = client.track("u-1", "Never Sent")
    assert ok
    assert destination.flush(timeout=2) is True
    assert fake_sprig.requests == []
    assert destination.stats()["received"] == 0


def test_purge_end_to_end(fake_sprig: FakeSprig, make_destination: MakeDestination) -> None:
    destination = make_destination()
    user_ids = [f"user-{i}" for i in range(250)]
    for user_id in ("user-0", "user-249", "keep-me"):
        destination.send({"type": "identify", "userId": user_id, "traits": {"a": 1},
                          "timestamp": "2024-01-01T00:00:00.000+00:00"})
    assert destination.flush(timeout=5) is True
    assert set(fake_sprig.users) == {"user-0", "user-249", "keep-me"}

    request_ids = destination.purge(user_ids=user_ids, delay_seconds=0)

    purges = [r for r in fake_sprig.requests if r.path == "/v2/purge/visitors"]
    assert len(purges) == 3
    assert [r.json for r in purges] == [
        {"userIds": user_ids[0:100], "delaySeconds": 0},
        {"userIds": user_ids[100:200], "delaySeconds": 0},
        {"userIds": user_ids[200:250], "delaySeconds": 0},
    ]
    for request in purges:
        assert request.method == "POST"
        assert request.status == 200
        assert request.headers["authorization"] == "API-Key test-key"
        assert request.headers["content-type"] == "application/json"
    assert len(request_ids) == 3 and len(set(request_ids)) == 3
    for request_id in request_ids:
        uuid.UUID(request_id)  # the fake answers UUIDs; the ids are passed through
    assert set(fake_sprig.users) == {"keep-me"}


def test_purge_mixed_ids_and_emails(fake_sprig: FakeSprig,
                                    make_destination: MakeDestination) -> None:
    destination = make_destination()
    ids = [f"u{i}" for i in range(60)]
    emails = [f"e{i}@example.com" for i in range(60)]
    assert len(destination.purge(user_ids=ids, emails=emails)) == 2
    assert fake_sprig.purges == [
        {"userIds": ids, "emails": emails[:40]},
        {"emails": emails[40:]},
    ]
    assert destination.purge() == []


@pytest.mark.parametrize("integrations", [
    {"Sprig": False}, {"Sprig Cloud": False}, {"UserLeap": False}, {"All": False},
])
def test_opted_out_calls_never_open_a_connection(
    fake_sprig: FakeSprig, make_client: MakeClient, make_destination: MakeDestination,
    integrations: Dict[str, Any],
) -> None:
    client = make_client()
    destination = make_destination()
    client.add_plugin(destination)
    for i in range(5):
        client.identify(f"u-{i}", {"email": f"{i}@example.com"}, integrations=integrations)
        client.track(f"u-{i}", "Event", integrations=integrations)
    assert client.flush(timeout=10) is True
    assert [r.path for r in fake_sprig.requests if r.path != "/v1/batch"] == []
    assert len(fake_sprig.segment_messages) == 10
    stats = destination.stats()
    assert stats["skipped_integrations"] == stats["received"] == 10
    assert stats["requests"] == 0
