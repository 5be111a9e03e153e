"""Sprig REST API client on httpx: one request per call, no retries (the worker retries)."""

from __future__ import annotations

import ipaddress
import json
import platform
import re
import ssl
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import quote

import httpx

from .._errors import ConfigurationError, SprigAPIError, SprigAuthError, SprigNetworkError
from .._version import __version__
from ._http import is_retryable_status, parse_retry_after
from ._transport import Answer, BoundedTransport, redact, tls_context

DEFAULT_ENDPOINT = "https://api.sprig.com"
#: Sprig accepts at most this many visitors per purge request.
PURGE_CHUNK = 100
USER_AGENT = (
    f"analytics-sprig/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"
)


_USERINFO = re.compile(r"//[^/?#@]*@")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _shown(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for error messages."""
    return _USERINFO.sub("//***@", url)


def validate_endpoint(endpoint: Any) -> str:
    """Return ``endpoint`` without a trailing slash, or raise :class:`ConfigurationError`.

    It must be ``https://``; plain ``http://`` is allowed only to a loopback host, for
    local testing against :mod:`analytics_sprig.testing`.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    shown = _shown(endpoint)  # never echo credentials embedded in the URL
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, ValueError):
        raise ConfigurationError(f"endpoint {shown!r} is not a valid URL") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError(
            f"endpoint {shown!r} must be an absolute https:// URL such as {DEFAULT_ENDPOINT}"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"endpoint {shown!r} has an invalid port")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            f"endpoint {shown!r} uses plain http; Sprig needs https:// "
            "(http is allowed only to a loopback host for local testing)"
        )
    if url.userinfo or url.query or url.fragment:
        raise ConfigurationError(
            f"endpoint {shown!r} must not carry credentials, a query or a fragment"
        )
    return endpoint.rstrip("/")


def validate_proxy(proxy: Any) -> Optional[str]:
    """Return ``proxy`` (``None`` or a proxy URL) or raise at once.

    httpx would only reject a bad proxy when the first request is made, in the worker.
    The URL is not echoed: proxy URLs often carry credentials.
    """
    if proxy is None:
        return None
    if not isinstance(proxy, str):
        raise TypeError(f"proxy must be a str URL, got {type(proxy).__name__}")
    try:
        url = httpx.URL(proxy)
    except (httpx.InvalidURL, ValueError):
        raise ConfigurationError("proxy is not a valid URL") from None
    if url.scheme not in ("http", "https", "socks5", "socks5h") or not url.host:
        raise ConfigurationError(
            "proxy must be an http://, https:// or socks5:// URL with a host"
        )
    return proxy


def validate_api_key(api_key: Any) -> str:
    """Return ``api_key`` or raise; the key itself never appears in the error.

    A key is printable ASCII without spaces (``0x21``-``0x7E``): anything else (a BOM or a
    zero-width space pasted along with it, an accented letter) cannot be sent in a header
    and is surely not part of the key. Only the offending character's code point and
    position are named, never the key.
    """
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
    if not api_key.strip():
        raise ConfigurationError("api_key is empty; pass your Sprig API key")
    for position, ch in enumerate(api_key):
        if not "\x21" <= ch <= "\x7e":
            raise ConfigurationError(
                "api_key must be printable ASCII without spaces or control characters; "
                f"it has U+{ord(ch):04X} at position {position} (a stray BOM, zero-width "
                "space, whitespace or accented letter copied along with the key?)"
            )
    return api_key


class SprigClient:
    """A small synchronous client for Sprig's ``/v2`` API.

    One pooled connection is reused across requests; redirects are not followed (a 3xx is
    a final error, so the key never travels to another host); TLS verification is on.
    """

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        proxy: Optional[str] = None,
    ) -> None:
        self._api_key = validate_api_key(api_key)
        self.endpoint = validate_endpoint(endpoint)
        self.timeout = timeout  # the bound of one whole attempt
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._proxy = validate_proxy(proxy)
        # Requests go straight to an httpx transport: httpx.Client's per-request machinery
        # (URL merging, cookies, auth/redirect flows, hooks) is ~30% of a request's CPU on
        # the worker thread (benchmarks/throughput.py, coalescing.py). Same headers as the
        # Client sent, plus the timeouts as a request extension.
        self._headers = {
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # a compressed answer could be a bomb
            "Authorization": f"API-Key {self._api_key}",
            "Connection": "keep-alive",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._users_url = httpx.URL(self.endpoint + "/v2/users")  # parsed once: the hot path
        self._http: Optional[BoundedTransport] = None
        self._lock = threading.Lock()
        self._context: Optional[ssl.SSLContext] = None
        # TLS contexts of closed sessions, for the next ones: building one (certifi's
        # bundle) costs ~25 ms of CPU and ~0.6 MB, and senders come and go under load.
        # A context is used by one transport at a time (httpcore sets ALPN on it).
        self._contexts: List[ssl.SSLContext] = []
        self._contexts_lock = threading.Lock()
        self._plain = self.endpoint.startswith("http://") and self._proxy is None
        self._shared_context: Optional[ssl.SSLContext] = None

    def __repr__(self) -> str:
        return f"SprigClient(endpoint={self.endpoint!r}, api_key='***')"

    def _take_context(self) -> ssl.SSLContext:
        with self._contexts_lock:
            if self._contexts:
                return self._contexts.pop()
            if self._plain and self._shared_context is not None:
                return self._shared_context
        context = tls_context()
        if self._plain:  # no TLS ever happens on it (http:// to loopback, no proxy): share it
            with self._contexts_lock:
                self._shared_context = self._shared_context or context
                return self._shared_context
        return context

    def _give_context(self, context: ssl.SSLContext) -> None:
        if self._plain:
            return
        with self._contexts_lock:
            self._contexts.append(context)

    def _client(self) -> BoundedTransport:
        http = self._http
        if http is None:
            with self._lock:
                http = self._http
                if http is None:
                    # No redirects, no environment (proxy, CA, key log), one connection,
                    # ``timeout`` bounding each whole attempt: see _transport.
                    self._context = self._take_context()
                    http = self._http = BoundedTransport(deadline=self.timeout,
                                                         proxy=self._proxy,
                                                         context=self._context)
        return http

    def request(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        """Send one request; return the decoded JSON answer (or ``None``).

        Raises :class:`SprigAuthError` (401/403), :class:`SprigAPIError` (other non-2xx,
        with ``retryable`` and ``retry_after``) or :class:`SprigNetworkError`. The answer is
        read only up to a small cap (a longer body counts as absent) and the whole attempt
        ends within ``timeout``.
        """
        content = None
        if body is not None:
            text = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
            try:
                content = text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: \u escapes keep it valid JSON
                content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        http = self._client()  # outside the try: an incompatible httpcore must fail loudly
        error: Optional[SprigNetworkError] = None
        try:
            url = self._users_url if path == "/v2/users" else httpx.URL(self.endpoint + path)
            answer = http.send(httpx.Request(method, url, headers=self._headers,
                                             content=content, extensions=self._extensions))
        except httpx.LocalProtocolError as exc:  # about our own request: may quote a header
            error = SprigNetworkError(f"{type(exc).__name__} on {method} {path}")
        except httpx.TransportError as exc:
            detail = redact(str(exc), self._api_key)[:300]
            error = SprigNetworkError(f"{type(exc).__name__} on {method} {path}: {detail}")
        except Exception as exc:  # whatever it is, its text may quote a header
            error = SprigNetworkError(
                f"unexpected {type(exc).__name__} on {method} {path} (details withheld: "
                "they may quote request headers)"
            )
        if error is not None:
            # Raised outside the except block: no __context__ chain leads to the original.
            raise error from None
        status = answer.status_code
        if 200 <= status < 300:
            try:
                return answer.json() if answer.body else None
            except ValueError:
                return None
        raise self._error(answer)

    def _error(self, answer: Answer) -> SprigAPIError:
        status = answer.status_code
        detail = ""
        try:
            data = answer.json()
            if isinstance(data, dict) and data.get("error") is not None:
                detail = str(data["error"])
        except ValueError:  # absent, too long, or not JSON
            detail = answer.text.strip()
        except RecursionError:  # absurdly nested JSON within the size cap
            detail = ""
        # Redact before truncating: a key cut at the boundary would leak its prefix.
        detail = redact(detail, self._api_key)[:200]
        if 300 <= status < 400:
            detail = "redirects are not followed; check the endpoint"
        if status in (401, 403):
            return SprigAuthError(status, detail or "the API key was rejected")
        return SprigAPIError(
            status,
            detail,
            retryable=is_retryable_status(status),
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )

    def upsert_user(self, payload: Mapping[str, Any]) -> None:
        """``POST /v2/users``: create or update one user (attributes, email, events)."""
        self.request("POST", "/v2/users", payload)

    def get_user(self, user_id: str) -> Optional[Dict[str, Any]]:
        """``GET /v2/users/{userId}``; ``None`` when Sprig does not know the user."""
        try:
            data = self.request("GET", f"/v2/users/{quote(user_id, safe='')}")
        except SprigAPIError as exc:
            if exc.status_code == 404:
                return None
            raise
        return data if isinstance(data, dict) else None

    def purge_chunk(
        self,
        *,
        user_ids: Sequence[str] = (),
        emails: Sequence[str] = (),
        delay_seconds: Optional[int] = None,
    ) -> Optional[str]:
        """``POST /v2/purge/visitors`` for at most 100 visitors; returns the request id."""
        if len(user_ids) + len(emails) > PURGE_CHUNK:
            raise ValueError(f"at most {PURGE_CHUNK} visitors per purge request")
        body: Dict[str, Any] = {}
        if user_ids:
            body["userIds"] = list(user_ids)
        if emails:
            body["emails"] = list(emails)
        if delay_seconds is not None:
            body["delaySeconds"] = delay_seconds
        data = self.request("POST", "/v2/purge/visitors", body)
        request_id = data.get("requestId") if isinstance(data, dict) else None
        return None if request_id is None else str(request_id)

    def session(self, timeout: Optional[float] = None) -> SprigSession:
        """A new :class:`SprigSession`: a connection of its own (opened on first use).

        ``timeout`` bounds its attempts more tightly than the client's (a final flush at
        interpreter exit must end by its deadline).
        """
        return SprigSession(self, timeout)

    def forget_connections(self) -> None:
        """Drop the connection pool without closing it (after ``fork()``: it is the parent's)."""
        self._http = None
        self._context = None
        self._lock = threading.Lock()
        self._contexts = []
        self._contexts_lock = threading.Lock()

    def close(self) -> None:
        """Close the connection pool."""
        http, self._http = self._http, None
        context, self._context = self._context, None
        if http is not None:
            http.close()
        if context is not None:
            self._give_context(context)


class SprigSession(SprigClient):
    """One connection of a :class:`SprigClient`, used by one thread at a time.

    The delivery engine gives each sender thread its own session (its own transport and
    connection); ``purge()`` opens one for the call. Same methods as the client.
    """

    def __init__(self, client: SprigClient, timeout: Optional[float] = None) -> None:
        # The client's validated configuration, not a second validation of the key.
        self.__dict__.update(client.__dict__)
        if timeout is not None:
            self.timeout = max(0.001, min(self.timeout, timeout))
        self._http = None
        self._context = None
        self._lock = threading.Lock()
        self._owner = client  # keeps the TLS contexts sessions hand on to each other

    def _take_context(self) -> ssl.SSLContext:
        return self._owner._take_context()

    def _give_context(self, context: ssl.SSLContext) -> None:
        self._owner._give_context(context)

    def __repr__(self) -> str:
        return f"SprigSession(endpoint={self.endpoint!r}, api_key='***')"

    def forget(self) -> None:
        """Drop the connection without closing it (in a forked child: it is the parent's)."""
        self.forget_connections()

    def __enter__(self) -> SprigSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def purge_chunks(user_ids: Sequence[str], emails: Sequence[str]) -> List[Dict[str, List[str]]]:
    """Split ids and emails into request bodies of at most :data:`PURGE_CHUNK` visitors."""
    visitors = [("userIds", u) for u in user_ids] + [("emails", e) for e in emails]
    chunks: List[Dict[str, List[str]]] = []
    for start in range(0, len(visitors), PURGE_CHUNK):
        chunk: Dict[str, List[str]] = {}
        for field, value in visitors[start : start + PURGE_CHUNK]:
            chunk.setdefault(field, []).append(value)
        chunks.append(chunk)
    return chunks
