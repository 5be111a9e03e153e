"""What a backend gives the generic engine: how to plan a message, merge, and send a body.

The split follows OpenTelemetry's BatchProcessor/Exporter and sentry-python's
Worker/Transport: the engine (:mod:`._worker`) owns the buffer, threads, retries, limits and
the ledger; a backend knows one destination's wire format and API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, List, Optional, Protocol, Sequence, TypeVar, Union

from ._lanes import Merger
from ._ledger import DropReason

P = TypeVar("P")
B = TypeVar("B")
S = TypeVar("S", bound="Session")


class Part(Generic[P]):
    """A message planned for sending: it joins ``key``'s lane; ``ref`` is what the engine
    keeps to report it (a light reference, not the message)."""

    # A plain slotted class, not a frozen dataclass: one is made per message, and a frozen
    # dataclass's __init__ costs ~4x more.
    __slots__ = ("key", "part", "ref")

    def __init__(self, key: str, part: P, ref: Any) -> None:
        self.key = key
        self.part = part
        self.ref = ref


@dataclass(frozen=True)
class Skip:
    """A message the destination does not send (counted as ``skipped_<reason>``)."""

    reason: enum.Enum


@dataclass(frozen=True)
class Reject:
    """A message that cannot be sent because of its content (failed, reported)."""

    reason: enum.Enum
    error: BaseException
    ref: Any


Plan = Union[Part[P], Skip, Reject]


class Session(Protocol):
    """One connection's worth of sending state, used by one thread at a time."""

    def close(self) -> None:
        """Release the connection."""

    def forget(self) -> None:
        """Drop the connection without closing it (in a forked child: it is the parent's)."""


class Backend(Protocol[P, B, S]):
    """One destination's side of the engine. Every method may be called from background
    threads; ``plan`` is only ever called from one thread at a time."""

    @property
    def name(self) -> str:
        """A name for logs ("Sprig")."""

    @property
    def merger(self) -> Merger[P, B]:
        """How parts merge into bodies."""

    @property
    def skip_reasons(self) -> Sequence[enum.Enum]:
        """Reasons :meth:`plan` may skip with (their counters start at zero)."""

    @property
    def fail_reasons(self) -> Sequence[enum.Enum]:
        """Reasons :meth:`plan` may reject with."""

    def plan(self, item: Any) -> Plan[P]:
        """Route and map one message; must not raise (reject instead)."""

    def rejected(self, item: Any, error: BaseException) -> Reject:
        """How a message ends when :meth:`plan` raised after all (a bug guard)."""

    def ref(self, item: Any) -> Any:
        """A light reference to an item that is dropped before it was planned."""

    def describe(self, refs: Sequence[Any]) -> List[Any]:
        """What ``on_error`` / ``on_delivered`` receive for these references."""

    def dropped(self, reason: DropReason, detail: str) -> BaseException:
        """The exception ``on_error`` receives for messages dropped for ``reason``."""

    def open_session(self, timeout: Optional[float] = None) -> S:
        """A new connection (lazily opened); ``timeout`` caps each attempt's own bound."""

    def precheck(self) -> None:
        """Raise to fail an attempt without a request (e.g. an auth cool-down)."""

    def send(self, session: S, body: B) -> None:
        """Send ``body`` once. Raise on failure; the error's ``retryable``,
        ``retry_after`` and ``throttled`` attributes steer the retry."""

    def after_fork_in_child(self) -> None:
        """Forget process-bound state (connections) in a forked child."""

