"""Which Segment calls reach Sprig: pure functions, no I/O.

Runs on the app's thread for every call, so it does dictionary look-ups only.
"""

from __future__ import annotations

import enum
from typing import Any, FrozenSet, Mapping, Optional

#: The names the Integrations object may use for this destination (case-sensitive).
INTEGRATION_NAMES = ("Sprig", "Sprig Cloud", "UserLeap")
#: Every Segment call type.
SEGMENT_TYPES: FrozenSet[str] = frozenset(
    {"identify", "track", "page", "screen", "group", "alias"}
)
#: Segment call types the Sprig destination sends by default.
DEFAULT_TYPES: FrozenSet[str] = frozenset({"identify", "track", "page", "alias"})


class SkipReason(str, enum.Enum):
    """Why a message does not go to Sprig; counted in ``stats()`` as ``skipped_<value>``."""

    INTEGRATIONS = "integrations"  # the Integrations object opted it out
    TYPE = "type"  # a call type this destination does not send (group, screen)
    ANONYMOUS = "anonymous"  # no userId: Sprig requires one
    UNMAPPABLE = "unmappable"  # nothing Sprig can represent (a track without an event)
    EVENT_FILTER = "event_filter"  # the events= / ignore_events= options
    PLUGIN = "plugin"  # a destination-scoped plugin dropped it


class FailReason(str, enum.Enum):
    """Why a message failed before any request; counted as ``failed_<value>``."""

    INVALID = "invalid"  # a value misbehaved (raising __str__, __eq__, __hash__...)


#: The reasons routing itself gives (the others come from planning).
SKIP_REASONS = (SkipReason.INTEGRATIONS, SkipReason.TYPE, SkipReason.ANONYMOUS)


def integrations_allow(integrations: Optional[Mapping[str, Any]]) -> bool:
    """Whether a call's Integrations object lets it reach Sprig.

    ``False`` under any of :data:`INTEGRATION_NAMES` opts out, and wins over an opt-in
    under another alias. ``True`` or a dict (destination options) opts in, even when
    ``All`` is ``False``. Otherwise ``All`` decides; absent, it is ``True``.
    """
    if not integrations:
        return True
    opted_in = False
    for name in INTEGRATION_NAMES:
        value = integrations.get(name)
        if value is False:
            return False
        if value is True or isinstance(value, dict):
            opted_in = True
    return opted_in or integrations.get("All", True) is not False


def skip_reason(
    message: Mapping[str, Any], types: FrozenSet[str] = DEFAULT_TYPES
) -> Optional[SkipReason]:
    """Return why ``message`` does not go to Sprig, or ``None`` if it does.

    May raise if a value in the message misbehaves (the caller accounts for that).
    """
    if not integrations_allow(message.get("integrations")):
        return SkipReason.INTEGRATIONS
    if message.get("type") not in types:
        return SkipReason.TYPE
    if not message.get("userId"):
        return SkipReason.ANONYMOUS
    return None
