"""Configuration errors of ``SprigDestination`` are immediate, clear, and never show the key."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Type

import pytest

from analytics_sprig import DEFAULT_ENDPOINT, ConfigurationError, SprigClient, SprigDestination

KEY = "sk_test_SECRET_abcdef0123456789"


@pytest.fixture
def made() -> Iterator[List[SprigDestination]]:
    """Destinations built by a test; shut down afterwards (none of them starts a thread)."""
    destinations: List[SprigDestination] = []
    yield destinations
    for destination in destinations:
        destination.shutdown(timeout=1)


def _build(made: List[SprigDestination], *args: Any, **kwargs: Any) -> SprigDestination:
    destination = SprigDestination(*args, **kwargs)
    made.append(destination)
    return destination


def _assert_secret_free(exc: BaseException, *secrets: str) -> None:
    for secret in (KEY, *secrets):
        for text in (str(exc), repr(exc), str(exc.args)):
            assert secret not in text


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


def test_defaults_need_no_tuning(made: List[SprigDestination]) -> None:
    destination = _build(made, KEY)
    assert destination.endpoint == DEFAULT_ENDPOINT == "https://api.sprig.com"
    assert destination.stats()["received"] == 0


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SprigDestination(KEY, "https://api.sprig.com")  # type: ignore[call-arg]


# -- api_key ----------------------------------------------------------------------------


def test_api_key_missing() -> None:
    with pytest.raises(TypeError, match="api_key"):
        SprigDestination()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("api_key", "exc_type", "words"),
    [
        pytest.param(None, TypeError, ["api_key", "str"], id="None"),
        pytest.param(12345, TypeError, ["api_key", "str", "int"], id="int"),
        pytest.param(KEY.encode(), TypeError, ["api_key", "str", "bytes"], id="bytes"),
        pytest.param([KEY], TypeError, ["api_key", "str"], id="list"),
        pytest.param("", ConfigurationError, ["api_key", "empty"], id="empty"),
        pytest.param("   ", ConfigurationError, ["api_key", "empty"], id="only-spaces"),
        pytest.param("\n", ConfigurationError, ["api_key", "empty"], id="only-newline"),
        pytest.param(KEY + "\n", ConfigurationError, ["api_key", "whitespace"],
                     id="trailing-newline"),
        pytest.param(" " + KEY, ConfigurationError, ["api_key", "whitespace"],
                     id="leading-space"),
        pytest.param(KEY + " ", ConfigurationError, ["api_key", "whitespace"],
                     id="trailing-space"),
        pytest.param(KEY[:10] + " " + KEY[10:], ConfigurationError, ["api_key", "whitespace"],
                     id="inner-space"),
        pytest.param(KEY + "\t", ConfigurationError, ["api_key", "whitespace"], id="tab"),
        pytest.param(KEY + "\r\n", ConfigurationError, ["api_key", "whitespace"], id="crlf"),
        pytest.param("\u00a0" + KEY, ConfigurationError, ["api_key", "whitespace"],
                     id="nbsp"),
        pytest.param(KEY + "\x00", ConfigurationError, ["api_key", "control"], id="nul"),
        pytest.param(KEY + "\x7f", ConfigurationError, ["api_key", "control"], id="del"),
    ],
)
def test_bad_api_key(api_key: Any, exc_type: Type[Exception], words: List[str]) -> None:
    with pytest.raises(exc_type) as info:
        SprigDestination(api_key)
    assert type(info.value) is exc_type
    message = str(info.value)
    for word in words:
        assert word in message
    _assert_secret_free(info.value)
    # The same rule holds for the bare API client.
    with pytest.raises(exc_type) as again:
        SprigClient(api_key)
    _assert_secret_free(again.value)


def test_bad_api_key_by_keyword() -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        SprigDestination(api_key="")


# -- endpoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        pytest.param("https://api.sprig.com", "https://api.sprig.com", id="default"),
        pytest.param("https://api.sprig.com/", "https://api.sprig.com", id="trailing-slash"),
        pytest.param("https://sprig.example.com:8443", "https://sprig.example.com:8443",
                     id="https-with-port"),
        pytest.param("https://example.com/proxy/sprig/", "https://example.com/proxy/sprig",
                     id="https-with-path"),
        pytest.param("http://127.0.0.1:1", "http://127.0.0.1:1", id="http-127.0.0.1"),
        pytest.param("http://127.1.2.3:8080", "http://127.1.2.3:8080", id="http-127-range"),
        pytest.param("http://localhost:1", "http://localhost:1", id="http-localhost"),
        pytest.param("http://LOCALHOST:1", "http://LOCALHOST:1", id="http-localhost-upper"),
        pytest.param("http://[::1]:1", "http://[::1]:1", id="http-ipv6-loopback"),
        pytest.param("http://127.0.0.1:1/", "http://127.0.0.1:1", id="http-loopback-slash"),
    ],
)
def test_valid_endpoints(made: List[SprigDestination], endpoint: str, expected: str) -> None:
    destination = _build(made, KEY, endpoint=endpoint)
    assert destination.endpoint == expected


@pytest.mark.parametrize(
    ("endpoint", "exc_type", "words"),
    [
        pytest.param("http://example.com", ConfigurationError, ["https"], id="http-public"),
        pytest.param("http://api.sprig.com", ConfigurationError, ["https"], id="http-sprig"),
        pytest.param("http://localhost.evil.com:1", ConfigurationError, ["https"],
                     id="http-localhost-lookalike"),
        pytest.param("http://127.0.0.1.nip.io:1", ConfigurationError, ["https"],
                     id="http-127-lookalike"),
        pytest.param("http://0.0.0.0:1", ConfigurationError, ["https"], id="http-any-address"),
        pytest.param("http://10.0.0.1:1", ConfigurationError, ["https"], id="http-private"),
        pytest.param("http://[::2]:1", ConfigurationError, ["https"], id="http-ipv6-public"),
        pytest.param("ftp://api.sprig.com", ConfigurationError, ["https://"], id="ftp"),
        pytest.param("ws://api.sprig.com", ConfigurationError, ["https://"], id="ws"),
        pytest.param("file:///etc/passwd", ConfigurationError, ["https://"], id="file"),
        pytest.param("https://", ConfigurationError, ["https://"], id="no-host"),
        pytest.param("https:///v2", ConfigurationError, ["https://"], id="no-host-with-path"),
        pytest.param("api.sprig.com", ConfigurationError, ["https://"], id="no-scheme"),
        pytest.param("//api.sprig.com", ConfigurationError, ["https://"],
                     id="scheme-relative"),
        pytest.param("", ConfigurationError, ["https://"], id="empty"),
        pytest.param("https://api.sprig.com?x=1", ConfigurationError, ["query"], id="query"),
        pytest.param("https://api.sprig.com/?token=abc", ConfigurationError, ["query"],
                     id="query-after-slash"),
        pytest.param("https://api.sprig.com#frag", ConfigurationError, ["fragment"],
                     id="fragment"),
        pytest.param("https://user:pw@api.sprig.com", ConfigurationError, ["credentials"],
                     id="credentials"),
        pytest.param("https://token@api.sprig.com", ConfigurationError, ["credentials"],
                     id="username-only"),
        pytest.param("http://user:pw@127.0.0.1:1", ConfigurationError, ["credentials"],
                     id="credentials-on-loopback"),
        pytest.param("https://api.sprig.com:99999", ConfigurationError, ["port"],
                     id="port-out-of-range"),
        pytest.param("https://api.sprig.com:0", ConfigurationError, ["port"], id="port-0"),
        pytest.param("https://api.sprig.com:abc", ConfigurationError, ["valid URL"],
                     id="port-not-a-number"),
        pytest.param(None, TypeError, ["str"], id="None"),
        pytest.param(b"https://api.sprig.com", TypeError, ["str", "bytes"], id="bytes"),
        pytest.param(443, TypeError, ["str", "int"], id="int"),
    ],
)
def test_bad_endpoints(endpoint: Any, exc_type: Type[Exception], words: List[str]) -> None:
    with pytest.raises(exc_type) as info:
        SprigDestination(KEY, endpoint=endpoint)
    assert type(info.value) is exc_type
    message = str(info.value)
    assert "endpoint" in message
    for word in words:
        assert word in message
    _assert_secret_free(info.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param("https://admin:hunter2secret@api.sprig.com", id="https-credentials"),
        pytest.param("http://admin:hunter2secret@example.com", id="http-credentials"),
        pytest.param("ftp://admin:hunter2secret@example.com", id="ftp-credentials"),
        pytest.param("https://admin:hunter2secret@api.sprig.com:99999", id="invalid-port"),
    ],
)
def test_endpoint_errors_do_not_echo_url_credentials(endpoint: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SprigDestination(KEY, endpoint=endpoint)
    _assert_secret_free(info.value, "hunter2secret")
    assert "endpoint" in str(info.value)


# -- numbers ----------------------------------------------------------------------------

_POSITIVE = ("flush_interval", "timeout", "connect_timeout")  # > 0, finite
_NON_NEGATIVE = ("initial_backoff", "max_backoff", "max_retry_after", "max_total_wait",
                 "auth_cooldown", "shutdown_timeout", "flush_timeout")  # >= 0, finite
_COUNTS = ("max_queue_size", "max_concurrency")  # int >= 1


def _number_rows() -> List[Any]:
    rows: List[Any] = []

    def add(option: str, value: Any, exc_type: Type[Exception], label: str) -> None:
        rows.append(pytest.param(option, value, exc_type, id=f"{option}={label}"))

    for option in _POSITIVE:
        add(option, 0, ConfigurationError, "0")
        add(option, 0.0, ConfigurationError, "0.0")
        add(option, -1, ConfigurationError, "-1")
        add(option, -0.001, ConfigurationError, "-0.001")
        add(option, math.nan, ConfigurationError, "nan")
        add(option, math.inf, ConfigurationError, "inf")
        add(option, -math.inf, ConfigurationError, "-inf")
        add(option, True, TypeError, "True")
        add(option, False, TypeError, "False")
        add(option, "1", TypeError, "str")
        add(option, None, TypeError, "None")
        add(option, [1], TypeError, "list")
    for option in _NON_NEGATIVE:
        add(option, -1, ConfigurationError, "-1")
        add(option, -0.5, ConfigurationError, "-0.5")
        add(option, math.nan, ConfigurationError, "nan")
        add(option, math.inf, ConfigurationError, "inf")
        add(option, True, TypeError, "True")
        add(option, "2", TypeError, "str")
        add(option, None, TypeError, "None")
    for option in _COUNTS:
        add(option, 0, ConfigurationError, "0")
        add(option, -5, ConfigurationError, "-5")
        add(option, 1.5, TypeError, "float")
        add(option, 10.0, TypeError, "integral-float")
        add(option, math.nan, TypeError, "nan")
        add(option, True, TypeError, "True")
        add(option, "100", TypeError, "str")
        add(option, None, TypeError, "None")
    add("max_retries", -1, ConfigurationError, "-1")
    add("max_retries", 2.0, TypeError, "float")
    add("max_retries", True, TypeError, "True")
    add("max_retries", "3", TypeError, "str")
    add("max_retries", None, TypeError, "None")
    add("max_requests_per_second", 0, ConfigurationError, "0")
    add("max_requests_per_second", -1, ConfigurationError, "-1")
    add("max_requests_per_second", math.nan, ConfigurationError, "nan")
    add("max_requests_per_second", math.inf, ConfigurationError, "inf")
    add("max_requests_per_second", True, TypeError, "True")
    add("max_requests_per_second", "5", TypeError, "str")
    return rows


@pytest.mark.parametrize(("option", "value", "exc_type"), _number_rows())
def test_nonsensical_numbers(option: str, value: Any, exc_type: Type[Exception]) -> None:
    with pytest.raises(exc_type) as info:
        SprigDestination(KEY, **{option: value})
    assert type(info.value) is exc_type
    assert option in str(info.value)  # the message names the option
    _assert_secret_free(info.value)


def _valid_number_rows() -> List[Any]:
    rows: List[Any] = []
    for option in _POSITIVE:
        rows += [pytest.param(option, 0.001, id=f"{option}=0.001"),
                 pytest.param(option, 3, id=f"{option}=int")]
    for option in _NON_NEGATIVE:
        rows += [pytest.param(option, 0, id=f"{option}=0"),
                 pytest.param(option, 2.5, id=f"{option}=2.5")]
    for option in _COUNTS:
        rows += [pytest.param(option, 1, id=f"{option}=1"),
                 pytest.param(option, 10**6, id=f"{option}=1e6")]
    rows += [
        pytest.param("max_retries", 0, id="max_retries=0"),
        pytest.param("max_retries", 50, id="max_retries=50"),
        pytest.param("max_requests_per_second", None, id="max_requests_per_second=None"),
        pytest.param("max_requests_per_second", 0.5, id="max_requests_per_second=0.5"),
        pytest.param("max_requests_per_second", 1000, id="max_requests_per_second=1000"),
    ]
    return rows


@pytest.mark.parametrize(("option", "value"), _valid_number_rows())
def test_sensible_numbers_accepted(made: List[SprigDestination], option: str, value: Any) -> None:
    destination = _build(made, KEY, **{option: value})
    assert destination.stats()["received"] == 0


# -- types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "exc_type", "words"),
    [
        pytest.param(["track", "bogus"], ConfigurationError, ["unknown", "bogus"],
                     id="unknown-name"),
        pytest.param(["Track"], ConfigurationError, ["unknown", "Track"], id="wrong-case"),
        pytest.param(["track", "identify ", "page"], ConfigurationError, ["unknown"],
                     id="trailing-space"),
        pytest.param(["track", 1, "bogus"], ConfigurationError, ["unknown", "bogus"],
                     id="mixed-non-str"),
        pytest.param([None], ConfigurationError, ["unknown", "None"], id="None-item"),
        pytest.param("track", TypeError, ["types"], id="single-str"),
        pytest.param(None, TypeError, ["types"], id="None"),
        pytest.param(5, TypeError, ["types"], id="int"),
        pytest.param([["track"]], TypeError, ["types"], id="unhashable-item"),
    ],
)
def test_bad_types(types: Any, exc_type: Type[Exception], words: List[str]) -> None:
    with pytest.raises(exc_type) as info:
        SprigDestination(KEY, types=types)
    assert type(info.value) is exc_type
    for word in words:
        assert word in str(info.value)
    _assert_secret_free(info.value)


@pytest.mark.parametrize(
    "types",
    [
        pytest.param(["track"], id="list"),
        pytest.param(("identify", "group"), id="tuple"),
        pytest.param({"screen", "page", "alias"}, id="set"),
        pytest.param(frozenset({"identify", "track", "page", "alias", "group", "screen"}),
                     id="all-six"),
        pytest.param((t for t in ("track", "page")), id="generator"),
    ],
)
def test_valid_types(made: List[SprigDestination], types: Any) -> None:
    _build(made, KEY, types=types)


# -- page naming ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"page_event_format": "Viewed {title}"}, "page_event_format",
                     id="unknown-placeholder"),
        pytest.param({"page_event_format": "Viewed {0}"}, "page_event_format",
                     id="positional-index"),
        pytest.param({"page_event_format": "Viewed {}"}, "page_event_format",
                     id="positional-auto"),
        pytest.param({"page_event_format": "Viewed {name"}, "page_event_format",
                     id="unclosed-brace"),
        pytest.param({"page_event_format": "Viewed name}"}, "page_event_format",
                     id="single-closing-brace"),
        pytest.param({"page_event_format": "{name!z}"}, "page_event_format",
                     id="bad-conversion"),
        pytest.param({"page_event_format": "{name:d}"}, "page_event_format",
                     id="bad-format-spec"),
        pytest.param({"page_event_format": "{name.nope}"}, "page_event_format",
                     id="attribute-access"),
        pytest.param({"page_event_format": "{name[x]}"}, "page_event_format",
                     id="bad-item-access"),
        pytest.param({"page_event_format": ""}, "page_event_format", id="format-empty"),
        pytest.param({"page_event_format": None}, "page_event_format", id="format-None"),
        pytest.param({"page_event_format": 123}, "page_event_format", id="format-int"),
        pytest.param({"page_event_default": ""}, "page_event_default", id="default-empty"),
        pytest.param({"page_event_default": None}, "page_event_default", id="default-None"),
    ],
)
def test_bad_page_naming(options: Dict[str, Any], option: str) -> None:
    with pytest.raises((TypeError, ConfigurationError)) as info:
        SprigDestination(KEY, **options)
    assert option in str(info.value)
    _assert_secret_free(info.value)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"page_event_format": "{name}"}, id="name-only"),
        pytest.param({"page_event_format": "{category}: {name}"}, id="with-category"),
        pytest.param({"page_event_format": "Viewed {{literal}} {name}"}, id="escaped-braces"),
        pytest.param({"page_event_format": "Static Page View"}, id="no-placeholder"),
        pytest.param({"page_event_default": "Page"}, id="custom-default"),
    ],
)
def test_valid_page_naming(made: List[SprigDestination], options: Dict[str, Any]) -> None:
    _build(made, KEY, **options)


# -- on_error and proxy -----------------------------------------------------------------


@pytest.mark.parametrize(
    "on_error",
    [pytest.param("log", id="str"), pytest.param(1, id="int"), pytest.param([], id="list")],
)
def test_on_error_not_callable(on_error: Any) -> None:
    with pytest.raises(TypeError, match="on_error") as info:
        SprigDestination(KEY, on_error=on_error)
    _assert_secret_free(info.value)


@pytest.mark.parametrize(
    "on_error",
    [
        pytest.param(None, id="None"),
        pytest.param(lambda exc, messages: None, id="lambda"),
        pytest.param(print, id="builtin"),
    ],
)
def test_on_error_callable_accepted(made: List[SprigDestination], on_error: Any) -> None:
    _build(made, KEY, on_error=on_error)


@pytest.mark.parametrize(
    ("proxy", "exc_type"),
    [
        pytest.param(123, TypeError, id="int"),
        pytest.param(b"http://proxy:3128", TypeError, id="bytes"),
        pytest.param("ftp://proxy:21", ConfigurationError, id="ftp"),
        pytest.param("proxy:3128", ConfigurationError, id="no-scheme"),
        pytest.param("http://", ConfigurationError, id="no-host"),
        pytest.param("ftp://user:hunter2secret@proxy:21", ConfigurationError,
                     id="credentials-not-echoed"),
    ],
)
def test_bad_proxy_is_rejected_at_once(proxy: Any, exc_type: Type[Exception]) -> None:
    with pytest.raises(exc_type) as info:
        SprigDestination(KEY, proxy=proxy)
    assert type(info.value) is exc_type
    assert "proxy" in str(info.value)
    _assert_secret_free(info.value, "hunter2secret")


@pytest.mark.parametrize(
    "proxy",
    [
        pytest.param(None, id="None"),
        pytest.param("http://proxy.internal:3128", id="http"),
        pytest.param("https://proxy.internal:3128", id="https"),
        pytest.param("http://user:pw@proxy.internal:3128", id="with-credentials"),
    ],
)
def test_valid_proxy_accepted(made: List[SprigDestination], proxy: Optional[str]) -> None:
    _build(made, KEY, proxy=proxy)


# -- repr -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param("https://api.sprig.com", id="default"),
        pytest.param("http://127.0.0.1:1", id="loopback"),
        pytest.param("https://eu.example.com/sprig", id="custom"),
    ],
)
def test_repr_hides_key_and_shows_endpoint(
    made: List[SprigDestination], endpoint: str
) -> None:
    destination = _build(made, KEY, endpoint=endpoint)
    for text in (repr(destination), str(destination), f"{destination!r}"):
        assert KEY not in text
        assert KEY[:12] not in text
        assert endpoint in text
        assert "SprigDestination" in text
