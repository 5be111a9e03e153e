"""Which Segment calls reach Sprig: pure functions, no I/O.

Runs on the app's thread for every call, so it does dictionary look-ups only.
"""

from __future__ import annotations

from typing import Any, FrozenSet, Mapping, Optional

#: The names the Integrations object may use for this destination (case-sensitive).
INTEGRATION_NAMES = ("Sprig", "Sprig Cloud", "UserLeap")
#: Every Segment call type.
SEGMENT_TYPES: FrozenSet[str] = frozenset(
    {"identify", "track", "page", "screen", "group", "alias"}
)
#: Segment call types the Sprig destination sends by default.
DEFAULT_TYPES: FrozenSet[str] = frozenset({"identify", "track", "page", "alias"})

#: Skip reasons, as counted in ``stats()`` under ``skipped_<reason>``.
SKIP_INTEGRATIONS = "integrations"
SKIP_TYPE = "type"
SKIP_ANONYMOUS = "anonymous"
SKIP_REASONS = (SKIP_INTEGRATIONS, SKIP_TYPE, SKIP_ANONYMOUS)


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
) -> Optional[str]:
    """Return why ``message`` does not go to Sprig, or ``None`` if it does."""
    if not integrations_allow(message.get("integrations")):
        return SKIP_INTEGRATIONS
    if message.get("type") not in types:
        return SKIP_TYPE
    if not message.get("userId"):
        return SKIP_ANONYMOUS
    return None
