"""A local fake of Sprig's REST API (plus Segment's ``/v1/batch``) for tests and offline demos.

Standard library only. The server runs in a background thread on ``127.0.0.1`` and
records every request, keeps the visitors it was sent, and can misbehave on demand
(error statuses, slow answers, dropped or reset connections, a black hole, redirects)
so clients can be tested against the failures a real network produces. It can also
simulate distance (every request answered after a fixed or jittered latency, many
connections in parallel) and Sprig's rate limit (a token bucket per API key answering 429).

Example::

    from analytics_sprig.testing import FakeSprig

    with FakeSprig(api_key="k") as sprig:
        sprig.inject(status=503, count=2, retry_after=1)
        ...  # point the client at sprig.url
        assert sprig.wait_for(lambda s: "user-1" in s.users)

    # Sprig 50 ms away, allowing 20 requests/s (429 without Retry-After beyond that):
    with FakeSprig(api_key="k", latency=0.05, jitter=0.01, rate_limit=20.0) as sprig:
        ...
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gzip
import json
import math
import random
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from email.message import Message
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, TextIO, Union
from urllib.parse import unquote, urlsplit

__all__ = ["FakeSprig", "RecordedRequest", "serve"]

# Sprig's documented limits.
MAX_ATTRIBUTES = 100
MAX_PURGE_IDS = 100

_V2_PREFIX = "/v2/"
_USERS_PATH = "/v2/users"
_USER_PREFIX = "/v2/users/"
_PURGE_PATH = "/v2/purge/visitors"
_SEGMENT_BATCH_PATH = "/v1/batch"
_PURGE_ID_FIELDS = ("userIds", "emails", "visitorIds")

# Fixed namespace so a userId always maps to the same visitor id, across resets too.
_VISITOR_NAMESPACE = uuid.UUID("6f1c2a7e-5b1d-4c3e-9a8f-2d4b6e8a0c11")

# How long stop() waits for connection threads once their sockets are shut down.
_STOP_JOIN_SECONDS = 1.0

_THROTTLED_STATUS = 429


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake server received.

    ``path`` is the URL path without the query string. ``headers`` has lower-cased
    names. ``body`` is the request body after undoing ``Content-Encoding: gzip``; ``json`` is
    that body parsed as JSON (``None`` if empty or not valid JSON). ``status`` is what
    the server answered, or 0 if it answered nothing (dropped, reset, blackholed or
    stopped). ``time`` is ``time.monotonic()`` when the request was read. ``client`` is
    the client's (host, port), which tells apart connections.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    time: float
    client: tuple[str, int] = ("", 0)


@dataclass
class _Fault:
    """A queued misbehaviour; ``remaining`` counts the requests it still applies to."""

    status: Optional[int]
    remaining: int
    retry_after: Optional[str]
    body: Any
    delay: float
    drop: bool
    reset: bool
    path: Optional[str]

    def matches(self, path: str) -> bool:
        if self.path is not None:
            return path == self.path
        # Faults are about Sprig's API: Segment's endpoint is only hit when asked for.
        return path.startswith(_V2_PREFIX)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Ticket:
    """What was decided for one request when it was read."""

    seq: int
    request: RecordedRequest
    blackholed: bool
    fault: Optional[_Fault]
    delay: float
    body_error: Optional[str] = None
    record: Optional[RecordedRequest] = None


@dataclass(frozen=True)
class _RateLimit:
    """Settings of the simulated rate limit: ``rate`` requests/s, bursts of ``burst``."""

    rate: float
    burst: float
    retry_after: Optional[str]


class _TokenBucket:
    """One API key's allowance: refills at ``rate`` tokens/s up to ``burst``; a request costs 1.

    Not locked itself: the FakeSprig's lock is held around every use.
    """

    def __init__(self, limit: _RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = limit.burst  # a new key starts with a full bucket
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the request is throttled."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.limit.burst, self.tokens + elapsed * self.limit.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _check_seconds(name: str, value: float) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return seconds


def _check_latency(latency: float, jitter: float) -> tuple[float, float]:
    latency = _check_seconds("latency", latency)
    jitter = _check_seconds("jitter", jitter)
    if jitter > latency:
        # Keeps every delay >= 0 without clamping, so the mean stays ``latency``.
        raise ValueError(f"jitter ({jitter:g} s) must not exceed latency ({latency:g} s)")
    return latency, jitter


def _make_rate_limit(
    rate: Optional[float], burst: Optional[float], retry_after: Union[str, float, None]
) -> Optional[_RateLimit]:
    if rate is None:
        if burst is not None or retry_after is not None:
            raise ValueError("rate_limit_burst and rate_limit_retry_after need a rate_limit")
        return None
    rate = float(rate)
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate_limit must be a positive number of requests/s, got {rate!r}")
    # One second's worth by default, and at least one request, or nothing would ever pass.
    capacity = max(1.0, rate) if burst is None else float(burst)
    if not math.isfinite(capacity) or capacity < 1:
        raise ValueError(f"rate_limit_burst must be a number >= 1, got {burst!r}")
    if retry_after is not None and not isinstance(retry_after, str):
        _check_seconds("rate_limit_retry_after", retry_after)
    return _RateLimit(rate, capacity, _format_retry_after(retry_after))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _json_reply(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, _json_bytes(obj), (("Content-Type", "application/json"), *headers))


def _error(status: int, message: str) -> _Reply:
    return _json_reply(status, {"error": message})


def _now_iso() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reject_constant(name: str) -> Any:
    # JSON has no NaN/Infinity; Python's parser accepts them, a real server would not.
    raise ValueError(f"invalid JSON constant {name}")


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return None


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but JSON true is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _format_retry_after(value: Union[str, float, None]) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _lower_headers(message: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _validate_user(body: Any) -> Optional[_Reply]:
    """Sprig's rules for ``POST /v2/users``; returns the error reply, or None if valid."""
    if not isinstance(body, dict):
        return _error(400, "Body must be a JSON object")
    user_id = body.get("userId")
    if not isinstance(user_id, str) or not user_id:
        return _error(400, "userId is required and must be a non-empty string")
    if "emailAddress" in body and not isinstance(body["emailAddress"], str):
        return _error(422, "emailAddress must be a string")
    if "attributes" in body:
        attributes = body["attributes"]
        if not isinstance(attributes, dict):
            return _error(422, "attributes must be an object")
        if len(attributes) > MAX_ATTRIBUTES:
            return _error(422, f"at most {MAX_ATTRIBUTES} attributes are allowed")
        for key, value in attributes.items():
            if key.startswith("!"):
                return _error(422, f"attribute {key!r}: names starting with '!' are reserved")
            if not isinstance(value, (str, int, float, bool)):
                return _error(422, f"attribute {key!r}: value must be a string, number or boolean")
    if "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            return _error(422, "events must be an array")
        for index, event in enumerate(events):
            if (
                not isinstance(event, dict)
                or set(event) != {"event", "timestamp"}
                or not isinstance(event["event"], str)
                or not _is_int(event["timestamp"])
            ):
                return _error(
                    422,
                    f'events[{index}] must be {{"event": string, "timestamp": integer}}',
                )
    return None


def _validate_purge(body: Any) -> Optional[_Reply]:
    """Rules for ``POST /v2/purge/visitors``; returns the error reply, or None if valid."""
    if not isinstance(body, dict):
        return _error(400, "Body must be a JSON object")
    total = 0
    for name in _PURGE_ID_FIELDS:
        if name not in body:
            continue
        ids = body[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(400, f"{name} must be an array of strings")
        total += len(ids)
    if "delaySeconds" in body:
        delay = body["delaySeconds"]
        if not _is_int(delay) or delay < 0:
            return _error(400, "delaySeconds must be a non-negative integer")
    if total == 0:
        return _error(400, "one of userIds, emails or visitorIds must be a non-empty array")
    if total > MAX_PURGE_IDS:
        return _error(400, f"at most {MAX_PURGE_IDS} visitors per request")
    return None


class FakeSprig:
    """A fake Sprig API server on a local port, with request recording and fault injection.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`). With
    ``api_key`` set, every ``/v2`` request must send exactly
    ``Authorization: API-Key <api_key>``; a missing or malformed header gets 401 and a
    wrong key gets ``bad_key_status``. ``on_request`` is called (from a server thread)
    with each request once it is recorded. All accessors return copies, so they are
    safe to read while the server runs.

    Distance: with ``latency`` every request (Sprig's ``/v2`` and Segment's ``/v1/batch``
    alike) is answered ``latency`` seconds after it was read, plus or minus a uniformly
    drawn ``jitter`` (``0 <= jitter <= latency``): the round trip to a server that far
    away. Connections are served in parallel, each waiting on its own, so a client with
    many requests in flight gets them all back after about one latency.

    Rate limit: with ``rate_limit`` (requests per second) each API key (each distinct
    ``Authorization`` header) has a token bucket holding ``rate_limit_burst`` tokens
    (default: one second's worth, at least 1) that refills at ``rate_limit`` tokens/s. A
    ``/v2`` request that passes the auth check and finds the bucket empty is answered
    ``429 {"error": "Too Many Requests"}``, with ``Retry-After: <rate_limit_retry_after>``
    only if that is set, and changes no stored data; :attr:`throttled` counts these.
    Segment's ``/v1/batch`` is never rate limited. Both are settings: :meth:`set_latency`
    and :meth:`set_rate_limit` change them, and :meth:`reset` keeps them.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bad_key_status: int = 401,
        on_request: Optional[Callable[[RecordedRequest], None]] = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        rate_limit: Optional[float] = None,
        rate_limit_burst: Optional[float] = None,
        rate_limit_retry_after: Union[str, float, None] = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.bad_key_status = bad_key_status
        self._on_request = on_request
        self._latency, self._jitter = _check_latency(latency, jitter)
        self._rate_limit = _make_rate_limit(rate_limit, rate_limit_burst, rate_limit_retry_after)
        self._buckets: dict[str, _TokenBucket] = {}
        self._throttled = 0
        # Its own generator: jitter draws neither disturb nor depend on the global one.
        self._random = random.Random()
        self._port = port
        self._lock = threading.Lock()
        # Notified whenever a request is recorded, so waiters need not poll.
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._seq = 0
        self._records: list[tuple[int, RecordedRequest]] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._purges: list[dict[str, Any]] = []
        self._segment_messages: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._delay = 0.0
        self._blackholed = False
        self._redirect: Optional[str] = None
        # Set while requests may be answered; blackholed handlers wait on it.
        self._unblocked = threading.Event()
        self._unblocked.set()
        # Set by stop(); delayed handlers wait on it so stopping cuts delays short.
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeSprig:
        """Bind the port and serve in a daemon thread; a no-op if already running.

        After :meth:`stop`, starting again binds the same port, so a client configured
        with :attr:`url` reaches the server again (a "server came back" scenario).
        """
        with self._lock:
            if self._server is not None:
                return self
            self._stopping.clear()
            if self._blackholed:
                self._unblocked.clear()
            else:
                self._unblocked.set()
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
            self._server = server
        thread = threading.Thread(
            target=server.serve_forever,
            # shutdown() waits for the loop's next poll; 10 ms keeps stop() (per test) cheap.
            kwargs={"poll_interval": 0.01},
            name=f"fake-sprig:{self._port}",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; returns promptly in every state.

        Blackholed and delayed requests are closed without an answer, idle keep-alive
        connections are shut down. Recorded data is kept.
        """
        with self._lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
        if server is None:
            return
        self._stopping.set()
        self._unblocked.set()
        server.shutdown()
        server.server_close()
        workers = server.close_connections()
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        for worker in ([thread] if thread else []) + workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeSprig:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        if self._port == 0:
            raise RuntimeError("FakeSprig has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server, such as ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- recorded state ----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in the order received (a copy)."""
        with self._lock:
            return [record for _, record in self._records]

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """Stored visitors by userId, each with a raw ``eventLog`` too (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._users)

    @property
    def purges(self) -> list[dict[str, Any]]:
        """Bodies of the accepted ``POST /v2/purge/visitors`` requests (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._purges)

    @property
    def segment_messages(self) -> list[dict[str, Any]]:
        """Every message received on Segment's ``POST /v1/batch``, flattened (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._segment_messages)

    # -- faults ----------------------------------------------------------------------

    def inject(
        self,
        status: Optional[int] = 503,
        count: int = 1,
        retry_after: Union[str, float, None] = None,
        body: Any = None,
        delay: float = 0.0,
        drop: bool = False,
        reset: bool = False,
        path: Optional[str] = None,
    ) -> None:
        """Queue a fault for the next ``count`` requests that match ``path``.

        ``path=None`` matches every ``/v2`` path; otherwise the request path must be
        equal (``"/v1/batch"`` is only faulted this way). Faults apply in the order
        injected. The request is answered with ``status`` and ``body`` (a JSON value, or
        str/bytes sent as is; default ``{"error": "injected"}``) plus ``Retry-After`` if
        ``retry_after`` is given, after sleeping ``delay`` seconds. ``drop`` closes the
        connection without answering, ``reset`` makes the client see a connection reset.
        ``status=None`` with a ``delay`` answers normally, just late. A faulted request
        (other than ``status=None``) leaves the stored data unchanged.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if drop and reset:
            raise ValueError("drop and reset are exclusive")
        fault = _Fault(
            status=status,
            remaining=count,
            retry_after=_format_retry_after(retry_after),
            body=body,
            delay=float(delay),
            drop=drop,
            reset=reset,
            path=path,
        )
        with self._lock:
            self._faults.append(fault)

    def set_delay(self, seconds: float) -> None:
        """Delay every response by ``seconds`` (a slow server); 0 turns it off.

        A fault: it adds to the latency and :meth:`reset` clears it.
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        with self._lock:
            self._delay = float(seconds)

    # -- simulated distance and rate limit ------------------------------------------------

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        """Answer every request after ``seconds`` +/- uniform ``jitter``; 0 turns it off.

        Applies to requests read from now on. ``jitter`` must be between 0 and ``seconds``.
        """
        latency, spread = _check_latency(seconds, jitter)
        with self._lock:
            self._latency, self._jitter = latency, spread

    def set_rate_limit(
        self,
        rate: Optional[float],
        burst: Optional[float] = None,
        retry_after: Union[str, float, None] = None,
    ) -> None:
        """Limit each API key to ``rate`` requests/s (bursts of ``burst``); None turns it off.

        ``burst`` defaults to one second's worth (``max(1, rate)``). Throttled requests get
        429, with ``Retry-After: <retry_after>`` only if given (seconds or an HTTP date).
        Every key's bucket starts full again.
        """
        limit = _make_rate_limit(rate, burst, retry_after)
        with self._lock:
            self._rate_limit = limit
            self._buckets.clear()

    @property
    def latency(self) -> float:
        """The simulated latency in seconds (0: none)."""
        with self._lock:
            return self._latency

    @property
    def jitter(self) -> float:
        """How far each request's latency may be off :attr:`latency`, in seconds."""
        with self._lock:
            return self._jitter

    @property
    def throttled(self) -> int:
        """How many requests the rate limit answered with 429 (since start or reset)."""
        with self._lock:
            return self._throttled

    def blackhole(self, on: bool = True) -> None:
        """Read and record requests but never answer them while on.

        Waiting requests are closed unanswered when it is turned off or the server stops.
        """
        with self._lock:
            self._blackholed = on
            if on:
                self._unblocked.clear()
            else:
                self._unblocked.set()

    def redirect(self, url: Optional[str]) -> None:
        """Answer every Sprig (``/v2``) request with ``307`` to ``url``; None turns it off."""
        with self._lock:
            self._redirect = url

    def reset(self) -> None:
        """Forget recorded requests, users, purges and messages, and clear every fault.

        The latency and the rate limit stay as set; every bucket starts full again and
        :attr:`throttled` goes back to 0.
        """
        with self._lock:
            self._buckets.clear()
            self._throttled = 0
            self._records.clear()
            self._users.clear()
            self._purges.clear()
            self._segment_messages.clear()
            self._faults.clear()
            self._delay = 0.0
            self._redirect = None
            self._blackholed = False
            self._unblocked.set()
            self._version += 1
            self._changed.notify_all()

    # -- waiting -----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[FakeSprig], object], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` is true; returns False if ``timeout`` passes first.

        The predicate is re-checked whenever a request is recorded (and at least every
        50 ms, in case it looks at something else).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self._version
            # Called without the lock: predicates read the (locking) properties.
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait_for(partial(self._changed_since, seen), min(remaining, 0.05))

    def _changed_since(self, version: int) -> bool:
        return self._version != version

    def wait_for_requests(self, n: int, timeout: float = 5.0, path: Optional[str] = None) -> bool:
        """Wait until at least ``n`` requests (with exactly ``path``, if given) are recorded."""

        def enough(sprig: FakeSprig) -> bool:
            return sprig._count_requests(path) >= n

        return self.wait_for(enough, timeout)

    def _count_requests(self, path: Optional[str]) -> int:
        with self._lock:
            if path is None:
                return len(self._records)
            return sum(1 for _, record in self._records if record.path == path)

    # -- request handling (called from handler threads) ---------------------------------

    def _admit(self, request: RecordedRequest, body_error: Optional[str]) -> _Ticket:
        """Decide, in arrival order, whether a request is blackholed or faulted."""
        with self._lock:
            self._seq += 1
            blackholed = self._blackholed
            fault: Optional[_Fault] = None
            if not blackholed:
                for candidate in self._faults:
                    if candidate.matches(request.path):
                        fault = candidate
                        candidate.remaining -= 1
                        if candidate.remaining == 0:
                            self._faults.remove(candidate)
                        break
            delay = self._delay + (fault.delay if fault else 0.0)
            if self._latency > 0:
                delay += self._latency
                if self._jitter > 0:
                    delay += self._random.uniform(-self._jitter, self._jitter)
            return _Ticket(self._seq, request, blackholed, fault, max(0.0, delay), body_error)

    def _record(self, ticket: _Ticket, status: int) -> None:
        """Store the request with its final status (the caller holds the lock)."""
        record = RecordedRequest(
            method=ticket.request.method,
            path=ticket.request.path,
            headers=ticket.request.headers,
            body=ticket.request.body,
            json=ticket.request.json,
            status=status,
            time=ticket.request.time,
            client=ticket.request.client,
        )
        # Keep arrival order even when a delayed request finishes after a later one.
        index = len(self._records)
        while index > 0 and self._records[index - 1][0] > ticket.seq:
            index -= 1
        self._records.insert(index, (ticket.seq, record))
        self._version += 1
        self._changed.notify_all()
        ticket.record = record

    def _record_now(self, ticket: _Ticket, status: int) -> None:
        with self._lock:
            self._record(ticket, status)
        self._call_hook(ticket)

    def _call_hook(self, ticket: _Ticket) -> None:
        if self._on_request is not None and ticket.record is not None:
            self._on_request(ticket.record)

    def _fault_reply(self, fault: _Fault) -> _Reply:
        assert fault.status is not None
        headers: tuple[tuple[str, str], ...] = ()
        if fault.retry_after is not None:
            headers = (("Retry-After", fault.retry_after),)
        if fault.body is None:
            return _json_reply(fault.status, {"error": "injected"}, headers)
        if isinstance(fault.body, (bytes, str)):
            raw = fault.body.encode("utf-8") if isinstance(fault.body, str) else fault.body
            return _Reply(
                fault.status, raw, (("Content-Type", "text/plain; charset=utf-8"), *headers)
            )
        return _json_reply(fault.status, fault.body, headers)

    def _answer(self, ticket: _Ticket) -> _Reply:
        """Route a request that is answered normally; records it under the same lock."""
        with self._lock:
            try:
                reply = self._route(ticket)
            except Exception as exc:  # a bug here must reach the client, not kill the thread
                reply = _error(500, f"fake server error: {exc!r}")
            self._record(ticket, reply.status)
        self._call_hook(ticket)
        return reply

    def _route(self, ticket: _Ticket) -> _Reply:
        request = ticket.request
        path, method = request.path, request.method
        if path == _SEGMENT_BATCH_PATH:
            if method != "POST":
                return _method_not_allowed("POST")
            return self._segment_batch(ticket)
        if not path.startswith(_V2_PREFIX):
            return _error(404, "Not found")
        if self._redirect is not None:
            return _json_reply(307, {}, (("Location", self._redirect),))
        denied = self._check_auth(request.headers)
        if denied is not None:
            return denied
        throttled = self._throttle(request.headers)
        if throttled is not None:
            return throttled
        if ticket.body_error is not None:
            return _error(400, ticket.body_error)
        if path == _USERS_PATH:
            if method != "POST":
                return _method_not_allowed("POST")
            return self._upsert(request.json)
        if path.startswith(_USER_PREFIX):
            raw_id = path[len(_USER_PREFIX) :]
            if not raw_id or "/" in raw_id:
                return _error(404, "Not found")
            if method != "GET":
                return _method_not_allowed("GET")
            visitor = self._users.get(unquote(raw_id))
            if visitor is None:
                return _error(404, "Not found")
            shown = {key: value for key, value in visitor.items() if key != "eventLog"}
            return _json_reply(200, shown)
        if path == _PURGE_PATH:
            if method != "POST":
                return _method_not_allowed("POST")
            return self._purge(request.json)
        return _error(404, "Not found")

    def _check_auth(self, headers: dict[str, str]) -> Optional[_Reply]:
        given = headers.get("authorization")
        if given is None or not given.startswith("API-Key "):
            return _error(401, "Unauthorized")
        if self.api_key is not None and given != f"API-Key {self.api_key}":
            message = "Forbidden" if self.bad_key_status == 403 else "Unauthorized"
            return _error(self.bad_key_status, message)
        return None

    def _throttle(self, headers: dict[str, str]) -> Optional[_Reply]:
        """The 429 for a request over its key's rate limit, or None (the caller holds the lock).

        Decided when the request is answered, as a server that far away would.
        """
        limit = self._rate_limit
        if limit is None:
            return None
        key = headers.get("authorization", "")
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _TokenBucket(limit, now)
        if bucket.take(now):
            return None
        self._throttled += 1
        extra = () if limit.retry_after is None else (("Retry-After", limit.retry_after),)
        return _json_reply(_THROTTLED_STATUS, {"error": "Too Many Requests"}, extra)

    def _upsert(self, body: Any) -> _Reply:
        invalid = _validate_user(body)
        if invalid is not None:
            return invalid
        now = _now_iso()
        user_id: str = body["userId"]
        visitor = self._users.get(user_id)
        if visitor is None:
            visitor = {
                # A lone surrogate is valid JSON (\ud800) but not UTF-8; keep the id stable.
                "id": str(uuid.uuid5(_VISITOR_NAMESPACE, user_id.encode(
                    "utf-8", "surrogatepass").decode("utf-8", "replace"))),
                "externalUserId": user_id,
                "createdAt": now,
                "emailAddress": None,
                "attributes": {},
                "events": [],
                "eventLog": [],
            }
            self._users[user_id] = visitor
        if "emailAddress" in body:
            visitor["emailAddress"] = body["emailAddress"]
        visitor["attributes"].update(body.get("attributes", {}))
        for event in body.get("events", []):
            visitor["eventLog"].append({"event": event["event"], "timestamp": event["timestamp"]})
            counted = next((e for e in visitor["events"] if e["event"] == event["event"]), None)
            if counted is None:
                counted = {"event": event["event"], "count": 0, "createdAt": now}
                visitor["events"].append(counted)
            counted["count"] += 1
            counted["updatedAt"] = now
        # Sprig processes upserts asynchronously, hence 202 and an empty object.
        return _json_reply(202, {})

    def _purge(self, body: Any) -> _Reply:
        invalid = _validate_purge(body)
        if invalid is not None:
            return invalid
        self._purges.append(copy.deepcopy(body))
        if body.get("delaySeconds") == 0:
            user_ids = set(body.get("userIds", []))
            emails = set(body.get("emails", []))
            visitor_ids = set(body.get("visitorIds", []))
            for user_id, visitor in list(self._users.items()):
                if (
                    user_id in user_ids
                    or visitor["emailAddress"] in emails
                    or visitor["id"] in visitor_ids
                ):
                    del self._users[user_id]
        return _json_reply(200, {"requestId": str(uuid.uuid4())})

    def _segment_batch(self, ticket: _Ticket) -> _Reply:
        if ticket.body_error is not None:
            return _error(400, ticket.body_error)
        body = ticket.request.json
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list) or not all(isinstance(m, dict) for m in batch):
            return _error(400, "body must be a JSON object with a 'batch' array of objects")
        self._segment_messages.extend(copy.deepcopy(batch))
        return _json_reply(200, {"success": True})


def _method_not_allowed(allowed: str) -> _Reply:
    return _json_reply(405, {"error": "Method not allowed"}, (("Allow", allowed),))


class _BodyError(Exception):
    """The request body could not be read; the connection cannot be reused."""


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the FakeSprig what to do, and writes (or withholds) the answer."""

    # Keep-alive, so a pooled client reuses one connection as it would with Sprig.
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY the body write waits on delayed ACKs (~40 ms per response).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Print nothing: tests and the CLI get their output from ``on_request``."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        sprig = self.server.sprig
        received = time.monotonic()
        path = urlsplit(self.path).path
        try:
            raw = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            if str(exc):
                self._send(_error(400, str(exc)))
            return
        body, body_error = self._decode(raw)
        host, port = self.client_address[:2]
        request = RecordedRequest(
            method=self.command,
            path=path,
            headers=_lower_headers(self.headers),
            body=body,
            json=_parse_json(body),
            status=0,
            time=received,
            client=(str(host), int(port)),
        )
        ticket = sprig._admit(request, body_error)
        if ticket.blackholed:
            sprig._record_now(ticket, 0)
            # Blocks without spinning until blackhole(False), reset() or stop().
            sprig._unblocked.wait()
            self.close_connection = True
            return
        if ticket.delay > 0 and sprig._stopping.wait(ticket.delay):
            sprig._record_now(ticket, 0)
            self.close_connection = True
            return
        fault = ticket.fault
        if fault is not None and (fault.drop or fault.reset):
            sprig._record_now(ticket, 0)
            if fault.reset:
                self._reset_connection()
            self.close_connection = True
            return
        if fault is not None and fault.status is not None:
            reply = sprig._fault_reply(fault)
            with sprig._lock:
                sprig._record(ticket, reply.status)
            sprig._call_hook(ticket)
        else:
            reply = sprig._answer(ticket)
        self._send(reply)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BodyError("invalid Content-Length") from None
        if length < 0:
            raise _BodyError("invalid Content-Length")
        data = self.rfile.read(length)
        if len(data) < length:
            raise _BodyError("")  # the client went away mid-body: nobody to answer
        return data

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _BodyError("")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError("invalid chunked body") from None
            if size == 0:
                # Skip trailers up to the blank line that ends the body.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _BodyError("")
            chunks.append(chunk)
            self.rfile.readline(65537)  # the CRLF after each chunk

    def _decode(self, raw: bytes) -> tuple[bytes, Optional[str]]:
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return raw, None
        if encoding == "gzip":
            try:
                return gzip.decompress(raw), None
            except (OSError, EOFError, zlib.error):
                return raw, "invalid gzip body"
        return raw, f"unsupported Content-Encoding {encoding!r}"

    def _send(self, reply: _Reply) -> None:
        status = reply.status
        # These statuses must not carry a body; sending one would corrupt the stream.
        body = b"" if status < 200 or status in (204, 304) else reply.body
        self.send_response(status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reset_connection(self) -> None:
        # Linger 0 makes close() send RST instead of FIN: the client sees ECONNRESET.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The makefile() reader holds a reference; the socket only closes once it is gone.
        self.rfile.close()
        self.connection.close()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so stop() can close them all."""

    daemon_threads = True
    # The listen backlog: benchmarks open 64+ keep-alive connections at once, and a full
    # backlog makes clients wait for SYN retransmits (a second or more) or fail.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sprig: FakeSprig) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sprig = sprig
        self._connections_lock = threading.Lock()
        self._connections: dict[Any, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own threads (not ThreadingMixIn's) so stop() can find and join them.
        worker = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="fake-sprig-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = worker
        worker.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self) -> list[threading.Thread]:
        """Shut down every open connection (waking blocked reads); returns their threads."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)
        return [worker for _, worker in connections]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up, and our own drops/resets/stop, are normal here.
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            return
        super().handle_error(request, client_address)


def _describe_settings(
    latency: float = 0.0,
    jitter: float = 0.0,
    rate_limit: Optional[float] = None,
    rate_limit_burst: Optional[float] = None,
    rate_limit_retry_after: Union[str, float, None] = None,
) -> list[str]:
    """The lines :func:`serve` prints about the simulated latency and rate limit (if any)."""
    lines: list[str] = []
    if latency > 0:
        spread = f" +/- {jitter * 1000:g} ms" if jitter > 0 else ""
        lines.append(f"Latency: every request is answered after {latency * 1000:g} ms{spread}")
    limit = _make_rate_limit(rate_limit, rate_limit_burst, rate_limit_retry_after)
    if limit is not None:
        over = (
            "429 without Retry-After"
            if limit.retry_after is None
            else f"429 with Retry-After: {limit.retry_after}"
        )
        lines.append(
            f"Rate limit: {limit.rate:g} requests/s per API key, burst {limit.burst:g}; "
            f"over it: {over}"
        )
    return lines


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: Optional[str] = None,
    out: Optional[TextIO] = None,
    *,
    latency: float = 0.0,
    jitter: float = 0.0,
    rate_limit: Optional[float] = None,
    rate_limit_burst: Optional[float] = None,
    rate_limit_retry_after: Union[str, float, None] = None,
) -> None:
    """Run a fake Sprig in the foreground until KeyboardInterrupt (Ctrl-C).

    Prints the URL, a line for each simulated condition (latency, rate limit; see
    :class:`FakeSprig` for the options), then one line per request (method, path, status;
    ``-`` when no answer was sent) to ``out`` (default: ``sys.stdout``). Invalid options
    raise ValueError before anything is bound.

    Ctrl-C works through Python's SIGINT handler, which Python does not install when the
    process starts with SIGINT ignored (as a shell without job control starts ``cmd &``):
    such a process is stopped with SIGTERM instead.
    """
    stream = sys.stdout if out is None else out
    print_lock = threading.Lock()

    def emit(line: str) -> None:
        with print_lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed pipe must not take the server down

    def on_request(record: RecordedRequest) -> None:
        emit(f"{record.method} {record.path} {record.status or '-'}")

    settings = _describe_settings(
        latency, jitter, rate_limit, rate_limit_burst, rate_limit_retry_after
    )
    sprig = FakeSprig(
        api_key,
        host,
        port,
        on_request=on_request,
        latency=latency,
        jitter=jitter,
        rate_limit=rate_limit,
        rate_limit_burst=rate_limit_burst,
        rate_limit_retry_after=rate_limit_retry_after,
    )
    sprig.start()
    try:
        emit(f"Fake Sprig listening on {sprig.url} (Ctrl-C to stop)")
        for line in settings:
            emit(line)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sprig.stop()
