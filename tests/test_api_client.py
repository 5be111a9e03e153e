"""Unit tests for the retry policy (``batching._retry``) and ``sprig._api.SprigClient``.

HTTP edge cases use respx (no network); one test talks to a real loopback server
(:class:`analytics_sprig.testing.FakeSprig`) to show the pooled connection is reused.
"""

from __future__ import annotations

import json
import random
import time
from email.utils import formatdate
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import httpx
import pytest
import respx

from analytics_sprig import (
    DEFAULT_ENDPOINT,
    SprigAPIError,
    SprigAuthError,
    SprigClient,
    SprigError,
    SprigNetworkError,
    __version__,
)
from analytics_sprig.batching._retry import RETRY_AFTER_FLOOR, RetryPolicy, RetryState, next_delay
from analytics_sprig.sprig._api import PURGE_CHUNK, purge_chunks
from analytics_sprig.sprig._http import is_retryable_status, parse_retry_after
from analytics_sprig.testing import FakeSprig

KEY = "sk_live_0123456789abcdefSECRETxyz"
BASE = "https://api.sprig.com"

# ======================================================================================
# _retry
# ======================================================================================


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *[pytest.param(s, True, id=str(s)) for s in (408, 429, 500, 502, 503, 504, 507, 599)],
        *[
            pytest.param(s, False, id=str(s))
            for s in (200, 202, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 409, 413,
                      422, 501, 505)
        ],
    ],
)
def test_is_retryable_status(status: int, expected: bool) -> None:
    assert is_retryable_status(status) is expected


NOW = 1_767_323_045.0  # a fixed "now" for HTTP-date arithmetic


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="blank"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 120 ", 120.0, id="seconds-padded"),
        pytest.param("1.5", 1.5, id="float"),
        pytest.param("-5", 0.0, id="negative-clamped"),
        pytest.param("-0.5", 0.0, id="negative-float-clamped"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("12abc", None, id="garbage-number-prefix"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
        pytest.param(formatdate(NOW - 3600, usegmt=True), 0.0, id="http-date-past"),
        pytest.param(formatdate(NOW + 30, usegmt=True), 30.0, id="http-date-future"),
        pytest.param(formatdate(NOW, usegmt=True), 0.0, id="http-date-now"),
        pytest.param("Fri, 02 Jan 2026 03:04:65 GMT", None, id="http-date-invalid-second"),
        pytest.param("Mon, 99 Foo 2026 00:00:00 GMT", None, id="http-date-garbage"),
    ],
)
def test_parse_retry_after(value: Optional[str], expected: Optional[float]) -> None:
    result = parse_retry_after(value, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert result == pytest.approx(expected)
        assert result >= 0


def test_parse_retry_after_http_date_uses_wall_clock() -> None:
    result = parse_retry_after(formatdate(time.time() + 100, usegmt=True))
    assert result is not None
    assert 97.0 <= result <= 101.0


def test_backoff_defaults_like_analytics_python() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.max_backoff) == (10, 60.0)
    rand = random.Random(1)
    for _ in range(200):
        assert 0 < policy.backoff(0, rand) <= 1.0  # first backoff <= 1 s


@pytest.mark.parametrize(
    ("policy", "retry_number", "ceiling"),
    [
        pytest.param(RetryPolicy(), 0, 0.5, id="default-0"),
        pytest.param(RetryPolicy(), 1, 1.0, id="default-1"),
        pytest.param(RetryPolicy(), 3, 4.0, id="default-3"),
        pytest.param(RetryPolicy(), 6, 32.0, id="default-6"),
        pytest.param(RetryPolicy(), 7, 60.0, id="default-7-capped"),
        pytest.param(RetryPolicy(), 10, 60.0, id="default-10-capped"),
        pytest.param(RetryPolicy(), 10_000, 60.0, id="huge-retry-number-capped"),
        pytest.param(RetryPolicy(initial_backoff=0.1, max_backoff=1.0), 2, 0.4, id="custom-2"),
        pytest.param(RetryPolicy(initial_backoff=0.1, max_backoff=1.0), 5, 1.0,
                     id="custom-capped"),
        pytest.param(RetryPolicy(initial_backoff=0.0), 4, 0.0, id="zero-backoff"),
    ],
)
def test_backoff_jitter_within_half_to_full_ceiling(
    policy: RetryPolicy, retry_number: int, ceiling: float
) -> None:
    rand = random.Random(1234)
    draws = [policy.backoff(retry_number, rand) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in draws)
    assert max(draws) <= policy.max_backoff
    if ceiling:
        # Jitter is real: the draws spread over the range rather than repeating one value.
        assert len(set(draws)) > 400
        assert min(draws) < ceiling * 0.6 and max(draws) > ceiling * 0.9


def test_backoff_is_reproducible_with_a_seeded_random() -> None:
    policy = RetryPolicy()
    first = [policy.backoff(n, random.Random(42)) for n in range(10)]
    second = [policy.backoff(n, random.Random(42)) for n in range(10)]
    assert first == second


def _api_error(status: int, retry_after: Optional[float] = None) -> SprigAPIError:
    return SprigAPIError(status, retryable=is_retryable_status(status), retry_after=retry_after)


@pytest.mark.parametrize(
    ("exc", "state", "expected_delay", "expected_state", "server_pause"),
    [
        # Backoff spends a retry.
        pytest.param(_api_error(503), (0, 0), (0.25, 0.5), (1, 0), False, id="503-first-retry"),
        pytest.param(_api_error(500), (3, 0), (2.0, 4.0), (4, 0), False, id="500-fourth-retry"),
        pytest.param(_api_error(408), (0, 0), (0.25, 0.5), (1, 0), False, id="408"),
        pytest.param(_api_error(429), (0, 0), (0.25, 0.5), (1, 0), False,
                     id="429-without-retry-after"),
        pytest.param(SprigNetworkError("down"), (0, 0), (0.25, 0.5), (1, 0), False,
                     id="network"),
        pytest.param(_api_error(503), (9, 0), (30.0, 60.0), (10, 0), False, id="last-retry"),
        # Retry-After is a pause that spends no retry, capped at max_retry_after ...
        pytest.param(_api_error(429, 5.0), (0, 0), (5.0, 5.0), (0, 1), True,
                     id="retry-after-free"),
        pytest.param(_api_error(503, 2.5), (4, 0), (2.5, 2.5), (4, 1), True,
                     id="retry-after-keeps-count"),
        pytest.param(_api_error(429, 10_000.0), (0, 0), (300.0, 300.0), (0, 1), True,
                     id="retry-after-capped"),
        pytest.param(_api_error(429, 5.0), (10, 0), (5.0, 5.0), (10, 1), True,
                     id="retry-after-after-budget"),
        # ... with a floor: a tiny value never turns into a request storm ...
        pytest.param(_api_error(429, 1e-300), (0, 0), (1.0, 1.0), (0, 1), True,
                     id="retry-after-floor-tiny"),
        pytest.param(_api_error(429, 0.0), (0, 0), (1.0, 1.0), (0, 1), True,
                     id="retry-after-floor-zero"),
        # ... and at most max_retries of them: then counted backoff.
        pytest.param(_api_error(429, 5.0), (0, 10), (0.25, 0.5), (1, 10), False,
                     id="pauses-spent-then-backoff"),
    ],
)
def test_next_delay_retries(
    exc: BaseException,
    state: Tuple[int, int],
    expected_delay: Tuple[float, float],
    expected_state: Tuple[int, int],
    server_pause: bool,
) -> None:
    used = RetryState(retries=state[0], pauses=state[1])
    step = next_delay(exc, RetryPolicy(), used)
    assert step is not None
    delay, pause = step
    low, high = expected_delay
    assert low <= delay <= high
    assert (used.retries, used.pauses) == expected_state
    assert pause is server_pause
    assert used.waited == delay


@pytest.mark.parametrize(
    ("exc", "state"),
    [
        pytest.param(_api_error(503), RetryState(retries=10), id="budget-exhausted"),
        pytest.param(_api_error(503), RetryState(retries=11), id="budget-over"),
        pytest.param(_api_error(429, 5.0), RetryState(retries=10, pauses=10),
                     id="pauses-and-retries-spent"),
        pytest.param(_api_error(429, 5.0), RetryState(waited=598.0),
                     id="total-wait-exceeded-by-retry-after"),
        pytest.param(_api_error(503), RetryState(waited=599.9),
                     id="total-wait-exceeded-by-backoff"),
        pytest.param(_api_error(400), RetryState(), id="400-final"),
        pytest.param(_api_error(404), RetryState(), id="404-final"),
        pytest.param(_api_error(422), RetryState(), id="422-final"),
        pytest.param(_api_error(501), RetryState(), id="501-final"),
        pytest.param(_api_error(505), RetryState(), id="505-final"),
        pytest.param(_api_error(400, 5.0), RetryState(), id="final-even-with-retry-after"),
        pytest.param(SprigAuthError(401), RetryState(), id="401-final"),
        pytest.param(SprigAuthError(403), RetryState(), id="403-final"),
        pytest.param(ValueError("bug"), RetryState(), id="non-sprig-error-final"),
        pytest.param(SprigError("generic"), RetryState(), id="base-error-final"),
    ],
)
def test_next_delay_final(exc: BaseException, state: RetryState) -> None:
    assert next_delay(exc, RetryPolicy(), state) is None


def test_next_delay_respects_custom_policy() -> None:
    policy = RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02)
    exc = _api_error(503)
    state = RetryState()
    delays: List[float] = []
    while True:
        step = next_delay(exc, policy, state)
        if step is None:
            break
        delays.append(step[0])
    assert len(delays) == 2
    assert all(d <= 0.02 for d in delays)


def test_any_server_bounds_the_attempts_at_twice_max_retries_plus_one() -> None:
    policy = RetryPolicy(max_retries=3)
    for retry_after in (None, 1e-9, 0.001, 5.0):
        state = RetryState()
        attempts = 1
        while next_delay(_api_error(429, retry_after), policy, state) is not None:
            attempts += 1
        assert attempts <= 2 * 3 + 1, retry_after


def test_max_retry_after_zero_ignores_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=0, initial_backoff=0.5)
    state = RetryState()
    step = next_delay(_api_error(429, 5.0), policy, state)
    assert step is not None and step[1] is False and step[0] <= 0.5
    assert (state.retries, state.pauses) == (1, 0)


def test_floor_never_exceeds_a_smaller_cap() -> None:
    policy = RetryPolicy(max_retry_after=0.2)
    step = next_delay(_api_error(429, 1e-9), policy, RetryState())
    assert step is not None and step[0] == 0.2 < RETRY_AFTER_FLOOR


# ======================================================================================
# SprigClient (respx)
# ======================================================================================


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture(scope="module")
def client() -> Iterator[SprigClient]:
    # One client for the module: building an httpx.Client (its TLS context) costs ~20 ms.
    api = SprigClient(KEY)
    yield api
    api.close()


def _assert_no_key(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), str(exc.args), str(getattr(exc, "detail", ""))):
        assert KEY not in text
        # Not even a recognizable part of it.
        for start in range(len(KEY) - 8):
            assert KEY[start : start + 8] not in text


def test_default_endpoint() -> None:
    assert DEFAULT_ENDPOINT == BASE
    assert SprigClient(KEY).endpoint == BASE


def test_headers_exact(mock: respx.MockRouter, client: SprigClient) -> None:
    route = mock.post("/v2/users").respond(202, json={})
    client.upsert_user({"userId": "u"})
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"API-Key {KEY}"
    assert request.headers.get_list("Authorization") == [f"API-Key {KEY}"]
    assert request.headers["Content-Type"] == "application/json"
    user_agent = request.headers["User-Agent"]
    assert f"analytics-sprig/{__version__}" in user_agent
    assert request.url == httpx.URL(f"{BASE}/v2/users")
    assert request.method == "POST"


def test_json_body_is_compact_utf8(mock: respx.MockRouter, client: SprigClient) -> None:
    route = mock.post("/v2/users").respond(202, json={})
    payload = {
        "userId": "u-1",
        "emailAddress": "a@b.co",
        "attributes": {"plan.tier": "pro", "n": 1, "ok": True, "名前": "太郎"},
        "events": [{"event": "E", "timestamp": 1767323045678}],
    }
    client.upsert_user(payload)
    content = route.calls.last.request.content
    assert content == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert b": " not in content and b", " not in content
    assert json.loads(content) == payload


def test_get_has_no_body(mock: respx.MockRouter, client: SprigClient) -> None:
    route = mock.get("/v2/users/u").respond(200, json={"id": "v1", "attributes": {}})
    client.get_user("u")
    assert route.calls.last.request.content == b""


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(202, b"{}", {}, id="202-empty-object"),
        pytest.param(202, b"", None, id="202-no-body"),
        pytest.param(200, b'{"ok":true}', {"ok": True}, id="200-json"),
        pytest.param(204, b"", None, id="204"),
        pytest.param(200, b"not json", None, id="200-not-json"),
    ],
)
def test_success_statuses(
    mock: respx.MockRouter, client: SprigClient, status: int, body: bytes, expected: Any
) -> None:
    mock.post("/v2/users").respond(status, content=body)
    assert client.request("POST", "/v2/users", {"userId": "u"}) == expected
    client.upsert_user({"userId": "u"})  # accepted: does not raise


_HTTP_DATE_IN_2_MIN = "in-two-minutes"


@pytest.mark.parametrize(
    ("status", "retry_after", "exc_type", "retryable", "expected_retry_after"),
    [
        pytest.param(400, None, SprigAPIError, False, None, id="400"),
        pytest.param(401, None, SprigAuthError, False, None, id="401"),
        pytest.param(403, None, SprigAuthError, False, None, id="403"),
        pytest.param(404, None, SprigAPIError, False, None, id="404"),
        pytest.param(408, None, SprigAPIError, True, None, id="408"),
        pytest.param(409, None, SprigAPIError, False, None, id="409"),
        pytest.param(422, None, SprigAPIError, False, None, id="422"),
        pytest.param(429, None, SprigAPIError, True, None, id="429"),
        pytest.param(429, "7", SprigAPIError, True, 7.0, id="429-retry-after-seconds"),
        pytest.param(429, "2.5", SprigAPIError, True, 2.5, id="429-retry-after-float"),
        pytest.param(429, _HTTP_DATE_IN_2_MIN, SprigAPIError, True, 120.0,
                     id="429-retry-after-http-date"),
        pytest.param(429, "garbage", SprigAPIError, True, None, id="429-retry-after-garbage"),
        pytest.param(500, None, SprigAPIError, True, None, id="500"),
        pytest.param(501, None, SprigAPIError, False, None, id="501"),
        pytest.param(502, None, SprigAPIError, True, None, id="502"),
        pytest.param(503, "30", SprigAPIError, True, 30.0, id="503-retry-after"),
        pytest.param(504, None, SprigAPIError, True, None, id="504"),
        pytest.param(505, None, SprigAPIError, False, None, id="505"),
        pytest.param(599, None, SprigAPIError, True, None, id="599"),
    ],
)
def test_error_statuses(
    mock: respx.MockRouter,
    client: SprigClient,
    status: int,
    retry_after: Optional[str],
    exc_type: Type[SprigAPIError],
    retryable: bool,
    expected_retry_after: Optional[float],
) -> None:
    headers: Dict[str, str] = {}
    if retry_after == _HTTP_DATE_IN_2_MIN:
        headers["Retry-After"] = formatdate(time.time() + 120, usegmt=True)
    elif retry_after is not None:
        headers["Retry-After"] = retry_after
    route = mock.post("/v2/users").respond(status, json={"error": "nope"}, headers=headers)
    with pytest.raises(exc_type) as info:
        client.upsert_user({"userId": "u"})
    exc = info.value
    assert type(exc) is exc_type
    assert isinstance(exc, SprigError)
    assert exc.status_code == status
    assert exc.retryable is retryable
    if expected_retry_after is None:
        assert exc.retry_after is None
    elif retry_after == _HTTP_DATE_IN_2_MIN:
        assert exc.retry_after is not None
        assert expected_retry_after - 3 <= exc.retry_after <= expected_retry_after + 1
    else:
        assert exc.retry_after == expected_retry_after
    assert str(status) in str(exc)
    if status not in (401, 403):
        assert "nope" in str(exc)  # Sprig's "error" text is kept for the log
    assert route.call_count == 1  # the client itself never retries


def test_auth_error_without_body_has_a_helpful_message(
    mock: respx.MockRouter, client: SprigClient
) -> None:
    mock.post("/v2/users").respond(401)
    with pytest.raises(SprigAuthError) as info:
        client.upsert_user({"userId": "u"})
    assert "401" in str(info.value)
    assert "key" in str(info.value).lower()
    _assert_no_key(info.value)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b'{"error":"bad field"}', "bad field", id="json-error"),
        pytest.param(b'{"message":"other"}', "", id="json-without-error"),
        pytest.param(b"plain text failure\n", "plain text failure", id="text"),
        pytest.param(b"", "", id="empty"),
        pytest.param(b'{"error":' + b'"' + b"x" * 5000 + b'"}', "x" * 200, id="long-truncated"),
    ],
)
def test_error_detail(
    mock: respx.MockRouter, client: SprigClient, body: bytes, detail: str
) -> None:
    mock.post("/v2/users").respond(400, content=body)
    with pytest.raises(SprigAPIError) as info:
        client.upsert_user({"userId": "u"})
    assert info.value.detail == detail


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_final_and_not_followed(
    mock: respx.MockRouter, client: SprigClient, status: int
) -> None:
    elsewhere = mock.route(host="evil.example.com").respond(200, json={})
    route = mock.post("/v2/users").respond(
        status, headers={"Location": "https://evil.example.com/steal"}
    )
    with pytest.raises(SprigAPIError) as info:
        client.upsert_user({"userId": "u"})
    exc = info.value
    assert type(exc) is SprigAPIError
    assert exc.status_code == status
    assert exc.retryable is False
    assert next_delay(exc, RetryPolicy(), RetryState()) is None
    assert "redirect" in str(exc)
    assert route.call_count == 1
    assert elsewhere.call_count == 0
    assert len(mock.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(httpx.ConnectError("connection refused"), id="connect-error"),
        pytest.param(httpx.ReadTimeout("timed out"), id="read-timeout"),
        pytest.param(httpx.ConnectTimeout("timed out"), id="connect-timeout"),
        pytest.param(httpx.WriteError("broken pipe"), id="write-error"),
        pytest.param(httpx.RemoteProtocolError("server disconnected"), id="protocol-error"),
        pytest.param(httpx.PoolTimeout("pool"), id="pool-timeout"),
    ],
)
def test_network_errors(
    mock: respx.MockRouter, client: SprigClient, error: httpx.TransportError
) -> None:
    mock.post("/v2/users").mock(side_effect=error)
    with pytest.raises(SprigNetworkError) as info:
        client.upsert_user({"userId": "u"})
    exc = info.value
    assert exc.retryable is True
    assert type(error).__name__ in str(exc)
    assert info.value.__suppress_context__  # no chained httpx traceback in logs
    _assert_no_key(exc)


def test_network_error_text_is_redacted(mock: respx.MockRouter, client: SprigClient) -> None:
    mock.post("/v2/users").mock(side_effect=httpx.ConnectError(f"proxy said: API-Key {KEY}"))
    with pytest.raises(SprigNetworkError) as info:
        client.upsert_user({"userId": "u"})
    _assert_no_key(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 503])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: json.dumps({"error": f"invalid key {KEY}"}), id="json-error"),
        pytest.param(lambda: json.dumps({"error": {"key": KEY, "h": f"API-Key {KEY}"}}),
                     id="json-error-object"),
        pytest.param(lambda: f"Authorization: API-Key {KEY} rejected", id="text"),
        pytest.param(lambda: json.dumps({"error": "x" * 190 + KEY}), id="key-at-cut-json"),
        pytest.param(lambda: "y" * 195 + KEY + "tail", id="key-at-cut-text"),
        pytest.param(lambda: (KEY + " ") * 50, id="key-repeated"),
    ],
)
def test_key_never_in_exception_even_when_echoed(
    mock: respx.MockRouter, client: SprigClient, status: int, body: Any
) -> None:
    mock.post("/v2/users").respond(status, content=body().encode())
    with pytest.raises(SprigAPIError) as info:
        client.upsert_user({"userId": "u"})
    _assert_no_key(info.value)


def test_client_repr_hides_key() -> None:
    api = SprigClient(KEY, endpoint="http://127.0.0.1:9")
    for text in (repr(api), str(api)):
        assert KEY not in text
        assert "http://127.0.0.1:9" in text
        assert "***" in text


# -- get_user ---------------------------------------------------------------------------


def test_get_user_found(mock: respx.MockRouter, client: SprigClient) -> None:
    user = {"id": "v-1", "externalUserId": "u", "attributes": {"a": 1}, "events": []}
    route = mock.get("/v2/users/u").respond(200, json=user)
    assert client.get_user("u") == user
    assert route.calls.last.request.method == "GET"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(404, {"error": "Not found"}, id="404"),
    ],
)
def test_get_user_not_found(
    mock: respx.MockRouter, client: SprigClient, status: int, body: Any
) -> None:
    mock.get("/v2/users/ghost").respond(status, json=body)
    assert client.get_user("ghost") is None


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        pytest.param(401, SprigAuthError, id="401"),
        pytest.param(500, SprigAPIError, id="500"),
        pytest.param(400, SprigAPIError, id="400"),
    ],
)
def test_get_user_other_errors_raise(
    mock: respx.MockRouter, client: SprigClient, status: int, exc_type: Type[SprigAPIError]
) -> None:
    mock.get("/v2/users/u").respond(status, json={"error": "x"})
    with pytest.raises(exc_type):
        client.get_user("u")


def test_get_user_non_object_answer_is_none(mock: respx.MockRouter, client: SprigClient) -> None:
    mock.get("/v2/users/u").respond(200, json=["not", "an", "object"])
    assert client.get_user("u") is None


@pytest.mark.parametrize(
    ("user_id", "raw_path"),
    [
        pytest.param("plain", b"/v2/users/plain", id="plain"),
        pytest.param("a/b", b"/v2/users/a%2Fb", id="slash"),
        pytest.param("a b", b"/v2/users/a%20b", id="space"),
        pytest.param("org/team lead", b"/v2/users/org%2Fteam%20lead", id="slash-and-space"),
        pytest.param("q?x=1#f", b"/v2/users/q%3Fx%3D1%23f", id="query-and-fragment-chars"),
        pytest.param("../admin", b"/v2/users/..%2Fadmin", id="dot-dot"),
        pytest.param("ユ", b"/v2/users/%E3%83%A6", id="unicode"),
        pytest.param("a%2Fb", b"/v2/users/a%252Fb", id="percent"),
    ],
)
def test_get_user_quotes_the_id(
    mock: respx.MockRouter, client: SprigClient, user_id: str, raw_path: bytes
) -> None:
    route = mock.get(url__regex=r".*").respond(200, json={"id": "v"})
    assert client.get_user(user_id) == {"id": "v"}
    url = route.calls.last.request.url
    assert url.raw_path == raw_path
    assert url.host == "api.sprig.com"


# -- purge ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "body"),
    [
        pytest.param({"user_ids": ["u1", "u2"]}, {"userIds": ["u1", "u2"]}, id="user-ids"),
        pytest.param({"emails": ["a@b.co"]}, {"emails": ["a@b.co"]}, id="emails"),
        pytest.param(
            {"user_ids": ["u1"], "emails": ["a@b.co"], "delay_seconds": 0},
            {"userIds": ["u1"], "emails": ["a@b.co"], "delaySeconds": 0},
            id="both-with-zero-delay",
        ),
        pytest.param({"user_ids": ("u1",), "delay_seconds": 3600},
                     {"userIds": ["u1"], "delaySeconds": 3600}, id="tuple-with-delay"),
    ],
)
def test_purge_chunk_body(
    mock: respx.MockRouter, client: SprigClient, kwargs: Dict[str, Any], body: Dict[str, Any]
) -> None:
    route = mock.post("/v2/purge/visitors").respond(200, json={"requestId": "req-1"})
    assert client.purge_chunk(**kwargs) == "req-1"
    assert json.loads(route.calls.last.request.content) == body


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param({"requestId": 123}, "123", id="int-id-stringified"),
        pytest.param({}, None, id="no-id"),
        pytest.param(["x"], None, id="not-object"),
    ],
)
def test_purge_chunk_request_id(
    mock: respx.MockRouter, client: SprigClient, answer: Any, expected: Optional[str]
) -> None:
    mock.post("/v2/purge/visitors").respond(200, json=answer)
    assert client.purge_chunk(user_ids=["u"]) == expected


def test_purge_chunk_rejects_more_than_100_without_a_request(
    mock: respx.MockRouter, client: SprigClient
) -> None:
    route = mock.post("/v2/purge/visitors").respond(200, json={"requestId": "r"})
    with pytest.raises(ValueError):
        client.purge_chunk(user_ids=[f"u{i}" for i in range(60)],
                           emails=[f"e{i}@x" for i in range(41)])
    assert route.call_count == 0
    assert client.purge_chunk(user_ids=[f"u{i}" for i in range(100)]) == "r"


def test_purge_chunks_250_ids() -> None:
    ids = [f"u{i}" for i in range(250)]
    chunks = purge_chunks(ids, [])
    assert PURGE_CHUNK == 100
    assert [len(c["userIds"]) for c in chunks] == [100, 100, 50]
    assert all(set(c) == {"userIds"} for c in chunks)
    assert [u for c in chunks for u in c["userIds"]] == ids


def test_purge_chunks_mixes_ids_and_emails() -> None:
    ids = [f"u{i}" for i in range(150)]
    emails = [f"e{i}@x.co" for i in range(120)]
    chunks = purge_chunks(ids, emails)
    assert [sum(len(v) for v in c.values()) for c in chunks] == [100, 100, 70]
    assert chunks[0] == {"userIds": ids[:100]}
    assert chunks[1] == {"userIds": ids[100:], "emails": emails[:50]}
    assert chunks[2] == {"emails": emails[50:]}


@pytest.mark.parametrize(
    ("n_ids", "n_emails", "sizes"),
    [
        pytest.param(0, 0, [], id="nothing"),
        pytest.param(1, 0, [1], id="one"),
        pytest.param(100, 0, [100], id="exactly-100"),
        pytest.param(101, 0, [100, 1], id="101"),
        pytest.param(0, 250, [100, 100, 50], id="250-emails"),
        pytest.param(50, 50, [100], id="50-50"),
    ],
)
def test_purge_chunks_sizes(n_ids: int, n_emails: int, sizes: List[int]) -> None:
    chunks = purge_chunks([f"u{i}" for i in range(n_ids)], [f"e{i}" for i in range(n_emails)])
    assert [sum(len(v) for v in c.values()) for c in chunks] == sizes


# ======================================================================================
# SprigClient against a real loopback server
# ======================================================================================


def test_one_pooled_connection_is_reused() -> None:
    with FakeSprig(api_key=KEY) as sprig:
        api = SprigClient(KEY, endpoint=sprig.url, timeout=5)
        try:
            for i in range(5):
                api.upsert_user({"userId": f"u{i}", "attributes": {"i": i}})
        finally:
            api.close()
        requests = sprig.requests
    assert [r.status for r in requests] == [202] * 5
    clients = {r.client for r in requests}
    assert len(clients) == 1, clients  # same source port: one kept-alive connection
    assert requests[0].headers["authorization"] == f"API-Key {KEY}"


def test_redirect_not_followed_against_real_server() -> None:
    with FakeSprig(api_key=KEY) as target, FakeSprig(api_key=KEY) as sprig:
        sprig.redirect(f"{target.url}/v2/users")
        api = SprigClient(KEY, endpoint=sprig.url, timeout=5)
        try:
            with pytest.raises(SprigAPIError) as info:
                api.upsert_user({"userId": "u"})
        finally:
            api.close()
        assert info.value.status_code == 307
        assert len(sprig.requests) == 1
        assert target.requests == []  # the key never travelled to the other server
