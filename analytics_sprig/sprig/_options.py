"""Validation of :class:`SprigDestination`'s options: a clear error at configuration time.

Wrong types raise ``TypeError``; nonsensical values raise :class:`ConfigurationError` (a
``ValueError``). Messages name the option, never a secret.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Collection, FrozenSet, Iterable, Optional, Tuple

from .._errors import ConfigurationError
from ..batching._spool import Spool
from ._mapping import EventNaming
from ._routing import SEGMENT_TYPES


def number(name: str, value: Any, *, minimum: float, allow_zero: bool = True) -> float:
    """A finite number ``>= minimum`` (``> minimum`` when ``allow_zero`` is false)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum or (not allow_zero and value == 0):
        bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def integer(name: str, value: Any, *, minimum: int) -> int:
    """An int ``>= minimum`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def callback(name: str, value: Any, shape: str) -> Optional[Callable[..., Any]]:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable as {shape}")
    return value  # type: ignore[no-any-return]


def call_types(types: Any) -> FrozenSet[str]:
    """A collection of Segment call types."""
    if isinstance(types, str):
        raise TypeError("types must be a collection of call types, not a str")
    try:
        chosen: FrozenSet[str] = frozenset(types)
    except TypeError:  # None, a number, unhashable items: say which option is wrong
        raise TypeError(
            f"types must be a collection of call types, got {type(types).__name__}"
        ) from None
    unknown = chosen - SEGMENT_TYPES
    if unknown:
        # repr-sorted: sorting mixed str/int would itself raise TypeError.
        names = ", ".join(sorted(map(repr, unknown)))
        raise ConfigurationError(f"unknown Segment call types: {names}")
    return chosen


def naming(kind: str, name_format: Any, default: Any) -> EventNaming:
    """How ``kind`` (page or screen) calls are named: a format using ``{name}`` and
    ``{category}``, and the name for a call without one."""
    for option, text in ((f"{kind}_event_format", name_format),
                         (f"{kind}_event_default", default)):
        if not isinstance(text, str) or not text:
            raise ConfigurationError(f"{option} must be a non-empty str")
    try:
        name_format.format(name="x", category="y")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigurationError(
            f"{kind}_event_format may use only {{name}} and {{category}}: {exc}"
        ) from None
    return EventNaming(name_format, default)


def event_names(name: str, value: Any) -> Optional[Tuple[str, ...]]:
    """``None`` or a collection of event names / glob patterns (``Order *``)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a collection of event names, not a single str")
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a collection of event names") from None
    if not all(isinstance(item, str) and item for item in names):
        raise TypeError(f"{name} must hold non-empty str event names or glob patterns")
    return names


def strings(name: str, values: Collection[Any]) -> Iterable[str]:
    """A collection of non-empty str (not a single str)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a collection of str, not a single str")
    items = list(values)
    if any(not isinstance(v, str) or not v for v in items):
        raise TypeError(f"{name} must hold non-empty str values")
    return items


def spool(path: Any, max_bytes: Any) -> Optional[Spool]:
    """``None``, or a :class:`Spool` at ``path`` (opened lazily, off the app's thread)."""
    integer("spool_max_bytes", max_bytes, minimum=1)
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"spool must be a file path (str or os.PathLike), got "
                        f"{type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ConfigurationError("spool must be a non-empty file path")
    if os.path.isdir(text):
        raise ConfigurationError(f"spool {text!r} is a directory; give a file path")
    return Spool(text, max_bytes=max_bytes)
