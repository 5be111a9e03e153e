"""Unit tests for ``analytics_sprig.sprig._routing``: which Segment calls reach Sprig.

Each table row is one rule of DESIGN.md "Which calls reach Sprig".
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional

import pytest

import analytics_sprig
from analytics_sprig.sprig._routing import (
    DEFAULT_TYPES,
    INTEGRATION_NAMES,
    SKIP_REASONS,
    SkipReason,
    integrations_allow,
    skip_reason,
)

ALIASES = ("Sprig", "Sprig Cloud", "UserLeap")


def _msg(
    integrations: Any = None,
    *,
    type: str = "track",
    user_id: Any = "user-1",
    omit_integrations: bool = False,
) -> Dict[str, Any]:
    message: Dict[str, Any] = {"type": type, "userId": user_id, "event": "E"}
    if not omit_integrations:
        message["integrations"] = integrations
    return message


# -- constants --------------------------------------------------------------------------


def test_integration_names_are_exactly_the_three_documented_aliases() -> None:
    assert INTEGRATION_NAMES == ALIASES
    assert analytics_sprig.INTEGRATION_NAMES == ALIASES


def test_default_types_and_reasons() -> None:
    assert frozenset({"identify", "track", "page", "alias"}) == DEFAULT_TYPES
    assert set(SKIP_REASONS) == {"integrations", "type", "anonymous"}
    assert [r.value for r in SKIP_REASONS] == ["integrations", "type", "anonymous"]
    # str-valued: a reason compares equal to its name, as in stats() keys.
    assert SkipReason.INTEGRATIONS == "integrations"


# -- integrations object ----------------------------------------------------------------

# (integrations, expected allow)
_INTEGRATION_ROWS = [
    # Absent / empty: All defaults to True.
    pytest.param(None, True, id="none"),
    pytest.param({}, True, id="empty"),
    pytest.param({"All": True}, True, id="all-true"),
    pytest.param({"All": False}, False, id="all-false"),
    pytest.param({"Other Destination": False}, True, id="other-dest-false-all-absent"),
    pytest.param({"All": False, "Other Destination": True}, False, id="other-dest-true-all-false"),
    # Each alias, each value, with All true / false / absent.
    *[
        pytest.param({alias: value, **all_part}, expected, id=f"{alias}={label}-{all_label}")
        for alias in ALIASES
        for value, label, own in (
            (True, "true", True),
            (False, "false", False),
            ({}, "empty-dict", True),
            ({"option": 1}, "dict", True),
            # "Other" values (not True/False/dict) do not decide: All does.
            ("yes", "str", None),
            (1, "int-1", None),
            (0, "int-0", None),
            (None, "None", None),
            ([], "list", None),
        )
        for all_part, all_label, all_value in (
            ({}, "all-absent", True),
            ({"All": True}, "all-true", True),
            ({"All": False}, "all-false", False),
        )
        for expected in [own if own is not None else all_value]
    ],
    # Opt-out under one alias wins over an opt-in under another (whatever the order).
    *[
        pytest.param({yes: yes_value, no: False}, False, id=f"{no}=false-beats-{yes}={label}")
        for yes in ALIASES
        for no in ALIASES
        if yes != no
        for yes_value, label in ((True, "true"), ({"x": 1}, "dict"))
    ],
    pytest.param({"All": True, "Sprig": True, "UserLeap": False}, False, id="optout-wins-all-true"),
    pytest.param(
        {"Sprig": True, "Sprig Cloud": {}, "UserLeap": False, "All": True},
        False,
        id="one-false-among-three",
    ),
    pytest.param({"All": False, "Sprig": {}}, True, id="all-false-sprig-empty-dict-sends"),
    pytest.param({"All": False, "Sprig Cloud": True, "UserLeap": {}}, True, id="two-optins"),
    # Case matters: other spellings are other destinations, so All decides.
    *[
        pytest.param(
            {name: value, "All": all_value}, all_value, id=f"case-{name}={value}-all={all_value}"
        )
        for name in ("sprig", "SPRIG", "userleap", "USERLEAP", "sprig cloud", "SprigCloud",
                     "Sprig_Cloud", "Userleap", " Sprig")
        for value in (True, False)
        for all_value in (True, False)
    ],
    # All set to a non-bool: only an explicit False turns things off.
    pytest.param({"All": None}, True, id="all-None"),
    pytest.param({"All": 0}, True, id="all-0-not-False"),
    pytest.param({"All": "false"}, True, id="all-str-false"),
    pytest.param({"All": {}}, True, id="all-dict"),
]


@pytest.mark.parametrize(("integrations", "expected"), _INTEGRATION_ROWS)
def test_integrations_allow(integrations: Optional[Dict[str, Any]], expected: bool) -> None:
    assert integrations_allow(integrations) is expected


@pytest.mark.parametrize(("integrations", "expected"), _INTEGRATION_ROWS)
def test_skip_reason_follows_integrations(
    integrations: Optional[Dict[str, Any]], expected: bool
) -> None:
    assert skip_reason(_msg(integrations)) == (None if expected else "integrations")


def test_integrations_key_absent_from_message_sends() -> None:
    assert skip_reason(_msg(omit_integrations=True)) is None


def test_integrations_allow_does_not_mutate_input() -> None:
    integrations = {"All": False, "Sprig": {"a": 1}, "UserLeap": True}
    before = {"All": False, "Sprig": {"a": 1}, "UserLeap": True}
    integrations_allow(integrations)
    assert integrations == before


# -- types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_type", "expected"),
    [
        pytest.param("identify", None, id="identify-sent"),
        pytest.param("track", None, id="track-sent"),
        pytest.param("page", None, id="page-sent"),
        pytest.param("alias", None, id="alias-sent"),
        pytest.param("group", "type", id="group-skipped"),
        pytest.param("screen", "type", id="screen-skipped"),
        pytest.param("Track", "type", id="case-sensitive-type"),
        pytest.param("unknown", "type", id="unknown-type"),
        pytest.param("", "type", id="empty-type"),
    ],
)
def test_default_types(call_type: str, expected: Optional[str]) -> None:
    assert skip_reason(_msg(type=call_type)) == expected


def test_missing_type_is_skipped_as_type() -> None:
    message = {"userId": "u", "event": "E"}
    assert skip_reason(message) == "type"


@pytest.mark.parametrize(
    ("types", "call_type", "expected"),
    [
        pytest.param(frozenset({"track"}), "track", None, id="only-track:track"),
        pytest.param(frozenset({"track"}), "identify", "type", id="only-track:identify"),
        pytest.param(frozenset({"track"}), "page", "type", id="only-track:page"),
        pytest.param(frozenset({"identify", "screen"}), "screen", None, id="with-screen:screen"),
        pytest.param(frozenset({"group"}), "group", None, id="with-group:group"),
        pytest.param(frozenset({"group"}), "alias", "type", id="with-group:alias"),
        pytest.param(frozenset(), "track", "type", id="empty-types:track"),
    ],
)
def test_custom_types(types: FrozenSet[str], call_type: str, expected: Optional[str]) -> None:
    assert skip_reason(_msg(type=call_type), types) == expected


# -- anonymous --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param({"type": "track", "event": "E", "anonymousId": "a"}, "anonymous",
                     id="no-userId-key"),
        pytest.param({"type": "track", "event": "E", "userId": None, "anonymousId": "a"},
                     "anonymous", id="userId-None"),
        pytest.param({"type": "track", "event": "E", "userId": "", "anonymousId": "a"},
                     "anonymous", id="userId-empty"),
        pytest.param({"type": "identify", "userId": None, "anonymousId": "a"}, "anonymous",
                     id="identify-anonymous"),
        pytest.param({"type": "track", "event": "E", "userId": "u", "anonymousId": "a"}, None,
                     id="userId-and-anonymousId"),
        pytest.param({"type": "track", "event": "E", "userId": "0"}, None, id="userId-str-zero"),
        pytest.param({"type": "track", "event": "E", "userId": " "}, None, id="userId-space"),
    ],
)
def test_anonymous(message: Dict[str, Any], expected: Optional[str]) -> None:
    assert skip_reason(message) == expected


# -- precedence of the reasons ----------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "types", "expected"),
    [
        pytest.param(_msg({"Sprig": False}, type="group", user_id=None), DEFAULT_TYPES,
                     "integrations", id="integrations-before-type-and-anonymous"),
        pytest.param(_msg({"All": False}, type="screen"), DEFAULT_TYPES, "integrations",
                     id="all-false-before-type"),
        pytest.param(_msg({}, type="group", user_id=None), DEFAULT_TYPES, "type",
                     id="type-before-anonymous"),
        pytest.param(_msg({"Sprig": True}, type="group"), DEFAULT_TYPES, "type",
                     id="optin-does-not-override-type"),
        pytest.param(_msg({"Sprig": True}, user_id=""), DEFAULT_TYPES, "anonymous",
                     id="optin-does-not-override-anonymous"),
        pytest.param(_msg({"All": False, "UserLeap": True}, type="page"), DEFAULT_TYPES, None,
                     id="all-false-alias-optin-page-sent"),
        pytest.param(_msg({"Sprig Cloud": {"x": 1}}, type="group"), frozenset({"group"}), None,
                     id="custom-types-group-sent"),
    ],
)
def test_reason_precedence(
    message: Dict[str, Any], types: FrozenSet[str], expected: Optional[str]
) -> None:
    assert skip_reason(message, types) == expected
