"""Sprig REST API client on httpx: one request per call, no retries (the worker retries)."""

from __future__ import annotations

import ipaddress
import json
import platform
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import quote

import httpx

from ._errors import ConfigurationError, SprigAPIError, SprigAuthError, SprigNetworkError
from ._retry import is_retryable_status, parse_retry_after
from ._version import __version__

DEFAULT_ENDPOINT = "https://api.sprig.com"
#: Sprig accepts at most this many visitors per purge request.
PURGE_CHUNK = 100
USER_AGENT = (
    f"analytics-sprig/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"
)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_endpoint(endpoint: Any) -> str:
    """Return ``endpoint`` without a trailing slash, or raise :class:`ConfigurationError`.

    It must be ``https://``; plain ``http://`` is allowed only to a loopback host, for
    local testing against :mod:`analytics_sprig.fake_server`.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigurationError(f"endpoint {endpoint!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError(
            f"endpoint {endpoint!r} must be an absolute https:// URL such as {DEFAULT_ENDPOINT}"
        )
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            f"endpoint {endpoint!r} uses plain http; Sprig needs https:// "
            "(http is allowed only to a loopback host for local testing)"
        )
    if url.userinfo or url.query or url.fragment:
        raise ConfigurationError(
            f"endpoint {endpoint!r} must not carry credentials, a query or a fragment"
        )
    return endpoint.rstrip("/")


def validate_api_key(api_key: Any) -> str:
    """Return ``api_key`` or raise; the key itself never appears in the error."""
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
    if not api_key.strip():
        raise ConfigurationError("api_key is empty; pass your Sprig API key")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in api_key):
        raise ConfigurationError("api_key contains whitespace or control characters")
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
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._proxy = proxy
        self._http: Optional[httpx.Client] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SprigClient(endpoint={self.endpoint!r}, api_key='***')"

    def _client(self) -> httpx.Client:
        http = self._http
        if http is None:
            with self._lock:
                http = self._http
                if http is None:
                    http = self._http = httpx.Client(
                        base_url=self.endpoint,
                        headers={
                            "Authorization": f"API-Key {self._api_key}",
                            "Content-Type": "application/json",
                            "Accept": "application/json",
                            "User-Agent": USER_AGENT,
                        },
                        timeout=self._timeout,
                        follow_redirects=False,
                        verify=True,
                        trust_env=False,  # no .netrc credentials or env proxies by surprise
                        proxy=self._proxy,
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    )
        return http

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key in text else text

    def request(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        """Send one request; return the decoded JSON answer (or ``None``).

        Raises :class:`SprigAuthError` (401/403), :class:`SprigAPIError` (other non-2xx,
        with ``retryable`` and ``retry_after``) or :class:`SprigNetworkError`.
        """
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False).encode("utf-8")
        try:
            response = self._client().request(method, path, content=content)
        except httpx.TransportError as exc:
            raise SprigNetworkError(
                self._redact(f"{type(exc).__name__} on {method} {path}: {exc}")
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json() if response.content else None
            except ValueError:
                return None
        raise self._error(response)

    def _error(self, response: httpx.Response) -> SprigAPIError:
        status = response.status_code
        detail = ""
        try:
            data = response.json()
            if isinstance(data, dict) and data.get("error") is not None:
                detail = str(data["error"])
        except ValueError:
            detail = response.text.strip()
        detail = self._redact(detail[:200])
        if 300 <= status < 400:
            detail = "redirects are not followed; check the endpoint"
        if status in (401, 403):
            return SprigAuthError(status, detail or "the API key was rejected")
        return SprigAPIError(
            status,
            detail,
            retryable=is_retryable_status(status),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
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

    def forget_connections(self) -> None:
        """Drop the connection pool without closing it (after ``fork()``: it is the parent's)."""
        self._http = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection pool."""
        http, self._http = self._http, None
        if http is not None:
            http.close()


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
