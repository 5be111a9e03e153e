"""``SprigDestination``: the plugin that forwards Segment calls to Sprig."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Collection, Dict, FrozenSet, Iterable, List, Optional

from .._errors import ConfigurationError
from ..batching._retry import RetryPolicy, retry_call
from ..hookspecs import hookimpl
from ._api import DEFAULT_ENDPOINT, SprigClient, purge_chunks
from ._mapping import DEFAULT_PAGE_EVENT_DEFAULT, DEFAULT_PAGE_EVENT_FORMAT, PageNaming
from ._routing import DEFAULT_TYPES, SEGMENT_TYPES, skip_reason
from ._worker import DeliveryWorker, Message, OnError

logger = logging.getLogger("analytics_sprig")


def _number(name: str, value: Any, *, minimum: float, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum or (not allow_zero and value == 0):
        bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}")
    return value


class SprigDestination:
    """Forward Segment Identify, Track, Page and Alias calls to Sprig's REST API.

    Register it with ``analytics.add_plugin(SprigDestination(api_key=...))``. The app's
    thread only routes the call and appends it to a bounded queue; a background thread
    maps, coalesces (one request per user per flush window) and sends with retries.

    Options (all keyword-only, all with defaults that need no tuning):

    - ``endpoint``: Sprig's API base URL; ``https://`` (``http://`` only to loopback).
    - ``on_error(exception, messages)``: called for messages that end failed or dropped.
    - ``max_queue_size`` (10000): messages waiting; beyond it new ones are dropped.
    - ``flush_interval`` (0.5 s): the batch window; the worker sends what waited this long.
    - ``max_batch_size`` (10000): messages taken (and coalesced together) per send cycle;
      the worker also wakes early when this many, or half the queue, are waiting.
    - ``max_retries`` (10), ``initial_backoff`` (0.5 s), ``max_backoff`` (60 s),
      ``max_retry_after`` (300 s), ``max_total_wait`` (600 s): the retry budget per request.
    - ``max_requests_per_second`` (None): optional client-side rate limit; delays only.
    - ``auth_cooldown`` (60 s): after a 401/403, messages fail fast for this long.
    - ``timeout`` (10 s) and ``connect_timeout`` (5 s): per HTTP request.
    - ``shutdown_timeout`` (5 s): bound of ``shutdown()`` and of the final flush at exit.
    - ``flush_timeout`` (10 s): bound of a flush reached through the client
      (``analytics.flush()``) without a ``timeout``.
    - ``types``: Segment call types to send (default identify, track, page, alias).
    - ``page_event_format`` ("Viewed {name} Page") and ``page_event_default``
      ("Loaded a Page"): how page calls are named as events.
    - ``proxy``: an HTTP proxy URL (environment proxies are not used).
    """

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        on_error: Optional[OnError] = None,
        max_queue_size: int = 10000,
        flush_interval: float = 0.5,
        max_batch_size: int = 10000,
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
        page_event_format: str = DEFAULT_PAGE_EVENT_FORMAT,
        page_event_default: str = DEFAULT_PAGE_EVENT_DEFAULT,
        proxy: Optional[str] = None,
    ) -> None:
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable as on_error(exception, messages)")
        if max_requests_per_second is not None:
            _number("max_requests_per_second", max_requests_per_second, minimum=0,
                    allow_zero=False)
        if isinstance(types, str):
            raise TypeError("types must be a collection of call types, not a str")
        try:
            self._types: FrozenSet[str] = frozenset(types)
        except TypeError:  # None, a number, unhashable items: say which option is wrong
            raise TypeError(
                f"types must be a collection of call types, got {type(types).__name__}"
            ) from None
        unknown = self._types - SEGMENT_TYPES
        if unknown:
            # repr-sorted: sorting mixed str/int would itself raise TypeError.
            names = ", ".join(sorted(map(repr, unknown)))
            raise ConfigurationError(f"unknown Segment call types: {names}")
        for name, text in (("page_event_format", page_event_format),
                           ("page_event_default", page_event_default)):
            if not isinstance(text, str) or not text:
                raise ConfigurationError(f"{name} must be a non-empty str")
        try:
            page_event_format.format(name="x", category="y")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigurationError(
                f"page_event_format may use only {{name}} and {{category}}: {exc}"
            ) from None
        retry = RetryPolicy(
            max_retries=_integer("max_retries", max_retries, minimum=0),
            initial_backoff=_number("initial_backoff", initial_backoff, minimum=0),
            max_backoff=_number("max_backoff", max_backoff, minimum=0),
            max_retry_after=_number("max_retry_after", max_retry_after, minimum=0),
            max_total_wait=_number("max_total_wait", max_total_wait, minimum=0),
        )
        self._api = SprigClient(
            api_key,
            endpoint=endpoint,
            timeout=_number("timeout", timeout, minimum=0, allow_zero=False),
            connect_timeout=_number("connect_timeout", connect_timeout, minimum=0,
                                    allow_zero=False),
            proxy=proxy,
        )
        self.endpoint = self._api.endpoint
        self._flush_timeout = _number("flush_timeout", flush_timeout, minimum=0)
        self._retry = retry
        self._worker = DeliveryWorker(
            self._api,
            max_queue_size=_integer("max_queue_size", max_queue_size, minimum=1),
            flush_interval=_number("flush_interval", flush_interval, minimum=0,
                                   allow_zero=False),
            max_batch_size=_integer("max_batch_size", max_batch_size, minimum=1),
            retry=retry,
            max_requests_per_second=max_requests_per_second,
            auth_cooldown=_number("auth_cooldown", auth_cooldown, minimum=0),
            shutdown_timeout=_number("shutdown_timeout", shutdown_timeout, minimum=0),
            on_error=on_error,
            page=PageNaming(page_event_format, page_event_default),
        )

    def __repr__(self) -> str:
        return f"SprigDestination(endpoint={self.endpoint!r}, api_key='***')"

    # -- pipeline hooks ---------------------------------------------------------------------

    @hookimpl
    def analytics_destination(self, message: Message, client: Any) -> None:
        """Route the call; queue it for Sprig (or deliver now in ``sync_mode``)."""
        # The body of send(), inlined: this runs on the app's thread for every call.
        reason = skip_reason(message, self._types)
        if reason is not None:
            self._worker.skip(reason)
            return
        if client.sync_mode:
            self._worker.deliver_now(message)
        else:
            self._worker.put(message)

    @hookimpl
    def analytics_flush(self, timeout: Optional[float]) -> bool:
        """Flush for the client (``timeout=None``: at most ``flush_timeout``)."""
        return self.flush(self._flush_timeout if timeout is None else timeout)

    @hookimpl
    def analytics_shutdown(self, timeout: Optional[float]) -> None:
        """Flush and stop the worker (see :meth:`shutdown`)."""
        self.shutdown(timeout)

    # -- public API -------------------------------------------------------------------------

    def send(self, message: Message, *, sync: bool = False) -> None:
        """Route and deliver one Segment message (a dict as Segment's API receives it).

        For callers outside an analytics-python client (replaying exported events).
        """
        reason = skip_reason(message, self._types)
        if reason is not None:
            self._worker.skip(reason)
        elif sync:
            self._worker.deliver_now(message)
        else:
            self._worker.put(message)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until every queued message is delivered or failed; ``True`` when drained.

        Returns ``False`` if ``timeout`` seconds pass first. Never waits on an auth
        cool-down (such messages fail at once).
        """
        return self._worker.flush(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Flush, then stop the worker; returns within ``timeout`` (default
        ``shutdown_timeout``) even if Sprig is unreachable. What is still pending then is
        dropped and reported through ``on_error``. Later messages are dropped.
        """
        self._worker.shutdown(timeout)

    def stats(self) -> Dict[str, int]:
        """Counters, as a plain dict.

        ``received == skipped + delivered + failed + dropped + pending`` at every moment.
        Also ``requests`` (HTTP requests made), ``retries``, ``auth_errors`` and the
        breakdowns ``skipped_<reason>`` (integrations, type, anonymous, unmappable) and
        ``dropped_<reason>`` (queue_full, shutdown).
        """
        return self._worker.stats()

    def purge(
        self,
        user_ids: Collection[str] = (),
        emails: Collection[str] = (),
        delay_seconds: Optional[int] = None,
    ) -> List[str]:
        """Delete visitors from Sprig (privacy requests) via ``POST /v2/purge/visitors``.

        Sends at most 100 visitors per request, in the caller's thread, retrying like
        delivery does. Returns the request ids Sprig gave. Raises :class:`SprigError` if a
        request fails for good (earlier chunks stay submitted).
        """
        for name, values in (("user_ids", user_ids), ("emails", emails)):
            if isinstance(values, (str, bytes)):
                raise TypeError(f"{name} must be a collection of str, not a single str")
            bad = [v for v in values if not isinstance(v, str) or not v]
            if bad:
                raise TypeError(f"{name} must hold non-empty str values")
        if delay_seconds is not None:
            _integer("delay_seconds", delay_seconds, minimum=0)
        request_ids: List[str] = []
        for chunk in purge_chunks(list(user_ids), list(emails)):
            request_id = self._with_retries(
                lambda chunk=chunk: self._api.purge_chunk(  # type: ignore[misc]
                    user_ids=chunk.get("userIds", ()),
                    emails=chunk.get("emails", ()),
                    delay_seconds=delay_seconds,
                )
            )
            if request_id is not None:
                request_ids.append(request_id)
        return request_ids

    def _with_retries(self, send: Callable[[], Optional[str]]) -> Optional[str]:
        def on_retry(exc: BaseException, delay: float) -> None:
            logger.debug("purge request failed (%s); retrying in %.2fs", exc, delay)

        return retry_call(send, self._retry, time.sleep, on_retry)
