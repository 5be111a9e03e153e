"""Hook specifications of the analytics plugin pipeline.

Every Segment call (``identify``, ``track``, ``page``, ``screen``, ``group``, ``alias``) made
on a client that has plugins flows through these hooks, in this order::

    analytics_before -> analytics_enrich -> Segment's own queue
        -> analytics_destination -> analytics_after

A plugin is any object (or module) with functions named after these hooks and marked with
:data:`hookimpl`. An implementation may accept any subset of a hook's arguments, by name,
as with pluggy and pytest. An exception raised by an implementation never reaches the app
and never stops the other plugins: it is logged on the ``analytics_sprig`` logger and
counted (``analytics_sprig.pipeline_of(client).plugin_errors``).

Wrappers (``hookwrapper=True`` / ``wrapper=True``) are not supported: each implementation
is called on its own so one plugin cannot break another, and a plugin with a wrapper is
rejected when it is registered (``client.add_plugin`` or ``client.plugin_manager.register``,
which are the same).

Lifecycle: with plugins attached, every lifecycle call through analytics-python is bounded.
``client.flush()`` / ``analytics.flush()`` call :func:`analytics_flush` once per plugin;
``client.join()``, ``client.shutdown()``, ``analytics.shutdown()`` and the exit path call
:func:`analytics_shutdown` once per plugin (never a flush without a bound first). A
``timeout`` given to the client's method is one deadline for Segment's own queue and the
plugins together; without one, Segment's part is analytics-python's own and each plugin
gets ``timeout=None``, meaning *its own default bound*.

Destination timelines: a destination may run plugins of its own (``SprigDestination.
add_plugin``). Their :func:`analytics_before`, :func:`analytics_enrich` and
:func:`analytics_after` hooks are the same specifications, called with a *copy* of each call
the destination routed to itself, on its background thread, before it maps the call: a
``False`` from ``analytics_before`` drops the call for that destination only, a dict or an
in-place change alters only what that destination sends, and ``analytics_after`` gets
``success=True`` when the call was queued for it. :func:`analytics_destination` is refused
there. Isolation and counting are the client pipeline's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import pluggy

PROJECT_NAME = "analytics_sprig"

#: Marker for hook specifications (used by this module).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations: decorate plugin methods with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Message = Dict[str, Any]


@hookspec
def analytics_before(message: Message, client: Any) -> Optional[Union[Message, bool]]:
    """Called first, on the app's thread, with the call's raw message.

    ``message`` is the dict analytics-python built for the call before it validated and
    normalized it (``timestamp`` may be a ``datetime`` or ``None``, ids may be numbers).
    ``client`` is the :class:`segment.analytics.Client`.

    Return ``False`` to drop the call: Segment does not queue it, no later hook sees it, and
    the app's call returns ``(False, message)``. Return a dict to replace the message for
    the plugins after this one. Return ``None`` (or mutate ``message`` in place) to go on.
    """


@hookspec
def analytics_enrich(message: Message, client: Any) -> Optional[Message]:
    """Called after every ``analytics_before`` plugin, on the app's thread.

    Add or change fields (context, traits, properties) that Segment and every destination
    should see. Return a dict to replace the message, or ``None`` after mutating it in
    place. Enrichment cannot drop a call.
    """


@hookspec
def analytics_destination(message: Message, client: Any) -> None:
    """Called after Segment's own enqueue, with the normalized message.

    Called even when Segment's queue was full (``analytics_after`` gets ``success=False``):
    one destination's backlog must not cost another destination its events.

    The message is what analytics-python queued: an ISO-8601 ``timestamp`` string, a
    ``messageId``, ``userId``/``anonymousId`` as strings, ``integrations`` a dict, and
    ``context.library`` set. Treat it as read-only: Segment's queue holds the same dict.

    Runs on the app's thread: enqueue and return; deliver in the background. When
    ``client.sync_mode`` is true, deliver before returning. Not called when
    ``client.send`` is false (nothing leaves the process).
    """


@hookspec
def analytics_after(message: Message, success: bool, client: Any) -> None:
    """Called last, after every destination, with the normalized message.

    ``success`` is what Segment's own enqueue reported (``False`` when its queue was full).
    Useful for metrics and auditing. The return value is ignored.
    """


@hookspec
def analytics_flush(timeout: Optional[float]) -> Optional[bool]:
    """Called by ``client.flush()`` / ``analytics.flush()`` after Segment's queue drained.

    Block until everything the plugin holds is delivered or has failed, or until
    ``timeout`` seconds pass. ``timeout=None`` means the plugin's own default bound, never
    "wait forever" (``SprigDestination``: its ``flush_timeout`` option, 10 s). Return
    ``False`` if something is still pending at the deadline, ``True`` (or ``None``)
    otherwise; what is pending stays queued. ``client.flush()`` returns ``False`` when any
    plugin returned ``False``.
    """


@hookspec
def analytics_shutdown(timeout: Optional[float]) -> None:
    """Called once by ``client.join()``, ``client.shutdown()``, ``analytics.shutdown()``
    and at interpreter exit.

    Flush, then stop background workers, returning within ``timeout`` seconds even if a
    remote service is unreachable. ``timeout=None`` means the plugin's own bound
    (``SprigDestination``: its ``shutdown_timeout`` option, 5 s). Messages still pending
    at the deadline are dropped, counted and reported (logged, and through the plugin's
    ``on_error`` if it has one), never silently. Must be safe to call more than once.
    """
