"""Exception classes. None of their messages ever contains the API key."""

from __future__ import annotations

from typing import Optional


class SprigError(Exception):
    """Base class of every error this package raises or reports through ``on_error``."""


class ConfigurationError(SprigError, ValueError):
    """An option given to :class:`SprigDestination` or the API client is invalid."""


class SprigAPIError(SprigError):
    """Sprig answered with a status that is not a success.

    ``retryable`` tells whether the same request may succeed later (408, 429, 5xx other
    than 501/505); ``retry_after`` is the server's ``Retry-After`` in seconds, if any.
    """

    def __init__(
        self,
        status_code: int,
        detail: str = "",
        *,
        retryable: bool = False,
        retry_after: Optional[float] = None,
    ) -> None:
        self.status_code = status_code
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after
        text = f"Sprig answered HTTP {status_code}"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def throttled(self) -> bool:
        """Whether this is Sprig's rate limit answering (HTTP 429)."""
        return self.status_code == 429


class SprigAuthError(SprigAPIError):
    """401/403: the API key is wrong, revoked, or belongs to another Sprig environment.

    ``deferrable``: the messages are not at fault, this process's key is; rows taken from
    a spool are put back rather than lost.
    """

    deferrable = True


class SprigNetworkError(SprigError):
    """The request did not get an HTTP answer (connection refused/reset, timeout...)."""

    retryable = True


class MessageDropped(SprigError):
    """A message was dropped before delivery (queue full, or pending at the shutdown deadline).

    ``reason`` is a short machine-readable word: ``queue_full``, ``shutdown``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


class InvalidMessage(SprigError):
    """A message could not be routed or mapped because of a value that misbehaved.

    For example an id or trait whose ``__str__``, ``__eq__`` or ``__hash__`` raises. The
    message ends as failed (``stats()["failed_invalid"]``) and goes to ``on_error``; the
    other messages are not affected. ``detail`` names what went wrong, never a value.
    """

