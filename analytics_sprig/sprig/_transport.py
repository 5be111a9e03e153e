"""The HTTP transport under :class:`~analytics_sprig.SprigClient`: every wait and byte bounded.

httpx's own guarantees are not enough against a hostile or broken server:

- its timeouts are per read, so a server trickling one byte every 0.3 s keeps a request open
  for minutes; here ``timeout`` bounds the whole attempt (connect, TLS, send, headers, body);
- ``response.read()`` takes whatever the server sends (200 MB, an endless chunked body, a
  gzip bomb); here the body is read up to :data:`MAX_BODY` bytes, never inflated beyond it,
  and a longer one is treated as absent (the status code still decides the outcome);
- ``socket.getaddrinfo`` has no timeout at all; here the name lookup is bounded too
  (:mod:`._resolver`);
- its default TLS context honours ``SSLKEYLOGFILE`` (and ``SSL_CERT_FILE``/``SSL_CERT_DIR``
  with ``trust_env``); here the context is built from certifi's bundle only.

The overall deadline works by wrapping httpcore's network backend: every read, write, connect
and TLS handshake gets at most the time left before the current request's deadline. The
deadline is per thread (a purge in the app's thread and the worker may share one client).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Type

import certifi
import httpcore
import httpx

from ._resolver import RESOLVER, is_ip_literal

#: Largest response body read, in bytes (Sprig's JSON answers are a few hundred bytes).
MAX_BODY = 64 * 1024
#: Largest piece written to the socket at once, so a write also honours the deadline.
_WRITE_PIECE = 64 * 1024


def tls_context() -> ssl.SSLContext:
    """A verifying TLS client context that reads nothing from the environment.

    Not :func:`ssl.create_default_context`: that one writes TLS secrets to ``SSLKEYLOGFILE``.
    Hostname check and ``CERT_REQUIRED`` (``PROTOCOL_TLS_CLIENT``'s defaults), TLS 1.2 or
    later, CA certificates from certifi only (no ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=certifi.where())
    if getattr(context, "keylog_filename", None) is not None:  # never set here; be sure
        context.keylog_filename = None  # type: ignore[assignment]
    return context


# -- the overall deadline ------------------------------------------------------------------


class _Deadline(threading.local):
    """When the current thread's request must be over (``None``: no request running)."""

    at: Optional[float] = None

    def cap(self, timeout: Optional[float], error: Type[Exception]) -> Optional[float]:
        """``timeout`` shortened to the time left; raise ``error`` once none is left."""
        at = self.at
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise error("the request's overall timeout passed")
        return left if timeout is None or timeout > left else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        cap = self._deadline.cap
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_PIECE):
            self._stream.write(bytes(view[start : start + _WRITE_PIECE]),
                               cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> httpcore.NetworkStream:
        # CPython bounds a whole handshake by the socket timeout it starts with.
        stream = self._stream.start_tls(
            ssl_context, server_hostname, self._deadline.cap(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with streams bounded by the request's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._backend = backend
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        cap = self._deadline.cap
        timeout = cap(timeout, httpcore.ConnectTimeout)
        # The name is looked up here, within the deadline (getaddrinfo has no timeout);
        # TLS still checks the certificate against the URL's host, not the address.
        addresses = [host] if is_ip_literal(host) else RESOLVER.addresses(host, port, timeout)
        error: Exception = httpcore.ConnectError(f"no address found for {host!r}")
        for address in addresses:  # in order, as socket.create_connection tries them
            try:
                stream = self._backend.connect_tcp(
                    address, port, cap(timeout, httpcore.ConnectTimeout),
                    local_address=local_address, socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: Optional[float] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(
            path, self._deadline.cap(timeout, httpcore.ConnectTimeout),
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# -- bounded answers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A response read within bounds: status, headers and the body (``None`` if absent).

    ``body`` is ``None`` when the server sent none, sent more than :data:`MAX_BODY` bytes
    (raw or decoded), or used a content encoding that could not be decoded within the cap.
    """

    status_code: int
    headers: httpx.Headers
    body: Optional[bytes]

    def json(self) -> Any:
        """The body decoded as JSON; ``ValueError`` if it is absent or not JSON."""
        if not self.body:
            raise ValueError("no response body")
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced); ``""`` if absent."""
        return self.body.decode("utf-8", "replace") if self.body else ""


def _decode(raw: bytes, encoding: Optional[str]) -> Optional[bytes]:
    """``raw`` decoded per ``Content-Encoding``, never beyond :data:`MAX_BODY` bytes."""
    coding = (encoding or "identity").strip().lower()
    if coding in ("identity", ""):
        return raw
    if coding in ("gzip", "x-gzip"):
        modes = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":  # zlib-wrapped per the RFC; some servers send raw deflate
        modes = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:  # br, zstd, stacked codings: we asked for identity, so do not try
        return None
    for wbits in modes:
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(raw, MAX_BODY + 1)
        except zlib.error:
            continue
        if len(out) > MAX_BODY or decoder.unconsumed_tail:
            return None  # inflates beyond the cap: a bomb, or just too big
        return out
    return None


def read_bounded(response: httpx.Response) -> Optional[bytes]:
    """Read ``response``'s body up to :data:`MAX_BODY` bytes; ``None`` if longer.

    The caller closes ``response``; closing one that was not read to the end closes its
    connection (httpcore does not reuse a connection in the middle of a response).
    """
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        return None  # announced as too long: do not read a byte of it
    chunks: List[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return _decode(b"".join(chunks), response.headers.get("Content-Encoding"))


class BoundedTransport(httpx.HTTPTransport):
    """An :class:`httpx.HTTPTransport` whose :meth:`send` bounds time and bytes.

    One connection (``max_connections=1``), TLS from :func:`tls_context`, no environment
    (``trust_env=False``), redirects never followed (a transport does not follow them), an
    optional explicit ``proxy``. :meth:`send` gives each request an overall deadline of
    ``deadline`` seconds and reads the answer with :func:`read_bounded`.
    """

    def __init__(self, *, deadline: float, proxy: Optional[str] = None,
                 context: Optional[ssl.SSLContext] = None) -> None:
        # A context per live transport, not one per process: httpcore sets ALPN on the
        # context at each connect, which is not safe while another thread's handshake reads
        # it. ``context`` may be one a closed transport used (the client keeps them).
        if context is None:
            context = tls_context()
        proxy_config: Optional[httpx.Proxy] = None
        if proxy is not None:
            proxy_config = httpx.Proxy(proxy)
            if proxy_config.url.scheme == "https":
                # The TLS to an https:// proxy itself would otherwise use httpcore's default
                # context (ssl.create_default_context: SSLKEYLOGFILE).
                with contextlib.suppress(TypeError):  # an httpx without Proxy(ssl_context=)
                    proxy_config = httpx.Proxy(proxy, ssl_context=context)
        super().__init__(
            verify=context,
            trust_env=False,
            proxy=proxy_config,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self._seconds = deadline
        self._deadline = _Deadline()
        # ConnectionPool, HTTPProxy and SOCKSProxy all keep the backend their connections
        # are made with here; without it there would be no overall deadline, so refuse.
        pool = getattr(self, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.NetworkBackend):
            raise RuntimeError(
                f"analytics_sprig cannot bound request time with httpcore "
                f"{httpcore.__version__} (its connection pool has no network backend where "
                "expected); install an httpcore 1.x release this version supports"
            )
        pool._network_backend = _DeadlineBackend(backend, self._deadline)  # type: ignore[union-attr]

    def send(self, request: httpx.Request) -> Answer:
        """Send ``request`` and read its answer, all within the overall deadline.

        Raises :class:`httpx.TransportError` subclasses (:class:`httpx.ReadTimeout` and
        friends when the deadline passes).
        """
        request.headers["Accept-Encoding"] = "identity"  # a compressed answer is a risk
        deadline = self._deadline
        deadline.at = time.monotonic() + self._seconds
        try:
            response = self.handle_request(request)
            try:
                body = read_bounded(response)
            finally:
                response.close()
        finally:
            deadline.at = None
        return Answer(response.status_code, response.headers, body)


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by ``***``, also in its escaped forms.

    Escaped forms: as ``repr()`` of a str or bytes shows it, and as JSON encodes it (a key
    with a quote or a backslash would otherwise survive in an echoed or repr'd text).
    """
    forms = {
        secret,
        secret.replace("\\", "\\\\"),
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        json.dumps(secret)[1:-1],
    }
    for form in sorted(forms, key=len, reverse=True):
        if form and form in text:
            text = text.replace(form, "***")
    return text
