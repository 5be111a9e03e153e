"""Tests for the local fake Sprig server, driven over real sockets on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional
from urllib.parse import quote

import httpx
import pytest

from analytics_sprig.testing import FakeSprig, RecordedRequest

KEY = "k"
AUTH = {"Authorization": f"API-Key {KEY}"}
# httpx builds a new SSL context per client (~40 ms); sharing one keeps the file fast.
SSL = ssl.create_default_context()


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=SSL, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, verify=SSL, **kwargs)


def sprig_client(sprig: FakeSprig, timeout: float = 2.0) -> httpx.Client:
    return httpx.Client(base_url=sprig.url, headers=AUTH, timeout=timeout, verify=SSL)


@pytest.fixture
def sprig() -> Iterator[FakeSprig]:
    with FakeSprig(api_key=KEY) as server:
        yield server


@pytest.fixture
def client(sprig: FakeSprig) -> Iterator[httpx.Client]:
    with sprig_client(sprig) as c:
        yield c


def upsert(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post("/v2/users", json=body)


def raw_exchange(sprig: FakeSprig, payload: bytes) -> socket.socket:
    """Send a raw HTTP request and return the socket, so a test can see exactly what comes back."""
    sock = socket.create_connection(("127.0.0.1", sprig.port), timeout=2.0)
    sock.sendall(
        b"POST /v2/users HTTP/1.1\r\nHost: x\r\nAuthorization: API-Key k\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )
    return sock


# -- basics ---------------------------------------------------------------------------


def test_url_and_first_upsert_creates_visitor(sprig: FakeSprig, client: httpx.Client) -> None:
    assert sprig.url == f"http://127.0.0.1:{sprig.port}"
    response = upsert(client, {"userId": "u1", "attributes": {"plan": "pro"}})
    assert response.status_code == 202
    assert response.json() == {}
    assert response.headers["content-type"] == "application/json"
    visitor = sprig.users["u1"]
    assert visitor["externalUserId"] == "u1"
    assert visitor["attributes"] == {"plan": "pro"}
    assert visitor["emailAddress"] is None
    assert visitor["events"] == []
    assert visitor["eventLog"] == []
    uuid.UUID(visitor["id"])  # a real uuid string
    assert visitor["createdAt"].endswith("Z")


def test_recorded_request_fields(sprig: FakeSprig, client: httpx.Client) -> None:
    before = time.monotonic()
    client.post("/v2/users?x=1", json={"userId": "u"}, headers={"X-Custom": "Yes"})
    [record] = sprig.requests
    assert record.method == "POST"
    assert record.path == "/v2/users"  # query string not part of the path
    assert record.headers["x-custom"] == "Yes"
    assert record.headers["authorization"] == "API-Key k"
    assert all(name == name.lower() for name in record.headers)
    assert record.json == {"userId": "u"}
    assert json.loads(record.body) == {"userId": "u"}
    assert record.status == 202
    assert before <= record.time <= time.monotonic()
    assert record.client[0] == "127.0.0.1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = 500  # type: ignore[misc]


def test_snapshots_are_copies(sprig: FakeSprig, client: httpx.Client) -> None:
    upsert(client, {"userId": "u", "attributes": {"a": 1}})
    sprig.users["u"]["attributes"]["a"] = 2
    sprig.requests.clear()
    assert sprig.users["u"]["attributes"] == {"a": 1}
    assert len(sprig.requests) == 1


def test_chunked_request_body_is_read(sprig: FakeSprig, client: httpx.Client) -> None:
    response = client.post("/v2/users", content=iter([b'{"userId":', b' "chunky"}']))
    assert response.status_code == 202
    assert "chunky" in sprig.users
    assert sprig.requests[0].headers["transfer-encoding"] == "chunked"


# -- validation -------------------------------------------------------------------------

HUNDRED_ATTRIBUTES = {f"a{i}": i for i in range(100)}

INVALID_USER_BODIES = [
    pytest.param(b"not json", 400, id="invalid-json"),
    pytest.param(b'{"userId": "u", "attributes": {"x": NaN}}', 400, id="nan-is-not-json"),
    pytest.param(b"", 400, id="empty-body"),
    pytest.param([{"userId": "u"}], 400, id="array-body"),
    pytest.param("u", 400, id="string-body"),
    pytest.param({}, 400, id="missing-userId"),
    pytest.param({"userId": ""}, 400, id="empty-userId"),
    pytest.param({"userId": 5}, 400, id="int-userId"),
    pytest.param({"userId": None}, 400, id="null-userId"),
    pytest.param({"userId": "u", "emailAddress": 5}, 422, id="int-email"),
    pytest.param({"userId": "u", "emailAddress": None}, 422, id="null-email"),
    pytest.param({"userId": "u", "attributes": []}, 422, id="attributes-array"),
    pytest.param({"userId": "u", "attributes": "x"}, 422, id="attributes-string"),
    pytest.param(
        {"userId": "u", "attributes": {**HUNDRED_ATTRIBUTES, "x": 1}}, 422, id="101-attrs"
    ),
    pytest.param({"userId": "u", "attributes": {"a": None}}, 422, id="null-value"),
    pytest.param({"userId": "u", "attributes": {"a": {"b": 1}}}, 422, id="nested-value"),
    pytest.param({"userId": "u", "attributes": {"a": [1]}}, 422, id="list-value"),
    pytest.param({"userId": "u", "attributes": {"!email": "a@b.c"}}, 422, id="reserved-key"),
    pytest.param({"userId": "u", "events": {}}, 422, id="events-object"),
    pytest.param({"userId": "u", "events": ["e"]}, 422, id="event-string"),
    pytest.param({"userId": "u", "events": [{"event": "e"}]}, 422, id="no-timestamp"),
    pytest.param({"userId": "u", "events": [{"timestamp": 1}]}, 422, id="no-event"),
    pytest.param({"userId": "u", "events": [{"event": 1, "timestamp": 1}]}, 422, id="int-name"),
    pytest.param({"userId": "u", "events": [{"event": "e", "timestamp": "1"}]}, 422, id="str-ts"),
    pytest.param({"userId": "u", "events": [{"event": "e", "timestamp": 1.5}]}, 422, id="float-ts"),
    pytest.param({"userId": "u", "events": [{"event": "e", "timestamp": True}]}, 422, id="bool-ts"),
    pytest.param(
        {"userId": "u", "events": [{"event": "e", "timestamp": 1, "properties": {}}]},
        422,
        id="extra-event-key",
    ),
]


@pytest.mark.parametrize(("body", "status"), INVALID_USER_BODIES)
def test_invalid_user_bodies_are_rejected(
    sprig: FakeSprig, client: httpx.Client, body: Any, status: int
) -> None:
    if isinstance(body, bytes):
        response = client.post("/v2/users", content=body)
    else:
        response = upsert(client, body)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert sprig.users == {}
    assert sprig.requests[0].status == status


def test_valid_attribute_types_and_limits_are_accepted(
    sprig: FakeSprig, client: httpx.Client
) -> None:
    assert upsert(client, {"userId": "u", "attributes": HUNDRED_ATTRIBUTES}).status_code == 202
    mixed = {"s": "x", "i": 1, "f": 1.5, "b": False}
    body = {"userId": "v", "emailAddress": "v@x.io", "attributes": mixed, "events": []}
    assert upsert(client, body).status_code == 202
    assert sprig.users["v"]["attributes"] == mixed
    assert sprig.users["v"]["attributes"]["b"] is False
    assert len(sprig.users["u"]["attributes"]) == 100


# -- auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="missing"),
        pytest.param({"Authorization": "Bearer k"}, 401, id="bearer"),
        pytest.param({"Authorization": "API-Key wrong"}, 401, id="wrong-key"),
        pytest.param({"Authorization": "api-key k"}, 401, id="wrong-case"),
        pytest.param({"Authorization": "API-Key k"}, 202, id="right-key"),
    ],
)
def test_auth_with_key(sprig: FakeSprig, headers: dict[str, str], status: int) -> None:
    response = post(sprig.url + "/v2/users", json={"userId": "u"}, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"error": "Unauthorized"}
        assert sprig.users == {}
    else:
        assert "u" in sprig.users


def test_auth_applies_to_get_and_purge(sprig: FakeSprig) -> None:
    assert get(sprig.url + "/v2/users/u").status_code == 401
    assert post(sprig.url + "/v2/purge/visitors", json={"userIds": ["u"]}).status_code == 401


def test_bad_key_status_403_for_wrong_key_only() -> None:
    with FakeSprig(api_key=KEY, bad_key_status=403) as sprig:
        wrong = post(
            sprig.url + "/v2/users", json={"userId": "u"}, headers={"Authorization": "API-Key x"}
        )
        assert wrong.status_code == 403
        assert "error" in wrong.json()
        missing = post(sprig.url + "/v2/users", json={"userId": "u"})
        assert missing.status_code == 401
        assert sprig.users == {}


def test_no_api_key_accepts_any_api_key_header() -> None:
    with FakeSprig() as sprig:
        url = sprig.url + "/v2/users"
        ok = post(url, json={"userId": "u"}, headers={"Authorization": "API-Key anything"})
        assert ok.status_code == 202
        assert post(url, json={"userId": "u"}).status_code == 401
        bearer = post(url, json={"userId": "u"}, headers={"Authorization": "Bearer x"})
        assert bearer.status_code == 401


# -- upsert and get -----------------------------------------------------------------------


def test_upsert_merges_attributes_and_counts_events(sprig: FakeSprig, client: httpx.Client) -> None:
    first = {
        "userId": "u",
        "emailAddress": "a@x.io",
        "attributes": {"plan": "free", "seats": 1},
        "events": [{"event": "signup", "timestamp": 1000}, {"event": "login", "timestamp": 2000}],
    }
    second = {
        "userId": "u",
        "attributes": {"plan": "pro", "trial": True},
        "events": [{"event": "login", "timestamp": 3000}, {"event": "login", "timestamp": 3000}],
    }
    assert upsert(client, first).status_code == 202
    created = sprig.users["u"]
    assert upsert(client, second).status_code == 202
    visitor = sprig.users["u"]
    assert visitor["id"] == created["id"]
    assert visitor["createdAt"] == created["createdAt"]
    assert visitor["emailAddress"] == "a@x.io"  # kept when a later call omits it
    assert visitor["attributes"] == {"plan": "pro", "seats": 1, "trial": True}
    counts = {e["event"]: e["count"] for e in visitor["events"]}
    assert counts == {"signup": 1, "login": 3}
    assert all({"createdAt", "updatedAt"} <= set(e) for e in visitor["events"])
    assert visitor["eventLog"] == [
        {"event": "signup", "timestamp": 1000},
        {"event": "login", "timestamp": 2000},
        {"event": "login", "timestamp": 3000},
        {"event": "login", "timestamp": 3000},
    ]
    upsert(client, {"userId": "u", "emailAddress": "b@x.io"})
    assert sprig.users["u"]["emailAddress"] == "b@x.io"


def test_visitor_ids_are_distinct_per_user(sprig: FakeSprig, client: httpx.Client) -> None:
    upsert(client, {"userId": "a"})
    upsert(client, {"userId": "b"})
    assert sprig.users["a"]["id"] != sprig.users["b"]["id"]


def test_get_user_200_and_404(sprig: FakeSprig, client: httpx.Client) -> None:
    user_id = "a b/ü?"
    upsert(client, {"userId": user_id, "events": [{"event": "e", "timestamp": 1}]})
    response = client.get("/v2/users/" + quote(user_id, safe=""))
    assert response.status_code == 200
    body = response.json()
    assert body["externalUserId"] == user_id
    assert "eventLog" not in body
    assert body["events"][0]["event"] == "e"
    assert body["events"][0]["count"] == 1
    assert body["id"] == sprig.users[user_id]["id"]
    missing = client.get("/v2/users/nobody")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not found"}


# -- purge -----------------------------------------------------------------------------


def test_purge_accepts_and_records_but_keeps_users_by_default(
    sprig: FakeSprig, client: httpx.Client
) -> None:
    upsert(client, {"userId": "u"})
    response = client.post("/v2/purge/visitors", json={"userIds": ["u"]})
    assert response.status_code == 200
    uuid.UUID(response.json()["requestId"])
    assert sprig.purges == [{"userIds": ["u"]}]
    assert "u" in sprig.users  # Sprig purges after a delay (10 days by default)


def test_purge_with_zero_delay_removes_by_user_email_and_visitor_id(
    sprig: FakeSprig, client: httpx.Client
) -> None:
    for user_id in ("a", "b", "c", "keep"):
        upsert(client, {"userId": user_id, "emailAddress": f"{user_id}@x.io"})
    visitor_c = sprig.users["c"]["id"]
    body = {"userIds": ["a"], "emails": ["b@x.io"], "visitorIds": [visitor_c], "delaySeconds": 0}
    assert client.post("/v2/purge/visitors", json=body).status_code == 200
    assert set(sprig.users) == {"keep"}
    assert sprig.purges == [body]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"userIds": [f"u{i}" for i in range(101)]}, id="101-ids"),
        pytest.param({"userIds": [f"u{i}" for i in range(60)], "emails": ["e"] * 41}, id="101-mix"),
        pytest.param({}, id="no-arrays"),
        pytest.param({"userIds": [], "emails": []}, id="empty-arrays"),
        pytest.param({"userIds": "u"}, id="string-not-array"),
        pytest.param({"userIds": [1]}, id="non-string-id"),
        pytest.param({"userIds": ["u"], "delaySeconds": "0"}, id="string-delay"),
        pytest.param({"userIds": ["u"], "delaySeconds": -1}, id="negative-delay"),
        pytest.param(["u"], id="array-body"),
    ],
)
def test_invalid_purges_are_rejected(sprig: FakeSprig, client: httpx.Client, body: Any) -> None:
    upsert(client, {"userId": "u0"})
    response = client.post("/v2/purge/visitors", json=body)
    assert response.status_code == 400
    assert "error" in response.json()
    assert sprig.purges == []
    assert "u0" in sprig.users


def test_purge_of_exactly_100_ids_is_accepted(sprig: FakeSprig, client: httpx.Client) -> None:
    ids = [f"u{i}" for i in range(100)]
    assert client.post("/v2/purge/visitors", json={"userIds": ids}).status_code == 200


# -- segment /v1/batch ------------------------------------------------------------------


def test_segment_batch_plain_and_gzip(sprig: FakeSprig) -> None:
    url = sprig.url + "/v1/batch"
    first = {"batch": [{"type": "identify", "userId": "a"}, {"type": "track", "event": "x"}]}
    response = post(url, json=first, auth=("writekey", ""))
    assert response.status_code == 200
    assert response.json() == {"success": True}
    second = {"batch": [{"type": "page", "userId": "b"}], "sentAt": "now"}
    zipped = gzip.compress(json.dumps(second).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert post(url, content=zipped, headers=headers).status_code == 200
    assert [m["type"] for m in sprig.segment_messages] == ["identify", "track", "page"]
    records = sprig.requests
    assert [r.path for r in records] == ["/v1/batch", "/v1/batch"]
    assert records[1].json == second  # the body is recorded decompressed
    assert records[1].headers["content-encoding"] == "gzip"
    assert sprig.users == {}


def test_segment_batch_rejects_bad_bodies(sprig: FakeSprig) -> None:
    url = sprig.url + "/v1/batch"
    bad_gzip = post(url, content=b"nope", headers={"Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400
    assert post(url, json={"batch": "x"}).status_code == 400
    assert post(url, json=[1]).status_code == 400
    assert sprig.segment_messages == []


def test_analytics_python_runs_against_the_fake(sprig: FakeSprig) -> None:
    from segment.analytics.client import Client

    segment = Client("writekey", host=sprig.url, sync_mode=True, gzip=True, max_retries=0)
    segment.identify("user-1", {"plan": "pro"})
    segment.track("user-1", "Signed Up")
    assert [m["type"] for m in sprig.segment_messages] == ["identify", "track"]
    assert sprig.segment_messages[1]["event"] == "Signed Up"
    assert sprig.requests[0].headers["content-encoding"] == "gzip"


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/nope", 404),
        ("GET", "/", 404),
        ("POST", "/v3/users", 404),
        ("GET", "/v2/users/a/b", 404),
        ("GET", "/v2/users", 405),
        ("PUT", "/v2/users", 405),
        ("DELETE", "/v2/users/u", 405),
        ("GET", "/v2/purge/visitors", 405),
        ("GET", "/v1/batch", 405),
    ],
)
def test_unknown_paths_and_wrong_methods(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert "error" in response.json()
    if status == 405:
        assert response.headers["allow"] in ("GET", "POST")


# -- faults -----------------------------------------------------------------------------


def test_injected_status_with_retry_after_and_count(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(status=503, count=2, retry_after=3)
    first = upsert(client, {"userId": "u"})
    second = upsert(client, {"userId": "u"})
    third = upsert(client, {"userId": "u"})
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 202)
    assert first.headers["retry-after"] == "3"
    assert first.json() == {"error": "injected"}
    assert "retry-after" not in third.headers
    assert [r.status for r in sprig.requests] == [503, 503, 202]
    assert sprig.users["u"]["externalUserId"] == "u"


def test_faulted_request_does_not_change_users(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(status=500)
    assert upsert(client, {"userId": "u"}).status_code == 500
    assert sprig.users == {}


def test_faults_apply_in_injection_order(sprig: FakeSprig, client: httpx.Client) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    sprig.inject(status=500)
    sprig.inject(status=429, retry_after=date)
    sprig.inject(status=502, body="<html>bad gateway</html>")
    sprig.inject(status=400, body={"error": "custom"})
    responses = [upsert(client, {"userId": "u"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [500, 429, 502, 400, 202]
    assert responses[1].headers["retry-after"] == date
    assert responses[2].text == "<html>bad gateway</html>"
    assert responses[3].json() == {"error": "custom"}


def test_fault_path_filter_and_segment_exemption(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(status=500, path="/v2/purge/visitors")
    sprig.inject(status=503, count=5)  # any /v2 path, never /v1/batch
    batch = post(sprig.url + "/v1/batch", json={"batch": []})
    assert batch.status_code == 200
    assert client.post("/v2/purge/visitors", json={"userIds": ["u"]}).status_code == 500
    assert upsert(client, {"userId": "u"}).status_code == 503
    sprig.reset()
    sprig.inject(status=500, path="/v1/batch")
    assert post(sprig.url + "/v1/batch", json={"batch": [{}]}).status_code == 500
    assert sprig.segment_messages == []


def test_injected_delay(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(status=503, delay=0.2)
    sprig.inject(status=None, delay=0.2)  # late but otherwise normal
    start = time.monotonic()
    assert upsert(client, {"userId": "u"}).status_code == 503
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    assert upsert(client, {"userId": "u"}).status_code == 202
    assert time.monotonic() - start >= 0.2
    assert "u" in sprig.users


def test_inject_drop_closes_without_response(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        upsert(client, {"userId": "u"})
    assert sprig.requests[0].status == 0
    assert sprig.users == {}
    # The fault was used up; the next request (on a new connection) goes through.
    assert upsert(client, {"userId": "u"}).status_code == 202
    sprig.inject(drop=True)
    sock = raw_exchange(sprig, b'{"userId": "v"}')
    with sock:
        assert sock.recv(1024) == b""  # orderly close (FIN), no bytes


def test_inject_reset_gives_connection_reset(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.inject(reset=True, count=2)
    sock = raw_exchange(sprig, b'{"userId": "v"}')
    with sock, pytest.raises(ConnectionResetError):
        while sock.recv(1024):
            pass
    with pytest.raises(httpx.TransportError):
        upsert(client, {"userId": "u"})
    assert [r.status for r in sprig.requests] == [0, 0]
    assert sprig.users == {}


def test_inject_argument_checks(sprig: FakeSprig) -> None:
    with pytest.raises(ValueError):
        sprig.inject(count=0)
    with pytest.raises(ValueError):
        sprig.inject(drop=True, reset=True)
    with pytest.raises(ValueError):
        sprig.set_delay(-1)


def test_set_delay_slows_every_response(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.set_delay(0.2)
    start = time.monotonic()
    assert upsert(client, {"userId": "u"}).status_code == 202
    assert post(sprig.url + "/v1/batch", json={"batch": []}).status_code == 200
    assert time.monotonic() - start >= 0.4
    sprig.set_delay(0)
    start = time.monotonic()
    upsert(client, {"userId": "u"})
    assert time.monotonic() - start < 0.15


def test_blackhole_times_out_client_and_stop_is_prompt() -> None:
    sprig = FakeSprig(api_key=KEY).start()
    try:
        sprig.blackhole(True)
        with sprig_client(sprig, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                upsert(c, {"userId": "u"})
            assert sprig.requests[0].status == 0
            assert sprig.users == {}
            start = time.monotonic()
            sprig.stop()
            assert time.monotonic() - start < 2.0
    finally:
        sprig.stop()


def test_blackhole_off_releases_waiting_request(sprig: FakeSprig) -> None:
    sprig.blackhole(True)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(sprig.url + "/v2/users", json={"userId": "u"}, headers=AUTH, timeout=5)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    assert sprig.wait_for_requests(1, timeout=2)
    start = time.monotonic()
    sprig.blackhole(False)
    worker.join(2)
    assert not worker.is_alive()
    assert time.monotonic() - start < 1.0
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError)  # closed unanswered
    assert sprig.users == {}
    assert post(sprig.url + "/v2/users", json={"userId": "u"}, headers=AUTH).status_code == 202


def test_redirect(sprig: FakeSprig, client: httpx.Client) -> None:
    target = "https://elsewhere.example/v2/users"
    sprig.redirect(target)
    response = upsert(client, {"userId": "u"})  # httpx does not follow by default
    assert response.status_code == 307
    assert response.headers["location"] == target
    assert sprig.users == {}
    assert post(sprig.url + "/v1/batch", json={"batch": []}).status_code == 200
    sprig.redirect(None)
    assert upsert(client, {"userId": "u"}).status_code == 202


def test_reset_forgets_everything(sprig: FakeSprig, client: httpx.Client) -> None:
    upsert(client, {"userId": "u"})
    client.post("/v2/purge/visitors", json={"userIds": ["u"]})
    post(sprig.url + "/v1/batch", json={"batch": [{"type": "track"}]})
    sprig.inject(status=500, count=10)
    sprig.set_delay(0.5)
    sprig.redirect("http://x")
    sprig.reset()
    assert (sprig.requests, sprig.users, sprig.purges, sprig.segment_messages) == ([], {}, [], [])
    start = time.monotonic()
    assert upsert(client, {"userId": "u"}).status_code == 202
    assert time.monotonic() - start < 0.3


# -- connections and lifecycle ------------------------------------------------------------


def test_keep_alive_reuses_one_connection(sprig: FakeSprig, client: httpx.Client) -> None:
    for i in range(3):
        response = upsert(client, {"userId": f"u{i}"})
        assert response.status_code == 202
        assert response.headers.get("connection", "").lower() != "close"
    assert len({r.client for r in sprig.requests}) == 1


def test_responses_are_fast_on_a_reused_connection(client: httpx.Client) -> None:
    upsert(client, {"userId": "warm"})
    start = time.monotonic()
    for i in range(10):
        upsert(client, {"userId": f"u{i}"})
    # With Nagle's algorithm on, each response would stall ~40 ms (>= 0.4 s here).
    assert time.monotonic() - start < 0.3


def test_requests_keep_arrival_order_when_answers_are_late(sprig: FakeSprig) -> None:
    sprig.inject(status=None, delay=0.3)
    url = sprig.url + "/v2/users"
    slow = threading.Thread(
        target=post, args=(url,), kwargs={"json": {"userId": "slow"}, "headers": AUTH}
    )
    slow.start()
    # A delayed request is recorded when answered, so give it time to arrive first.
    time.sleep(0.1)
    assert sprig.requests == []
    assert post(url, json={"userId": "fast"}, headers=AUTH).status_code == 202
    slow.join(2)
    assert [r.json["userId"] for r in sprig.requests] == ["slow", "fast"]


def test_concurrent_clients(sprig: FakeSprig) -> None:
    def send(i: int) -> None:
        post(sprig.url + "/v2/users", json={"userId": f"u{i}"}, headers=AUTH)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(sprig.users) == 20
    assert [r.status for r in sprig.requests] == [202] * 20


def test_stop_with_open_keep_alive_connection_and_restart() -> None:
    sprig = FakeSprig(api_key=KEY).start()
    url = sprig.url
    with sprig_client(sprig) as c:
        assert upsert(c, {"userId": "u"}).status_code == 202
        start = time.monotonic()
        sprig.stop()  # the client still holds its connection open
        assert time.monotonic() - start < 1.0
        sprig.stop()  # idempotent
        with pytest.raises(httpx.TransportError):
            post(url + "/v2/users", json={"userId": "v"}, headers=AUTH, timeout=1)
    sprig.start()
    try:
        assert sprig.url == url  # same port: clients configured with the URL reconnect
        assert post(url + "/v2/users", json={"userId": "v"}, headers=AUTH).status_code == 202
        assert set(sprig.users) == {"u", "v"}
    finally:
        sprig.stop()


def test_url_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = FakeSprig().url


def test_no_threads_left_behind_after_stop() -> None:
    before = set(threading.enumerate())
    with FakeSprig(api_key=KEY) as sprig, sprig_client(sprig) as c:
        c.post(sprig.url + "/v2/users", json={"userId": "u"})
    leftover = [t for t in threading.enumerate() if t not in before and t.name.startswith("fake")]
    assert leftover == []


# -- waiting helpers ------------------------------------------------------------------------


def test_wait_for_and_wait_for_requests(sprig: FakeSprig) -> None:
    def later() -> None:
        time.sleep(0.1)
        post(sprig.url + "/v1/batch", json={"batch": []})
        post(sprig.url + "/v2/users", json={"userId": "late"}, headers=AUTH)

    threading.Thread(target=later).start()
    start = time.monotonic()
    assert sprig.wait_for(lambda s: "late" in s.users, timeout=3)
    assert time.monotonic() - start < 1.0
    assert sprig.wait_for_requests(2, timeout=1)
    assert sprig.wait_for_requests(1, path="/v1/batch", timeout=1)
    start = time.monotonic()
    assert not sprig.wait_for_requests(2, path="/v1/batch", timeout=0.1)
    assert not sprig.wait_for(lambda s: False, timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 0.5


def test_on_request_hook_sees_each_record() -> None:
    seen: list[RecordedRequest] = []
    with FakeSprig(api_key=KEY, on_request=seen.append) as sprig:
        post(sprig.url + "/v2/users", json={"userId": "u"}, headers=AUTH)
        get(sprig.url + "/v2/users/u")
    assert [(r.method, r.path, r.status) for r in seen] == [
        ("POST", "/v2/users", 202),
        ("GET", "/v2/users/u", 401),
    ]


# -- simulated distance ------------------------------------------------------------------


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - start


def test_latency_delays_sprig_and_segment_requests_alike() -> None:
    with FakeSprig(api_key=KEY, latency=0.2) as sprig, sprig_client(sprig) as c:
        assert sprig.latency == 0.2 and sprig.jitter == 0.0
        response, took = timed(upsert, c, {"userId": "u"})
        assert response.status_code == 202
        assert took >= 0.2
        batch, took = timed(c.post, "/v1/batch", json={"batch": [{"type": "track"}]})
        assert batch.status_code == 200
        assert took >= 0.2
        missing, took = timed(c.get, "/v2/nope")  # every answer crosses the distance
        assert missing.status_code == 404
        assert took >= 0.2
        assert "u" in sprig.users and len(sprig.segment_messages) == 1


def test_latency_is_served_in_parallel_across_connections() -> None:
    latency, n = 0.2, 20
    with FakeSprig(api_key=KEY, latency=latency) as sprig:
        results: List[int] = []
        barrier = threading.Barrier(n)

        def send(i: int) -> None:
            with sprig_client(sprig, timeout=10) as c:
                barrier.wait(5)
                results.append(upsert(c, {"userId": f"u{i}"}).status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        took = time.monotonic() - start
        assert results == [202] * n
        assert len({r.client for r in sprig.requests}) == n  # n connections at once
        # One after another they would need n x latency = 4 s; in parallel about one latency.
        assert took < n * latency / 2


def test_many_keep_alive_connections_at_once() -> None:
    n = 96  # past the 64 a benchmark's lanes may hold open, and past the old backlog
    with FakeSprig(api_key=KEY, latency=0.1) as sprig:
        results: List[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(n)

        def send(i: int) -> None:
            with sprig_client(sprig, timeout=20) as c:
                barrier.wait(20)
                got = [upsert(c, {"userId": f"u{i}-{j}"}).status_code for j in range(2)]
            with lock:
                results.extend(got)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [202] * (2 * n)
        clients = [r.client for r in sprig.requests]
        assert len(set(clients)) == n  # each client kept its one connection for both calls
        assert len(sprig.users) == 2 * n


def test_jitter_stays_within_its_bounds() -> None:
    latency, jitter = 0.2, 0.1
    with FakeSprig(api_key=KEY, latency=latency, jitter=jitter) as sprig:
        # The drawn delays themselves: uniform over [latency - jitter, latency + jitter].
        draws = [sprig._admit(RecordedRequest("GET", "/", {}, b"", None, 0, 0.0), None).delay
                 for _ in range(2000)]
        assert all(latency - jitter <= d <= latency + jitter for d in draws)
        assert min(draws) < latency - 0.9 * jitter and max(draws) > latency + 0.9 * jitter
        sprig.reset()
        took: List[float] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            with sprig_client(sprig, timeout=10) as c:
                response, seconds = timed(upsert, c, {"userId": f"u{i}"})
            assert response.status_code == 202
            with lock:
                took.append(seconds)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(took) == 10
        assert all(latency - jitter <= t <= latency + jitter + 1.0 for t in took)
        assert max(took) - min(took) > 0.01  # drawn per request, not once


def test_set_latency_changes_and_turns_off_and_reset_keeps_it(
    sprig: FakeSprig, client: httpx.Client
) -> None:
    sprig.set_latency(0.2, jitter=0.05)
    assert (sprig.latency, sprig.jitter) == (0.2, 0.05)
    assert timed(upsert, client, {"userId": "u"})[1] >= 0.15
    sprig.reset()  # a setting, not a fault
    assert sprig.latency == 0.2
    assert timed(upsert, client, {"userId": "u"})[1] >= 0.15
    sprig.set_delay(0.1)  # a fault on top of the distance
    assert timed(upsert, client, {"userId": "u"})[1] >= 0.25
    sprig.set_delay(0)
    sprig.set_latency(0)
    assert timed(upsert, client, {"userId": "u"})[1] < 0.15


@pytest.mark.parametrize(
    ("latency", "jitter"),
    [(-0.1, 0.0), (0.1, -0.01), (0.1, 0.2), (float("nan"), 0.0), (float("inf"), 0.0)],
)
def test_latency_argument_checks(latency: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        FakeSprig(latency=latency, jitter=jitter)
    with pytest.raises(ValueError):
        FakeSprig().set_latency(latency, jitter)


def test_stop_cuts_latency_short() -> None:
    sprig = FakeSprig(api_key=KEY, latency=30.0).start()
    try:
        errors: List[BaseException] = []

        def call() -> None:
            try:
                post(sprig.url + "/v2/users", json={"userId": "u"}, headers=AUTH, timeout=60)
            except httpx.HTTPError as exc:
                errors.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        deadline = time.monotonic() + 5
        while sprig._seq == 0 and time.monotonic() < deadline:  # read, now waiting
            time.sleep(0.01)
        start = time.monotonic()
        sprig.stop()
        worker.join(5)
        assert time.monotonic() - start < 3.0
        assert len(errors) == 1
        assert [r.status for r in sprig.requests] == [0]
        assert sprig.users == {}
    finally:
        sprig.stop()


# -- simulated rate limit ------------------------------------------------------------------


def statuses(client: httpx.Client, n: int, prefix: str = "u") -> List[int]:
    return [upsert(client, {"userId": f"{prefix}{i}"}).status_code for i in range(n)]


def test_burst_beyond_the_bucket_gets_exactly_the_excess_throttled() -> None:
    burst, extra = 5, 3
    # 0.5 token/s: the burst takes well under the 2 s a new token needs.
    with FakeSprig(api_key=KEY, rate_limit=0.5, rate_limit_burst=burst) as sprig:
        with sprig_client(sprig) as c:
            responses = [upsert(c, {"userId": f"u{i}"}) for i in range(burst + extra)]
        assert [r.status_code for r in responses] == [202] * burst + [429] * extra
        assert all(r.json() == {"error": "Too Many Requests"} for r in responses[burst:])
        assert all("retry-after" not in r.headers for r in responses)
        assert sprig.throttled == extra
        assert [r.status for r in sprig.requests] == [202] * burst + [429] * extra
        # Throttled requests changed nothing.
        assert set(sprig.users) == {f"u{i}" for i in range(burst)}


def test_concurrent_burst_gets_exactly_the_excess_throttled() -> None:
    burst, n = 4, 12
    with FakeSprig(api_key=KEY, rate_limit=0.1, rate_limit_burst=burst) as sprig:
        got: List[int] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            status = post(sprig.url + "/v2/users", json={"userId": f"u{i}"},
                          headers=AUTH).status_code
            with lock:
                got.append(status)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(got) == [202] * burst + [429] * (n - burst)
        assert sprig.throttled == n - burst
        assert len(sprig.users) == burst


def test_bucket_refills_at_the_rate() -> None:
    with FakeSprig(api_key=KEY, rate_limit=1.0) as sprig, sprig_client(sprig) as c:
        start = time.monotonic()
        assert upsert(c, {"userId": "first"}).status_code == 202  # burst 1: one second's worth
        throttled = 0
        while True:
            status = upsert(c, {"userId": "again"}).status_code
            if status == 202:
                break
            assert status == 429
            throttled += 1
            assert time.monotonic() - start < 1.0 + 1.0, "the bucket never refilled"
            time.sleep(0.05)
        assert time.monotonic() - start >= 0.9  # one token takes 1 s at 1 request/s
        assert throttled >= 1
        assert sprig.throttled == throttled
        assert set(sprig.users) == {"first", "again"}


def test_retry_after_only_when_configured(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.set_rate_limit(0.01, burst=1, retry_after=7)
    assert statuses(client, 2) == [202, 429]
    throttled = upsert(client, {"userId": "x"})
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "7"
    assert throttled.headers["content-type"] == "application/json"
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    sprig.set_rate_limit(0.01, burst=1, retry_after=date)  # buckets start full again
    assert statuses(client, 2, prefix="d") == [202, 429]
    assert upsert(client, {"userId": "y"}).headers["retry-after"] == date
    sprig.set_rate_limit(0.01, burst=1)
    assert statuses(client, 2, prefix="n") == [202, 429]
    assert "retry-after" not in upsert(client, {"userId": "z"}).headers
    assert sprig.throttled == 6


def test_rate_limit_spares_segment_and_auth_failures_and_turns_off(sprig: FakeSprig) -> None:
    sprig.set_rate_limit(0.01, burst=1)
    url = sprig.url
    for _ in range(5):
        assert post(url + "/v1/batch", json={"batch": [{"type": "track"}]}).status_code == 200
    assert post(url + "/v2/users", json={"userId": "u"}, headers=AUTH).status_code == 202
    assert post(url + "/v2/users", json={"userId": "v"}, headers=AUTH).status_code == 429
    # Auth is checked first: a bad key gets 401, not 429, and costs no token.
    wrong = {"Authorization": "API-Key wrong"}
    assert post(url + "/v2/users", json={"userId": "w"}, headers=wrong).status_code == 401
    assert post(url + "/v2/users", json={"userId": "w"}).status_code == 401
    assert sprig.throttled == 1
    assert len(sprig.segment_messages) == 5
    sprig.set_rate_limit(None)
    assert post(url + "/v2/users", json={"userId": "v"}, headers=AUTH).status_code == 202
    assert set(sprig.users) == {"u", "v"}


def test_rate_limit_is_per_api_key() -> None:
    with FakeSprig(rate_limit=0.01, rate_limit_burst=2) as sprig:  # any key accepted
        url = sprig.url + "/v2/users"
        key_a = {"Authorization": "API-Key a"}
        key_b = {"Authorization": "API-Key b"}
        assert [post(url, json={"userId": "a"}, headers=key_a).status_code
                for _ in range(3)] == [202, 202, 429]
        assert [post(url, json={"userId": "b"}, headers=key_b).status_code
                for _ in range(3)] == [202, 202, 429]
        assert sprig.throttled == 2


def test_reset_keeps_the_rate_limit_but_refills(sprig: FakeSprig, client: httpx.Client) -> None:
    sprig.set_rate_limit(0.01, burst=2)
    assert statuses(client, 3) == [202, 202, 429]
    sprig.reset()
    assert sprig.throttled == 0
    assert statuses(client, 3) == [202, 202, 429]
    assert sprig.throttled == 1


def test_faults_take_precedence_over_the_rate_limit(
    sprig: FakeSprig, client: httpx.Client
) -> None:
    sprig.set_rate_limit(0.01, burst=1)
    sprig.inject(status=503)
    assert statuses(client, 3) == [503, 202, 429]  # the fault cost no token
    assert sprig.throttled == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_limit": 0},
        {"rate_limit": -1},
        {"rate_limit": float("nan")},
        {"rate_limit": 5, "rate_limit_burst": 0.5},
        {"rate_limit": 5, "rate_limit_retry_after": -1},
        {"rate_limit_burst": 3},
        {"rate_limit_retry_after": 3},
    ],
)
def test_rate_limit_argument_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FakeSprig(**kwargs)


def test_rate_limit_default_burst_is_one_seconds_worth() -> None:
    with FakeSprig(api_key=KEY, rate_limit=3.0) as sprig, sprig_client(sprig) as c:
        # 3 tokens; the 4 requests take far less than the 1/3 s a new one needs.
        assert statuses(c, 4) == [202, 202, 202, 429]
    with FakeSprig(api_key=KEY, rate_limit=0.2) as sprig, sprig_client(sprig) as c:
        assert statuses(c, 2) == [202, 429]  # at least one request passes


# -- serve() and `analytics-sprig serve-fake` ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
# Python installs its KeyboardInterrupt handler only if SIGINT is not ignored when it starts.
# A shell without job control starts `cmd &` with SIGINT ignored, and children inherit that:
# a test run started that way (`pytest ... &`, `tox > log &` in a script) used to see
# SIGINT ignored by the server, which then never stopped (issue 12's TimeoutExpired). The
# children here take SIGINT the way a terminal's Ctrl-C reaches a foreground program.
SIGINT_AS_IN_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"


def spawn(code: str, *args: str, inherit_ignored_sigint: bool = False) -> subprocess.Popen[str]:
    """Run ``python -c code args...`` with SIGINT handled as in a terminal.

    ``inherit_ignored_sigint`` starts it the way a background job is started (SIGINT
    ignored on entry), through a shell that ignores SIGINT and execs Python in its place.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-c", f"{SIGINT_AS_IN_A_TERMINAL}\n{code}", *args]
    if inherit_ignored_sigint:
        command = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
    )


def line_reader(stream: Any) -> queue.Queue[Optional[str]]:
    """Lines of ``stream`` as they come (None at EOF), so every read can have a timeout."""
    lines: queue.Queue[Optional[str]] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_line(lines: queue.Queue[Optional[str]], proc: subprocess.Popen[str]) -> str:
    try:
        line = lines.get(timeout=30)
    except queue.Empty:
        raise AssertionError("no output from the server within 30 s") from None
    if line is None:
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"the server exited ({proc.returncode}): {err}")
    return line


def listening_url(line: str) -> str:
    prefix = "Fake Sprig listening on "
    assert line.startswith(prefix) and line.endswith(" (Ctrl-C to stop)"), line
    url = line[len(prefix):].split()[0]
    assert url.startswith("http://127.0.0.1:")
    return url


def interrupt_and_wait(proc: subprocess.Popen[str], lines: queue.Queue[Optional[str]]) -> str:
    """SIGINT (Ctrl-C); the server must exit 0, with no traceback, within 10 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the server did not stop within 10 s of SIGINT") from None
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert lines.get(timeout=5) is None  # stdout closed, nothing more printed
    return err


def cleanup(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


SERVE = "from analytics_sprig.testing import serve; serve(port=0, api_key='k')"


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
@pytest.mark.parametrize(
    "inherit_ignored_sigint",
    [pytest.param(False, id="foreground"), pytest.param(True, id="sigint-ignored-on-entry")],
)
def test_serve_prints_url_and_one_line_per_request(inherit_ignored_sigint: bool) -> None:
    proc = spawn(SERVE, inherit_ignored_sigint=inherit_ignored_sigint)
    try:
        assert proc.stdout is not None
        lines = line_reader(proc.stdout)
        url = listening_url(next_line(lines, proc))
        assert post(url + "/v2/users", json={"userId": "u"}, headers=AUTH).status_code == 202
        assert get(url + "/v2/users/u").status_code == 401
        assert next_line(lines, proc) == "POST /v2/users 202"
        assert next_line(lines, proc) == "GET /v2/users/u 401"
        interrupt_and_wait(proc, lines)
    finally:
        cleanup(proc)


SERVE_FAKE = "import sys; from analytics_sprig.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
def test_serve_fake_simulates_latency_and_rate_limit() -> None:
    proc = spawn(SERVE_FAKE, "serve-fake", "--port", "0", "--api-key", "k",
                 "--latency", "0.2", "--jitter", "0.05", "--rate-limit", "0.1",
                 "--rate-limit-burst", "2", "--retry-after", "3")
    try:
        assert proc.stdout is not None
        lines = line_reader(proc.stdout)
        url = listening_url(next_line(lines, proc))
        assert next_line(lines, proc) == (
            "Latency: every request is answered after 200 ms +/- 50 ms")
        assert next_line(lines, proc) == (
            "Rate limit: 0.1 requests/s per API key, burst 2; over it: 429 with Retry-After: 3")
        with httpx.Client(base_url=url, headers=AUTH, timeout=10, verify=SSL) as c:
            timings = [timed(upsert, c, {"userId": f"u{i}"}) for i in range(3)]
            batch = c.post("/v1/batch", json={"batch": [{"type": "track"}]})
        assert [r.status_code for r, _ in timings] == [202, 202, 429]
        assert all(seconds >= 0.15 for _, seconds in timings)  # 200 ms - 50 ms at least
        assert timings[2][0].headers["retry-after"] == "3"
        assert timings[2][0].json() == {"error": "Too Many Requests"}
        assert batch.status_code == 200
        assert [next_line(lines, proc) for _ in range(4)] == [
            "POST /v2/users 202", "POST /v2/users 202", "POST /v2/users 429",
            "POST /v1/batch 200",
        ]
        interrupt_and_wait(proc, lines)
    finally:
        cleanup(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "-1"], "--latency"),
        (["--latency", "abc"], "--latency"),
        (["--jitter", "-0.01", "--latency", "0.1"], "--jitter"),
        (["--latency", "0.01", "--jitter", "0.02"], "--jitter"),
        (["--jitter", "0.01"], "--jitter"),
        (["--rate-limit", "-5"], "--rate-limit"),
        (["--rate-limit", "0"], "--rate-limit"),
        (["--rate-limit", "5", "--rate-limit-burst", "-1"], "--rate-limit-burst"),
        (["--rate-limit", "5", "--rate-limit-burst", "0.5"], "--rate-limit-burst"),
        (["--rate-limit", "5", "--retry-after", "-1"], "--retry-after"),
        (["--retry-after", "2"], "--retry-after"),
        (["--rate-limit-burst", "2"], "--rate-limit-burst"),
    ],
)
def test_serve_fake_rejects_bad_simulation_options(
    args: List[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from analytics_sprig import cli

    assert cli.main(["serve-fake", "--port", "0", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert "listening" not in captured.out  # nothing was started


def test_serve_fake_help_documents_the_simulation_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from analytics_sprig import cli

    assert cli.main(["serve-fake", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--latency", "--jitter", "--rate-limit", "--rate-limit-burst",
                   "--retry-after"):
        assert option in out
    assert "429" in out and "Retry-After" in out
