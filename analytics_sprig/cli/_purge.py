"""``analytics-sprig purge``: privacy deletion of visitors by user id or email."""

from __future__ import annotations

import sys
from typing import Any, List, Sequence

from .._errors import SprigAuthError, SprigError
from ..sprig._api import purge_chunks
from ..sprig._destination import SprigDestination
from ._common import EXIT_FAILED, EXIT_OK, UsageError, api_key, err, note, plural


def _read_bytes(path: str) -> bytes:
    if path != "-":
        with open(path, "rb") as handle:
            return handle.read()
    if sys.stdin is None:
        raise UsageError("cannot read stdin: there is no standard input")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        data: bytes = buffer.read()
        return data
    return sys.stdin.read().encode("utf-8", "surrogatepass")


def read_list(path: str) -> List[str]:
    """One value per line; blank lines and ``#`` comments are ignored; ``-`` is stdin."""
    name = "stdin" if path == "-" else path
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path, a closed stdin
        raise UsageError(f"cannot read {name!r}: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"cannot read {name}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                         f"on line {line})") from None
    values = []
    for line_text in text.splitlines():
        value = line_text.strip()
        if value and not value.startswith("#"):
            values.append(value)
    return values


def _unique(values: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(values))


def _when(delay_seconds: Any) -> str:
    if delay_seconds is None:
        return "after its default delay (10 days)"
    if delay_seconds == 0:
        return "with no delay"
    return "after " + plural(delay_seconds, "second")


def run(args: Any) -> int:
    """The ``purge`` command, from its parsed arguments."""
    user_ids = list(args.user_id or [])
    emails = list(args.email or [])
    for path in args.ids_file or []:
        user_ids.extend(read_list(path))
    for path in args.emails_file or []:
        emails.extend(read_list(path))
    user_ids, emails = _unique(user_ids), _unique(emails)
    if not user_ids and not emails:
        raise UsageError("nothing to purge: give --user-id, --email, --ids-file or "
                         "--emails-file (files with at least one value)")
    key = api_key(args.api_key)
    assert key is not None
    destination = SprigDestination(key, endpoint=args.endpoint, max_retries=args.max_retries)
    chunks = purge_chunks(user_ids, emails)
    try:
        for index, chunk in enumerate(chunks, 1):
            count = sum(len(values) for values in chunk.values())
            try:
                got = destination.purge(
                    user_ids=chunk.get("userIds", []),
                    emails=chunk.get("emails", []),
                    delay_seconds=args.delay_seconds,
                )
            except SprigError as exc:
                hint = ""
                if isinstance(exc, SprigAuthError):
                    hint = (" (the API key is wrong or revoked, or belongs to another Sprig "
                            "environment)")
                err(f"purge request {index}/{len(chunks)} failed: {exc}{hint}")
                if index > 1:
                    done = sum(sum(len(v) for v in c.values()) for c in chunks[: index - 1])
                    earlier = plural(index - 1, "earlier request")
                    were = "was" if index == 2 else "were"
                    note(f"{earlier} for {plural(done, 'visitor')} {were} accepted (request "
                         "ids above); running the same purge again is safe.")
                return EXIT_FAILED
            answer = f"request id {got[0]}" if got else "no request id returned"
            print(f"request {index}/{len(chunks)}: {plural(count, 'visitor')} -> {answer}")
            sys.stdout.flush()
    finally:
        destination.shutdown(timeout=1.0)
    parts = [plural(len(user_ids), "user id")] if user_ids else []
    if emails:
        parts.append(plural(len(emails), "email"))
    them = "it" if len(user_ids) + len(emails) == 1 else "them"
    print(f"Submitted {' and '.join(parts)} in {plural(len(chunks), 'request')}; "
          f"Sprig deletes {them} {_when(args.delay_seconds)}.")
    return EXIT_OK
