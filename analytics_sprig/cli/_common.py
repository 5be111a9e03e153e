"""What every ``analytics-sprig`` command shares: exit codes, errors, and wording helpers.

Nothing here imports another module of :mod:`analytics_sprig.cli`, so every command module
can import it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, List, Optional, TextIO

PROG = "analytics-sprig"
API_KEY_ENV = "SPRIG_API_KEY"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with how the command was called, or an unreadable input (exit code 2)."""


def say(text: str, stream: Optional[TextIO] = None) -> None:
    """Print a line; characters the stream cannot encode are escaped, never an error.

    File names and values from the input can hold anything (a lone surrogate from a
    non-UTF-8 file name, say), and a stream with strict errors must not turn them into a
    traceback.
    """
    out = sys.stderr if stream is None else stream
    try:
        print(text, file=out)
    except UnicodeEncodeError:
        encoding = getattr(out, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding), file=out)


def err(text: str) -> None:
    """Print ``analytics-sprig: error: <text>`` on stderr."""
    say(f"{PROG}: error: {text}")


def note(text: str) -> None:
    """Print a line for the user on stderr (stdout is kept for results)."""
    say(text)


def api_key(given: Optional[str], *, required: bool = True) -> Optional[str]:
    """The Sprig API key from ``--api-key`` or ``$SPRIG_API_KEY``."""
    key = given or os.environ.get(API_KEY_ENV) or None
    if key is None and required:
        raise UsageError(f"no Sprig API key: pass --api-key or set {API_KEY_ENV}")
    return key


def plural(count: int, noun: str, many: Optional[str] = None) -> str:
    """``1 visitor``, ``2 visitors``; the last word of ``noun`` takes the plural.

    ``many`` gives an irregular plural in full (``plural(n, "request id", "request ids")``
    needs none: only the last word changes).
    """
    if count == 1:
        return f"1 {noun}"
    if many is None:
        head, _, last = noun.rpartition(" ")
        if last.endswith("y") and last[-2:-1] not in ("a", "e", "o", "u", ""):
            last = last[:-1] + "ies"
        elif last.endswith(("s", "x", "ch", "sh")):
            last += "es"
        else:
            last += "s"
        many = f"{head} {last}" if head else last
    return f"{count} {many}"


def numbered(label: str, numbers: List[int], limit: int = 10) -> str:
    """``line 3`` or ``lines 3, 4, 6`` (the first ``limit`` numbers, then ``...``)."""
    shown = ", ".join(str(n) for n in numbers[:limit])
    if len(numbers) > limit:
        shown += ", ..."
    return f"{label if len(numbers) == 1 else label + 's'} {shown}"


_JSON_KINDS = (
    (bool, "a boolean"),  # before int: True is an int to Python, not to JSON
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, with its article: ``an integer``, ``an array``, ``null``."""
    if value is None:
        return "null"
    for kind, text in _JSON_KINDS:
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def compact(value: Any) -> str:
    """JSON without spaces, non-ASCII kept readable."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def printable(text: str) -> str:
    """``text`` if stdout can encode it, else with the unencodable characters escaped.

    Exports can hold lone surrogates (``"\\ud800"`` is valid JSON); a strict UTF-8 stdout
    cannot write them, and a request body must still be shown.
    """
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        pass
    return text


def quoted(text: str, limit: int = 40) -> str:
    """A user-supplied value for a message: JSON-quoted, ASCII only, at most ``limit`` chars."""
    if len(text) > limit:
        return json.dumps(text[:limit]) + "..."
    return json.dumps(text)
