"""Support for running analytics-python's own unittest suite with our pipeline installed.

analytics-python ships its tests inside the package (``segment.analytics.test``). Their
clients default to Segment's real host, so :func:`guard_segment_http` reroutes every request
the SDK's ``requests`` sessions make to a loopback sink before any of them runs. The mixins
here wrap each SDK ``TestCase`` in one of two variants: the pipeline installed with no
plugins, and every ``Client`` carrying a no-op destination plugin.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import unittest
from types import ModuleType
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import segment.analytics as analytics
import segment.analytics.oauth_manager as sdk_oauth
import segment.analytics.request as sdk_request
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from segment.analytics.client import Client
from segment.analytics.consumer import Consumer
from segment.analytics.oauth_manager import OauthManager

import analytics_sprig
from analytics_sprig import hookimpl, pipeline_of
from analytics_sprig.testing import FakeSprig

#: Set SDK_COMPAT_FULL=1 to also run the SDK tests that are slow or timing-sensitive.
FULL_SDK_SUITE = os.environ.get("SDK_COMPAT_FULL", "") not in ("", "0")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# The module-level settings analytics-python's own tests change (and do not all restore).
SDK_SETTINGS = (
    "write_key", "host", "on_error", "debug", "log_handler", "send", "sync_mode",
    "max_queue_size", "gzip", "timeout", "max_retries", "oauth_client_id",
    "oauth_client_key", "oauth_key_id", "oauth_auth_server", "oauth_scope", "default_client",
)

# Clients the SDK's tests build without choosing upload_interval get this instead of 0.5 s:
# each of their flush() calls waits out one batch window, and the pipeline never touches
# batching. Tests that pass upload_interval keep theirs.
FAST_UPLOAD_INTERVAL = 0.05
_UPLOAD_INTERVAL_POSITION = 13  # in Client.__init__(write_key, host, ..., upload_interval)

# How long a finished test may take to let its consumer threads upload what they hold.
_DRAIN_SECONDS = 5.0

_lock = threading.Lock()
_sink: Optional[FakeSprig] = None
_adapter: Optional[LoopbackOnlyAdapter] = None


class LoopbackOnlyAdapter(HTTPAdapter):
    """A ``requests`` adapter that sends every non-loopback URL to a loopback server instead.

    The path and query are kept (Segment's ``/v1/batch`` stays ``/v1/batch``), proxies are
    never used, so nothing can leave 127.0.0.1 whatever host or proxy a test configured.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target_netloc = urlsplit(target).netloc
        self.rerouted: List[str] = []

    def send(  # type: ignore[override]
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        parts = urlsplit(str(request.url))
        if parts.hostname not in LOOPBACK_HOSTS:
            self.rerouted.append(str(request.url))
            request.url = urlunsplit(("http", self.target_netloc, parts.path, parts.query, ""))
            request.headers.pop("Host", None)
        # proxies={}: a proxy (from a test or the environment) would be a way off the machine.
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                            proxies={})


def loopback_sink() -> FakeSprig:
    """This process's loopback server standing in for Segment (started on first use)."""
    global _sink
    with _lock:
        if _sink is None:
            _sink = FakeSprig().start()
        return _sink


def guard_segment_http() -> LoopbackOnlyAdapter:
    """Reroute all HTTP of analytics-python's sessions to :func:`loopback_sink` (idempotent).

    Left in place for the rest of the process on purpose: the SDK's tests leave consumer
    threads (and messages in their queues) behind, which may upload after the test ended.
    Loopback URLs pass through unchanged, so other tests' clients are unaffected.
    """
    global _adapter
    sink = loopback_sink()
    with _lock:
        if _adapter is None:
            _adapter = LoopbackOnlyAdapter(sink.url)
        for session in (sdk_request._session, sdk_oauth._session):
            session.trust_env = False  # no proxies or .netrc from the environment
            session.mount("http://", _adapter)
            session.mount("https://", _adapter)
        return _adapter


def sdk_test_module(name: str) -> Optional[ModuleType]:
    """Import ``segment.analytics.test.<name>``, or None if this SDK version lacks it."""
    try:
        return importlib.import_module(f"segment.analytics.test.{name}")
    except ImportError:
        return None


def sdk_case(module: str, name: str) -> type[unittest.TestCase]:
    """The SDK's ``TestCase`` class ``module.name``, or a skipped stand-in if it is missing."""
    found = sdk_test_module(module)
    case = getattr(found, name, None) if found is not None else None
    if isinstance(case, type) and issubclass(case, unittest.TestCase):
        return case

    @unittest.skip(f"segment.analytics.test.{module}.{name} is not in this analytics-python")
    class Missing(unittest.TestCase):
        def test_missing(self) -> None:
            """Stands in for the absent SDK test class."""

    return Missing


def opt_in(names: Iterable[str], reason: str) -> Callable[[type], type]:
    """Class decorator: run the inherited tests ``names`` only when SDK_COMPAT_FULL is set."""
    why = f"{reason} (set SDK_COMPAT_FULL=1 to run it)"

    def decorate(case: type) -> type:
        for name in names:
            test = getattr(case, name, None)
            if callable(test):
                setattr(case, name, unittest.skipUnless(FULL_SDK_SUITE, why)(test))
        return case

    return decorate


class NoopPlugin:
    """A destination plugin that does nothing but count what reaches it."""

    def __init__(self) -> None:
        self.before = 0
        self.enrich = 0
        self.destination: List[Dict[str, Any]] = []
        self.after: List[Tuple[str, bool]] = []
        self.flushes = 0
        self.shutdowns = 0

    @hookimpl
    def analytics_before(self, message: Dict[str, Any]) -> None:
        self.before += 1

    @hookimpl
    def analytics_enrich(self, message: Dict[str, Any]) -> None:
        self.enrich += 1

    @hookimpl
    def analytics_destination(self, message: Dict[str, Any]) -> None:
        self.destination.append(message)

    @hookimpl
    def analytics_after(self, message: Dict[str, Any], success: bool) -> None:
        self.after.append((message["messageId"], success))

    @hookimpl
    def analytics_flush(self) -> None:
        self.flushes += 1

    @hookimpl
    def analytics_shutdown(self) -> None:
        self.shutdowns += 1


def quiesce_consumers(consumers: List[Consumer]) -> None:
    """Stop consumer threads; wait for those still holding messages to upload them.

    Several SDK tests patch the module-global ``segment.analytics.consumer.post`` and count
    its calls, so a thread left uploading by an earlier test would be counted there.
    A paused consumer with nothing queued ends without another request.
    """
    for consumer in consumers:
        consumer.pause()
    deadline = time.monotonic() + _DRAIN_SECONDS
    for consumer in consumers:
        if consumer.is_alive() and consumer.queue is not None and consumer.queue.unfinished_tasks:
            consumer.join(max(0.0, deadline - time.monotonic()))


def stop_oauth_poller(manager: OauthManager) -> None:
    """End an ``OauthManager``'s token poller (it has no stop method of its own).

    The poller re-arms itself with a fresh ``threading.Timer`` of the bound method after
    errors; left running it would make the requests other OAuth tests count.
    """
    manager._poller_loop = lambda: None  # the next re-arm picks this up
    for _ in range(10):
        thread = manager.thread
        if thread is None:
            return
        thread.cancel()
        thread.join(1.0)  # after a 429 it may sit in a long time.sleep(): do not wait that out
        if manager.thread is thread:
            return


class SdkCompat(unittest.TestCase):
    """Runs an SDK test with the pipeline installed and every HTTP request on loopback.

    Saves and restores ``segment.analytics``'s module settings and the ``segment`` logger
    (the SDK's tests change both), and stops the consumer threads and OAuth pollers a test
    started once it is over, so one SDK test cannot leak into the next or into ours.
    """

    with_plugin: ClassVar[bool] = False

    def setUp(self) -> None:
        guard_segment_http()
        self.assertTrue(analytics_sprig.installed(), "the pipeline must be installed")
        self.sdk_clients: List[Tuple[Client, Optional[NoopPlugin]]] = []
        self._save_sdk_state()
        # Each SDK test starts from a fresh default client, as in a fresh process.
        analytics.default_client = None
        self._record_construction()
        super().setUp()

    def _save_sdk_state(self) -> None:
        settings = {name: getattr(analytics, name) for name in SDK_SETTINGS}
        log = logging.getLogger("segment")
        handlers, level = list(log.handlers), log.level

        def restore() -> None:
            for name, value in settings.items():
                setattr(analytics, name, value)
            log.handlers[:] = handlers
            log.setLevel(level)

        self.addCleanup(restore)

    def _record_construction(self) -> None:
        client_init = Client.__dict__["__init__"]
        consumer_init = Consumer.__dict__["__init__"]
        oauth_init = OauthManager.__dict__["__init__"]
        consumers: List[Consumer] = []
        managers: List[OauthManager] = []
        case = self

        def new_client(client: Client, *args: Any, **kwargs: Any) -> None:
            if len(args) <= _UPLOAD_INTERVAL_POSITION:
                kwargs.setdefault("upload_interval", FAST_UPLOAD_INTERVAL)
            client_init(client, *args, **kwargs)
            plugin = None
            if case.with_plugin:
                plugin = NoopPlugin()
                client.add_plugin(plugin)
            case.sdk_clients.append((client, plugin))

        def new_consumer(consumer: Consumer, *args: Any, **kwargs: Any) -> None:
            consumer_init(consumer, *args, **kwargs)
            consumers.append(consumer)

        def new_oauth_manager(manager: OauthManager, *args: Any, **kwargs: Any) -> None:
            oauth_init(manager, *args, **kwargs)
            managers.append(manager)

        Client.__init__ = new_client  # type: ignore[method-assign]
        Consumer.__init__ = new_consumer  # type: ignore[method-assign]
        OauthManager.__init__ = new_oauth_manager  # type: ignore[method-assign]

        def undo() -> None:
            Client.__init__ = client_init  # type: ignore[method-assign]
            Consumer.__init__ = consumer_init  # type: ignore[method-assign]
            OauthManager.__init__ = oauth_init  # type: ignore[method-assign]
            for manager in managers:
                stop_oauth_poller(manager)
            quiesce_consumers(consumers)

        self.addCleanup(undo)
        if self.with_plugin:
            self.addCleanup(self._check_plugins)

    def _check_plugins(self) -> None:
        for client, plugin in self.sdk_clients:
            pipeline = pipeline_of(client)
            self.assertIn(plugin, pipeline.plugins())
            self.assertTrue(pipeline.active)
            self.assertEqual(pipeline.plugin_errors, 0)


class NoPlugins(SdkCompat):
    """Variant 1: pipeline installed, clients without plugins."""

    with_plugin = False


class WithNoopPlugin(SdkCompat):
    """Variant 2: every ``Client`` gets a :class:`NoopPlugin` right after construction."""

    with_plugin = True
