"""The plugin host (``_host.py`` / ``hookspecs.py``) driven through real analytics-python clients.

Every client sends Segment's ``/v1/batch`` to a FakeSprig on 127.0.0.1 (``conftest.py``), so
"Segment received it" below means a real HTTP request arrived there.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pluggy
import pytest
import segment.analytics as analytics
from segment.analytics import Client

from analytics_sprig import SprigDestination, hookimpl, load_plugins, pipeline_of
from analytics_sprig.testing import FakeSprig

Message = Dict[str, Any]
Event = Tuple[str, str, Any]  # (plugin name, hook, details)


class Recorder:
    """Records each hook call into a log shared by several plugins, to see the order."""

    def __init__(self, name: str, log: Optional[List[Event]] = None) -> None:
        self.name = name
        self.log: List[Event] = [] if log is None else log
        self.messages: Dict[str, List[Message]] = {}

    def _record(self, hook: str, message: Message) -> None:
        self.log.append((self.name, hook, message.get("event")))
        self.messages.setdefault(hook, []).append(message)

    def seen(self, hook: str) -> List[Any]:
        """The ``event`` of each message this plugin's ``hook`` received."""
        return [m.get("event") for m in self.messages.get(hook, [])]

    @hookimpl
    def analytics_before(self, message: Message, client: Any) -> None:
        self._record("before", message)

    @hookimpl
    def analytics_enrich(self, message: Message, client: Any) -> None:
        self._record("enrich", message)

    @hookimpl
    def analytics_destination(self, message: Message, client: Any) -> None:
        self._record("destination", message)

    @hookimpl
    def analytics_after(self, message: Message, success: bool, client: Any) -> None:
        self.log.append((self.name, "after", (message.get("event"), success)))
        self.messages.setdefault("after", []).append(message)

    @hookimpl
    def analytics_flush(self, timeout: Optional[float]) -> None:
        self.log.append((self.name, "flush", timeout))

    @hookimpl
    def analytics_shutdown(self, timeout: Optional[float]) -> None:
        self.log.append((self.name, "shutdown", timeout))


def events(sink: FakeSprig) -> List[Any]:
    """The ``event`` of each message Segment's ``/v1/batch`` received, in order."""
    return [m.get("event") for m in sink.segment_messages]


def paused(client: Client) -> Client:
    """Stop ``client``'s consumer so its queue keeps what is enqueued (call before plugins)."""
    client.join()
    return client


# -- order and the messages each hook sees --------------------------------------------------


def test_hooks_run_in_order_around_segments_queue(make_client: Callable[..., Client]) -> None:
    client = paused(make_client())
    log: List[Event] = []
    queued_at: Dict[str, bool] = {}

    class Probe(Recorder):
        """Also notes whether the message is already in Segment's queue at each hook."""

        def _record(self, hook: str, message: Message) -> None:
            super()._record(hook, message)
            queued_at[hook] = any(m is message for m in client.queue.queue)
            if hook == "before":
                self.raw = copy.deepcopy(message)

    first, second = Recorder("first", log), Probe("second", log)
    client.add_plugin(first)
    client.add_plugin(second)  # registered last: pluggy calls it first

    success, returned = client.track(157963456373623802, "Signed Up", {"plan": "pro"})

    assert success is True
    assert log == [
        ("second", "before", "Signed Up"), ("first", "before", "Signed Up"),
        ("second", "enrich", "Signed Up"), ("first", "enrich", "Signed Up"),
        ("second", "destination", "Signed Up"), ("first", "destination", "Signed Up"),
        ("second", "after", ("Signed Up", True)), ("first", "after", ("Signed Up", True)),
    ]
    assert queued_at == {"before": False, "enrich": False, "destination": True}
    # before/enrich get the raw call; destination/after get what Segment queued.
    assert second.raw["userId"] == 157963456373623802
    assert second.raw["timestamp"] is None and second.raw["messageId"] is None
    normalized = second.messages["destination"][0]
    assert normalized is returned is client.queue.queue[0]
    assert normalized["userId"] == "157963456373623802"
    assert isinstance(normalized["timestamp"], str)
    assert datetime.fromisoformat(normalized["timestamp"]).utcoffset() is not None
    assert isinstance(normalized["messageId"], str)
    uuid.UUID(normalized["messageId"])
    assert normalized["context"]["library"]["name"] == "analytics-python"
    assert normalized["integrations"] == {}
    assert first.messages["after"][0] is normalized


def test_after_reports_segments_queue_full(make_client: Callable[..., Client]) -> None:
    client = paused(make_client(max_queue_size=1))
    recorder = Recorder("r")
    client.add_plugin(recorder)
    assert client.track("u1", "Fits")[0] is True
    success, message = client.track("u1", "Overflows")
    assert success is False and message["event"] == "Overflows"
    assert [d for _, hook, d in recorder.log if hook == "after"] == [
        ("Fits", True), ("Overflows", False)
    ]


# -- before: drop or replace; enrich: change -----------------------------------------------


class DropSecrets:
    @hookimpl
    def analytics_before(self, message: Message) -> Optional[bool]:
        return False if message.get("event") == "Secret" else None


def test_before_returning_false_drops_the_call(
    make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    client = make_client()
    recorder = Recorder("r")
    client.add_plugin(recorder)
    client.add_plugin(DropSecrets())  # runs before the recorder

    success, message = client.track("u1", "Secret")
    assert success is False
    assert message["event"] == "Secret"
    assert message["messageId"] is None  # Segment never saw it: not even normalized
    assert client.track("u1", "Public")[0] is True
    assert client.flush(timeout=5) is True

    assert events(fake_sprig) == ["Public"]
    for hook in ("before", "enrich", "destination", "after"):
        assert recorder.seen(hook) == ["Public"], hook


def test_before_returning_a_dict_replaces_the_call(
    make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    replacements: List[Message] = []

    class Rename:
        @hookimpl
        def analytics_before(self, message: Message) -> Message:
            new = {**message, "event": "Renamed", "properties": {"renamed": True}}
            replacements.append(new)
            return new

    client = make_client()
    recorder = Recorder("r")
    client.add_plugin(recorder)
    client.add_plugin(Rename())

    success, message = client.track("u1", "Original", {"renamed": False})
    assert success is True
    assert message["event"] == "Renamed" and message["properties"] == {"renamed": True}
    # Later plugins get the replacement itself.
    assert recorder.messages["before"][0] is replacements[0]
    assert recorder.messages["enrich"][0] is replacements[0]
    assert client.flush(timeout=5) is True
    [sent] = fake_sprig.segment_messages
    assert (sent["event"], sent["properties"]) == ("Renamed", {"renamed": True})


def test_enrich_changes_reach_segment_and_destinations(
    make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    class AddApp:  # mutates in place
        @hookimpl
        def analytics_enrich(self, message: Message) -> None:
            message["context"]["app"] = {"name": "shop"}

    class AddPlan:  # returns a new message
        @hookimpl
        def analytics_enrich(self, message: Message) -> Message:
            return {**message, "properties": {**message["properties"], "plan": "pro"}}

    class CannotDrop:  # enrichment cannot drop a call: False is ignored
        @hookimpl
        def analytics_enrich(self) -> bool:
            return False

    client = make_client()
    recorder = Recorder("r")
    for plugin in (recorder, AddApp(), AddPlan(), CannotDrop()):
        client.add_plugin(plugin)

    success, message = client.track("u1", "Bought", {"total": 3})
    assert success is True
    assert message["properties"] == {"total": 3, "plan": "pro"}
    assert message["context"]["app"] == {"name": "shop"}
    [seen] = recorder.messages["destination"]
    assert seen["properties"] == {"total": 3, "plan": "pro"}
    assert seen["context"]["app"] == {"name": "shop"}
    assert client.flush(timeout=5) is True
    [sent] = fake_sprig.segment_messages
    assert sent["properties"] == {"total": 3, "plan": "pro"}
    assert sent["context"]["app"] == {"name": "shop"}


# -- a failing plugin never reaches the app nor stops the others ---------------------------


def raising_plugin(hook: str) -> object:
    """A plugin whose only hook, ``hook``, raises."""

    def impl(self: object) -> None:
        raise RuntimeError(f"boom in {hook}")

    return type("Broken", (), {hook: hookimpl(impl)})()


def plugin_errors_logged(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "analytics_sprig" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "hook", ["analytics_before", "analytics_enrich", "analytics_destination", "analytics_after"]
)
def test_a_raising_per_call_hook_is_isolated(
    hook: str,
    make_client: Callable[..., Client],
    fake_sprig: FakeSprig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="analytics_sprig")
    client = make_client()
    good = Recorder("good")
    client.add_plugin(good)
    client.add_plugin(raising_plugin(hook), name="broken")  # called before the good one

    success, message = client.track("u1", "Still Works")

    assert success is True and message["event"] == "Still Works"
    for name in ("before", "enrich", "destination", "after"):
        assert len(good.messages.get(name, [])) == 1, name
    assert client.flush(timeout=5) is True
    assert events(fake_sprig) == ["Still Works"]
    assert pipeline_of(client).plugin_errors == 1
    [record] = plugin_errors_logged(caplog)
    assert f"broken.{hook}" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == f"boom in {hook}"


@pytest.mark.parametrize("hook", ["analytics_flush", "analytics_shutdown"])
def test_a_raising_lifecycle_hook_is_isolated(
    hook: str, make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="analytics_sprig")
    client = make_client()
    good = Recorder("good")
    client.add_plugin(good)
    broken = client.add_plugin(raising_plugin(hook), name="broken")
    client.track("u1", "E")

    assert client.flush() is True  # a raising flush hook does not count as pending work
    client.shutdown()

    assert [h for _, h, _ in good.log if h in ("flush", "shutdown")] == ["flush", "shutdown"]
    assert pipeline_of(client).plugin_errors == 1
    [record] = plugin_errors_logged(caplog)
    assert f"broken.{hook}" in record.getMessage()
    client.remove_plugin(broken)  # else atexit's client.join() would log it again


# -- send=False and sync_mode ----------------------------------------------------------------


def test_send_false_reaches_no_destination_and_sends_nothing(
    make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination],
    fake_sprig: FakeSprig,
) -> None:
    client = make_client(send=False)
    recorder, sprig = Recorder("r"), make_destination()
    client.add_plugin(recorder)
    client.add_plugin(sprig)

    success, message = client.identify("u1", {"email": "a@b.co"})
    assert success is True and isinstance(message["messageId"], str)
    client.track("u1", "Quiet")
    assert client.flush(timeout=2) is True

    assert recorder.seen("destination") == []
    assert sprig.stats()["received"] == 0
    assert fake_sprig.requests == []  # neither Segment nor Sprig was called


def test_sync_mode_delivers_before_the_call_returns(
    make_client: Callable[..., Client],
    make_destination: Callable[..., SprigDestination],
    fake_sprig: FakeSprig,
) -> None:
    client = make_client(sync_mode=True)
    recorder, sprig = Recorder("r"), make_destination()
    client.add_plugin(recorder)
    client.add_plugin(sprig)

    client.identify("u1", {"email": "a@b.co", "plan": "pro"})
    # No flush, no waiting: both Segment and Sprig got it during the call.
    assert recorder.seen("destination") == [None]
    assert fake_sprig.users["u1"]["emailAddress"] == "a@b.co"
    assert fake_sprig.users["u1"]["attributes"] == {"plan": "pro"}
    assert [m["type"] for m in fake_sprig.segment_messages] == ["identify"]

    client.track("u1", "Signed Up")
    assert [e["event"] for e in fake_sprig.users["u1"]["events"]] == ["Signed Up"]
    assert sprig.stats()["delivered"] == 2
    assert sprig.stats()["pending"] == 0


# -- flush / join / shutdown -----------------------------------------------------------------


def test_flush_reaches_plugins_after_segments_queue_is_drained(
    make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    client = make_client()
    at_flush: List[Tuple[Optional[float], int, List[Any]]] = []

    class Watcher:
        @hookimpl
        def analytics_flush(self, timeout: Optional[float]) -> bool:
            at_flush.append((timeout, client.queue.unfinished_tasks, events(fake_sprig)))
            return True

    client.add_plugin(Watcher())
    client.track("u1", "E1")
    client.track("u1", "E2")
    assert client.flush(timeout=1.5) is True
    assert client.flush() is True
    (bounded, *first), second = at_flush
    assert bounded is not None and 0 < bounded <= 1.5  # the rest of the one deadline
    assert first == [0, ["E1", "E2"]]
    assert second == (None, 0, ["E1", "E2"])  # no timeout: each plugin's own bound


def test_flush_is_false_when_a_plugin_reports_pending_work(
    make_client: Callable[..., Client],
) -> None:
    class StillBusy:
        @hookimpl
        def analytics_flush(self) -> bool:
            return False

    client = make_client()
    recorder = Recorder("r")
    client.add_plugin(recorder)
    client.add_plugin(StillBusy())
    assert client.flush(timeout=0.1) is False
    # The other plugins are flushed all the same, within what is left of the deadline.
    assert [(n, h) for n, h, t in recorder.log if t is not None and 0 <= t <= 0.1] \
        == [("r", "flush")]


def test_join_and_shutdown_reach_plugins(make_client: Callable[..., Client]) -> None:
    client = make_client()
    recorder = Recorder("r")
    client.add_plugin(recorder)
    client.track("u1", "E")

    client.join(timeout=2.5)
    name, hook, timeout = recorder.log[-1]
    assert (name, hook) == ("r", "shutdown")
    assert 0 < timeout <= 2.5  # what was left of the one deadline after Segment's part
    assert not any(consumer.is_alive() for consumer in client.consumers)

    recorder.log.clear()
    client.shutdown()
    # One analytics_shutdown (a plugin flushes within it), not an unbounded flush first.
    assert recorder.log == [("r", "shutdown", None)]


# -- the module-level API (default client) ---------------------------------------------------

MODULE_SETTINGS = ("write_key", "host", "send", "sync_mode", "on_error", "debug",
                   "max_queue_size", "gzip", "timeout", "max_retries", "default_client")


@pytest.fixture
def module_settings() -> Iterator[None]:
    """Restore segment.analytics' settings and default client; stop a default client made here."""
    saved = {name: getattr(analytics, name) for name in MODULE_SETTINGS}
    analytics.default_client = None
    try:
        yield
    finally:
        client = analytics.default_client
        if client is not None and client is not saved["default_client"]:
            for consumer in client.consumers or ():
                consumer.pause()
                if consumer.is_alive():
                    consumer.join(2)
            pipeline_of(client).shutdown(2)
        for name, value in saved.items():
            setattr(analytics, name, value)


@pytest.mark.usefixtures("module_settings")
def test_module_level_plugin_api_uses_the_default_client(
    make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    analytics.default_client = make_client()  # a fast upload window; else as _proxy makes it
    recorder = Recorder("r")
    assert analytics.add_plugin(recorder) is recorder
    assert recorder in analytics.default_client.plugin_manager.get_plugins()

    success, _ = analytics.track("u1", "Module Call")
    assert success is True
    analytics.flush()
    assert recorder.seen("destination") == ["Module Call"]
    assert ("r", "flush", None) in recorder.log
    assert events(fake_sprig) == ["Module Call"]

    analytics.remove_plugin(recorder)
    analytics.track("u1", "Unobserved")
    analytics.flush()
    assert recorder.seen("destination") == ["Module Call"]
    assert events(fake_sprig) == ["Module Call", "Unobserved"]

    last = Recorder("last")
    analytics.add_plugin(last)
    analytics.shutdown()
    assert [hook for _, hook, _ in last.log] == ["shutdown"]
    assert not any(c.is_alive() for c in analytics.default_client.consumers)


@pytest.mark.usefixtures("module_settings")
def test_module_level_add_plugin_creates_the_default_client(fake_sprig: FakeSprig) -> None:
    analytics.write_key = "write-key"
    analytics.host = fake_sprig.url
    analytics.send = False  # no consumer thread for this one
    recorder = Recorder("r")
    analytics.add_plugin(recorder)
    client = analytics.default_client
    assert isinstance(client, Client)
    assert (client.write_key, client.host) == ("write-key", fake_sprig.url)
    assert client.plugin_manager.get_plugins() == {recorder}


# -- registration ---------------------------------------------------------------------------


def test_each_client_has_its_own_plugin_manager(make_client: Callable[..., Client]) -> None:
    one, two = make_client(), make_client()
    assert isinstance(one.plugin_manager, pluggy.PluginManager)
    assert one.plugin_manager is one.plugin_manager
    assert one.plugin_manager is not two.plugin_manager
    assert one.plugin_manager.hook.analytics_destination.spec is not None

    shared = Recorder("shared")
    one.add_plugin(shared)
    two.track("u1", "Two 1")
    one.track("u1", "One 1")
    two.add_plugin(shared)  # the same plugin on both clients
    two.track("u1", "Two 2")
    one.remove_plugin(shared)
    one.track("u1", "One 2")
    one.remove_plugin(shared)  # not registered any more: no error
    assert shared.seen("destination") == ["One 1", "Two 2"]
    assert two.plugin_manager.get_plugins() == {shared}
    assert one.plugin_manager.get_plugins() == set()


class Misspelled:
    @hookimpl
    def analytics_before(self, message: Message) -> None:
        raise AssertionError("must never be called: the plugin was rejected")

    @hookimpl
    def analytics_destinaton(self, message: Message) -> None:  # typo
        """Misspelled on purpose."""


class WrongArgument:
    @hookimpl
    def analytics_after(self, message: Message) -> None:  # valid, registered before the bad one
        raise AssertionError("must never be called: the plugin was rejected")

    @hookimpl
    def analytics_destination(self, msg: Message) -> None:  # the hook has no "msg"
        """Wrong argument name on purpose."""


@pytest.mark.parametrize("plugin", [Misspelled(), WrongArgument()], ids=["hook", "argument"])
def test_invalid_hook_names_are_rejected_and_nothing_is_registered(
    plugin: object, make_client: Callable[..., Client], fake_sprig: FakeSprig
) -> None:
    client = make_client()
    with pytest.raises(pluggy.PluginValidationError):
        client.add_plugin(plugin)
    assert client.plugin_manager.get_plugins() == set()
    assert not client.plugin_manager.is_registered(plugin)
    assert pipeline_of(client).active is False
    assert client.track("u1", "E")[0] is True  # calls go on untouched
    recorder = Recorder("r")
    client.add_plugin(recorder)  # and a valid plugin can still be added
    client.track("u1", "F")
    assert recorder.seen("destination") == ["F"]
    assert client.plugin_manager.get_plugins() == {recorder}
    assert pipeline_of(client).plugin_errors == 0  # no hook of the rejected plugin ran


def _wrapper_plugin(hook: str, **marker: bool) -> object:
    def impl(self: object) -> Iterator[None]:
        yield

    def before(self: object) -> None:
        raise AssertionError("must never be called: the plugin was rejected")

    return type("Wrapper", (), {hook: hookimpl(**marker)(impl),
                                "analytics_enrich": hookimpl(before)})()


@pytest.mark.parametrize("hook", ["analytics_destination", "analytics_flush"])
@pytest.mark.parametrize("marker", ["wrapper", "hookwrapper"])
def test_wrapper_hookimpls_are_rejected(
    hook: str, marker: str, make_client: Callable[..., Client]
) -> None:
    client = make_client()
    plugin = _wrapper_plugin(hook, **{marker: True})
    with pytest.raises(ValueError, match="wrapper"):
        client.add_plugin(plugin)
    assert client.plugin_manager.get_plugins() == set()
    assert client.track("u1", "E")[0] is True
    assert client.flush(timeout=2) is True


def test_tryfirst_and_trylast_order_is_respected(make_client: Callable[..., Client]) -> None:
    order: List[Tuple[str, str]] = []

    def plugin(name: str, **marker: bool) -> object:
        def before(self: object) -> None:
            order.append(("before", name))

        def destination(self: object) -> None:
            order.append(("destination", name))

        def flush(self: object) -> None:
            order.append(("flush", name))

        return type(name, (), {
            "analytics_before": hookimpl(**marker)(before),
            "analytics_destination": hookimpl(**marker)(destination),
            "analytics_flush": hookimpl(**marker)(flush),
        })()

    client = make_client()
    # Registration order is the opposite of pluggy's default call order (last first).
    for name, marker in (("first", {"tryfirst": True}), ("last", {"trylast": True}),
                         ("plain1", {}), ("plain2", {})):
        client.add_plugin(plugin(name, **marker))
    client.track("u1", "E")
    client.flush(timeout=2)
    expected = ["first", "plain2", "plain1", "last"]
    for hook in ("before", "destination", "flush"):
        assert [name for h, name in order if h == hook] == expected, hook


# -- entry-point discovery -------------------------------------------------------------------

PLUGIN_MODULE = """
from analytics_sprig import hookimpl

FACTORY_CALLS = []


class Good:
    def __init__(self):
        self.events = []

    @hookimpl
    def analytics_destination(self, message):
        self.events.append(message["event"])


class Typo:
    @hookimpl
    def analytics_destinaton(self, message):
        pass


def make_good():
    FACTORY_CALLS.append("good")
    return Good()


def make_broken():
    FACTORY_CALLS.append("broken")
    raise RuntimeError("the factory failed")


def make_typo():
    return Typo()
"""


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed-looking ``fakepkg`` declaring analytics_sprig.plugins entry points.

    Returns the name of its (uniquely named) plugin module.
    """
    module = f"fakepkg_plugins_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    dist_info = tmp_path / "fakepkg-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [analytics_sprig.plugins]
        good = {module}:make_good
        broken = {module}:make_broken
        missing = {module}_absent:make
        typo = {module}:make_typo
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield module
    finally:
        sys.modules.pop(module, None)


def test_load_plugins_registers_good_entry_points_and_reports_broken_ones(
    fake_distribution: str,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="analytics_sprig")
    client = make_client()

    plugins, errors = load_plugins(client)

    module = sys.modules[fake_distribution]
    assert [type(p).__name__ for p in plugins] == ["Good"]
    [good] = plugins
    assert client.plugin_manager.get_plugins() == {good}
    assert client.plugin_manager.get_plugin("good") is good
    failed = dict(errors)
    assert set(failed) == {"broken", "missing", "typo"}
    assert str(failed["broken"]) == "the factory failed"
    assert isinstance(failed["missing"], ImportError)
    assert isinstance(failed["typo"], pluggy.PluginValidationError)
    assert sorted(module.FACTORY_CALLS) == ["broken", "good"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "analytics_sprig")
    for name in ("broken", "missing", "typo"):
        assert repr(name) in warned

    client.track("u1", "Discovered")
    assert good.events == ["Discovered"]


def test_load_plugins_by_name(fake_distribution: str, make_client: Callable[..., Client]) -> None:
    client = make_client()
    plugins, errors = load_plugins(client, names=["good"])
    assert errors == []
    assert [type(p).__name__ for p in plugins] == ["Good"]
    assert sys.modules[fake_distribution].FACTORY_CALLS == ["good"]
    assert load_plugins(client, names=["nothing-by-that-name"]) == ([], [])


def test_importing_analytics_sprig_loads_no_entry_points(
    fake_distribution: str, tmp_path: Path
) -> None:
    # A fresh interpreter, the fake distribution on its path: importing the package must not
    # import any plugin module; loading on request (the control) must.
    code = textwrap.dedent(f"""\
        import sys
        import analytics_sprig
        import segment.analytics as analytics
        assert analytics_sprig.installed()
        assert {fake_distribution!r} not in sys.modules, "a plugin module was imported"
        assert analytics.default_client is None
        analytics.write_key, analytics.send = "write-key", False
        plugins, errors = analytics_sprig.load_plugins(names=["good"])
        assert errors == [] and len(plugins) == 1, (plugins, errors)
        assert sys.modules[{fake_distribution!r}].FACTORY_CALLS == ["good"]
        assert analytics.default_client.plugin_manager.get_plugins() == set(plugins)
        print("ok")
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
