"""A hostile network (issue 11): every wait bounded, every byte read bounded, no storm.

Each test starts a raw-socket server from ``hostile_servers`` on 127.0.0.1 and drives only
the public API: a real analytics-python ``Client`` with the destination added (or
``SprigDestination.purge``), then ``flush``/``stats``/``on_error``. Memory is measured in a
child interpreter (``memory_growth``), so other tests' allocations do not blur it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import httpx
import pytest
from hostile_servers import (
    API_KEY,
    FAST,
    MEMORY_SCENARIOS,
    Figures,
    HostileServer,
    MiB,
    answer,
    encoded_body,
    endless_chunked,
    gzip_bomb,
    huge_body,
    memory_growth,
    retry_after,
    run_delivery,
    run_keylog,
    run_purge,
    texts_of,
    trickle_body,
    trickle_headers,
)

from analytics_sprig import SprigAPIError, SprigDestination, SprigNetworkError
from analytics_sprig.sprig import _transport

#: ``timeout`` of the deadline tests, and what an attempt may take beyond it.
TIMEOUT = 1.0
SLACK = 0.5
#: A socket buffer's worth: what a server can push before a client that stopped reading
#: makes it block (the old client read all 200 MB).
PUSH_BOUND = 32 * MiB


def assert_clean(f: Figures) -> None:
    """What every scenario must show: the key nowhere, every message accounted for."""
    assert not f.key_seen, f.key_seen[:3]
    if f.stats:
        s = f.stats
        assert s["received"] == s["skipped"] + s["delivered"] + s["failed"] + s["dropped"] \
            + s["pending"], s


# -- bounded reads -------------------------------------------------------------------------

#: (behaviour, whether the raw body is beyond the read cap). The 62 KiB bomb fits the cap:
#: it is read whole (so its connection may be reused) but inflated only up to the cap.
BIG_BODIES = [
    pytest.param(huge_body(), True, id="200MB-content-length"),
    pytest.param(huge_body(content_length=False), True, id="200MB-until-close"),
    pytest.param(endless_chunked(), True, id="endless-chunked"),
    pytest.param(encoded_body(gzip_bomb()), True, id="gzip-bomb-254KiB"),
    pytest.param(encoded_body(gzip_bomb(62 * MiB)), False, id="gzip-bomb-62KiB"),
]


@pytest.mark.parametrize(("behaviour", "beyond_cap"), BIG_BODIES)
def test_oversized_202_body_is_delivered_unread_and_its_connection_closed(
    behaviour: Any, beyond_cap: bool
) -> None:
    f = run_delivery("big", "", behaviour, users=3, wait=10)
    assert_clean(f)
    assert f.settled
    assert f.stats["delivered"] == 3 and f.stats["failed"] == 0, f.stats  # 202 decides
    assert f.segment_received == 3
    assert len(f.attempts) == 3
    for attempt in f.attempts:
        assert attempt.headers.get("accept-encoding") == "identity"
        assert attempt.bytes_sent < PUSH_BOUND
    if beyond_cap:  # the body was not read to its end, so its connection is not reused
        assert len({a.connection for a in f.attempts}) == 3
    assert f.seconds < 5


@pytest.mark.parametrize(
    ("status", "retried"),
    [pytest.param(400, False, id="400-final"), pytest.param(500, True, id="500-retried")],
)
def test_oversized_error_body_still_lets_the_status_decide(status: int, retried: bool) -> None:
    f = run_delivery("big-error", "", huge_body(status=status), users=1, max_retries=1)
    errors = f.errors
    assert_clean(f)
    assert f.settled and f.stats["failed"] == 1, f.stats
    assert len(f.attempts) == (2 if retried else 1)
    [error] = errors
    assert isinstance(error, SprigAPIError) and error.status_code == status
    assert error.detail == ""  # the body was beyond the cap: absent, not half-read
    assert all(a.bytes_sent < PUSH_BOUND for a in f.attempts)


def test_small_gzip_error_body_is_decoded_within_the_cap() -> None:
    import gzip

    body = gzip.compress(b'{"error":"attributes must be scalars"}')
    f = run_delivery("gzip-error", "", encoded_body(body, status=422), users=1)
    assert_clean(f)
    [error] = f.errors
    assert isinstance(error, SprigAPIError) and error.status_code == 422
    assert error.detail == "attributes must be scalars"


def test_purge_reads_a_normal_answer() -> None:
    f = run_purge("purge-ok", "", answer(202, b'{"requestId":"req-1"}'))
    assert f.settled and f.raised is None and f.result == ["req-1"]


@pytest.mark.parametrize(("behaviour", "beyond_cap"), BIG_BODIES[:3])
def test_purge_with_an_oversized_body_returns_promptly(behaviour: Any, beyond_cap: bool) -> None:
    f = run_purge("purge-big", "", behaviour, wait=10)
    assert_clean(f)
    assert f.settled and f.seconds < 5
    assert f.raised is None, f.raised
    assert f.result == []  # accepted (202), but no request id could be read
    assert len(f.attempts) == 1 and f.attempts[0].bytes_sent < PUSH_BOUND


def test_the_cap_is_enough_for_sprig_answers() -> None:
    # A JSON answer just under the cap is read and decoded; one byte more is absent.
    assert _transport.MAX_BODY == 64 * 1024
    def body(pad: int) -> bytes:
        return json.dumps({"requestId": "r", "pad": "x" * pad}, separators=(",", ":")).encode()

    exact = body(_transport.MAX_BODY - len(body(0)))
    assert len(exact) == _transport.MAX_BODY
    assert run_purge("purge-cap", "", answer(202, exact)).result == ["r"]
    over = body(_transport.MAX_BODY - len(body(0)) + 1)
    assert run_purge("purge-cap+1", "", answer(202, over)).result == []


@pytest.mark.reliability
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", MEMORY_SCENARIOS)
def test_memory_stays_flat(name: str) -> None:
    """RSS growth (peak after minus RSS before) in a child interpreter stays under 16 MB."""
    r = memory_growth(name)
    assert r["key_seen"] == 0
    assert r["settled"], r
    assert r["growth_mb"] < 16, r
    assert r["bytes_pushed"] < PUSH_BOUND, r
    if name.startswith("purge"):
        assert r["raised"] is None and r["result"] == [], r
    else:
        assert r["stats"]["delivered"] == 3, r


# -- an overall deadline per attempt -------------------------------------------------------

TRICKLES = [
    pytest.param(trickle_headers(0.3), id="headers"),
    pytest.param(trickle_body(0.3), id="body"),
]


@pytest.mark.parametrize("behaviour", TRICKLES)
def test_a_trickling_server_cannot_stretch_an_attempt(behaviour: Any) -> None:
    f = run_delivery("trickle", "", behaviour, users=1, timeout=TIMEOUT, max_retries=1,
                     wait=3 * (TIMEOUT + SLACK) + 2)
    assert_clean(f)
    assert f.settled, f.stats
    assert f.stats["failed"] == 1 and f.stats["pending"] == 0, f.stats
    assert len(f.attempts) == 2
    for attempt in f.attempts:
        assert attempt.client_gone
        assert attempt.duration <= TIMEOUT + SLACK, [a.duration for a in f.attempts]
    [error] = f.errors
    assert isinstance(error, SprigNetworkError) and "Timeout" in str(error)
    assert f.seconds <= 2 * (TIMEOUT + SLACK) + 0.5


@pytest.mark.parametrize("behaviour", TRICKLES)
def test_purge_is_bounded_by_timeout_too(behaviour: Any) -> None:
    f = run_purge("purge-trickle", "", behaviour, timeout=TIMEOUT, max_retries=1,
                  wait=3 * (TIMEOUT + SLACK) + 2)
    assert_clean(f)
    assert f.settled
    assert isinstance(f.raised, SprigNetworkError), f.raised
    assert len(f.attempts) == 2
    assert all(a.duration <= TIMEOUT + SLACK for a in f.attempts), \
        [a.duration for a in f.attempts]
    assert f.seconds <= 2 * (TIMEOUT + SLACK) + 0.5


def test_the_deadline_applies_through_an_explicit_proxy() -> None:
    ok = run_delivery("proxy", "", answer(202), users=1, via_proxy=True)
    assert ok.stats["delivered"] == 1, ok.stats  # the proxy option keeps working
    [attempt] = ok.attempts
    assert attempt.path.startswith("http://127.0.0.1:") and attempt.path.endswith("/v2/users")
    slow = run_delivery("proxy-trickle", "", trickle_body(0.3), users=1, via_proxy=True,
                        timeout=TIMEOUT, wait=TIMEOUT + SLACK + 2)
    assert slow.settled and slow.stats["failed"] == 1, slow.stats
    assert all(a.duration <= TIMEOUT + SLACK for a in slow.attempts)


def test_a_connection_stays_reusable_after_a_normal_answer() -> None:
    with HostileServer(answer(202, b'{"requestId":"r"}')) as server:
        destination = SprigDestination(API_KEY, endpoint=server.url, **FAST)
        # 250 ids: three requests of at most 100 visitors, one after the other.
        assert destination.purge(user_ids=[f"u{i}" for i in range(250)]) == ["r"] * 3
        destination.shutdown(timeout=1)
    assert len(server.attempts) == 3
    assert server.connections == 1  # the deadline wrapper keeps the connection pooled


def test_missing_network_backend_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If httpcore stops keeping ``_network_backend`` there, refuse instead of going unbounded."""
    original = httpx.HTTPTransport.__init__

    def without_backend(self: httpx.HTTPTransport, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._pool._network_backend

    monkeypatch.setattr(httpx.HTTPTransport, "__init__", without_backend)
    with pytest.raises(RuntimeError, match="httpcore"):
        _transport.BoundedTransport(deadline=1.0)
    with HostileServer(answer(202, b'{"requestId":"r"}')) as server:
        destination = SprigDestination(API_KEY, endpoint=server.url, **FAST)
        with pytest.raises(RuntimeError, match="httpcore"):
            destination.purge(user_ids=["u"])
        destination.shutdown(timeout=1)
        assert server.attempts == []  # nothing went out unbounded


# -- name lookups ---------------------------------------------------------------------------


class Lookups:
    """``socket.getaddrinfo`` as a test wants it: names in ``hang`` wait until released
    (a resolver that never answers), the rest are looked up as usual; calls are recorded."""

    def __init__(self, hang: Any = ()) -> None:
        self.hang = set(hang)
        self.calls: List[Any] = []
        self.release = threading.Event()
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((host, port))
        if host in self.hang:
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self._real(host, port, *args, **kwargs)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lookups]:
    fake = Lookups(hang={"sprig.invalid"})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()  # lets the lookup threads still waiting end


def test_a_name_lookup_that_never_answers_is_bounded_by_timeout(lookups: Lookups) -> None:
    destination = SprigDestination(API_KEY, endpoint="https://sprig.invalid",
                                   **{**FAST, "max_retries": 1})
    started = time.monotonic()
    with pytest.raises(SprigNetworkError, match="ConnectTimeout") as raised:
        destination.purge(user_ids=["user-1"])
    took = time.monotonic() - started
    destination.shutdown(timeout=1)
    # Two attempts of at most ``timeout`` each, and a backoff between them.
    assert took <= 2 * (TIMEOUT + SLACK), took
    assert "looking up 'sprig.invalid'" in str(raised.value)
    assert API_KEY not in str(raised.value)
    # The second attempt waited on the lookup still running: one thread, not one per try.
    assert lookups.calls.count(("sprig.invalid", 443)) == 1


def test_senders_share_one_hung_lookup_and_every_call_is_accounted(lookups: Lookups) -> None:
    from segment.analytics import Client

    from analytics_sprig.testing import FakeSprig

    errors: List[BaseException] = []
    with FakeSprig() as segment:
        destination = SprigDestination(
            API_KEY, endpoint="https://sprig.invalid", max_concurrency=8,
            on_error=lambda exc, msgs: errors.append(exc), **FAST,
        )
        client = Client("write-key", host=segment.url, send=True, upload_interval=0.05)
        client.add_plugin(destination)
        started = time.monotonic()
        for i in range(20):
            client.track(f"user-{i}", "Order Completed")
        drained = destination.flush(timeout=10)
        took = time.monotonic() - started
        stats = destination.stats()
        client.remove_plugin(destination)
        destination.shutdown(timeout=1)
        client.shutdown()
    assert drained, stats
    assert stats["failed"] == 20 and stats["pending"] == 0, stats
    assert errors and all("ConnectTimeout" in str(e) for e in errors)
    assert lookups.calls.count(("sprig.invalid", 443)) == 1
    assert took <= 4 * (TIMEOUT + SLACK), took  # lanes in parallel: not 20 timeouts in a row


def test_a_name_that_resolves_is_connected_to_by_its_address(lookups: Lookups) -> None:
    with HostileServer(answer(202, b'{"requestId":"r"}')) as server:
        endpoint = server.url.replace("127.0.0.1", "localhost")
        destination = SprigDestination(API_KEY, endpoint=endpoint, **FAST)
        assert destination.purge(user_ids=["u1"]) == ["r"]
        destination.shutdown(timeout=1)
    assert lookups.calls and lookups.calls[0][0] == "localhost"
    assert len(server.attempts) == 1


def test_a_failed_lookup_is_a_network_error_naming_the_host(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_such_name(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    destination = SprigDestination(API_KEY, endpoint="https://sprig.invalid", **FAST)
    with pytest.raises(SprigNetworkError, match="ConnectError") as raised:
        destination.purge(user_ids=["user-1"])
    destination.shutdown(timeout=1)
    assert "could not look up 'sprig.invalid'" in str(raised.value)
    assert API_KEY not in str(raised.value)


# -- Retry-After: a floor, a cap, a bounded number of attempts ----------------------------
# These need the lead's retry rule (batching/_retry.py): a pause is clamped to
# [min(1, max_retry_after), max_retry_after], at most max_retries pauses per request, so
# at most 2 * max_retries + 1 attempts; max_retry_after=0 ignores Retry-After.

STORM_VALUES = ["1e-300", "1e-9", "0.000001", "0.001", "0", "-1"]
UNUSABLE_VALUES = ["nan", "inf", "soon", "1e300"]
STORM = {"initial_backoff": 0.2, "max_backoff": 0.4, "max_retry_after": 1.5}


def assert_no_storm(f: Figures, max_retries: int) -> None:
    assert_clean(f)
    assert f.settled, (len(f.attempts), f.stats)
    assert max_retries + 1 <= len(f.attempts) <= 2 * max_retries + 1, len(f.attempts)
    assert f.max_per_second <= 5, f.max_per_second
    assert f.cpu < 0.5 + 0.05 * len(f.attempts), f.cpu  # near idle: the storm burnt ~4 s in 5


@pytest.mark.parametrize("value", STORM_VALUES + UNUSABLE_VALUES)
def test_a_tiny_retry_after_cannot_make_a_storm(value: str) -> None:
    f = run_delivery("storm", "", retry_after(value), users=1, max_retries=1, wait=10,
                     **STORM)
    assert_no_storm(f, 1)
    assert f.stats["failed"] == 1 and f.stats["pending"] == 0, f.stats
    [error] = f.errors
    assert isinstance(error, SprigAPIError) and error.status_code == 429


def test_retry_after_storm_with_three_retries_is_seven_attempts_at_most() -> None:
    # 503, not 429: a 429 past the Retry-After budget also cuts the adaptive rate (seconds
    # between attempts), which is right but would make this test slow.
    f = run_delivery("storm-3", "", retry_after("1e-300", status=503), users=1, max_retries=3,
                     wait=12, **STORM)
    assert_no_storm(f, 3)
    assert f.stats["failed"] == 1, f.stats


@pytest.mark.parametrize("value", ["1e-300", "1e-9", "0.000001", "0.001"])
def test_purge_ends_under_a_retry_after_storm(value: str) -> None:
    f = run_purge("purge-storm", "", retry_after(value), max_retries=1, wait=8, **STORM)
    assert_no_storm(f, 1)
    assert isinstance(f.raised, SprigAPIError) and f.raised.status_code == 429, f.raised


def test_max_retry_after_zero_ignores_retry_after() -> None:
    f = run_delivery("ra-0", "", retry_after("5", status=503), users=1, max_retries=3,
                     max_retry_after=0, initial_backoff=0.05, max_backoff=0.1, wait=8)
    assert_clean(f)
    assert f.settled and f.stats["failed"] == 1, f.stats
    assert len(f.attempts) == 4  # max_retries + 1: counted backoff, no free pauses
    assert f.stats["retries"] == 3
    assert f.seconds < 4  # the server's 5 s were not honoured


def test_max_retry_after_zero_on_429_makes_no_free_attempts() -> None:
    f = run_delivery("ra-0-429", "", retry_after("5"), users=1, max_retries=1,
                     max_retry_after=0, initial_backoff=0.05, max_backoff=0.1, wait=8)
    assert_clean(f)
    assert f.settled and f.stats["failed"] == 1, f.stats
    assert len(f.attempts) == 2, len(f.attempts)  # honoured pauses would have made 3
    assert f.seconds < 5


def test_purge_with_max_retry_after_zero_ignores_retry_after() -> None:
    f = run_purge("purge-ra-0", "", retry_after("5"), max_retries=2, max_retry_after=0,
                  initial_backoff=0.05, max_backoff=0.1, wait=8)
    assert f.settled and isinstance(f.raised, SprigAPIError)
    assert len(f.attempts) == 3 and f.seconds < 4


# -- TLS ignores the environment -----------------------------------------------------------


def test_sslkeylogfile_gets_no_secrets(tmp_path: Path) -> None:
    before = os.environ.get("SSLKEYLOGFILE")
    r = run_keylog(str(tmp_path))
    if r is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    if r["control_bytes"] == 0:
        pytest.skip("this Python/OpenSSL writes no key log even with the default context")
    assert r["keylog_bytes"] == 0  # the stdlib default context wrote TLS secrets; we did not
    assert r["settled"] and r["stats"]["failed"] == 1, r["stats"]
    [error] = r["errors"]
    assert isinstance(error, SprigNetworkError) and "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert isinstance(r["raised"], SprigNetworkError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(r["raised"])
    assert r["paths"] == ["/control"]  # no request of ours got through the handshake
    assert all(API_KEY not in t for e in [error, r["raised"]] for t in texts_of(e))
    assert os.environ.get("SSLKEYLOGFILE") == before  # the environment is restored


def test_tls_context_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "k.log"))
    context = _transport.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert getattr(context, "keylog_filename", None) is None
    transport = _transport.BoundedTransport(deadline=1.0, proxy="https://127.0.0.1:9")
    try:  # an https:// proxy's own TLS uses the same kind of context, not httpcore's default
        proxy_context = transport._pool._proxy_ssl_context  # type: ignore[attr-defined]
        assert proxy_context is not None
        assert getattr(proxy_context, "keylog_filename", None) is None
        assert proxy_context.verify_mode == ssl.CERT_REQUIRED
    finally:
        transport.close()

