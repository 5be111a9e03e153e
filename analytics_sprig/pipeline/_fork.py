"""Segment's own delivery in the child of ``os.fork()``.

analytics-python's consumer threads do not survive ``fork()`` (only the forking thread
does), so in a pre-fork server's worker (gunicorn ``--preload``, uWSGI without
``lazy-apps``, Celery prefork) every call piles up in a queue nobody reads and
``flush()`` waits forever. The child's copy of the queue also holds the parent's pending
messages (the parent still sends those) and locks a parent thread may have held at the
fork, and the module-level ``requests`` sessions hold the parent's pooled sockets.

For each client the host selects (one with plugins, or opted in with
:func:`analytics_sprig.fork_safe`), the child gets what sentry-python and OpenTelemetry
give theirs: a fresh queue and fresh consumers configured as the parent's, started only if
the parent's were running; and fresh ``requests`` sessions for analytics-python.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Any, Dict, List, Set

logger = logging.getLogger("analytics_sprig")

# (Consumer.__init__ keyword, attribute the consumer keeps it in); newer analytics-python
# 2.x releases added the last two, so each is passed only when the old consumer has it.
_CONSUMER_OPTIONS = (
    ("upload_size", "upload_size"),
    ("host", "host"),
    ("on_error", "on_error"),
    ("upload_interval", "upload_interval"),
    ("gzip", "gzip"),
    ("retries", "retries"),
    ("timeout", "timeout"),
    ("proxies", "proxies"),
    ("oauth_manager", "oauth_manager"),
    ("max_total_backoff_duration", "max_total_backoff_duration"),
    ("max_rate_limit_duration", "max_rate_limit_duration"),
)


def _fresh_consumer(old: Any, fresh_queue: queue.Queue[Any]) -> Any:
    options: Dict[str, Any] = {
        keyword: getattr(old, attribute)
        for keyword, attribute in _CONSUMER_OPTIONS
        if hasattr(old, attribute)
    }
    return type(old)(fresh_queue, old.write_key, **options)


def _reset_oauth_manager(manager: Any) -> None:
    # The token is still good in the child; its lock and poller thread are the parent's.
    if hasattr(manager, "token_mutex"):
        manager.token_mutex = threading.Lock()
    if hasattr(manager, "thread"):
        manager.thread = None


def renew_segment_delivery(client: Any) -> None:
    """Give ``client`` (in the child of a fork) a fresh queue and fresh consumers."""
    old_queue = client.queue
    client.queue = queue.Queue(old_queue.maxsize)
    managers: Set[int] = set()
    oauth_manager = getattr(client, "oauth_manager", None)
    if oauth_manager is not None:
        _reset_oauth_manager(oauth_manager)
        managers.add(id(oauth_manager))
    old_consumers = client.consumers
    if old_consumers is None:  # sync_mode: no queue readers, nothing else to renew
        return
    fresh: List[Any] = []
    start: List[Any] = []
    for old in old_consumers:
        manager = getattr(old, "oauth_manager", None)
        if manager is not None and id(manager) not in managers:
            _reset_oauth_manager(manager)
            managers.add(id(manager))
        consumer = _fresh_consumer(old, client.queue)
        fresh.append(consumer)
        # Started in the parent (ident set) and not paused by join(): it should be running.
        if client.send and old.ident is not None and old.running:
            start.append(consumer)
    client.consumers = fresh
    for consumer in start:
        consumer.start()


def _reset_adapter(adapter: Any) -> None:
    from requests.adapters import HTTPAdapter

    if not isinstance(adapter, HTTPAdapter):
        return
    # The same adapter (custom subclasses keep their settings) with empty pools.
    adapter.proxy_manager = {}
    adapter.init_poolmanager(adapter._pool_connections, adapter._pool_maxsize,
                             block=adapter._pool_block)


def fresh_session(old: Any) -> Any:
    """A new ``requests.Session`` configured like ``old``, sharing none of its sockets."""
    import requests

    session = requests.Session()
    for name in ("headers", "auth", "proxies", "hooks", "params", "stream", "verify",
                 "cert", "max_redirects", "trust_env"):
        if hasattr(old, name):
            setattr(session, name, copy.copy(getattr(old, name)))
    session.adapters.clear()
    for prefix, adapter in list(getattr(old, "adapters", {}).items()):
        try:
            _reset_adapter(adapter)
        except Exception:
            logger.debug("could not reset a requests adapter after fork; reused as is",
                         exc_info=True)
        session.mount(prefix, adapter)
    return session


def renew_sessions() -> None:
    """Replace analytics-python's module-level ``requests`` sessions (in the child)."""
    import segment.analytics.request as request_module

    request_module._session = fresh_session(request_module._session)
    try:
        import segment.analytics.oauth_manager as oauth_module
    except ImportError:  # older 2.x: no OAuth module
        return
    if hasattr(oauth_module, "_session"):
        oauth_module._session = fresh_session(oauth_module._session)
