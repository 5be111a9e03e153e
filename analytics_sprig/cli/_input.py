"""Reading a JSON-lines export for ``analytics-sprig replay``: files, stdin, gzip, bad lines.

Compression is recognised by the data's first bytes, never by the file name: gzip
(``1f 8b``) is decompressed, for a file and for stdin alike; other formats and UTF-16 text
are refused with a reason. Every problem becomes either a per-line ``problem`` string (the
line is skipped) or an :class:`InputError` (the input cannot be read on), never another
exception.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import stat
import sys
import zlib
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterator, Optional, Tuple, cast

from ..sprig._routing import SEGMENT_TYPES
from ._common import json_kind, quoted

#: A longer line is skipped unread (Segment caps a message at 32 KB, so no export has one).
MAX_LINE_BYTES = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
#: Leading bytes of formats that cannot be a JSON-lines export, and what to call them.
_REFUSED = (
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)
_HEAD = 6  # enough bytes for every signature above


class InputError(Exception):
    """The input cannot be read (on): ``str(exc)`` says why, in one line (exit code 2)."""


class _Rewound(io.RawIOBase):
    """A non-seekable stream whose first bytes were already read, served again first."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        # read1: hand over what a pipe has now, instead of waiting for a full buffer.
        data = getattr(self._rest, "read1", self._rest.read)(len(view))
        view[: len(data)] = data
        return len(data)


@dataclass
class Source:
    """An opened input: a binary stream of (decompressed) lines, and what to call it."""

    stream: IO[bytes]
    name: str
    size: Optional[int]  # bytes, when known and meaningful for progress
    note: Optional[str] = None  # something to tell the user before reading


def _read_head(raw: IO[bytes]) -> bytes:
    head = b""
    while len(head) < _HEAD:
        chunk = raw.read(_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _stdin() -> IO[bytes]:
    if sys.stdin is None:
        raise InputError("cannot read stdin: there is no standard input")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return cast(IO[bytes], buffer)
    # A text-only stdin (an embedding app replaced it): its text, as UTF-8 bytes.
    try:
        text = sys.stdin.read()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read stdin: {exc}") from None
    return io.BytesIO(text.encode("utf-8", "surrogatepass"))


@contextlib.contextmanager
def open_input(path: str) -> Iterator[Source]:
    """Open ``path`` (``-`` is stdin); decompress gzip data; raise :class:`InputError`."""
    name = "stdin" if path == "-" else path
    raw: IO[bytes]
    size: Optional[int] = None
    if path == "-":
        raw = _stdin()
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NUL byte in the path
            raise InputError(f"cannot read {path!r}: {exc}") from None
    try:
        try:
            if path != "-":
                info = os.fstat(raw.fileno())
                if stat.S_ISDIR(info.st_mode):
                    raise InputError(f"cannot read {path}: Is a directory")
                if stat.S_ISREG(info.st_mode):
                    size = info.st_size
            head = _read_head(raw)
        except OSError as exc:
            raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
        if raw.seekable():
            raw.seek(0)
            stream: IO[bytes] = raw
        else:
            stream = cast(IO[bytes], io.BufferedReader(_Rewound(head, raw)))
        for magic, what in _REFUSED:
            if head.startswith(magic):
                hint = " (re-encode it as UTF-8)" if what == "UTF-16 text" else ""
                raise InputError(f"cannot read {name}: it is {what}; replay reads JSON lines, "
                                 f"plain or gzip-compressed{hint}")
        if head.startswith(_GZIP_MAGIC):
            unzipped = gzip.GzipFile(fileobj=stream, mode="rb")
            try:
                # The compressed size says little about progress through the lines.
                yield Source(cast(IO[bytes], unzipped), name, None)
            finally:
                unzipped.close()
            return
        note = None
        if name.endswith(".gz") and head:
            note = (f"{name} is not gzip-compressed (it does not start with the bytes 1f 8b); "
                    "reading it as plain text.")
        yield Source(stream, name, size, note)
    finally:
        if path != "-":
            raw.close()


def _read_error(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip data is truncated (it ends before the end of the compressed stream)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"the gzip data is corrupt ({exc})"
    if isinstance(exc, zlib.error):
        return f"the gzip data is corrupt ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def read_lines(stream: IO[bytes]) -> Iterator[Tuple[bytes, bool]]:
    """Yield ``(line, too_long)``; a line over :data:`MAX_LINE_BYTES` comes back empty.

    Raises :class:`InputError` when reading fails part-way (a truncated or corrupt gzip
    stream, an I/O error); the lines before it have been yielded.
    """
    limit = MAX_LINE_BYTES
    while True:
        try:
            line = stream.readline(limit + 1)
            if not line:
                return
            too_long = len(line) - line.endswith(b"\n") > limit
            if too_long:
                # Skip the rest of the line without holding it in memory.
                while not line.endswith(b"\n"):
                    line = stream.readline(limit)
                    if not line:
                        break
                line = b""
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(_read_error(exc)) from None
        yield line, too_long


def parse_line(raw: bytes, number: int) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """Return ``(message, None)``, ``(None, problem)``, or ``(None, None)`` for a blank line."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return None, (f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                      "of the line)")
    text = text.strip()
    if not text:
        return None, None
    try:
        message = json.loads(text)
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as exc:
        return None, f"invalid JSON ({exc})"
    if not isinstance(message, dict):
        return None, f"not a JSON object ({json_kind(message)})"
    kind = message.get("type")
    if kind is None or kind == "":
        return None, "no \"type\" field"
    if not isinstance(kind, str):
        return None, f"\"type\" is not a string ({json_kind(kind)})"
    if kind not in SEGMENT_TYPES:
        return None, f"unknown call type {quoted(kind)}"
    if message.get("timestamp") is None:
        # Exports carry several times; the event time is what Sprig should see.
        for key in ("originalTimestamp", "receivedAt", "sentAt"):
            if message.get(key):
                message["timestamp"] = message[key]
                break
    return message, None
