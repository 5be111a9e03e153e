"""One client's plugins: its pluggy manager and the per-call hook cache that runs them.

Per call, hook implementations are called directly from a cache rebuilt on every
registration change (a pluggy hook call costs ~1.2 µs on the app's hot path, a direct call
~0.1 µs), each inside its own ``try``, so a failing plugin cannot break the app or the other
plugins. Used for a client's pipeline (by :mod:`._host`) and for a destination's own
timeline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pluggy

from ._manager import PipelineManager

logger = logging.getLogger("analytics_sprig")

Message = Dict[str, Any]
_Call = Tuple[Callable[..., Any], str]  # (adapted function, "plugin.hook" for logs)
PluginKey = Union[str, type, Tuple[type, ...]]

_BEFORE = ("message", "client")
_AFTER = ("message", "success", "client")
_LIFECYCLE = ("timeout",)


def _adapt(impl: pluggy.HookImpl, order: Sequence[str]) -> Callable[..., Any]:
    """Return a callable taking the hook's arguments positionally in ``order``."""
    function: Callable[..., Any] = impl.function
    names = tuple(impl.argnames)
    if names == tuple(order):
        return function
    positions = [order.index(name) for name in names]

    def call(*args: Any) -> Any:
        return function(*[args[i] for i in positions])

    return call


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Pipeline:
    """One client's plugins: its pluggy ``PluginManager`` and the per-call hook cache."""

    def __init__(self) -> None:
        self.active = False  # a per-call hook is registered
        self.has_plugins = False  # any plugin is registered (lifecycle hooks included)
        self.fork_safe = False  # opted in with fork_safe() (plugins imply it)
        self.shut_down = False  # plugins shut down since the last registration change
        self.plugin_errors = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self._before: List[_Call] = []
        self._enrich: List[_Call] = []
        self._destination: List[_Call] = []
        self._after: List[_Call] = []
        self._flush: List[_Call] = []
        self._shutdown: List[_Call] = []
        self.plugin_manager = PipelineManager(self._rebuild)

    # -- registration -------------------------------------------------------------------

    def add(self, plugin: object, name: Optional[str] = None) -> object:
        """Register ``plugin`` (a no-op if it already is); raise if its hooks are invalid."""
        pm = self.plugin_manager
        with pm.registration_lock:
            if not pm.is_registered(plugin):
                pm.register(plugin, name=name)
        return plugin

    def remove(self, plugin: object) -> None:
        """Unregister ``plugin`` (no error if it was not registered)."""
        pm = self.plugin_manager
        with pm.registration_lock:
            if pm.is_registered(plugin):
                pm.unregister(plugin)

    def find(self, key: PluginKey) -> List[object]:
        """Registered plugins that are instances of ``key`` (a class or a tuple of classes)
        or whose registered name is ``key`` (a str), in registration order."""
        if isinstance(key, str):
            return [plugin for name, plugin in self.plugin_manager.named_plugins()
                    if name == key]
        if isinstance(key, type) or (
            isinstance(key, tuple) and all(isinstance(k, type) for k in key)
        ):
            return [plugin for _, plugin in self.plugin_manager.named_plugins()
                    if isinstance(plugin, key)]
        raise TypeError(
            f"find_plugin takes a plugin class or a registered name, not {type(key).__name__}"
        )

    def _calls(self, hook: str, order: Sequence[str]) -> List[_Call]:
        caller = getattr(self.plugin_manager.hook, hook)
        # pluggy calls the last-registered (and tryfirst) implementation first.
        return [
            (_adapt(impl, order), f"{impl.plugin_name}.{hook}")
            for impl in reversed(caller.get_hookimpls())
        ]

    def _rebuild(self) -> None:
        """Called by the manager on every registration change (under its lock)."""
        self._before = self._calls("analytics_before", _BEFORE)
        self._enrich = self._calls("analytics_enrich", _BEFORE)
        self._destination = self._calls("analytics_destination", _BEFORE)
        self._after = self._calls("analytics_after", _AFTER)
        self._flush = self._calls("analytics_flush", _LIFECYCLE)
        self._shutdown = self._calls("analytics_shutdown", _LIFECYCLE)
        self.active = bool(self._before or self._enrich or self._destination or self._after)
        self.has_plugins = bool(self.plugin_manager.get_plugins())
        self.shut_down = False

    def reset_after_fork(self) -> None:
        """In the child of ``fork()``: locks a parent thread held must not stay held."""
        self._count_lock = threading.Lock()
        self.plugin_manager.reset_after_fork()

    # -- per call -----------------------------------------------------------------------

    def _failed(self, where: str) -> None:
        with self._count_lock:  # rare path: exact counts across app threads are worth a lock
            self.plugin_errors += 1
        logger.exception("analytics plugin hook %s raised; the call goes on without it", where)

    def enqueue(self, client: Any, message: Message,
                segment_enqueue: Callable[[Any, Message], Tuple[bool, Message]]
                ) -> Tuple[bool, Message]:
        """Run one call through the pipeline around Segment's own ``_enqueue``."""
        prepared = self.run_before(message, client)
        if prepared is None:
            return False, message
        # Segment's validation errors (AssertionError, RuntimeError) reach the app unchanged.
        success, normalized = segment_enqueue(client, prepared)
        if client.send:
            for function, where in self._destination:
                try:
                    function(normalized, client)
                except Exception:
                    self._failed(where)
        self.run_after(normalized, success, client)
        return success, normalized

    def run_before(self, message: Message, client: Any) -> Optional[Message]:
        """The ``analytics_before`` then ``analytics_enrich`` hooks; the message they leave,
        or ``None`` if a before hook dropped it. Also a destination's own timeline."""
        for function, where in self._before:
            try:
                result = function(message, client)
            except Exception:
                self._failed(where)
                continue
            if result is False:
                with self._count_lock:
                    self.dropped += 1
                logger.debug("%s dropped a %s call", where, message.get("type"))
                return None
            if isinstance(result, dict):
                message = result
        for function, where in self._enrich:
            try:
                result = function(message, client)
            except Exception:
                self._failed(where)
                continue
            if isinstance(result, dict):
                message = result
        return message

    def run_after(self, message: Message, success: bool, client: Any) -> None:
        """The ``analytics_after`` hooks, each isolated."""
        for function, where in self._after:
            try:
                function(message, success, client)
            except Exception:
                self._failed(where)

    @property
    def has_destinations(self) -> bool:
        """Whether a plugin implements ``analytics_destination``."""
        return bool(self._destination)

    # -- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout: Optional[float]) -> bool:
        """Call every plugin's ``analytics_flush``; ``False`` if one reported pending work.

        ``timeout=None`` is passed on as is (each plugin's own default bound); otherwise
        each plugin gets what is left of one deadline.
        """
        deadline = _deadline(timeout)
        drained = True
        for function, where in self._flush:
            try:
                if function(_remaining(deadline)) is False:
                    drained = False
            except Exception:
                self._failed(where)
        return drained

    def shutdown(self, timeout: Optional[float]) -> None:
        """Call every plugin's ``analytics_shutdown`` (timeout as in :meth:`flush`)."""
        self.shut_down = True
        deadline = _deadline(timeout)
        for function, where in self._shutdown:
            try:
                function(_remaining(deadline))
            except Exception:
                self._failed(where)

    def plugins(self) -> List[object]:
        """The registered plugins, in registration order."""
        return [plugin for _, plugin in self.plugin_manager.named_plugins()]


# -- Segment's own part of the lifecycle ------------------------------------------------------
