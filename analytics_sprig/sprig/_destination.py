"""``SprigDestination``: the plugin that forwards Segment calls to Sprig."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Collection, Dict, Iterable, List, Optional, Union

from ..batching._ledger import OnDelivered, OnError
from ..batching._retry import RetryPolicy, retry_call
from ..batching._worker import BatchWorker
from ..hookspecs import hookimpl
from ..pipeline._pipeline import Pipeline, PluginKey
from . import _options as options
from ._api import DEFAULT_ENDPOINT, SprigClient, purge_chunks
from ._mapping import (
    DEFAULT_PAGE_EVENT_DEFAULT,
    DEFAULT_PAGE_EVENT_FORMAT,
    DEFAULT_SCREEN_EVENT_DEFAULT,
    DEFAULT_SCREEN_EVENT_FORMAT,
    Payload,
)
from ._planning import SprigPlanner
from ._routing import DEFAULT_TYPES, INTEGRATION_NAMES, integrations_allow, skip_reason
from ._sender import SprigSender

logger = logging.getLogger("analytics_sprig")

Message = Dict[str, Any]
#: What ``disable_cloud_destination`` sets in the integrations Segment's servers receive.
_CLOUD_OFF = dict.fromkeys(INTEGRATION_NAMES, False)


class SprigDestination:
    """Forward Segment Identify, Track, Page and Alias calls to Sprig's REST API.

    Register it with ``analytics.add_plugin(sprig)``. The app's thread only routes the call
    and hands it off (never I/O, never a wait); background threads map it, merge it into
    the user's waiting request body, and send, several requests at once but a user's one
    at a time, with retries.

    Options (all keyword-only, all with defaults that need no tuning):

    - ``endpoint``: Sprig's API base URL; ``https://`` (``http://`` only to loopback).
    - ``on_error(exception, messages)``: called for messages that end failed or dropped;
      ``on_delivered(messages)``: for messages delivered. ``messages`` are light
      references: dicts with ``messageId``, ``type``, ``userId`` and ``event`` (when the
      call has one), not the whole Segment message.
    - ``max_queue_size`` (10000): waiting request bodies (one per user per pending
      request, in flight included; calls that merge into a waiting body take no slot);
      beyond it new calls are dropped. As many whole messages may wait a few milliseconds
      to be mapped (a burst outruns the background thread).
    - ``flush_interval`` (0.5 s): a user's body is sent once no call for them arrived for
      this long (at most 10x this after their first), so busy users' calls coalesce.
    - ``max_concurrency`` (32): requests in flight at most (senders start lazily; a quiet
      process uses one connection).
    - ``max_retries`` (10), ``initial_backoff`` (0.5 s), ``max_backoff`` (60 s),
      ``max_retry_after`` (300 s; 0 ignores ``Retry-After``), ``max_total_wait`` (600 s):
      the retry budget per request.
    - ``max_requests_per_second`` (None): an optional hard cap; it delays, never drops. A
      429 pauses (``Retry-After``) or slows down (without it) every lane by itself.
    - ``auth_cooldown`` (60 s): after a 401/403, messages fail fast for this long.
    - ``timeout`` (10 s): the bound of each whole attempt; ``connect_timeout`` (5 s).
    - ``shutdown_timeout`` (5 s): bound of ``shutdown()`` and of the final flush at exit;
      ``flush_timeout`` (10 s): bound of a flush reached through the client
      (``analytics.flush()``) without a timeout.
    - ``types``: Segment call types to send (default identify, track, page, alias; add
      ``screen`` to send screens as events).
    - ``events`` / ``ignore_events``: allow-list / deny-list of event names as sent to
      Sprig (track events, page and screen names), exact or glob (``"Order *"``).
    - ``page_event_format`` ("Viewed {name} Page"), ``page_event_default`` ("Loaded a
      Page"), ``screen_event_format`` ("Viewed {name} Screen"), ``screen_event_default``
      ("Loaded a Screen"): how page and screen calls are named as events.
    - ``disable_cloud_destination`` (False): for each call forwarded here, the copy sent to
      Segment's servers says ``"Sprig": false`` (and the two other names), so a cloud-mode
      Sprig destination on the same source does not deliver it twice.
    - ``spool`` (None): a file path for a SQLite spool that keeps what cannot be delivered
      (pending at a shutdown deadline, retry budget spent on a retryable error, beyond
      ``max_queue_size``); the next process that opens the same path sends it first.
      ``spool_max_bytes`` (64 MiB) bounds it; beyond it the oldest rows are dropped.
    - ``proxy``: an HTTP proxy URL (environment proxies are not used).
    """

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        on_error: Optional[OnError] = None,
        on_delivered: Optional[OnDelivered] = None,
        max_queue_size: int = 10000,
        flush_interval: float = 0.5,
        max_concurrency: int = 32,
        max_retries: int = 10,
        initial_backoff: float = 0.5,
        max_backoff: float = 60.0,
        max_retry_after: float = 300.0,
        max_total_wait: float = 600.0,
        max_requests_per_second: Optional[float] = None,
        auth_cooldown: float = 60.0,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        flush_timeout: float = 10.0,
        types: Iterable[str] = DEFAULT_TYPES,
        events: Optional[Collection[str]] = None,
        ignore_events: Optional[Collection[str]] = None,
        page_event_format: str = DEFAULT_PAGE_EVENT_FORMAT,
        page_event_default: str = DEFAULT_PAGE_EVENT_DEFAULT,
        screen_event_format: str = DEFAULT_SCREEN_EVENT_FORMAT,
        screen_event_default: str = DEFAULT_SCREEN_EVENT_DEFAULT,
        disable_cloud_destination: bool = False,
        spool: Optional[Union[str, os.PathLike[str]]] = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        proxy: Optional[str] = None,
    ) -> None:
        options.callback("on_error", on_error, "on_error(exception, messages)")
        options.callback("on_delivered", on_delivered, "on_delivered(messages)")
        if max_requests_per_second is not None:
            options.number("max_requests_per_second", max_requests_per_second, minimum=0,
                           allow_zero=False)
        if not isinstance(disable_cloud_destination, bool):
            raise TypeError("disable_cloud_destination must be a bool")
        self._types = options.call_types(types)
        planner = SprigPlanner(
            types=self._types,
            page=options.naming("page", page_event_format, page_event_default),
            screen=options.naming("screen", screen_event_format, screen_event_default),
            events=options.event_names("events", events),
            ignore_events=options.event_names("ignore_events", ignore_events),
        )
        self._retry = RetryPolicy(
            max_retries=options.integer("max_retries", max_retries, minimum=0),
            initial_backoff=options.number("initial_backoff", initial_backoff, minimum=0),
            max_backoff=options.number("max_backoff", max_backoff, minimum=0),
            max_retry_after=options.number("max_retry_after", max_retry_after, minimum=0),
            max_total_wait=options.number("max_total_wait", max_total_wait, minimum=0),
        )
        self._api = SprigClient(
            api_key,
            endpoint=endpoint,
            timeout=options.number("timeout", timeout, minimum=0, allow_zero=False),
            connect_timeout=options.number("connect_timeout", connect_timeout, minimum=0,
                                           allow_zero=False),
            proxy=proxy,
        )
        self.endpoint = self._api.endpoint
        self._flush_timeout = options.number("flush_timeout", flush_timeout, minimum=0)
        self._timeline = Pipeline()
        self._sender = SprigSender(
            self._api, planner,
            auth_cooldown=options.number("auth_cooldown", auth_cooldown, minimum=0),
            timeline=self._timeline,
        )
        self._worker: BatchWorker[Payload, Payload] = BatchWorker(
            self._sender,
            max_queue_size=options.integer("max_queue_size", max_queue_size, minimum=1),
            linger=options.number("flush_interval", flush_interval, minimum=0,
                                  allow_zero=False),
            max_concurrency=options.integer("max_concurrency", max_concurrency, minimum=1),
            max_requests_per_second=max_requests_per_second,
            retry=self._retry,
            shutdown_timeout=options.number("shutdown_timeout", shutdown_timeout, minimum=0),
            on_error=on_error,
            on_delivered=on_delivered,
            spool=options.spool(spool, spool_max_bytes),
        )
        self._cloud = threading.local()
        self._cloud_guard = disable_cloud_destination
        if disable_cloud_destination:
            # Only then does the plugin have an enrich hook (an instance attribute pluggy
            # finds): everyone else's hot path stays one hook call.
            guard = self._guard_cloud

            def analytics_enrich(message: Message) -> None:
                guard(message)

            self.analytics_enrich = hookimpl(analytics_enrich)

    def __repr__(self) -> str:
        return f"SprigDestination(endpoint={self.endpoint!r}, api_key='***')"

    # -- pipeline hooks ---------------------------------------------------------------------

    @hookimpl
    def analytics_destination(self, message: Message, client: Any) -> None:
        """Route the call; hand it to the delivery engine (or deliver now in ``sync_mode``)."""
        # Runs on the app's thread for every call: routing and a hand-off, nothing more.
        worker = self._worker
        try:
            if self._cloud_guard:
                message = self._with_app_integrations(message)
            reason = skip_reason(message, self._types)
        except Exception as exc:  # a hostile value in the message: that message only
            worker.account(self._sender.rejected((message, client), exc))
            return
        if reason is not None:
            worker.skip(reason)
        elif client.sync_mode:
            worker.deliver_now((message, client))
        else:
            worker.put((message, client))

    def _guard_cloud(self, message: Message) -> None:
        """``analytics_enrich`` with ``disable_cloud_destination``: before Segment queues
        a call this plugin forwards, Segment's copy gets the three names ``false``."""
        self._cloud.__dict__.pop("stash", None)
        try:
            integrations = message.get("integrations")
            user_id = message.get("userId")
            forwarded = (message.get("type") in self._types
                         and user_id is not None and user_id != ""
                         and integrations_allow(integrations))
        except Exception:
            return  # the destination hook accounts for the hostile message
        if not forwarded:
            return
        guarded = dict(integrations or {})
        guarded.update(_CLOUD_OFF)
        message["integrations"] = guarded  # a new dict: the app's own is left as it was
        # The destination hook must route on the app's integrations, not on this copy:
        # it recognises the call by its messageId (given here when the app gave none, as
        # Segment would), whatever later plugins or Segment's normalizing do to the dict.
        if message.get("messageId") is None:
            message["messageId"] = str(uuid.uuid4())
        self._cloud.stash = (str(message["messageId"]), integrations)

    def _with_app_integrations(self, message: Message) -> Message:
        """The message as the app made it, for routing (``disable_cloud_destination``)."""
        stash = self._cloud.__dict__.pop("stash", None)
        if stash is None or message.get("messageId") != stash[0]:
            return message
        routed = dict(message)
        routed["integrations"] = stash[1] if stash[1] is not None else {}
        return routed

    @hookimpl
    def analytics_flush(self, timeout: Optional[float]) -> bool:
        """Flush for the client (``timeout=None``: at most ``flush_timeout``)."""
        return self.flush(self._flush_timeout if timeout is None else timeout)

    @hookimpl
    def analytics_shutdown(self, timeout: Optional[float]) -> None:
        """Flush and stop the workers (``timeout=None``: ``shutdown_timeout``)."""
        self.shutdown(timeout)

    # -- the destination's own plugins ------------------------------------------------------

    def add_plugin(self, plugin: object, name: Optional[str] = None) -> object:
        """Register a plugin on this destination only (a destination timeline).

        Its ``analytics_before`` / ``analytics_enrich`` hooks see a copy of each call routed
        to Sprig (never Segment's dict), on the delivery thread, before mapping: they may
        change it (rename an event, strip a trait) or drop it (``False``: counted as
        ``skipped_plugin``) for Sprig alone. ``analytics_after`` then gets the call and
        whether it was queued for Sprig. ``analytics_destination`` hooks are refused here.
        Exceptions are logged and counted (``stats()["plugin_errors"]``), never raised.
        """
        timeline = self._timeline
        timeline.add(plugin, name)
        if timeline.has_destinations:
            timeline.remove(plugin)
            raise ValueError(
                "a destination's own plugins take analytics_before, analytics_enrich and "
                "analytics_after hooks; analytics_destination belongs on the client"
            )
        return plugin

    def remove_plugin(self, plugin: object) -> None:
        """Unregister a plugin from this destination (no error if it was not registered)."""
        self._timeline.remove(plugin)

    def find_plugin(self, key: PluginKey) -> Optional[object]:
        """The first of this destination's plugins that is an instance of ``key`` (a class)
        or was registered under the name ``key`` (a str); ``None`` if there is none."""
        found = self._timeline.find(key)
        return found[0] if found else None

    def find_plugins(self, key: PluginKey) -> List[object]:
        """Every plugin :meth:`find_plugin` would match, in registration order."""
        return self._timeline.find(key)

    # -- public API -------------------------------------------------------------------------

    def send(self, message: Message, *, sync: bool = False) -> None:
        """Route and deliver one Segment message (a dict as Segment's API receives it).

        For callers outside an analytics-python client (replaying exported events).
        """
        worker = self._worker
        try:
            reason = skip_reason(message, self._types)
        except Exception as exc:
            worker.account(self._sender.rejected((message, None), exc))
            return
        if reason is not None:
            worker.skip(reason)
        elif sync:
            worker.deliver_now((message, None))
        else:
            worker.put((message, None))

    def send_batch(self, messages: Iterable[Message]) -> None:
        """Route, map and coalesce ``messages`` as if they waited together, then queue the
        resulting requests, each sent as it is, in order.

        For replaying exports: the requests are exactly those ``planner().bodies()``
        (``analytics-sprig replay --dry-run``) shows for the same messages.
        """
        bodies, others = self._sender.bodies(messages)
        worker = self._worker
        for plan in others:
            worker.account(plan)
        worker.put_bodies([(body.key, body.payload, body.refs) for body in bodies])

    def planner(self) -> SprigPlanner:
        """The routing, filtering and mapping this destination applies (read-only use)."""
        return self._sender.planner

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Send what is pending now and block until it settled; ``True`` when drained.

        Returns ``False`` if ``timeout`` seconds pass first (the rest stays pending and
        is still sent). Never waits on an auth cool-down (such messages fail at once).
        """
        drained = self._worker.flush(timeout)
        return self._timeline.flush(timeout) and drained

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Flush, then stop the workers; returns within ``timeout`` (default
        ``shutdown_timeout``) even if Sprig is unreachable. What is still pending then is
        dropped and reported through ``on_error``. Later messages are dropped.
        """
        self._worker.shutdown(timeout)
        self._timeline.shutdown(timeout)

    def stats(self) -> Dict[str, int]:
        """Counters, as a plain dict.

        ``received == skipped + delivered + failed + dropped + pending`` at every moment.
        Also ``requests`` (HTTP requests made), ``retries``, ``auth_errors``,
        ``in_flight``, ``concurrency`` (the current limit, lower after 429s), and the
        breakdowns ``skipped_<reason>`` (integrations, type, anonymous, unmappable,
        event_filter, plugin), ``failed_invalid`` and ``dropped_<reason>`` (queue_full,
        shutdown).
        """
        stats = self._worker.stats()
        stats["auth_errors"] = self._sender.auth_errors
        stats["plugin_errors"] = self._timeline.plugin_errors
        return stats

    def purge(
        self,
        user_ids: Collection[str] = (),
        emails: Collection[str] = (),
        delay_seconds: Optional[int] = None,
    ) -> List[str]:
        """Delete visitors from Sprig (privacy requests) via ``POST /v2/purge/visitors``.

        Sends at most 100 visitors per request, in the caller's thread, retrying like
        delivery does (each attempt bounded by ``timeout``). Returns the request ids
        Sprig gave. Raises :class:`SprigError` if a request fails for good (earlier
        chunks stay submitted).
        """
        ids = list(options.strings("user_ids", user_ids))
        addresses = list(options.strings("emails", emails))
        if delay_seconds is not None:
            options.integer("delay_seconds", delay_seconds, minimum=0)
        request_ids: List[str] = []

        def on_retry(exc: BaseException, delay: float) -> None:
            logger.debug("purge request failed (%s); retrying in %.2fs", exc, delay)

        with self._api.session() as session:
            for chunk in purge_chunks(ids, addresses):
                def send(chunk: Dict[str, List[str]] = chunk) -> Optional[str]:
                    return session.purge_chunk(
                        user_ids=chunk.get("userIds", ()),
                        emails=chunk.get("emails", ()),
                        delay_seconds=delay_seconds,
                    )

                request_id = retry_call(send, self._retry, time.sleep, on_retry)
                if request_id is not None:
                    request_ids.append(request_id)
        return request_ids

