"""The plugin host: installs a pluggy pipeline into analytics-python's ``Client``.

analytics-python has no extension points, so :func:`install` wraps three of
``Client``'s methods (``_enqueue``, ``flush``, ``join``) and adds ``add_plugin`` /
``remove_plugin``. A client with no plugins takes one attribute lookup more than the
original and is otherwise untouched. :func:`uninstall` puts everything back.

Per call, hook implementations are called directly from a cache rebuilt on every
registration change (a pluggy hook call costs ~1.2 µs on the app's hot path, a direct call
~0.1 µs), and each one inside its own ``try`` so a failing plugin cannot break the app or
the other plugins.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pluggy
import segment.analytics as segment_module
from segment.analytics.client import Client

from .. import hookspecs

logger = logging.getLogger("analytics_sprig")

_ATTR = "_analytics_sprig_pipeline"
_lock = threading.RLock()
# analytics-python's own methods, kept after uninstall(): methods bound while installed
# (the ``client.join`` every Client registers with atexit) still call through them.
_originals: Dict[str, Any] = {}
_installed = False
_clients: weakref.WeakSet[Any] = weakref.WeakSet()

Message = Dict[str, Any]
_Call = Tuple[Callable[..., Any], str]  # (adapted function, "plugin.hook" for logs)

_BEFORE = ("message", "client")
_AFTER = ("message", "success", "client")
_LIFECYCLE = ("timeout",)
_PER_CALL_HOOKS = ("analytics_before", "analytics_enrich", "analytics_destination",
                   "analytics_after")


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


class Pipeline:
    """One client's plugins: its pluggy ``PluginManager`` and the per-call hook cache."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.active = False
        self.plugin_errors = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self._before: List[_Call] = []
        self._enrich: List[_Call] = []
        self._destination: List[_Call] = []
        self._after: List[_Call] = []
        self._flush: List[_Call] = []
        self._shutdown: List[_Call] = []

    # -- registration -------------------------------------------------------------------

    def add(self, plugin: object, name: Optional[str] = None) -> object:
        """Register ``plugin``; raise ``ValueError`` if its hooks are invalid."""
        pm = self.plugin_manager
        with _lock:
            if pm.is_registered(plugin):
                return plugin
            try:
                # pluggy < 1.7 leaves a plugin half-registered when register() itself
                # rejects one of its hooks (wrong argument name), hence inside the try.
                pm.register(plugin, name=name)
                pm.check_pending()
                for hook in (*_PER_CALL_HOOKS, "analytics_flush", "analytics_shutdown"):
                    for impl in getattr(pm.hook, hook).get_hookimpls():
                        if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                            raise ValueError(
                                f"{hook} of {impl.plugin_name!r} is a wrapper; the analytics "
                                "pipeline calls each implementation on its own, so wrappers "
                                "are not supported"
                            )
            except Exception:
                if pm.is_registered(plugin):
                    pm.unregister(plugin)
                raise
            self._rebuild()
        return plugin

    def remove(self, plugin: object) -> None:
        """Unregister ``plugin`` (no error if it was not registered)."""
        with _lock:
            if self.plugin_manager.is_registered(plugin):
                self.plugin_manager.unregister(plugin)
            self._rebuild()

    def _calls(self, hook: str, order: Sequence[str]) -> List[_Call]:
        caller = getattr(self.plugin_manager.hook, hook)
        # pluggy calls the last-registered (and tryfirst) implementation first.
        return [
            (_adapt(impl, order), f"{impl.plugin_name}.{hook}")
            for impl in reversed(caller.get_hookimpls())
        ]

    def _rebuild(self) -> None:
        self._before = self._calls("analytics_before", _BEFORE)
        self._enrich = self._calls("analytics_enrich", _BEFORE)
        self._destination = self._calls("analytics_destination", _BEFORE)
        self._after = self._calls("analytics_after", _AFTER)
        self._flush = self._calls("analytics_flush", _LIFECYCLE)
        self._shutdown = self._calls("analytics_shutdown", _LIFECYCLE)
        self.active = bool(self._before or self._enrich or self._destination or self._after)

    # -- per call -----------------------------------------------------------------------

    def _failed(self, where: str) -> None:
        with self._count_lock:  # rare path: exact counts across app threads are worth a lock
            self.plugin_errors += 1
        logger.exception("analytics plugin hook %s raised; the call goes on without it", where)

    def enqueue(self, client: Any, message: Message) -> Tuple[bool, Message]:
        """Run one call through the pipeline around Segment's own ``_enqueue``."""
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
                return False, message
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
        # Segment's validation errors (AssertionError, RuntimeError) reach the app unchanged.
        success, normalized = _originals["_enqueue"](client, message)
        if client.send:
            for function, where in self._destination:
                try:
                    function(normalized, client)
                except Exception:
                    self._failed(where)
        for function, where in self._after:
            try:
                function(normalized, success, client)
            except Exception:
                self._failed(where)
        return success, normalized

    # -- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout: Optional[float]) -> bool:
        """Call every plugin's ``analytics_flush``; ``False`` if one reported pending work."""
        drained = True
        for function, where in self._flush:
            try:
                if function(timeout) is False:
                    drained = False
            except Exception:
                self._failed(where)
        return drained

    def shutdown(self, timeout: Optional[float]) -> None:
        """Call every plugin's ``analytics_shutdown``."""
        for function, where in self._shutdown:
            try:
                function(timeout)
            except Exception:
                self._failed(where)

    def plugins(self) -> List[object]:
        """The registered plugins."""
        return list(self.plugin_manager.get_plugins())


# -- what install() puts on Client and on the segment.analytics module --------------------


def pipeline_of(client: Any) -> Pipeline:
    """Return ``client``'s pipeline, creating it on first use."""
    pipeline: Optional[Pipeline] = client.__dict__.get(_ATTR)
    if pipeline is None:
        with _lock:
            pipeline = client.__dict__.get(_ATTR)
            if pipeline is None:
                pipeline = Pipeline()
                setattr(client, _ATTR, pipeline)
                _clients.add(client)
    return pipeline


def _enqueue(self: Any, msg: Message) -> Tuple[bool, Message]:
    pipeline: Optional[Pipeline] = self._analytics_sprig_pipeline
    if pipeline is None or not pipeline.active:
        result: Tuple[bool, Message] = _originals["_enqueue"](self, msg)
        return result
    return pipeline.enqueue(self, msg)


def _flush(self: Any, timeout: Optional[float] = None) -> Optional[bool]:
    """Flush Segment's queue, then every plugin (``timeout`` bounds the plugins' part)."""
    _originals["flush"](self)
    pipeline: Optional[Pipeline] = self.__dict__.get(_ATTR)  # no class default once uninstalled
    if pipeline is None:
        return None
    return pipeline.flush(timeout)


def _join(self: Any, timeout: Optional[float] = None) -> None:
    """Stop Segment's consumer threads, then shut every plugin down."""
    try:
        _originals["join"](self)
    finally:
        pipeline: Optional[Pipeline] = self.__dict__.get(_ATTR)
        if pipeline is not None:
            pipeline.shutdown(timeout)


def _add_plugin(self: Any, plugin: object, name: Optional[str] = None) -> object:
    """Register ``plugin`` (an object with ``@hookimpl`` methods) on this client."""
    return pipeline_of(self).add(plugin, name)


def _remove_plugin(self: Any, plugin: object) -> None:
    """Unregister ``plugin`` from this client."""
    pipeline_of(self).remove(plugin)


def _plugin_manager(self: Any) -> pluggy.PluginManager:
    return pipeline_of(self).plugin_manager


def _module_add_plugin(plugin: object, name: Optional[str] = None) -> object:
    """Register ``plugin`` on the module-level default client (created if needed)."""
    return segment_module._proxy("add_plugin", plugin, name)


def _module_remove_plugin(plugin: object) -> None:
    """Unregister ``plugin`` from the module-level default client."""
    segment_module._proxy("remove_plugin", plugin)


_CLIENT_ADDED = {
    "add_plugin": _add_plugin,
    "remove_plugin": _remove_plugin,
    "plugin_manager": property(_plugin_manager, doc="This client's pluggy PluginManager."),
    _ATTR: None,
}
_MODULE_ADDED = {"add_plugin": _module_add_plugin, "remove_plugin": _module_remove_plugin}


def installed() -> bool:
    """Whether the plugin API is currently installed on analytics-python."""
    return _installed


def install() -> None:
    """Install the plugin API on ``segment.analytics`` and ``Client`` (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in ("_enqueue", "flush", "join"):
            _originals[name] = Client.__dict__[name]
        for name, value in _CLIENT_ADDED.items():
            setattr(Client, name, value)
        Client._enqueue = _enqueue
        Client.flush = _flush
        Client.join = _join
        for name, value in _MODULE_ADDED.items():
            setattr(segment_module, name, value)
        _installed = True


def uninstall() -> None:
    """Restore analytics-python exactly as it was before :func:`install`.

    Clients forget their plugins; plugins are not shut down (call their ``shutdown()``
    yourself if they run workers).
    """
    global _installed
    with _lock:
        if not _installed:
            return
        for name, original in _originals.items():
            setattr(Client, name, original)
        for name in _CLIENT_ADDED:
            delattr(Client, name)
        for name in _MODULE_ADDED:
            delattr(segment_module, name)
        for client in list(_clients):
            client.__dict__.pop(_ATTR, None)
        _clients.clear()
        _installed = False
