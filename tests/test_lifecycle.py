"""Lifecycle you can trust: bounded flush/join/shutdown through analytics-python, fork
safety for Segment's own delivery, one source of truth for registration, sync_mode.

Every "down" test uses a Sprig that accepts connections and never answers
(``FakeSprig.blackhole()``) while Segment's ``/v1/batch`` is a second, answering fake: the
plugins' part must be bounded by the destination's options whatever Segment does, and
Segment's own part is analytics-python's (tested separately with an explicit timeout).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pluggy
import pytest
import requests
import segment.analytics as analytics
import segment.analytics.request as sdk_request
from requests.adapters import HTTPAdapter
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import MessageDropped, SprigDestination, hookimpl, pipeline_of
from analytics_sprig.pipeline import PipelineManager, fork_safe
from analytics_sprig.testing import FakeSprig

API_KEY = "test-key"
ROOT = Path(__file__).resolve().parent.parent
SHUTDOWN_TIMEOUT = 2.0
FLUSH_TIMEOUT = 1.5
SLACK = 1.0  # "returns within its bound + 1 s"

# Python 3.12+ warns on fork() in a process with threads; these tests fork on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def segment() -> Iterator[FakeSprig]:
    """Segment's side: a fake that answers ``/v1/batch``."""
    with FakeSprig() as server:
        yield server


@pytest.fixture
def sprig() -> Iterator[FakeSprig]:
    """Sprig's side: a fake expecting ``API-Key test-key`` (tests blackhole it)."""
    with FakeSprig(api_key=API_KEY) as server:
        yield server


def stop_bounded(client: Client) -> None:
    for consumer in client.consumers or ():
        consumer.pause()
        if consumer.is_alive():
            consumer.join(2)
    pipeline_of(client).shutdown(2)


@pytest.fixture
def make_client(segment: FakeSprig) -> Iterator[Callable[..., Client]]:
    clients: List[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("host", segment.url)
        kwargs.setdefault("upload_interval", 0.05)
        kwargs.setdefault("max_retries", 2)
        kwargs.setdefault("timeout", 3)
        client = Client("write-key", **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        stop_bounded(client)


@pytest.fixture
def make_sprig(sprig: FakeSprig) -> Iterator[Callable[..., SprigDestination]]:
    """SprigDestinations with the default retry budget and short lifecycle bounds."""
    made: List[SprigDestination] = []

    def make(**kwargs: Any) -> SprigDestination:
        options: Dict[str, Any] = {"endpoint": sprig.url, "flush_interval": 0.02,
                                   "shutdown_timeout": SHUTDOWN_TIMEOUT,
                                   "flush_timeout": FLUSH_TIMEOUT, **kwargs}
        destination = SprigDestination(API_KEY, **options)
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.shutdown(timeout=1)


MODULE_SETTINGS = ("write_key", "host", "send", "sync_mode", "on_error", "default_client")


@pytest.fixture
def default_client(segment: FakeSprig) -> Iterator[None]:
    """segment.analytics pointed at the Segment fake, with a fresh default client."""
    saved = {name: getattr(analytics, name, None) for name in MODULE_SETTINGS}
    analytics.default_client = None
    analytics.write_key = "write-key"
    analytics.host = segment.url
    try:
        yield
    finally:
        client = analytics.default_client
        if client is not None and client is not saved["default_client"]:
            stop_bounded(client)
        for name, value in saved.items():
            setattr(analytics, name, value)


def fast_default_client(segment: FakeSprig) -> Client:
    """The default client as ``_proxy`` makes it, with a short batch window."""
    client = Client("write-key", host=segment.url, upload_interval=0.05)
    analytics.default_client = client
    return client


@pytest.fixture
def restore_install() -> Iterator[None]:
    try:
        yield
    finally:
        analytics_sprig.install()


class Tracker:
    """Counts lifecycle hook calls (and the timeouts they got)."""

    def __init__(self) -> None:
        self.flushes: List[Optional[float]] = []
        self.shutdowns: List[Optional[float]] = []
        self.messages: List[Dict[str, Any]] = []

    @hookimpl
    def analytics_destination(self, message: Dict[str, Any]) -> None:
        self.messages.append(message)

    @hookimpl
    def analytics_flush(self, timeout: Optional[float]) -> bool:
        self.flushes.append(timeout)
        return True

    @hookimpl
    def analytics_shutdown(self, timeout: Optional[float]) -> None:
        self.shutdowns.append(timeout)


class LifecycleOnly:
    @hookimpl
    def analytics_shutdown(self, timeout: Optional[float]) -> None:
        self.timeout = timeout


def timed(call: Callable[[], Any]) -> Tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def queue_for_sprig_down(client: Client, sprig: FakeSprig, count: int = 3) -> None:
    """Send ``count`` calls while Sprig accepts and never answers; wait until one is sent."""
    sprig.blackhole()
    for i in range(count):
        client.track(f"user-{i}", "Order Completed")
    assert sprig.wait_for_requests(1, timeout=5)  # the worker is stuck in a request


# -- 1. bounded with Sprig down ----------------------------------------------------------------


def test_client_shutdown_is_bounded_and_reports_what_it_dropped(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination],
    sprig: FakeSprig, segment: FakeSprig,
) -> None:
    reported: List[Tuple[BaseException, List[Dict[str, Any]]]] = []
    client = make_client()
    destination = make_sprig(on_error=lambda exc, messages: reported.append((exc, messages)))
    client.add_plugin(destination)
    queue_for_sprig_down(client, sprig)

    _, elapsed = timed(client.shutdown)

    assert elapsed < SHUTDOWN_TIMEOUT + SLACK
    stats = destination.stats()
    assert stats["dropped"] == 3 and stats["pending"] == 0
    assert stats["received"] == stats["skipped"] + stats["delivered"] + stats["failed"] \
        + stats["dropped"] + stats["pending"]
    dropped = [m for exc, messages in reported if isinstance(exc, MessageDropped)
               for m in messages]
    assert len(dropped) == 3
    assert all(exc.reason == "shutdown" for exc, _ in reported if isinstance(exc, MessageDropped))
    # Segment's own part still happened: its queue was flushed and its consumer stopped.
    assert [m["event"] for m in segment.segment_messages] == ["Order Completed"] * 3
    assert not any(consumer.is_alive() for consumer in client.consumers)


def test_client_join_is_bounded(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination],
    sprig: FakeSprig,
) -> None:
    client = make_client()
    destination = make_sprig()
    client.add_plugin(destination)
    queue_for_sprig_down(client, sprig)

    _, elapsed = timed(client.join)

    assert elapsed < SHUTDOWN_TIMEOUT + SLACK
    assert destination.stats()["dropped"] == 3


def test_client_flush_without_timeout_is_bounded_by_flush_timeout(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination],
    sprig: FakeSprig,
) -> None:
    client = make_client()
    destination = make_sprig()
    client.add_plugin(destination)
    queue_for_sprig_down(client, sprig)

    drained, elapsed = timed(client.flush)
    assert drained is False  # a bool with plugins: still pending at the deadline
    assert FLUSH_TIMEOUT - 0.2 <= elapsed < FLUSH_TIMEOUT + SLACK
    assert destination.stats()["pending"] == 3  # a flush keeps them queued

    drained, elapsed = timed(lambda: client.flush(timeout=0.3))  # an explicit timeout wins
    assert drained is False
    assert elapsed < 0.3 + SLACK


@pytest.mark.usefixtures("default_client")
def test_module_shutdown_is_bounded_and_calls_one_plugin_shutdown(
    make_sprig: Callable[..., SprigDestination], sprig: FakeSprig, segment: FakeSprig
) -> None:
    fast_default_client(segment)
    destination = make_sprig()
    tracker = Tracker()
    analytics.add_plugin(destination)
    analytics.add_plugin(tracker)
    sprig.blackhole()
    for i in range(3):
        analytics.track(f"user-{i}", "Module Call")
    assert sprig.wait_for_requests(1, timeout=5)

    _, elapsed = timed(analytics.shutdown)

    assert elapsed < SHUTDOWN_TIMEOUT + SLACK
    assert destination.stats()["dropped"] == 3
    # One bounded analytics_shutdown per plugin, not an unbounded flush before it.
    assert (tracker.flushes, tracker.shutdowns) == ([], [None])
    assert [m["event"] for m in segment.segment_messages] == ["Module Call"] * 3


@pytest.mark.usefixtures("default_client")
def test_module_flush_is_bounded_and_returns_the_clients_result(
    make_sprig: Callable[..., SprigDestination], sprig: FakeSprig, segment: FakeSprig
) -> None:
    fast_default_client(segment)
    analytics.track("user-0", "No Plugin Yet")
    assert analytics.flush() is None  # no plugins: exactly analytics-python's flush()
    assert analytics.flush(timeout=5) is True  # an explicit timeout: always a bool

    destination = make_sprig()
    analytics.add_plugin(destination)
    assert analytics.flush() is True  # drained
    sprig.blackhole()
    analytics.track("user-1", "Stuck")
    assert sprig.wait_for_requests(1, timeout=5)

    drained, elapsed = timed(analytics.flush)
    assert drained is False
    assert elapsed < FLUSH_TIMEOUT + SLACK
    drained, elapsed = timed(lambda: analytics.flush(timeout=0.2))
    assert drained is False and elapsed < 0.2 + SLACK


def test_explicit_timeout_bounds_segments_part_too(
    make_client: Callable[..., Client], segment: FakeSprig
) -> None:
    tracker = Tracker()
    client = make_client(timeout=30)  # a long Segment request timeout
    client.add_plugin(tracker)
    segment.blackhole()
    client.track("u1", "Segment Down")
    assert segment.wait_for_requests(1, timeout=5)

    drained, elapsed = timed(lambda: client.flush(timeout=0.5))
    assert drained is False and elapsed < 0.5 + SLACK
    assert tracker.flushes and tracker.flushes[0] is not None and tracker.flushes[0] <= 0.5

    _, elapsed = timed(lambda: client.shutdown(timeout=0.5))
    assert elapsed < 0.5 + SLACK
    assert len(tracker.shutdowns) == 1 and tracker.shutdowns[0] is not None
    segment.blackhole(False)


def test_a_plugins_bound_is_its_own_without_a_timeout(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    tracker = Tracker()
    client.add_plugin(tracker)
    assert client.flush() is True
    client.join()
    client.shutdown()
    assert tracker.flushes == [None]  # None means "the plugin's own default bound"
    assert tracker.shutdowns == [None, None]


# -- 2. the process exits within its bound -------------------------------------------------------

EXIT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    import segment.analytics as analytics
    import analytics_sprig
    from analytics_sprig import MessageDropped, SprigDestination

    segment_url, sprig_url, explicit = sys.argv[1], sys.argv[2], sys.argv[3] == "explicit"

    def on_error(exc, messages):
        kind = exc.reason if isinstance(exc, MessageDropped) else type(exc).__name__
        print(f"on_error {kind} {len(messages)}", flush=True)

    logging.basicConfig(level=logging.WARNING)  # the app's logging: warnings to stderr
    analytics.write_key = "write-key"
    analytics.host = segment_url
    sprig = SprigDestination("test-key", endpoint=sprig_url, shutdown_timeout=2,
                             flush_interval=0.02, on_error=on_error)
    analytics.add_plugin(sprig)
    for i in range(4):
        analytics.track(f"user-{i}", "Exit Test")
    time.sleep(0.3)  # the worker is in its first request by now
    if explicit:
        started = time.monotonic()
        analytics.shutdown()
        print(f"shutdown took {time.monotonic() - started:.3f}", flush=True)
    print(f"stats {sprig.stats()['dropped']} {sprig.stats()['pending']}", flush=True)
    print(f"exiting at {time.time():.3f}", flush=True)
    """
)


@pytest.mark.parametrize("how", ["explicit", "atexit"])
def test_a_process_with_sprig_down_exits_within_its_bound_and_reports(
    how: str, sprig: FakeSprig, segment: FakeSprig, tmp_path: Path
) -> None:
    sprig.blackhole()
    script = tmp_path / "exit_test.py"
    script.write_text(EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), segment.url, sprig.url, how],
                          capture_output=True, text=True, timeout=60, env=env)
    ended = time.time()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    exiting_at = float(next(line for line in lines if line.startswith("exiting at")).split()[-1])
    if how == "explicit":
        took = float(next(line for line in lines if line.startswith("shutdown took")).split()[-1])
        assert took < SHUTDOWN_TIMEOUT + SLACK
        assert "stats 4 0" in lines  # dropped at the deadline, nothing left pending
        assert ended - exiting_at < SLACK  # and the exit path has nothing left to wait on
    else:
        assert "stats 0 4" in lines  # still pending when the script ended
        assert ended - exiting_at < SHUTDOWN_TIMEOUT + SLACK  # the exit path is bounded
    # Reported, never silently: on_error with MessageDropped("shutdown") and a warning log.
    assert sum(int(line.split()[-1]) for line in lines
               if line.startswith("on_error shutdown")) == 4
    warnings = [line for line in done.stderr.splitlines()
                if line.startswith("WARNING:analytics_sprig:")]
    assert any("4" in line for line in warnings), done.stderr  # a warning names the count
    assert "Traceback" not in done.stderr
    # Segment's own part: its four calls were delivered before the process ended.
    assert [m["event"] for m in segment.segment_messages] == ["Exit Test"] * 4


EXIT_HOOK_SCRIPT = textwrap.dedent(
    """
    import sys
    from segment.analytics import Client
    import analytics_sprig
    from analytics_sprig import hookimpl

    class Plugin:
        @hookimpl
        def analytics_shutdown(self, timeout):
            print(f"shutdown {timeout}", flush=True)

    # No atexit of analytics-python's own for these: sync_mode, send=False.
    clients = [Client("write-key", sync_mode=True), Client("write-key", send=False)]
    for client in clients:
        client.add_plugin(Plugin())
    """
)


def test_plugins_of_clients_without_segments_atexit_are_shut_down_at_exit(
    tmp_path: Path,
) -> None:
    script = tmp_path / "exit_hook.py"
    script.write_text(EXIT_HOOK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["shutdown None", "shutdown None"]


# -- 3. fork: Segment's own delivery in the child ----------------------------------------------


def run_in_child(child: Callable[[], Dict[str, Any]], timeout: float = 20) -> Dict[str, Any]:
    """Fork; run ``child`` there and return what it returned (a picklable dict)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            result = child()
            os.write(write_end, pickle.dumps(result))
            code = 0
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(write_end, pickle.dumps({"error": repr(exc)}))
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, 9)
                pytest.fail("the child of fork() hung")
            ready, _, _ = select.select([read_end], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    result: Dict[str, Any] = pickle.loads(b"".join(chunks)) if chunks else {}
    assert "error" not in result, result.get("error")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, result
    return result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_after_fork_the_child_gets_fresh_segment_consumers_and_the_parent_keeps_its_queue(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination],
    segment: FakeSprig, sprig: FakeSprig,
) -> None:
    client = make_client()
    client.add_plugin(make_sprig())
    # Hold the parent's consumer in a slow request so later calls wait in its queue.
    segment.inject(status=None, delay=1.5, path="/v1/batch")
    client.track("parent", "Parent 1")
    deadline = time.monotonic() + 5
    while client.queue.qsize() and time.monotonic() < deadline:  # the consumer took it
        time.sleep(0.01)
    time.sleep(0.3)  # its 0.05 s batch window is over: it is in the (1.5 s) request now
    client.track("parent", "Parent 2")
    client.track("parent", "Parent 3")
    parent_queue, parent_consumers = client.queue, list(client.consumers)
    assert parent_queue.qsize() == 2
    parent_session = id(sdk_request._session)

    def child() -> Dict[str, Any]:
        fresh = {
            "queue_is_new": client.queue is not parent_queue,
            "queue_size": client.queue.qsize(),
            "maxsize": client.queue.maxsize,
            "consumers_new": all(c not in parent_consumers for c in client.consumers),
            "alive": [c.is_alive() for c in client.consumers],
            "upload_interval": [c.upload_interval for c in client.consumers],
            "session_is_new": id(sdk_request._session) != parent_session,
        }
        client.track("child-user", "Child Event")
        fresh["flushed"] = client.flush(timeout=10)  # upstream: waits forever in Queue.join
        client.shutdown(timeout=5)
        return fresh

    seen = run_in_child(child)
    assert seen["queue_is_new"] and seen["queue_size"] == 0
    assert seen["maxsize"] == parent_queue.maxsize
    assert seen["consumers_new"] and seen["alive"] == [True]
    assert seen["upload_interval"] == [0.05]  # the parent's configuration
    assert seen["session_is_new"]
    assert seen["flushed"] is True
    # The parent's queue is untouched by the child: it still holds its two calls...
    assert client.queue is parent_queue and client.consumers == parent_consumers
    assert client.flush(timeout=10) is True
    # ...which reach Segment once each, from the parent; the child sent only its own call.
    events = sorted(m["event"] for m in segment.segment_messages)
    assert events == ["Child Event", "Parent 1", "Parent 2", "Parent 3"]
    assert "child-user" in sprig.users  # the child's Sprig worker delivered as well


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_without_plugins_or_opt_in_fork_behaves_as_analytics_python(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    queue_before, consumers_before = client.queue, client.consumers

    def child() -> Dict[str, Any]:
        return {
            "same": client.queue is queue_before and client.consumers is consumers_before,
            "alive": [c.is_alive() for c in client.consumers],  # threads do not survive fork
        }

    # (The sessions are renewed if any other client of this process is fork-safe.)
    assert run_in_child(child) == {"same": True, "alive": [False]}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_after_uninstall_the_fork_hook_does_nothing(
    make_client: Callable[..., Client], restore_install: None
) -> None:
    client = make_client()
    client.add_plugin(Tracker())
    fork_safe(client)
    analytics_sprig.uninstall()  # Python cannot unregister a fork hook: it must be inert
    queue_before, consumers_before = client.queue, client.consumers

    def child() -> Dict[str, Any]:
        return {"same": client.queue is queue_before and client.consumers is consumers_before}

    assert run_in_child(child) == {"same": True}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_fork_safe_opts_in_a_client_without_plugins(
    make_client: Callable[..., Client], segment: FakeSprig
) -> None:
    client = make_client()
    assert fork_safe(client) is client

    def child() -> Dict[str, Any]:
        client.track("child", "Opted In")
        return {"flushed": client.flush(timeout=10)}

    assert run_in_child(child) == {"flushed": True}
    assert [m["event"] for m in segment.segment_messages] == ["Opted In"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
@pytest.mark.usefixtures("default_client")
def test_fork_safe_without_a_client_opts_in_the_default_client(segment: FakeSprig) -> None:
    fork_safe()
    try:
        analytics.track("parent", "Made The Default Client")
        assert analytics.flush(timeout=10) is True

        def child() -> Dict[str, Any]:
            analytics.track("child", "Default Client Child")
            return {"flushed": analytics.flush(timeout=10)}

        assert run_in_child(child) == {"flushed": True}
    finally:
        analytics_sprig.uninstall()  # forgets the module-wide opt-in
        analytics_sprig.install()
    assert sorted(m["event"] for m in segment.segment_messages) == [
        "Default Client Child", "Made The Default Client"]


class CountingAdapter(HTTPAdapter):
    """A custom adapter (as an app might mount on analytics-python's session)."""

    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_the_childs_session_keeps_the_parents_configuration_without_its_sockets(
    make_client: Callable[..., Client], segment: FakeSprig
) -> None:
    client = make_client()
    client.add_plugin(Tracker())
    original = sdk_request._session
    session = requests.Session()
    session.headers["X-Test"] = "kept"
    session.trust_env = False
    adapter = CountingAdapter("mine")
    session.mount("http://127.0.0.1", adapter)
    sdk_request._session = session
    try:
        client.track("u", "Warm The Pool")
        assert client.flush(timeout=10) is True
        pools = id(adapter.poolmanager)

        def child() -> Dict[str, Any]:
            new = sdk_request._session
            mounted = new.get_adapter(segment.url)
            client.track("child", "Through The Custom Adapter")
            return {
                "new_session": new is not session,
                "headers": new.headers.get("X-Test"),
                "trust_env": new.trust_env,
                "adapter": getattr(mounted, "label", None),
                "fresh_pools": id(mounted.poolmanager) != pools,
                "flushed": client.flush(timeout=10),
            }

        assert run_in_child(child) == {"new_session": True, "headers": "kept",
                                       "trust_env": False, "adapter": "mine",
                                       "fresh_pools": True, "flushed": True}
    finally:
        sdk_request._session = original
    assert sorted(m["event"] for m in segment.segment_messages) == [
        "Through The Custom Adapter", "Warm The Pool"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_fork_with_a_joined_client_does_not_restart_its_consumers(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    client.add_plugin(Tracker())
    client.join()  # stopped before the fork: the child's fresh consumers stay stopped
    sync = make_client(sync_mode=True)
    sync.add_plugin(Tracker())

    def child() -> Dict[str, Any]:
        sync.shutdown()
        return {"alive": [c.is_alive() for c in client.consumers],
                "sync_consumers": sync.consumers}

    assert run_in_child(child) == {"alive": [False], "sync_consumers": None}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_child_of_fork_does_not_wait_on_a_lookup_its_parent_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading

    import httpcore

    from analytics_sprig.sprig._resolver import RESOLVER

    release = threading.Event()

    def hangs(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hangs)
    try:
        with pytest.raises(httpcore.ConnectTimeout):
            RESOLVER.addresses("sprig.invalid", 443, 0.05)  # its thread is still waiting

        def child() -> Dict[str, Any]:
            # The parent's lookup thread does not exist here: a lookup must start afresh.
            socket.getaddrinfo = lambda *a, **k: [  # type: ignore[assignment]
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443))]
            try:
                return {"addresses": RESOLVER.addresses("sprig.invalid", 443, 2)}
            except httpcore.ConnectTimeout:
                return {"addresses": "timed out"}

        assert run_in_child(child)["addresses"] == ["192.0.2.7"]
    finally:
        release.set()


# -- 4. one source of truth: client.plugin_manager ----------------------------------------------


def test_plugin_manager_register_works_exactly_like_add_plugin(
    make_client: Callable[..., Client], segment: FakeSprig
) -> None:
    client = make_client()
    pm = client.plugin_manager
    assert isinstance(pm, pluggy.PluginManager) and isinstance(pm, PipelineManager)
    tracker = Tracker()
    assert pm.register(tracker, name="tracker") == "tracker"
    assert pipeline_of(client).active

    client.track("u1", "Via Register")
    assert [m["event"] for m in tracker.messages] == ["Via Register"]
    assert client.flush() is True and tracker.flushes == [None]
    assert client.find_plugin("tracker") is tracker

    pm.unregister(tracker)
    client.track("u1", "After Unregister")
    assert [m["event"] for m in tracker.messages] == ["Via Register"]
    assert not pipeline_of(client).active
    assert client.flush() is None  # no plugins left: analytics-python's flush() again

    other = Tracker()
    pm.register(other, name="other")
    pm.unregister(name="other")  # by name
    client.track("u1", "Unseen")
    assert other.messages == []

    blocked = Tracker()
    pm.register(blocked, name="blocked")
    pm.set_blocked("blocked")  # pluggy unregisters it through unregister()
    client.track("u1", "Blocked")
    assert blocked.messages == [] and client.find_plugin("blocked") is None
    assert client.flush(timeout=5) is True
    assert sorted(m["event"] for m in segment.segment_messages) == [
        "After Unregister", "Blocked", "Unseen", "Via Register"]


def test_plugin_manager_register_rejects_wrappers_and_invalid_hooks(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    pm = client.plugin_manager

    class Wrapper:
        @hookimpl(wrapper=True)
        def analytics_destination(self) -> Iterator[None]:
            yield

        @hookimpl
        def analytics_before(self) -> None:
            raise AssertionError("must never run: the plugin was rejected")

    class OldStyleWrapper:
        @hookimpl(hookwrapper=True)
        def analytics_shutdown(self) -> Iterator[None]:
            yield

    class Typo:
        @hookimpl
        def analytics_destinaton(self) -> None:
            """Misspelled on purpose."""

    for plugin in (Wrapper(), OldStyleWrapper()):
        with pytest.raises(ValueError, match="wrapper"):
            pm.register(plugin)
        assert not pm.is_registered(plugin)
    with pytest.raises(pluggy.PluginValidationError):
        pm.register(Typo())
    assert pm.get_plugins() == set()
    assert not pipeline_of(client).active
    assert client.track("u1", "Untouched")[0] is True
    assert pipeline_of(client).plugin_errors == 0

    kept = Tracker()
    pm.register(kept)
    with pytest.raises(ValueError):
        pm.register(kept)  # pluggy's "already registered": the first registration stays
    client.track("u1", "Kept")
    assert [m["event"] for m in kept.messages] == ["Kept"]


def test_plugin_manager_refuses_monitoring_it_could_not_honour(
    make_client: Callable[..., Client],
) -> None:
    pm = make_client().plugin_manager
    with pytest.raises(NotImplementedError, match="directly"):
        pm.enable_tracing()
    with pytest.raises(NotImplementedError):
        pm.add_hookcall_monitoring(lambda *a: None, lambda *a: None)


def test_plugin_manager_hook_calls_still_work(make_client: Callable[..., Client]) -> None:
    client = make_client()
    tracker = Tracker()
    client.add_plugin(tracker)
    assert client.plugin_manager.hook.analytics_flush(timeout=1.0) == [True]
    assert tracker.flushes == [1.0]


# -- 5. sync_mode join/shutdown ------------------------------------------------------------------


@pytest.mark.usefixtures("restore_install")
def test_sync_mode_shutdown_raises_inside_analytics_python_itself(segment: FakeSprig) -> None:
    analytics_sprig.uninstall()
    client = Client("write-key", host=segment.url, sync_mode=True)
    with pytest.raises(TypeError):
        client.shutdown()
    with pytest.raises(TypeError):
        client.join()


@pytest.mark.parametrize("method", ["shutdown", "join"])
def test_sync_mode_shutdown_and_join_work_with_the_plugin_api(
    method: str, make_client: Callable[..., Client], segment: FakeSprig
) -> None:
    bare = make_client(sync_mode=True)
    getattr(bare, method)()  # no plugins: works too (Segment has nothing to join)

    client = make_client(sync_mode=True)
    tracker = Tracker()
    client.add_plugin(tracker)
    client.track("u1", "Sync")
    assert [m["event"] for m in segment.segment_messages] == ["Sync"]  # sent in the call
    getattr(client, method)()
    assert tracker.shutdowns == [None]
    getattr(client, method)(timeout=1)
    assert len(tracker.shutdowns) == 2 and 0 <= (tracker.shutdowns[1] or 0) <= 1


def test_sync_mode_shutdown_shuts_a_sprig_destination_down(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination],
    sprig: FakeSprig,
) -> None:
    client = make_client(sync_mode=True)
    destination = make_sprig()
    client.add_plugin(destination)
    client.track("u1", "Sync Sprig")
    assert "u1" in sprig.users  # delivered before the call returned
    client.shutdown()
    client.track("u1", "After Shutdown")
    assert destination.stats()["dropped"] == 1  # its worker is stopped


# -- 6. find_plugin / find_plugins ----------------------------------------------------------------


class Special(Tracker):
    pass


def test_find_plugin_by_type_or_name(
    make_client: Callable[..., Client], make_sprig: Callable[..., SprigDestination]
) -> None:
    client = make_client()
    assert client.find_plugin(SprigDestination) is None
    assert client.find_plugins(Tracker) == []
    first, second, special = Tracker(), Tracker(), Special()
    destination = make_sprig()
    client.add_plugin(first, name="first")
    client.add_plugin(destination, name="sprig")
    client.add_plugin(second)
    client.add_plugin(special, name="special")

    assert client.find_plugin(SprigDestination) is destination
    assert client.find_plugin(Tracker) is first  # the first registered
    assert client.find_plugins(Tracker) == [first, second, special]  # registration order
    assert client.find_plugins(Special) == [special]
    assert client.find_plugins((Special, SprigDestination)) == [destination, special]
    assert client.find_plugin("sprig") is destination
    assert client.find_plugin("special") is special
    assert client.find_plugin("nope") is None and client.find_plugins("nope") == []
    with pytest.raises(TypeError):
        client.find_plugin(42)  # type: ignore[arg-type]

    client.remove_plugin(first)
    assert client.find_plugin(Tracker) is second
    assert client.find_plugin("first") is None


@pytest.mark.usefixtures("default_client")
def test_module_level_find_plugin_uses_the_default_client() -> None:
    assert analytics.find_plugin(Tracker) is None  # no default client yet: none created
    assert analytics.find_plugins(Tracker) == []
    assert analytics.default_client is None
    analytics.send = False
    tracker = Tracker()
    analytics.add_plugin(tracker, "tracker")
    assert analytics.find_plugin(Tracker) is tracker
    assert analytics.find_plugin("tracker") is tracker
    assert analytics.find_plugins(Tracker) == [tracker]
    assert analytics.default_client.find_plugin(Tracker) is tracker


# -- 7. uninstall -------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_install")
def test_uninstall_restores_the_module_functions_and_client_shutdown(
    segment: FakeSprig,
) -> None:
    originals = (analytics.flush, analytics.join, analytics.shutdown, Client.shutdown)
    analytics_sprig.uninstall()
    restored = (analytics.flush, analytics.join, analytics.shutdown, Client.shutdown)
    for function in restored:
        assert function.__module__.startswith("segment.analytics"), function
    assert all(a is not b for a, b in zip(originals, restored))
    analytics_sprig.install()
    assert (analytics.flush, analytics.join, analytics.shutdown, Client.shutdown) == originals
