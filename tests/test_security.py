"""Security: the API key stays secret, endpoints are checked, redirects and TLS are safe.

- The key never shows in a log record (every logger, every level, tracebacks included), in
  ``repr``/``str`` of the destination or client, or in any exception (raised, or passed
  to ``on_error``) and the messages ``on_error`` gets, across successes, 400/422/500 with a
  body echoing the key, 401, 403, network errors, redirects and shutdown drops.
- Plain ``http://`` is refused unless the host is loopback.
- Redirects are failures and the key is never sent to the new location.
- TLS verification is on and cannot be switched off; environment proxies, CA bundles and
  ``.netrc`` are ignored.
"""

from __future__ import annotations

import http.server
import inspect
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import httpx
import pytest
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import (
    ConfigurationError,
    MessageDropped,
    SprigAPIError,
    SprigAuthError,
    SprigClient,
    SprigDestination,
    SprigError,
    SprigNetworkError,
)
from analytics_sprig.testing import FakeSprig

KEY = "sprig-SECRET-canary-5f1e2d3c4b5a69788796a5b4"

FAST: dict[str, Any] = {
    "flush_interval": 0.01,
    "initial_backoff": 0.01,
    "max_backoff": 0.02,
    "max_retries": 1,
    "timeout": 2.0,
    "connect_timeout": 1.0,
    "shutdown_timeout": 1.0,
    "auth_cooldown": 60.0,
}


# -- capturing everything ----------------------------------------------------------------


class CaptureAll(logging.Handler):
    """Every record of every logger, rendered every way a log pipeline could render it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.records: List[logging.LogRecord] = []
        self.texts: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))  # includes the formatted traceback
        self.texts.append(repr(record.msg) + repr(record.args))
        self.texts.append(repr(vars(record)))  # extras, exc_info as repr


@pytest.fixture
def all_logs() -> Iterator[CaptureAll]:
    handler = CaptureAll()
    root = logging.getLogger()
    names = ["analytics_sprig", "httpx", "httpcore", "segment", "hpack", "urllib3"]
    saved = {name: logging.getLogger(name).level for name in names}
    saved_root = root.level
    root.setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def exposed(exc: BaseException) -> List[str]:
    """How an exception can be shown: str, repr, args, traceback, and its chain."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += [repr(getattr(current, name, None)) for name in ("detail", "reason")]
        current = current.__cause__ or current.__context__
    return texts


def assert_secret(texts: List[str], where: str) -> None:
    leaks = [text for text in texts if KEY in text]
    assert not leaks, f"the API key appears in {where}: {leaks[0][:300]!r}"


class OnError:
    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, List[Any]]] = []

    def __call__(self, exc: BaseException, messages: List[Any]) -> None:
        self.calls.append((exc, messages))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the key stays secret ----------------------------------------------------------------


def test_key_never_in_logs_reprs_exceptions_or_on_error(all_logs: CaptureAll) -> None:
    on_error = OnError()
    raised: List[BaseException] = []
    destinations: List[SprigDestination] = []

    with FakeSprig(api_key=KEY) as sprig, FakeSprig() as elsewhere, \
            FakeSprig(api_key="some-other-key") as rejects_401, \
            FakeSprig(api_key="some-other-key", bad_key_status=403) as rejects_403:
        client = Client("write-key", host=sprig.url, upload_interval=0.02, max_retries=1)

        def run(url: str, setup: Callable[[], None] = lambda: None, calls: int = 2,
                **options: Any) -> SprigDestination:
            destination = SprigDestination(KEY, endpoint=url, on_error=on_error,
                                           **{**FAST, **options})
            destinations.append(destination)
            client.add_plugin(destination)
            setup()
            for i in range(calls):
                client.identify(f"user-{i}", {"email": f"u{i}@example.com", "plan": "pro"})
                client.track(f"user-{i}", "Signed Up")
            assert destination.flush(timeout=10)
            client.remove_plugin(destination)
            return destination

        run(sprig.url)  # success
        first = next(r for r in sprig.requests if r.path == "/v2/users")
        assert first.headers["authorization"] == f"API-Key {KEY}"  # the key was in use
        run(sprig.url, lambda: sprig.inject(400, count=2, body={"error": f"bad key {KEY}"}))
        # The key straddling the 200-character cut of an error detail.
        run(sprig.url, lambda: sprig.inject(422, count=2, body="x" * 190 + KEY + " tail"))
        run(sprig.url, lambda: sprig.inject(500, count=4, body=f"upstream said API-Key {KEY}"))
        run(sprig.url, lambda: sprig.inject(reset=True, count=4))
        run(rejects_401.url)  # 401, then fail-fast during the cool-down
        run(rejects_403.url)
        run(f"http://127.0.0.1:{closed_port()}")  # connection refused
        sprig.redirect(elsewhere.url + "/v2/users")
        redirected = run(sprig.url)
        sprig.redirect(None)

        # Shutdown while the server holds the request: dropped messages.
        sprig.blackhole(True)
        held = SprigDestination(KEY, endpoint=sprig.url, on_error=on_error, **FAST)
        destinations.append(held)
        client.add_plugin(held)
        before = len([r for r in sprig.requests if r.path == "/v2/users"])
        client.track("user-held", "Held")
        assert sprig.wait_for_requests(before + 1, timeout=5, path="/v2/users")
        held.shutdown(timeout=0.2)
        client.remove_plugin(held)
        sprig.blackhole(False)

        # Errors raised to the caller: purge and the API client used directly.
        sprig.inject(400, body={"error": f"no such visitors ({KEY})"}, path="/v2/purge/visitors")
        with pytest.raises(SprigAPIError) as purge_error:
            redirected.purge(user_ids=["user-0"])
        raised.append(purge_error.value)
        api = SprigClient(KEY, endpoint=rejects_401.url)
        with pytest.raises(SprigAuthError) as auth_error:
            api.get_user("user-0")
        raised.append(auth_error.value)
        api.close()
        for bad in (dict(endpoint="http://example.com"), dict(endpoint=f"https://u:{KEY}@h.io"),
                    dict(timeout=-1), dict(max_retries="3"), dict(proxy=f"http://u:{KEY}@:x")):
            with pytest.raises((ConfigurationError, TypeError)) as config_error:
                SprigDestination(KEY, **bad)
            raised.append(config_error.value)
        for bad_key in (KEY + " ", KEY + "\n", " " + KEY):
            with pytest.raises(ConfigurationError) as key_error:
                SprigDestination(bad_key, endpoint=sprig.url)
            raised.append(key_error.value)

        for consumer in client.consumers or ():
            consumer.pause()
            consumer.join(5)
        for destination in destinations:
            destination.shutdown(timeout=1)
        assert elsewhere.requests == []  # the redirect target never saw anything

    # Every outcome was exercised...
    kinds = {(type(exc).__name__, getattr(exc, "status_code", None)) for exc, _ in on_error.calls}
    assert {("SprigAPIError", 400), ("SprigAPIError", 422), ("SprigAPIError", 500),
            ("SprigAPIError", 307), ("SprigAuthError", 401), ("SprigAuthError", 403),
            ("SprigNetworkError", None), ("MessageDropped", None)} <= kinds, kinds
    # ... and the error details still say what happened, without the key.
    details = " ".join(str(exc) for exc, _ in on_error.calls)
    assert "bad key ***" in details and "***" in details and "redirects are not followed" in details

    for exc, messages in on_error.calls:
        assert_secret(exposed(exc), f"an on_error exception {type(exc).__name__}")
        assert_secret([repr(messages), str(messages)], "the messages passed to on_error")
    for exc in raised:
        assert_secret(exposed(exc), f"a raised {type(exc).__name__}")
    for destination in destinations:
        assert_secret([repr(destination), str(destination), repr(destination._api),
                       str(destination._api), repr(destination.stats())], "a repr")
    # The capture really saw the library's records and the HTTP stack's debug records.
    names = {record.name for record in all_logs.records}
    levels = {record.levelno for record in all_logs.records if record.name == "analytics_sprig"}
    assert any(name.startswith("httpcore") for name in names), names
    assert {logging.WARNING, logging.ERROR} <= levels
    assert_secret(all_logs.texts, "a log record")


def test_reprs_do_not_show_the_key() -> None:
    destination = SprigDestination(KEY, endpoint="http://127.0.0.1:9")
    api = SprigClient(KEY, endpoint="http://127.0.0.1:9")
    for text in (repr(destination), str(destination), repr(api), str(api),
                 repr(vars(destination).get("endpoint"))):
        assert KEY not in text
    assert "***" in repr(destination) and "***" in repr(api)
    destination.shutdown(timeout=0.1)


# -- endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "http://api.sprig.com",
    "http://example.com:80",
    "http://10.0.0.1",
    "http://192.168.1.10:8080",
    "http://0.0.0.0:8765",  # every interface is not loopback
    "http://[::2]:80",
    "http://127.0.0.1.nip.io",  # a name that resolves to loopback is still a name
    "http://localhost.example.com",
    "ftp://127.0.0.1",
    "ws://127.0.0.1:9",
    "api.sprig.com",
    "//api.sprig.com",
    "https://",
    "https://api.sprig.com?key=x",
])
def test_non_loopback_http_and_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigurationError):
        SprigDestination(KEY, endpoint=endpoint)
    with pytest.raises(ConfigurationError):
        SprigClient(KEY, endpoint=endpoint)


@pytest.mark.parametrize("endpoint", [
    "https://api.sprig.com", "https://api.sprig.com/", "http://127.0.0.1:8765",
    "http://localhost:8765", "http://LOCALHOST", "http://[::1]:8765", "http://127.1.2.3",
])
def test_https_anywhere_and_http_to_loopback_are_accepted(endpoint: str) -> None:
    destination = SprigDestination(KEY, endpoint=endpoint)
    assert not destination.endpoint.endswith("/")
    destination.shutdown(timeout=0.1)


# -- redirects ----------------------------------------------------------------------------


def test_redirect_is_a_failure_and_the_key_does_not_follow_it() -> None:
    on_error = OnError()
    with FakeSprig(api_key=KEY) as sprig, FakeSprig() as elsewhere:
        sprig.redirect(elsewhere.url + "/v2/users")
        destination = SprigDestination(KEY, endpoint=sprig.url, on_error=on_error,
                                       **{**FAST, "max_retries": 3})
        destination.send({"type": "track", "userId": "u1", "event": "E",
                          "timestamp": "2024-01-01T00:00:00Z"})
        assert destination.flush(timeout=10)
        stats = destination.stats()
        assert (stats["delivered"], stats["failed"], stats["retries"]) == (0, 1, 0)
        [(error, messages)] = on_error.calls
        assert isinstance(error, SprigAPIError) and error.status_code == 307
        assert not error.retryable and "redirects are not followed" in str(error)
        assert [m["userId"] for m in messages] == ["u1"]
        # purge() is not redirected either.
        with pytest.raises(SprigAPIError) as purge_error:
            destination.purge(user_ids=["u1"])
        assert purge_error.value.status_code == 307
        destination.shutdown(timeout=1)
        assert [r.status for r in sprig.requests] == [307, 307]
        assert elsewhere.requests == []  # nothing, so certainly not the key


@pytest.mark.parametrize("status", [301, 302, 303, 308])
def test_every_redirect_status_is_final(status: int) -> None:
    on_error = OnError()
    with FakeSprig(api_key=KEY) as sprig:
        sprig.inject(status, count=5)
        destination = SprigDestination(KEY, endpoint=sprig.url, on_error=on_error, **FAST)
        destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
        assert destination.flush(timeout=10)
        destination.shutdown(timeout=1)
        assert destination.stats()["failed"] == 1 and len(sprig.requests) == 1
        assert on_error.calls[0][0].status_code == status  # type: ignore[attr-defined]


# -- TLS and the environment --------------------------------------------------------------


def _transport_of(destination: SprigDestination) -> httpx.HTTPTransport:
    http = destination._api._client()
    if isinstance(http, httpx.Client):  # whichever the API client holds
        http = http._transport
    assert isinstance(http, httpx.HTTPTransport)
    return http


def test_tls_verification_is_on_and_has_no_off_switch() -> None:
    for factory in (SprigDestination, SprigClient):
        parameters = set(inspect.signature(factory).parameters)
        assert not {"verify", "ssl", "ssl_context", "cert", "insecure", "trust_env",
                    "verify_ssl"} & parameters, parameters
        for option in ("verify", "ssl_context", "verify_ssl"):
            with pytest.raises(TypeError):
                factory(KEY, **{option: False})  # type: ignore[operator]
    destination = SprigDestination(KEY)  # the default endpoint: https
    assert destination.endpoint.startswith("https://")
    context = _transport_of(destination)._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    destination.shutdown(timeout=0.1)


class _TLSServer:
    """A loopback HTTPS server with a self-signed certificate; records what got through."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.paths: List[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.paths.append(self.path)
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # failed handshakes are the point

        self.server = Server(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _TLSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def self_signed(tmp_path: Path) -> Tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_a_self_signed_server_is_refused_even_if_the_environment_trusts_it(
    self_signed: Tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    # httpx with trust_env=True would trust these; the destination must not.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(cert.parent))
    on_error = OnError()
    with _TLSServer(cert, key) as server:
        # Control: the server works for a client that trusts its certificate.
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trusting) as control:
            assert control.post(server.url + "/control").status_code == 202
        destination = SprigDestination(KEY, endpoint=server.url, on_error=on_error, **FAST)
        destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
        assert destination.flush(timeout=10)
        destination.shutdown(timeout=1)
    assert destination.stats()["failed"] == 1 and destination.stats()["delivered"] == 0
    [(error, _)] = on_error.calls
    assert isinstance(error, SprigNetworkError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) or "certificate" in str(error).lower()
    assert server.paths == ["/control"]  # no request (so no key) got through the handshake


def test_environment_proxies_and_netrc_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password hunter2\n")
    os.chmod(netrc, 0o600)
    with FakeSprig(api_key=KEY) as sprig, FakeSprig() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NETRC", str(netrc))
        destination = SprigDestination(KEY, endpoint=sprig.url, **FAST)
        destination.send({"type": "alias", "userId": "u1", "previousId": "a1"})
        assert destination.flush(timeout=10)
        destination.shutdown(timeout=1)
        assert destination.stats()["delivered"] == 1
        assert proxy.requests == []
        [request] = sprig.requests
        assert request.headers["authorization"] == f"API-Key {KEY}"
        assert "proxy-authorization" not in request.headers


def test_library_errors_are_sprig_errors() -> None:
    # One base class to catch, none of which carries the key (checked above).
    for cls in (ConfigurationError, SprigAPIError, SprigAuthError, SprigNetworkError,
                MessageDropped):
        assert issubclass(cls, SprigError)
    assert analytics_sprig.SprigError is SprigError
