"""Misbehaving HTTP servers written from raw sockets, and the hostile scenarios run on them.

The servers (:class:`HostileServer` plus the behaviour factories below) listen on 127.0.0.1
and answer each request with a *behaviour*: a function that writes whatever bytes it likes
to the connection (a 200 MB body, an endless chunked body, a gzip bomb, one byte every
0.3 s, ``429`` with ``Retry-After: 1e-300`` forever...). Each request is recorded as an
:class:`Attempt`: when it began (its connection accepted, or its first byte on a reused
connection), when the answer ended or the client was seen hanging up, and how many bytes
the server managed to push.

The scenario runners (:func:`run_delivery`, :func:`run_purge`, :func:`memory_growth`) drive
only the public API (a real ``segment.analytics.Client`` with the destination added, or
``SprigDestination.purge``) and return plain figures. ``tests/test_hostile_network.py``
asserts on them; run this file to print them as the table in ``docs/reliability.md``::

    python tests/hostile_servers.py              # every row
    python tests/hostile_servers.py gzip-bomb    # some rows

Standard library only (besides the package under test and analytics-python).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import resource
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

MiB = 1024 * 1024
#: The API key every scenario uses; it must appear nowhere (logs, errors, reprs).
API_KEY = "hostile-secret-key-5f3a9c"
WRITE_KEY = "segment-write-key"
_HEAD_LIMIT = 64 * 1024
_CHUNK = b"x" * (64 * 1024)

# -- the server ----------------------------------------------------------------------------


@dataclass
class Attempt:
    """One request the server read, and what became of its answer."""

    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    connection: int  #: serial number of the TCP connection it came on (1, 2, ...)
    #: When the attempt began, as near as the server can tell: its connection's accept for
    #: the first request on it, the arrival of its first byte for later ones (keep-alive).
    started: float
    received: float  #: when the request was fully read
    ended: Optional[float] = None  #: when the answer was complete or the client hung up
    client_gone: bool = False  #: the client closed the connection before the answer ended
    bytes_sent: int = 0

    @property
    def duration(self) -> float:
        """Seconds from accept to the end of the answer (or the client's hang-up)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


class Exchange:
    """What a behaviour gets: the connection, the request, and ways to write the answer."""

    def __init__(self, server: HostileServer, sock: socket.socket, attempt: Attempt) -> None:
        self.server = server
        self.sock = sock
        self.attempt = attempt

    @property
    def stopping(self) -> bool:
        return self.server.stopping.is_set()

    def send(self, data: bytes) -> bool:
        """Write ``data``; ``False`` (and the attempt marked) if the client is gone."""
        if self.stopping:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            self.attempt.client_gone = True
            return False
        self.attempt.bytes_sent += len(data)
        return True

    def wait_gone(self, seconds: float) -> bool:
        """Wait up to ``seconds``; ``True`` as soon as the client has closed the connection."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                readable, _, _ = select.select([self.sock], [], [], left)
            except (OSError, ValueError):
                self.attempt.client_gone = True
                return True
            if not readable:
                return False
            if isinstance(self.sock, ssl.SSLSocket):
                time.sleep(left)  # no MSG_PEEK on TLS sockets; not needed by any behaviour
                return False
            try:
                peek = self.sock.recv(1, socket.MSG_PEEK)
            except OSError:
                peek = b""
            if not peek:
                self.attempt.client_gone = True
                return True
            time.sleep(min(left, 0.01))  # the client sent more (a next request): not gone
        return True

    def trickle(self, data: bytes, interval: float) -> bool:
        """Write ``data`` one byte every ``interval`` seconds; ``False`` once the client left."""
        for i in range(len(data)):
            if self.wait_gone(interval) or not self.send(data[i : i + 1]):
                return False
        return True


#: A behaviour writes the answer to one request; it returns whether to keep the connection.
Behaviour = Callable[[Exchange], bool]


class HostileServer:
    """An HTTP/1.1 server on 127.0.0.1 built on raw sockets, one thread per connection.

    ``behaviour`` answers every request (see the factories below); ``tls`` (a server
    :class:`ssl.SSLContext`) makes it an https server. Use it as a context manager.
    """

    def __init__(self, behaviour: Behaviour, *, tls: Optional[ssl.SSLContext] = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.stopping = threading.Event()
        self.attempts: List[Attempt] = []
        self.connections = 0
        self.tls_failures = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._socks: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name="hostile-accept",
                                          daemon=True)

    def __enter__(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close every socket and wait (briefly) for the connection threads."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        deadline = time.monotonic() + 2.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._acceptor.join(max(0.0, deadline - time.monotonic()))

    def wait_for_attempts(self, n: int, timeout: float) -> bool:
        """Block until ``n`` requests were read (``False`` if ``timeout`` passes first)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.attempts) >= n, timeout)

    def snapshot(self) -> List[Attempt]:
        with self._lock:
            return list(self.attempts)

    # -- internals -------------------------------------------------------------------------

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # closing a socket does not wake accept(): poll
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            accepted = time.monotonic()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                serial = self.connections
                self._socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(sock, serial, accepted),
                                          name=f"hostile-conn-{serial}", daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, serial: int, accepted: Optional[float]) -> None:
        try:
            sock.settimeout(30.0)  # a safety net only: every behaviour watches the client
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    with self._lock:
                        self.tls_failures += 1
                    return
                with self._lock:
                    self._socks.append(sock)
            buffered = b""
            while not self.stopping.is_set():
                request = _read_request(sock, buffered)
                if request is None:
                    return
                (method, path, headers, body), buffered, first_byte = request
                attempt = Attempt(method, path, headers, body, serial,
                                  accepted if accepted is not None else first_byte,
                                  time.monotonic())
                accepted = None  # later requests on this connection start at their first byte
                with self._changed:
                    self.attempts.append(attempt)
                    self._changed.notify_all()
                keep = False
                try:
                    keep = self.behaviour(Exchange(self, sock, attempt))
                finally:
                    attempt.ended = time.monotonic()
                if not keep or attempt.client_gone:
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def _read_request(
    sock: socket.socket, buffered: bytes
) -> Optional[Tuple[Tuple[str, str, Dict[str, str], bytes], bytes, float]]:
    """Read one request (head + ``Content-Length`` body); ``None`` at EOF or on garbage.

    Returns the request, the bytes read beyond it, and when its first byte arrived.
    """
    data = buffered
    first_byte = time.monotonic() if data else None
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            return None
        try:
            more = sock.recv(65536)
        except OSError:
            return None
        if not more:
            return None
        if first_byte is None:
            first_byte = time.monotonic()
        data += more
    if first_byte is None:
        first_byte = time.monotonic()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(rest) < length:
        try:
            more = sock.recv(65536)
        except OSError:
            return None
        if not more:
            return None
        rest += more
    return (parts[0], parts[1], headers, rest[:length]), rest[length:], first_byte


def free_port() -> int:
    """A loopback port nothing listens on (closed right after finding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def head(status: int, headers: Sequence[Tuple[str, str]] = ()) -> bytes:
    """A response head: status line and headers, ending with the blank line."""
    lines = [f"HTTP/1.1 {status} Hostile"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- behaviours ----------------------------------------------------------------------------


def answer(status: int = 202, body: bytes = b"{}",
           headers: Sequence[Tuple[str, str]] = ()) -> Behaviour:
    """A well-formed answer (keep-alive)."""
    def behave(x: Exchange) -> bool:
        hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                *headers]
        return x.send(head(status, hdrs) + body)
    return behave


def retry_after(value: str, status: int = 429) -> Behaviour:
    """``status`` with ``Retry-After: value``, every time."""
    return answer(status, b'{"error":"slow down"}', [("Retry-After", value)])


def huge_body(total: int = 200 * MiB, status: int = 202, *, content_length: bool = True,
              path_prefix: str = "") -> Behaviour:
    """``status`` with a ``total``-byte body, pushed as fast as the client takes it.

    ``content_length=False``: no length, the body ends when the server closes (the client
    must stop reading on its own).
    """
    def behave(x: Exchange) -> bool:
        hdrs = [("Content-Type", "application/json")]
        hdrs.append(("Content-Length", str(total)) if content_length
                    else ("Connection", "close"))
        if not x.send(head(status, hdrs)):
            return False
        sent = 0
        while sent < total and x.send(_CHUNK[: min(len(_CHUNK), total - sent)]):
            sent += len(_CHUNK)
        return False
    return behave


def endless_chunked(status: int = 202) -> Behaviour:
    """``status`` with a chunked body that never ends."""
    chunk = b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK)

    def behave(x: Exchange) -> bool:
        if not x.send(head(status, [("Content-Type", "application/json"),
                                    ("Transfer-Encoding", "chunked")])):
            return False
        while x.send(chunk):
            pass
        return False
    return behave


def encoded_body(data: bytes, encoding: str = "gzip", status: int = 202) -> Behaviour:
    """``status`` with ``data`` sent as is under ``Content-Encoding: encoding``."""
    return answer(status, data, [("Content-Encoding", encoding)])


def trickle_headers(interval: float = 0.3, status: int = 202) -> Behaviour:
    """The status line, then a header one byte every ``interval`` seconds, for ever."""
    def behave(x: Exchange) -> bool:
        if not x.send(f"HTTP/1.1 {status} Hostile\r\n".encode()):
            return False
        x.trickle(b"X-Slow: " + b"a" * 100000, interval)
        return False
    return behave


def trickle_body(interval: float = 0.3, length: int = 1000, status: int = 202) -> Behaviour:
    """A complete head announcing ``length`` bytes, then one byte every ``interval`` s."""
    def behave(x: Exchange) -> bool:
        if not x.send(head(status, [("Content-Type", "application/json"),
                                    ("Content-Length", str(length))])):
            return False
        x.trickle(b" " * length, interval)
        return False
    return behave


@functools.cache
def gzip_bomb(inflated: int = 256 * MiB) -> bytes:
    """Zeros that gzip to ~1/1030 of their size: 256 MiB -> 254 KiB, 62 MiB -> 62 KiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    parts = [compressor.compress(block) for _ in range(inflated // MiB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def self_signed_tls(directory: str) -> Optional[Tuple[ssl.SSLContext, str]]:
    """A server context with a throwaway self-signed cert for 127.0.0.1, and its path.

    Made with the ``openssl`` command; ``None`` when it is not installed.
    """
    import shutil

    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


# -- scenarios -----------------------------------------------------------------------------

#: Options of every scenario's destination: one attempt of at most 1 s unless told otherwise.
FAST: Dict[str, Any] = {
    "flush_interval": 0.02,
    "timeout": 1.0,
    "connect_timeout": 1.0,
    "max_retries": 0,
    "initial_backoff": 0.05,
    "max_backoff": 0.1,
    "shutdown_timeout": 2.0,
}


class Capture(logging.Handler):
    """Every log record of every logger, formatted (with tracebacks), for key checks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: List[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.texts.append(self.format(record))
        except Exception:  # a record that cannot be formatted still counts as seen
            self.texts.append(repr(record.__dict__))

    @contextlib.contextmanager
    def installed(self) -> Iterator[Capture]:
        root = logging.getLogger()
        old = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(old)


def texts_of(error: BaseException) -> List[str]:
    """Every text an exception shows, through its cause/context chain."""
    out: List[str] = []
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current), repr(current.args),
                str(getattr(current, "detail", ""))]
        current = current.__cause__ or current.__context__
    return out


@dataclass
class Figures:
    """What one scenario run showed."""

    name: str
    fault: str
    stats: Dict[str, int] = field(default_factory=dict)
    attempts: List[Attempt] = field(default_factory=list)
    errors: List[BaseException] = field(default_factory=list)  #: what on_error was given
    reported: int = 0  #: messages on_error was told about
    seconds: float = 0.0  #: the call (first track() or purge()) until it settled
    cpu: float = 0.0  #: process CPU seconds over the scenario (all threads)
    settled: bool = True  #: flush() drained / purge() returned or raised in time
    result: Any = None  #: purge's return value
    raised: Optional[BaseException] = None  #: what purge raised
    segment_received: Optional[int] = None
    key_seen: List[str] = field(default_factory=list)  #: texts that showed the key
    growth_mb: Optional[float] = None  #: memory scenarios: RSS peak minus RSS before
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def longest_attempt(self) -> float:
        return max((a.duration for a in self.attempts), default=0.0)

    @property
    def max_per_second(self) -> int:
        """Most attempts that started within any one second."""
        starts = sorted(a.received for a in self.attempts)
        most, first = 0, 0
        for last, t in enumerate(starts):
            while t - starts[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most

    @property
    def bytes_pushed(self) -> int:
        return max((a.bytes_sent for a in self.attempts), default=0)


def _key_check(figures: Figures, logs: Sequence[str]) -> None:
    texts = list(logs)
    for error in figures.errors:
        texts += texts_of(error)
    if figures.raised is not None:
        texts += texts_of(figures.raised)
    figures.key_seen = [t for t in texts if API_KEY in t]


def run_delivery(
    name: str,
    fault: str,
    behaviour: Behaviour,
    *,
    users: int = 1,
    wait: float = 10.0,
    via_proxy: bool = False,
    **options: Any,
) -> Figures:
    """``users`` track() calls through a real analytics-python Client with the destination.

    Segment's ``/v1/batch`` goes to a healthy FakeSprig; Sprig is ``behaviour``. Returns
    when ``flush(wait)`` returns; the destination is shut down, the servers stopped.
    ``via_proxy``: the hostile server is the destination's ``proxy=`` instead, and the
    endpoint a loopback port nothing listens on (only the proxy can answer).
    """
    from segment.analytics import Client

    import analytics_sprig
    from analytics_sprig import SprigDestination
    from analytics_sprig.testing import FakeSprig

    figures = Figures(name, fault)
    capture = Capture()
    errors: List[Tuple[BaseException, List[Mapping[str, Any]]]] = []
    with capture.installed(), FakeSprig() as segment, HostileServer(behaviour) as server:
        analytics_sprig.install()
        if via_proxy:
            options["proxy"] = server.url
        destination = SprigDestination(
            API_KEY, endpoint=f"http://127.0.0.1:{free_port()}" if via_proxy else server.url,
            on_error=lambda exc, msgs: errors.append((exc, list(msgs))),
            **{**FAST, **options},
        )
        client = Client(WRITE_KEY, host=segment.url, send=True, upload_interval=0.05,
                        max_retries=1, timeout=5)
        client.add_plugin(destination)
        cpu0, t0 = time.process_time(), time.monotonic()
        try:
            for i in range(users):
                client.track(f"user-{i}", "Hostile Step", {"i": i})
            figures.settled = destination.flush(timeout=wait)
            figures.seconds = time.monotonic() - t0
            figures.cpu = time.process_time() - cpu0
            figures.stats = destination.stats()
            client.flush()
            figures.segment_received = len(segment.segment_messages)
        finally:
            for consumer in client.consumers or ():
                consumer.pause()
                if consumer.is_alive():
                    consumer.join(2)
            destination.shutdown(timeout=2)
        figures.attempts = server.snapshot()
    figures.errors = [exc for exc, _ in errors]
    figures.reported = sum(len(msgs) for _, msgs in errors)
    _key_check(figures, capture.texts)
    return figures


def run_purge(name: str, fault: str, behaviour: Behaviour, *, wait: float = 10.0,
              **options: Any) -> Figures:
    """``purge(user_ids=["user-1"])`` against ``behaviour``, in a thread joined for ``wait``.

    A purge that does not return within ``wait`` is reported as ``settled=False`` (the
    thread is left to finish against a stopped server).
    """
    from analytics_sprig import SprigDestination

    figures = Figures(name, fault)
    capture = Capture()
    with capture.installed(), HostileServer(behaviour) as server:
        destination = SprigDestination(API_KEY, endpoint=server.url, **{**FAST, **options})
        done = threading.Event()

        def call() -> None:
            try:
                figures.result = destination.purge(user_ids=["user-1"])
            except BaseException as exc:
                figures.raised = exc
            finally:
                done.set()

        cpu0, t0 = time.process_time(), time.monotonic()
        threading.Thread(target=call, name="hostile-purge", daemon=True).start()
        figures.settled = done.wait(wait)
        figures.seconds = time.monotonic() - t0
        figures.cpu = time.process_time() - cpu0
        figures.attempts = server.snapshot()
        destination.shutdown(timeout=1)
    _key_check(figures, capture.texts)
    return figures


# -- hostile input ---------------------------------------------------------------------------


class UnhashableId(str):
    """A str whose ``str()`` is itself and that cannot be hashed (a dict key, a set item)."""

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return self


class RaisingEqKey(str):
    """A str that hashes like the plain string but whose ``==`` raises."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ refuses")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("__ne__ refuses")


class RaisingStrInt(int):
    """An int whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


def _hostile_call(kind: str, client: Any) -> None:
    if kind == "unhashable-user-id":
        client.identify(UnhashableId("bad-user"), {"email": "bad@b.co", "plan": "x"})
    elif kind == "raising-eq-integrations-key":
        client.track("bad-user", "Bad Event", integrations={RaisingEqKey("Sprig"): True})
    elif kind == "raising-str-in-trait-list":
        client.identify("bad-user", {"email": "bad@b.co", "plan": "pro",
                                     "tags": ["a", RaisingStrInt(7)]})
    else:
        raise KeyError(kind)


INPUT_ROWS = {
    "unhashable-user-id": "identify() with a str-subclass userId that is unhashable "
                          "(and whose str() is itself)",
    "raising-eq-integrations-key": "track() whose integrations key 'Sprig' has a raising "
                                   "__eq__",
    "raising-str-in-trait-list": "identify() with traits.tags = ['a', <int whose __str__ "
                                 "raises>]",
}


def run_input(kind: str) -> Figures:
    """Four good calls around one hostile call through a real Client; what came of them."""
    from segment.analytics import Client

    import analytics_sprig
    from analytics_sprig import SprigDestination
    from analytics_sprig.testing import FakeSprig

    figures = Figures(kind, INPUT_ROWS[kind])
    errors: List[Tuple[BaseException, List[Mapping[str, Any]]]] = []
    with FakeSprig(api_key=API_KEY) as fake:
        analytics_sprig.install()
        destination = SprigDestination(
            API_KEY, endpoint=fake.url, **FAST,
            on_error=lambda exc, msgs: errors.append((exc, list(msgs))))
        client = Client(WRITE_KEY, host=fake.url, send=True, upload_interval=0.05)
        client.add_plugin(destination)
        raised = None
        t0 = time.monotonic()
        try:
            client.track("good-1", "Good Event")
            client.identify("good-2", {"email": "g2@b.co"})
            try:
                _hostile_call(kind, client)
            except Exception as exc:  # must not happen: reported as a figure
                raised = exc
            client.track("good-3", "Good Event")
            client.identify("good-1", {"plan": "team"})
            figures.settled = destination.flush(timeout=5)
            figures.seconds = time.monotonic() - t0
            figures.stats = destination.stats()
            client.flush()
            figures.segment_received = len(fake.segment_messages)
        finally:
            for consumer in client.consumers or ():
                consumer.pause()
                if consumer.is_alive():
                    consumer.join(2)
            destination.shutdown(timeout=2)
        figures.raised = raised
        visitor = fake.users.get("bad-user")
        figures.extra = {
            "stored": sorted(fake.users),
            "bad_user": None if visitor is None else {
                "emailAddress": visitor["emailAddress"], "attributes": visitor["attributes"]},
        }
    figures.errors = [exc for exc, _ in errors]
    figures.reported = sum(len(msgs) for _, msgs in errors)
    return figures


BAD_KEYS = {
    "bom": "\ufeff" + API_KEY,
    "zero-width-space": API_KEY[:6] + "\u200b" + API_KEY[6:],
    "e-acute": API_KEY[:6] + "\u00e9" + API_KEY[6:],
}


def bad_key_error(which: str) -> Optional[BaseException]:
    """What constructing a destination with bad key ``which`` raises (``None``: nothing)."""
    from analytics_sprig import SprigDestination

    try:
        SprigDestination(BAD_KEYS[which], endpoint="http://127.0.0.1:9").shutdown(timeout=0)
    except Exception as exc:
        return exc
    return None


def run_keylog(directory: str) -> Optional[Dict[str, Any]]:
    """``SSLKEYLOGFILE`` (and ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``
    trusting the server) set while the destination talks to a self-signed https server.

    Returns the bytes the stdlib default context wrote (the control) and what the
    destination wrote, or ``None`` without the ``openssl`` command.
    """
    from analytics_sprig import SprigDestination

    made = self_signed_tls(directory)
    if made is None:
        return None
    context, cert = made
    control = os.path.join(directory, "control.keylog")
    keylog = os.path.join(directory, "sprig.keylog")
    saved = {k: os.environ.get(k) for k in ("SSLKEYLOGFILE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                                            "REQUESTS_CA_BUNDLE")}
    errors: List[BaseException] = []
    try:
        with HostileServer(answer(202), tls=context) as server:
            os.environ["SSLKEYLOGFILE"] = control
            trusting = ssl.create_default_context(cafile=cert)
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                    trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"POST /control HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                tls.recv(1024)
            os.environ.update({"SSLKEYLOGFILE": keylog, "SSL_CERT_FILE": cert,
                               "SSL_CERT_DIR": os.path.dirname(cert),
                               "REQUESTS_CA_BUNDLE": cert})
            destination = SprigDestination(API_KEY, endpoint=server.url, **FAST,
                                           on_error=lambda e, m: errors.append(e))
            destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
            settled = destination.flush(timeout=5)
            raised: Optional[BaseException] = None
            try:
                destination.purge(user_ids=["u1"])
            except Exception as exc:
                raised = exc
            destination.shutdown(timeout=1)
            paths = [a.path for a in server.snapshot()]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {
        "control_bytes": os.path.getsize(control) if os.path.exists(control) else 0,
        "keylog_bytes": os.path.getsize(keylog) if os.path.exists(keylog) else 0,
        "settled": settled,
        "stats": destination.stats(),
        "errors": errors,
        "raised": raised,
        "paths": paths,
    }


# -- memory, measured in a child interpreter -------------------------------------------------


def _rss_now_kb() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def _peak_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def _reset_linux_peak() -> bool:
    """Make the kernel's RSS high-water mark (``VmHWM``) the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _linux_peak_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class _RssSampler:
    """The highest RSS seen every few ms: the fallback where no high-water mark resets."""

    def __init__(self) -> None:
        self.peak = _rss_now_kb() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_now_kb() or 0)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _memory_behaviour(name: str) -> Tuple[str, Behaviour, bool]:
    """(what the server does, behaviour, purge?) of a memory scenario."""
    if name == "big-body":
        return "202 with a 200 MB body (Content-Length)", huge_body(), False
    if name == "big-body-no-length":
        return ("202 with a 200 MB body, no Content-Length (ends at close)",
                huge_body(content_length=False), False)
    if name == "endless-chunked":
        return "202 with a chunked body that never ends", endless_chunked(), False
    if name == "gzip-bomb":
        bomb = gzip_bomb()
        return (f"202, Content-Encoding: gzip, {len(bomb) // 1024} KiB inflating to 256 MiB",
                encoded_body(bomb), False)
    if name == "gzip-bomb-small":
        bomb = gzip_bomb(62 * MiB)
        return (f"202, Content-Encoding: gzip, {len(bomb) // 1024} KiB (under the 64 KiB "
                "read cap) inflating to 62 MiB", encoded_body(bomb), False)
    if name == "purge-big-body":
        return "purge answered 202 with a 200 MB body", huge_body(), True
    raise KeyError(name)


MEMORY_SCENARIOS = ("big-body", "big-body-no-length", "endless-chunked", "gzip-bomb",
                    "gzip-bomb-small", "purge-big-body")


def _memory_child(name: str) -> Dict[str, Any]:
    """Run memory scenario ``name`` in this process; RSS growth in MB and the figures."""
    from analytics_sprig import SprigDestination
    from analytics_sprig.testing import FakeSprig

    fault, behaviour, purge = _memory_behaviour(name)  # builds the bomb before measuring
    # Warm up every code path (imports, first request, the worker thread) on a healthy fake.
    with FakeSprig() as healthy:
        warm = SprigDestination(API_KEY, endpoint=healthy.url, **FAST)
        warm.send({"type": "track", "userId": "w", "event": "Warm",
                   "timestamp": "2024-01-01T00:00:00Z", "messageId": "m"})
        warm.flush(timeout=5)
        warm.purge(user_ids=["w"])
        warm.shutdown(timeout=2)
    gc.collect()
    before = _rss_now_kb()
    peak_before = _peak_kb()
    precise = before is not None and _reset_linux_peak() and _linux_peak_kb() is not None
    with _RssSampler() as sampler:
        if purge:
            figures = run_purge(name, fault, behaviour)
        else:
            figures = run_delivery(name, fault, behaviour, users=3)
    # Growth = highest RSS during the scenario minus RSS before it. On Linux the kernel's
    # high-water mark (reset just before) is exact; elsewhere take the larger of the sampled
    # peak and the growth of ru_maxrss (which misses growth below an earlier peak).
    if precise:
        growth_kb = (_linux_peak_kb() or 0) - (before or 0)
        method = "VmHWM"
    else:
        growth_kb = max(sampler.peak - (before or sampler.peak), _peak_kb() - peak_before)
        method = "sampled RSS / ru_maxrss"
    return {
        "fault": fault,
        "growth_mb": round(growth_kb / 1024, 1),
        "method": method,
        "settled": figures.settled,
        "stats": figures.stats,
        "attempts": len(figures.attempts),
        "bytes_pushed": figures.bytes_pushed,
        "seconds": round(figures.seconds, 2),
        "result": figures.result,
        "raised": None if figures.raised is None else type(figures.raised).__name__,
        "key_seen": len(figures.key_seen),
    }


def memory_growth(name: str, timeout: float = 120.0) -> Dict[str, Any]:
    """Run memory scenario ``name`` in a fresh interpreter; its figures as a dict."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c",
         "import json, sys, hostile_servers as h;"
         "print('RESULT ' + json.dumps(h._memory_child(sys.argv[1])))", name],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: Dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise RuntimeError(f"memory scenario {name} failed:\n{done.stdout}\n{done.stderr}")


# -- the figures table ---------------------------------------------------------------------


def _rows(selected: Sequence[str]) -> Iterator[Dict[str, Any]]:
    want = set(selected)

    def wanted(name: str) -> bool:
        return not want or name in want

    for name in MEMORY_SCENARIOS:
        if wanted(name):
            r = memory_growth(name)
            stats = r["stats"]
            outcome = (f"purge returned {r['result']!r}" if name.startswith("purge")
                       else f"{stats.get('delivered', 0)} of 3 delivered")
            yield {"scenario": name, "fault": r["fault"], "outcome": outcome,
                   "attempts": r["attempts"], "longest attempt (s)": "",
                   "seconds": r["seconds"],
                   "notes": f"RSS +{r['growth_mb']} MB; the server pushed "
                            f"{r['bytes_pushed'] / MiB:.1f} MiB before the client hung up"}
    trickles = [
        ("trickle-headers", "one header byte every 0.3 s, timeout=1, max_retries=1",
         trickle_headers(), False),
        ("trickle-body", "complete head, then one body byte every 0.3 s, timeout=1, "
         "max_retries=1", trickle_body(), False),
        ("purge-trickle", "purge answered one body byte every 0.3 s, timeout=1, "
         "max_retries=1", trickle_body(), True),
    ]
    for name, fault, behaviour, purge in trickles:
        if wanted(name):
            f = (run_purge(name, fault, behaviour, max_retries=1) if purge
                 else run_delivery(name, fault, behaviour, max_retries=1))
            yield _row(f)
    for value in ("1e-300", "1e-9", "0.000001", "0.001"):
        name = f"429-retry-after-{value}"
        if wanted(name):
            fault = f"429 with Retry-After: {value} for ever, max_retries=3"
            yield _row(run_delivery(name, fault, retry_after(value), max_retries=3,
                                    initial_backoff=0.2, max_backoff=0.4, wait=20))
        if wanted("purge-" + name):
            fault = f"purge answered 429 with Retry-After: {value} for ever, max_retries=3"
            yield _row(run_purge("purge-" + name, fault, retry_after(value), max_retries=3,
                                 initial_backoff=0.2, max_backoff=0.4, wait=20))
    for kind, fault in INPUT_ROWS.items():
        if wanted(kind):
            f = run_input(kind)
            s = f.stats
            outcome = (f"{s.get('delivered', 0)} delivered, {s.get('failed', 0)} failed "
                       f"({s.get('failed_invalid', 0)} invalid), {s.get('pending', 0)} pending"
                       f" of {s.get('received', 0)} received")
            notes = ["app call raised" if f.raised is not None else "the app's call returned"]
            notes += sorted({f"on_error: {type(e).__name__}" for e in f.errors})
            bad = f.extra.get("bad_user")
            if bad is not None:
                notes.append(f"stored: email {bad['emailAddress']}, attributes "
                             f"{sorted(bad['attributes'])}")
            notes.append(f"Segment got {f.segment_received} of 5")
            yield {"scenario": kind, "fault": fault + "; 4 good calls around it",
                   "outcome": outcome, "attempts": "", "longest attempt (s)": "",
                   "seconds": round(f.seconds, 2), "notes": "; ".join(notes)}
    for which in BAD_KEYS:
        name = f"key-{which}"
        if wanted(name):
            error = bad_key_error(which)
            text = "" if error is None else str(error)
            shown = text.partition("; ")[2] or text
            yield {"scenario": name, "fault": f"api_key with a {which.replace('-', ' ')}",
                   "outcome": "accepted" if error is None
                   else f"{type(error).__name__} at construction",
                   "attempts": 0, "longest attempt (s)": "", "seconds": "",
                   "notes": "key in the text: " + ("yes" if API_KEY in text else "no")
                            + (f"; \"{shown}\"" if shown else "")}
    if wanted("sslkeylogfile"):
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            r = run_keylog(directory)
        if r is not None:
            yield {"scenario": "sslkeylogfile",
                   "fault": "SSLKEYLOGFILE set (and SSL_CERT_FILE/SSL_CERT_DIR/"
                            "REQUESTS_CA_BUNDLE trusting a self-signed loopback server)",
                   "outcome": f"{r['stats'].get('failed', 0)} failed (certificate not "
                              "trusted), purge raised "
                              f"{type(r['raised']).__name__ if r['raised'] else 'nothing'}",
                   "attempts": len(r["paths"]) - 1, "longest attempt (s)": "", "seconds": "",
                   "notes": f"{r['keylog_bytes']} bytes written to SSLKEYLOGFILE (the stdlib "
                            f"default context wrote {r['control_bytes']})"}
    if wanted("max-retry-after-0"):
        fault = "max_retry_after=0, 503 with Retry-After: 5 for ever, max_retries=3"
        yield _row(run_delivery("max-retry-after-0", fault, retry_after("5", status=503),
                                max_retries=3, max_retry_after=0, wait=20))
    if wanted("max-retry-after-0-429"):
        fault = "max_retry_after=0, 429 with Retry-After: 5 for ever, max_retries=3"
        yield _row(run_delivery("max-retry-after-0-429", fault, retry_after("5"),
                                max_retries=3, max_retry_after=0, wait=30))


def _row(f: Figures) -> Dict[str, Any]:
    if f.name.startswith("purge"):
        if not f.settled:
            outcome = "purge still running"
        elif f.raised is not None:
            outcome = f"purge raised {type(f.raised).__name__}"
        else:
            outcome = f"purge returned {f.result!r}"
    else:
        s = f.stats
        outcome = (f"{s.get('delivered', 0)} delivered, {s.get('failed', 0)} failed, "
                   f"{s.get('pending', 0)} pending")
    notes = [f"CPU {f.cpu:.2f} s", f"at most {f.max_per_second} attempts in a second"]
    if f.key_seen:
        notes.append(f"KEY SEEN {len(f.key_seen)} times")
    return {"scenario": f.name, "fault": f.fault, "outcome": outcome,
            "attempts": len(f.attempts), "longest attempt (s)": round(f.longest_attempt, 2),
            "seconds": round(f.seconds, 2), "notes": "; ".join(notes)}


COLUMNS = ("scenario", "fault", "outcome", "attempts", "longest attempt (s)", "seconds",
           "notes")


def main(argv: Sequence[str]) -> int:
    import platform

    import analytics_sprig

    started = time.monotonic()
    rows = list(_rows(argv))
    print(f"analytics-sprig {analytics_sprig.__version__}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(rows)} scenarios in {time.monotonic() - started:.1f} s\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("--:" if c in ("attempts", "longest attempt (s)", "seconds")
                         else "---" for c in COLUMNS) + "|")
    for row in rows:
        cells = [f"`{row['scenario']}`"] + [str(row[c]) for c in COLUMNS[1:]]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
