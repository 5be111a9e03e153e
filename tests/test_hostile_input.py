"""Hostile input (issue 11): a bad API key, exceptions that could quote headers, and app
values whose ``__hash__``/``__eq__``/``__str__`` misbehave.

The key rows drive ``SprigDestination``/``SprigClient`` construction and loopback servers
from ``hostile_servers``; the value rows go through a real analytics-python ``Client``
(``send=True``, pointed at the ``fake_sprig`` fixture, which also plays Segment's
``/v1/batch``) or through ``SprigDestination.send``. Expected, for a misbehaving value:
``received`` counts the call, that one message ends failed (``failed_invalid``) with
:class:`analytics_sprig.InvalidMessage` passed to ``on_error`` (or, for one bad item in a
trait list, only that attribute is dropped), every other message is delivered, and the app's
call never raises.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List, Mapping, Tuple

import httpx
import pytest
from hostile_servers import (
    FAST,
    HostileServer,
    RaisingEqKey,
    RaisingStrInt,
    UnhashableId,
    answer,
    texts_of,
)
from segment.analytics import Client

from analytics_sprig import (
    ConfigurationError,
    InvalidMessage,
    SprigAPIError,
    SprigClient,
    SprigDestination,
    SprigNetworkError,
)
from analytics_sprig.sprig import _transport
from analytics_sprig.testing import FakeSprig

KEY = "sk_live_HOSTILE0123456789abcdefXYZ"
#: Every character a key may have (0x21-0x7E), quotes and backslash included.
ALL_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def assert_secret(key: str, texts: List[str]) -> None:
    """Neither ``key`` nor any 8-character piece of it is in any of ``texts``."""
    pieces = {key[i : i + 8] for i in range(max(1, len(key) - 7))}
    for text in texts:
        assert key not in text
        for piece in pieces:
            assert piece not in text, (piece, text[:200])


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    return caplog


def log_texts(caplog: pytest.LogCaptureFixture) -> List[str]:
    out = []
    for record in caplog.records:
        out.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            out += texts_of(record.exc_info[1])
    return [*out, caplog.text]


# -- the API key ---------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param("\ufeff" + KEY, "U+FEFF", id="bom"),
    pytest.param(KEY[:10] + "\u200b" + KEY[10:], "U+200B", id="zero-width-space"),
    pytest.param(KEY[:10] + "é" + KEY[10:], "U+00E9", id="e-acute"),
    pytest.param(KEY + "\n", "U+000A", id="newline"),
    pytest.param(KEY[:10] + " " + KEY[10:], "U+0020", id="space"),
    pytest.param(KEY[:10] + "\xa0" + KEY[10:], "U+00A0", id="nbsp"),
    pytest.param(KEY + "\x7f", "U+007F", id="del"),
    pytest.param("\t" + KEY, "U+0009", id="tab"),
]


@pytest.mark.parametrize(("key", "named"), BAD_KEYS)
@pytest.mark.parametrize("factory", [SprigDestination, SprigClient])
def test_a_key_that_is_not_printable_ascii_is_refused_without_echoing_it(
    factory: Callable[..., Any], key: str, named: str, all_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        factory(key, endpoint="http://127.0.0.1:9")
    assert "api_key" in str(raised.value) and named in str(raised.value)
    assert_secret(KEY, texts_of(raised.value) + log_texts(all_logs))


def test_every_printable_ascii_character_is_a_valid_key_character() -> None:
    with HostileServer(answer(202, b'{"requestId":"r"}')) as server:
        destination = SprigDestination(ALL_PRINTABLE, endpoint=server.url, **FAST)
        assert destination.purge(user_ids=["u"]) == ["r"]
        destination.shutdown(timeout=1)
    [attempt] = server.attempts
    assert attempt.headers["authorization"] == f"API-Key {ALL_PRINTABLE}"


ECHOES = [
    pytest.param(lambda k: json.dumps({"error": f"bad key: API-Key {k}"}).encode(), id="json"),
    pytest.param(lambda k: json.dumps({"error": {"got": f"API-Key {k}"}}).encode(),
                 id="json-object-repr"),
    pytest.param(lambda k: json.dumps({"error": [f"API-Key {k}"]}).encode(), id="json-list"),
    pytest.param(lambda k: f"no such key API-Key {k}".encode(), id="text"),
]


@pytest.mark.parametrize("echo", ECHOES)
@pytest.mark.parametrize("key", [KEY, ALL_PRINTABLE], ids=["plain", "quotes-backslash"])
def test_an_echoed_key_is_redacted_in_every_escaped_form(
    echo: Callable[[str], bytes], key: str, all_logs: pytest.LogCaptureFixture
) -> None:
    errors: List[BaseException] = []
    with HostileServer(answer(400, echo(key))) as server:
        destination = SprigDestination(key, endpoint=server.url,
                                       on_error=lambda e, m: errors.append(e), **FAST)
        destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
        assert destination.flush(timeout=5)
        with pytest.raises(SprigAPIError) as raised:
            destination.purge(user_ids=["u1"])
        destination.shutdown(timeout=1)
    [error] = errors
    assert isinstance(error, SprigAPIError) and error.status_code == 400
    assert "***" in error.detail  # the echo arrived, redacted
    assert_secret(key, texts_of(error) + texts_of(raised.value) + log_texts(all_logs))


UNEXPECTED = [
    pytest.param(lambda k: UnicodeEncodeError("latin-1", f"API-Key {k}\u2028", 9, 10, "nope"),
                 "UnicodeEncodeError", id="unicode-encode-error"),
    pytest.param(lambda k: ValueError(f"Invalid header value b'API-Key {k}'"), "ValueError",
                 id="value-error"),
    pytest.param(lambda k: httpx.LocalProtocolError(f"Illegal header value b'API-Key {k}\\n'"),
                 "LocalProtocolError", id="local-protocol-error"),
    pytest.param(lambda k: httpx.ConnectError(f"proxy said: API-Key {k}"), "ConnectError",
                 id="transport-error"),
]


@pytest.mark.parametrize(("make", "named"), UNEXPECTED)
def test_an_exception_during_a_request_cannot_carry_a_header_value(
    make: Callable[[str], Exception], named: str, monkeypatch: pytest.MonkeyPatch,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    key = ALL_PRINTABLE

    def explode(self: Any, request: httpx.Request) -> httpx.Response:
        raise make(key)

    monkeypatch.setattr(_transport.BoundedTransport, "handle_request", explode)
    errors: List[BaseException] = []
    destination = SprigDestination(key, endpoint="http://127.0.0.1:9", max_retries=0,
                                   on_error=lambda e, m: errors.append(e),
                                   **{k: v for k, v in FAST.items() if k != "max_retries"})
    destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
    assert destination.flush(timeout=5)
    with pytest.raises(SprigNetworkError) as raised:
        destination.purge(user_ids=["u1"])
    destination.shutdown(timeout=1)
    [error] = errors
    for exc in (error, raised.value):
        assert isinstance(exc, SprigNetworkError)
        assert named in str(exc)
        assert exc.__cause__ is None and exc.__context__ is None  # raised from nothing
    assert_secret(key, texts_of(error) + texts_of(raised.value) + log_texts(all_logs))


# -- hostile values from the app -------------------------------------------------------------


class Errors:
    """An ``on_error`` that records (exception, messages)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, List[Mapping[str, Any]]]] = []

    def __call__(self, exc: BaseException, messages: List[Mapping[str, Any]]) -> None:
        self.calls.append((exc, list(messages)))


def run_client_row(
    hostile: Callable[[Client], None], sync_mode: bool, fake_sprig: FakeSprig,
    make_client: Callable[..., Client], make_destination: Callable[..., SprigDestination],
) -> Tuple[Dict[str, int], Errors]:
    """Four good calls around one hostile call, through a real Client; the stats after."""
    errors = Errors()
    destination = make_destination(on_error=errors)
    client = make_client(sync_mode=sync_mode)
    client.add_plugin(destination)
    client.track("good-1", "Good Event")
    client.identify("good-2", {"email": "g2@b.co", "plan": "pro"})
    hostile(client)  # must not raise
    client.track("good-3", "Good Event")
    client.identify("good-1", {"plan": "team"})
    assert destination.flush(timeout=5), destination.stats()
    stats = destination.stats()
    assert stats["received"] == 5, stats  # the hostile call reached the destination: counted
    assert stats["pending"] == 0 and stats["dropped"] == 0 and stats["skipped"] == 0, stats
    users = fake_sprig.users
    assert {"good-1", "good-2", "good-3"} <= set(users)
    assert users["good-1"]["attributes"] == {"plan": "team"}
    assert users["good-2"]["emailAddress"] == "g2@b.co"
    client.flush()
    assert len(fake_sprig.segment_messages) == 5  # Segment's own delivery is untouched
    return stats, errors


def assert_failed_invalid(stats: Dict[str, int], errors: Errors, delivered: int) -> None:
    assert stats["delivered"] == delivered and stats["failed"] == 1, stats
    assert stats.get("failed_invalid") == 1, stats
    [(error, messages)] = errors.calls
    assert isinstance(error, InvalidMessage)
    assert len(messages) == 1


SYNC = pytest.mark.parametrize("sync_mode", [False, True], ids=["queued", "sync_mode"])


@SYNC
def test_an_integrations_key_whose_eq_raises_fails_only_its_own_message(
    sync_mode: bool, fake_sprig: FakeSprig, make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination],
) -> None:
    def hostile(client: Client) -> None:
        client.track("bad-user", "Bad Event", integrations={RaisingEqKey("Sprig"): True})

    stats, errors = run_client_row(hostile, sync_mode, fake_sprig, make_client,
                                   make_destination)
    assert_failed_invalid(stats, errors, delivered=4)
    assert errors.calls[0][1][0]["event"] == "Bad Event"
    assert "bad-user" not in fake_sprig.users


@SYNC
def test_an_unhashable_str_user_id_is_accounted_for_and_harms_no_one(
    sync_mode: bool, fake_sprig: FakeSprig, make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination],
) -> None:
    def hostile(client: Client) -> None:
        client.identify(UnhashableId("bad-user"), {"email": "bad@b.co", "plan": "x"})

    stats, errors = run_client_row(hostile, sync_mode, fake_sprig, make_client,
                                   make_destination)
    if stats["delivered"] == 5:  # read as the plain string it holds: a fine user id
        assert errors.calls == [] and stats["failed"] == 0, stats
        assert fake_sprig.users["bad-user"]["emailAddress"] == "bad@b.co"
    else:  # or refused as invalid, alone
        assert_failed_invalid(stats, errors, delivered=4)
        assert "bad-user" not in fake_sprig.users


def test_hostile_user_ids_through_send_affect_only_their_own_message(
    fake_sprig: FakeSprig, make_destination: Callable[..., SprigDestination]
) -> None:
    errors = Errors()
    destination = make_destination(on_error=errors)
    ids: List[Any] = ["good-1", UnhashableId("odd-user"), RaisingStrInt(13), "good-2"]
    for n, user_id in enumerate(ids):
        destination.send({"type": "track", "userId": user_id, "event": "E",
                          "timestamp": "2024-01-01T00:00:00.000Z", "messageId": f"m-{n}"})
    assert destination.flush(timeout=5), destination.stats()
    stats = destination.stats()
    assert stats["received"] == 4 and stats["pending"] == 0, stats
    # The id whose str() raises cannot be sent: failed as invalid, alone.
    assert stats["failed"] == stats.get("failed_invalid") >= 1, stats
    assert all(isinstance(e, InvalidMessage) for e, _ in errors.calls)
    assert sum(len(m) for _, m in errors.calls) == stats["failed"]
    assert {"good-1", "good-2"} <= set(fake_sprig.users)
    assert stats["delivered"] + stats["failed"] == 4, stats


@SYNC
def test_a_raising_item_in_a_trait_list_drops_only_that_attribute(
    sync_mode: bool, fake_sprig: FakeSprig,
    make_client: Callable[..., Client], make_destination: Callable[..., SprigDestination],
) -> None:
    errors = Errors()
    destination = make_destination(on_error=errors)
    client = make_client(sync_mode=sync_mode)
    client.add_plugin(destination)
    traits: Dict[str, Any] = {"email": "list@b.co", "plan": "pro", "seats": 3,
                              "tags": ["a", RaisingStrInt(7)], "ok": ["x", 1]}
    client.identify("list-user", traits)  # must not raise
    client.track("good-1", "Good Event")
    assert destination.flush(timeout=5), destination.stats()
    stats = destination.stats()
    assert stats["received"] == 2 and stats["delivered"] == 2, stats
    assert stats["failed"] == 0 and stats["skipped"] == 0, stats
    assert errors.calls == []
    visitor = fake_sprig.users["list-user"]
    assert visitor["emailAddress"] == "list@b.co"
    assert visitor["attributes"] == {"plan": "pro", "seats": 3, "ok": "x,1"}
    assert "good-1" in fake_sprig.users
