"""Name lookups bounded by the request's deadline.

``socket.getaddrinfo`` takes no timeout: a resolver that does not answer holds a connect for
as long as the system retries (``resolv.conf``: 5 s per try, times attempts and servers),
whatever ``timeout`` the request has. Here the lookup runs in a daemon thread, and the
caller waits for it at most the time it has left. Every caller wanting the same host and
port waits on the one lookup that is running, so a resolver that hangs costs one thread
per name, not one per attempt.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Dict, List, Optional, Tuple

import httpcore

_Key = Tuple[str, int]


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (nothing to look up)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Resolver:
    """Looks names up in a daemon thread, one lookup per ``(host, port)`` at a time."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also in a forked child: the parent's lookup threads do not exist there.
        self._lock = threading.Lock()
        self._running: Dict[_Key, Future[List[str]]] = {}

    def addresses(self, host: str, port: int, timeout: Optional[float]) -> List[str]:
        """The IP addresses of ``host``, in the system's order of preference.

        Raises ``httpcore.ConnectTimeout`` if the lookup takes longer than ``timeout``
        seconds and ``httpcore.ConnectError`` if it fails (both name ``host``, which is
        the endpoint's, never a header).
        """
        key = (host, port)
        with self._lock:
            future = self._running.get(key)
            start = future is None
            if future is None:
                future = self._running[key] = Future()
        if start:
            thread = threading.Thread(target=self._look_up, args=(key, future),
                                      name="analytics-sprig-resolver", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down (3.12+): no new threads
                self._look_up(key, future)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise httpcore.ConnectTimeout(
                f"looking up {host!r} took longer than the request's timeout"
            ) from None
        except Exception as exc:  # gaierror, or UnicodeError for a label idna refuses
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise httpcore.ConnectError(f"could not look up {host!r}: {reason}") from None

    def _look_up(self, key: _Key, future: Future[List[str]]) -> None:
        try:
            infos = socket.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except BaseException as exc:  # handed to every waiting caller
            result: Optional[List[str]] = None
            error: Optional[BaseException] = exc
        else:
            result, error = addresses, None
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]  # the next connect looks the name up afresh
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or [])


#: One per process: the transports of every destination share the running lookups.
RESOLVER = Resolver()

if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=RESOLVER._reset)
