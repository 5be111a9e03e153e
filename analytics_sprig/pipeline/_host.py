"""The plugin host: installs a pluggy pipeline into analytics-python's ``Client``.

analytics-python has no extension points, so :func:`install` wraps four of ``Client``'s
methods (``_enqueue``, ``flush``, ``join``, ``shutdown``) and three functions of the
``segment.analytics`` module (``flush``, ``join``, ``shutdown``), and adds ``add_plugin``,
``remove_plugin``, ``find_plugin``, ``find_plugins`` and ``plugin_manager``. A client
with no plugins takes one attribute lookup more per call than the original and is
otherwise untouched. :func:`uninstall` puts everything back.

Each client with plugins has a :class:`~._pipeline.Pipeline`, which runs the hooks of a
call around Segment's own ``_enqueue``.

Lifecycle (the rule stated in :mod:`analytics_sprig.hookspecs`): with plugins attached,
``flush``, ``join`` and ``shutdown`` are bounded. ``timeout=None`` leaves Segment's own part
as analytics-python does it and bounds each plugin by its own default; an explicit
``timeout`` is one deadline for Segment's part and the plugins' together.

Process hooks, registered once by the first :func:`install` (inert once uninstalled): after
``os.fork()``, in the child, clients with plugins (or opted in with :func:`fork_safe`) get
fresh Segment consumers (see ``_fork``); at exit, plugins not shut down yet get their bound.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import segment.analytics as segment_module
from segment.analytics.client import Client

from . import _fork
from ._manager import PipelineManager
from ._pipeline import Message, Pipeline, PluginKey, _deadline, _remaining

logger = logging.getLogger("analytics_sprig")

_ATTR = "_analytics_sprig_pipeline"
_lock = threading.RLock()
# analytics-python's own methods and module functions, kept after uninstall(): methods
# bound while installed (the ``client.join`` every Client registers with atexit) still
# call through them.
_originals: Dict[str, Any] = {}
_module_originals: Dict[str, Any] = {}
_installed = False
_process_hooks_registered = False
_fork_safe_default = False  # fork_safe() with no client: the module-level default client
_clients: weakref.WeakSet[Any] = weakref.WeakSet()

def _segment_flush(client: Any, deadline: Optional[float]) -> bool:
    """Wait for Segment's queue to drain: as analytics-python does, or until ``deadline``."""
    if deadline is None:
        _originals["flush"](client)
        return True
    pending = client.queue
    size = pending.qsize()
    with pending.all_tasks_done:  # Queue.join() with a deadline
        while pending.unfinished_tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.debug("Segment's queue still held %d item(s) at the flush deadline",
                             pending.unfinished_tasks)
                return False
            pending.all_tasks_done.wait(remaining)
    client.log.debug("successfully flushed about %s items.", size)
    return True


def _segment_join(client: Any, deadline: Optional[float]) -> None:
    """Stop Segment's consumer threads (none in ``sync_mode``)."""
    consumers = client.consumers
    if consumers is None:  # sync_mode: analytics-python's own join() raises TypeError here
        return
    if deadline is None:
        _originals["join"](client)
        return
    for consumer in consumers:
        consumer.pause()
    for consumer in consumers:
        with contextlib.suppress(RuntimeError):  # never started (send=False)
            consumer.join(_remaining(deadline))


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


def _with_plugins(client: Any) -> Optional[Pipeline]:
    pipeline: Optional[Pipeline] = client.__dict__.get(_ATTR)  # no class default once uninstalled
    return pipeline if pipeline is not None and pipeline.has_plugins else None


def _enqueue(self: Any, msg: Message) -> Tuple[bool, Message]:
    pipeline: Optional[Pipeline] = self._analytics_sprig_pipeline
    if pipeline is None or not pipeline.active:
        result: Tuple[bool, Message] = _originals["_enqueue"](self, msg)
        return result
    return pipeline.enqueue(self, msg, _originals["_enqueue"])


def _flush(self: Any, timeout: Optional[float] = None) -> Optional[bool]:
    """Flush Segment's queue, then every plugin; ``True`` when everything drained.

    ``timeout=None``: Segment's part is analytics-python's own ``flush()`` and each plugin
    is bounded by its own default (``SprigDestination``: ``flush_timeout``, 10 s). A
    ``timeout`` is one deadline for both parts. Returns ``None``, as analytics-python
    does, for a client without plugins flushed without a ``timeout``.
    """
    pipeline = _with_plugins(self)
    if timeout is None and pipeline is None:
        _originals["flush"](self)
        return None
    deadline = _deadline(timeout)
    drained = _segment_flush(self, deadline)
    if pipeline is not None:
        drained = pipeline.flush(_remaining(deadline)) and drained
    return drained


class _SegmentPart:
    """Segment's part of a join/shutdown, run beside the plugins' (so the wait is the
    longer of the two, not their sum); inline where no thread can start (interpreter
    exit on Python 3.12+)."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        thread = threading.Thread(target=self._run, args=(work,), daemon=True,
                                  name="analytics-sprig-segment-stop")
        try:
            thread.start()
        except RuntimeError:
            self._run(work)
        else:
            self._thread = thread

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # re-raised on the caller's thread by wait()
            self._error = exc

    def wait(self, deadline: Optional[float]) -> None:
        if self._thread is not None:
            self._thread.join(_remaining(deadline))
        if self._error is not None:
            raise self._error


def _stop(client: Any, timeout: Optional[float], *, flush: bool) -> None:
    pipeline = _with_plugins(client)
    deadline = _deadline(timeout)

    def segment_part() -> None:
        if flush:
            _segment_flush(client, deadline)
        _segment_join(client, deadline)

    if pipeline is None:
        segment_part()
        return
    running = _SegmentPart(segment_part)
    try:
        pipeline.shutdown(_remaining(deadline))
    finally:
        running.wait(deadline)


def _join(self: Any, timeout: Optional[float] = None) -> None:
    """Stop Segment's consumer threads and shut every plugin down.

    Each plugin gets one ``analytics_shutdown``: ``timeout=None`` means its own bound
    (``SprigDestination``: ``shutdown_timeout``, 5 s) and Segment's part is
    analytics-python's own; a ``timeout`` is one deadline for both. The two parts run
    side by side. Works in ``sync_mode`` (no consumers to stop).
    """
    _stop(self, timeout, flush=False)


def _shutdown(self: Any, timeout: Optional[float] = None) -> None:
    """Flush Segment's queue, stop its consumers, and shut every plugin down once.

    Not ``flush()`` then ``join()`` as in analytics-python: the plugins get a single
    bounded ``analytics_shutdown`` (which flushes within its bound), not an unbounded
    flush first. ``timeout`` as in :meth:`join`. Works in ``sync_mode``.
    """
    if timeout is None and _with_plugins(self) is None:
        self.flush()  # analytics-python's own sequence (join() copes with sync_mode)
        self.join()
        return
    _stop(self, timeout, flush=True)


def _add_plugin(self: Any, plugin: object, name: Optional[str] = None) -> object:
    """Register ``plugin`` (an object with ``@hookimpl`` methods) on this client."""
    return pipeline_of(self).add(plugin, name)


def _remove_plugin(self: Any, plugin: object) -> None:
    """Unregister ``plugin`` from this client."""
    pipeline_of(self).remove(plugin)


def _find_plugins(self: Any, type_or_name: PluginKey) -> List[object]:
    """This client's plugins that are instances of ``type_or_name`` (a class, or a tuple of
    classes) or registered under that name (a str), in registration order."""
    pipeline: Optional[Pipeline] = self.__dict__.get(_ATTR)
    if pipeline is None:
        return pipeline_of(self).find(type_or_name)  # validates the key all the same
    return pipeline.find(type_or_name)


def _find_plugin(self: Any, type_or_name: PluginKey) -> Optional[object]:
    """The first plugin :meth:`find_plugins` would return, or ``None``."""
    found = _find_plugins(self, type_or_name)
    return found[0] if found else None


def _plugin_manager(self: Any) -> PipelineManager:
    return pipeline_of(self).plugin_manager


def _module_add_plugin(plugin: object, name: Optional[str] = None) -> object:
    """Register ``plugin`` on the module-level default client (created if needed)."""
    return segment_module._proxy("add_plugin", plugin, name)


def _module_remove_plugin(plugin: object) -> None:
    """Unregister ``plugin`` from the module-level default client."""
    segment_module._proxy("remove_plugin", plugin)


def _module_find_plugin(type_or_name: PluginKey) -> Optional[object]:
    """``find_plugin`` on the module-level default client (``None`` if there is none yet)."""
    client = segment_module.default_client
    if client is None:
        return None
    return _find_plugin(client, type_or_name)


def _module_find_plugins(type_or_name: PluginKey) -> List[object]:
    """``find_plugins`` on the module-level default client (``[]`` if there is none yet)."""
    client = segment_module.default_client
    if client is None:
        return []
    return _find_plugins(client, type_or_name)


def _module_flush(timeout: Optional[float] = None) -> Optional[bool]:
    """Flush the default client: Segment's queue and every plugin (see ``Client.flush``).

    Returns the client's result: ``True`` when everything drained, ``False`` if something
    was still pending at a deadline (``None`` for a client without plugins, as before).
    """
    if timeout is None:
        result: Optional[bool] = segment_module._proxy("flush")
    else:
        result = segment_module._proxy("flush", timeout=timeout)
    return result


def _module_join(timeout: Optional[float] = None) -> None:
    """Stop the default client's consumers and shut its plugins down (see ``Client.join``)."""
    if timeout is None:
        segment_module._proxy("join")
    else:
        segment_module._proxy("join", timeout=timeout)


def _module_shutdown(timeout: Optional[float] = None) -> None:
    """Flush and shut down the default client (see ``Client.shutdown``): bounded with plugins."""
    if timeout is None:
        segment_module._proxy("shutdown")
    else:
        segment_module._proxy("shutdown", timeout=timeout)


_CLIENT_WRAPPED = {"_enqueue": _enqueue, "flush": _flush, "join": _join, "shutdown": _shutdown}
_CLIENT_ADDED = {
    "add_plugin": _add_plugin,
    "remove_plugin": _remove_plugin,
    "find_plugin": _find_plugin,
    "find_plugins": _find_plugins,
    "plugin_manager": property(_plugin_manager, doc="This client's pluggy PluginManager."),
    _ATTR: None,
}
_MODULE_WRAPPED = {"flush": _module_flush, "join": _module_join, "shutdown": _module_shutdown}
_MODULE_ADDED = {
    "add_plugin": _module_add_plugin,
    "remove_plugin": _module_remove_plugin,
    "find_plugin": _module_find_plugin,
    "find_plugins": _module_find_plugins,
}


# -- fork and exit -------------------------------------------------------------------------


def fork_safe(client: Any = None) -> Any:
    """Opt ``client`` in to fork safety for Segment's own delivery; returns ``client``.

    A client with plugins is always fork-safe. This is for a client without plugins: in
    the child of ``os.fork()`` it gets a fresh queue and fresh consumer threads (started
    if the parent's were running), and analytics-python's ``requests`` sessions are
    renewed. With no argument, the module-level default client (``segment.analytics``'
    functions) is opted in, whenever it is created. Effective while the plugin API is
    installed; :func:`uninstall` forgets it.
    """
    global _fork_safe_default
    if client is None:
        _fork_safe_default = True
    else:
        pipeline_of(client).fork_safe = True
    return client


def _renew_in_child(client: Any) -> bool:
    try:
        _fork.renew_segment_delivery(client)
    except Exception:
        logger.exception("could not renew Segment's consumers after fork")
        return False
    return True


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another parent thread may have held it at the fork
    if not _installed:
        return
    default = segment_module.default_client
    selected: List[Any] = []
    for client in list(_clients):
        pipeline: Optional[Pipeline] = client.__dict__.get(_ATTR)
        if pipeline is None:
            continue
        pipeline.reset_after_fork()
        if pipeline.has_plugins or pipeline.fork_safe or (
            _fork_safe_default and client is default
        ):
            selected.append(client)
    if _fork_safe_default and default is not None and default not in selected:
        selected.append(default)
    renewed = [_renew_in_child(client) for client in selected]
    if any(renewed):
        try:
            _fork.renew_sessions()
        except Exception:
            logger.exception("could not renew analytics-python's HTTP sessions after fork")


def _shutdown_at_exit() -> None:
    """Plugins not shut down yet (clients analytics-python registered no atexit for:
    ``sync_mode``, ``send=False``, or created before :func:`install`) get their bound."""
    if not _installed:
        return
    for client in list(_clients):
        pipeline = _with_plugins(client)
        if pipeline is not None and not pipeline.shut_down:
            pipeline.shutdown(None)


def _register_process_hooks() -> None:
    global _process_hooks_registered
    if _process_hooks_registered:
        return
    _process_hooks_registered = True
    if hasattr(os, "register_at_fork"):  # not on Windows
        os.register_at_fork(after_in_child=_after_fork_in_child)
    atexit.register(_shutdown_at_exit)


def installed() -> bool:
    """Whether the plugin API is currently installed on analytics-python."""
    return _installed


def install() -> None:
    """Install the plugin API on ``segment.analytics`` and ``Client`` (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in _CLIENT_WRAPPED:
            _originals[name] = Client.__dict__[name]
        for name in _MODULE_WRAPPED:
            _module_originals[name] = vars(segment_module)[name]
        for name, value in {**_CLIENT_ADDED, **_CLIENT_WRAPPED}.items():
            setattr(Client, name, value)
        for name, value in {**_MODULE_ADDED, **_MODULE_WRAPPED}.items():
            setattr(segment_module, name, value)
        _register_process_hooks()
        _installed = True


def uninstall() -> None:
    """Restore analytics-python exactly as it was before :func:`install`.

    Clients forget their plugins (and :func:`fork_safe` opt-ins); plugins are not shut
    down (call their ``shutdown()`` yourself if they run workers). The fork and exit hooks
    stay registered (Python cannot unregister a fork hook) but do nothing.
    """
    global _installed, _fork_safe_default
    with _lock:
        if not _installed:
            return
        for name, original in _originals.items():
            setattr(Client, name, original)
        for name in _CLIENT_ADDED:
            delattr(Client, name)
        for name, original in _module_originals.items():
            setattr(segment_module, name, original)
        for name in _MODULE_ADDED:
            delattr(segment_module, name)
        for client in list(_clients):
            client.__dict__.pop(_ATTR, None)
        _clients.clear()
        _fork_safe_default = False
        _installed = False
