"""The replay engine behind ``analytics-sprig replay``: stream a JSON-lines Segment export
through :class:`SprigDestination` (or, for ``--dry-run``, through the same routing, mapping
and coalescing without sending), with a progress display and a summary.

The command line (:mod:`analytics_sprig.cli`) parses the arguments, calls these pieces and
turns the outcome into an exit code; nothing here knows about ``argparse``.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Tuple, cast

from .._errors import SprigAuthError
from ..sprig._destination import SprigDestination
from ..sprig._mapping import coalesce, map_message
from ..sprig._routing import SKIP_REASONS, skip_reason

#: Replay hands the destination this many routed messages, then waits for them to be sent.
#: Each chunk goes out in one send cycle, its messages coalesced per user (fewer requests
#: against Sprig's rate limit), so ``--dry-run`` (which coalesces per chunk too) prints
#: exactly the requests a real run makes.
REPLAY_CHUNK = 10000

_UNMAPPABLE = "unmappable"


# UsageError and _plural live here, not in cli, because cli imports this module (and uses
# both too); defining them there would make the import circular.


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Progress:
    """No progress display: notes go straight to stderr."""

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        """Record progress: lines and bytes read, messages settled (sent, failed, dropped)."""

    def note(self, text: str) -> None:
        """Print a line on stderr without garbling the display."""
        print(text, file=sys.stderr)

    def close(self) -> None:
        """Remove the display."""


class _CounterProgress(_Progress):
    """A one-line counter on stderr, for terminals without ``rich``."""

    def __init__(self, total: Optional[int]) -> None:
        self._total = total
        self._shown = 0.0
        self._text = ""

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.2 and not force:
            return
        self._shown = now
        percent = f" ({100 * position // self._total}% of the file)" if self._total else ""
        text = f"replaying: {lines} lines read{percent}, {sent} messages settled"
        sys.stderr.write("\r" + text.ljust(len(self._text)))
        sys.stderr.flush()
        self._text = text

    def note(self, text: str) -> None:
        sys.stderr.write("\r" + " " * len(self._text) + "\r" + text + "\n")
        if self._text:
            sys.stderr.write(self._text)
        sys.stderr.flush()

    def close(self) -> None:
        if self._text:
            sys.stderr.write("\r" + " " * len(self._text) + "\r")
            sys.stderr.flush()


class _RichProgress(_Progress):
    """A ``rich`` progress bar (the ``cli`` extra) on stderr."""

    def __init__(self, total: Optional[int]) -> None:
        # Imported by name so the package type-checks and runs without the extra.
        progress = importlib.import_module("rich.progress")
        console = importlib.import_module("rich.console").Console(stderr=True)
        self._progress: Any = progress.Progress(
            progress.TextColumn("replaying"),
            progress.BarColumn(),
            progress.DownloadColumn(),
            progress.TextColumn("{task.fields[lines]} lines read, "
                                "{task.fields[sent]} messages settled"),
            progress.TimeElapsedColumn(),
            console=console,
            transient=True,
            # stdout piped elsewhere (dry-run output) must not be drawn into the terminal.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._task = self._progress.add_task("replay", total=total, lines=0, sent=0)
        self._shown = 0.0
        self._progress.start()

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.1 and not force:
            return
        self._shown = now
        self._progress.update(self._task, completed=position, lines=lines, sent=sent)

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def _make_progress(enabled: bool, total: Optional[int]) -> _Progress:
    if not enabled or not sys.stderr.isatty():
        return _Progress()
    try:
        return _RichProgress(total)
    except ImportError:
        return _CounterProgress(total)


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[Tuple[IO[bytes], Optional[int]]]:
    """Open ``path`` (``-`` is stdin; ``.gz`` is decompressed); yield it and its size."""
    if path == "-":
        yield sys.stdin.buffer, None
        return
    try:
        size: Optional[int] = os.path.getsize(path)
        raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".gz"):
            size = None  # the compressed size says little about progress
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(IO[bytes], unzipped), size
        else:
            yield raw, size
    finally:
        raw.close()


def _parse_line(raw: bytes, number: int) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """Return ``(message, None)``, ``(None, problem)`` or ``(None, None)`` for a blank line."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    text = text.strip()
    if not text:
        return None, None
    try:
        message = json.loads(text)
    except ValueError as exc:
        return None, f"invalid JSON ({exc})"
    if not isinstance(message, dict):
        return None, f"not a JSON object (a {type(message).__name__})"
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        return None, "no \"type\" field"
    if message.get("timestamp") is None:
        # Exports carry several times; the event time is what Sprig should see.
        for key in ("originalTimestamp", "receivedAt", "sentAt"):
            if message.get(key):
                message["timestamp"] = message[key]
                break
    return message, None


class _Replay:
    """Counts and error bookkeeping for one replay run."""

    def __init__(self) -> None:
        self.lines = 0
        self.blank = 0
        self.malformed: List[int] = []
        self.messages = 0
        self.routed = 0
        self.position = 0  # bytes read
        self.settled = 0  # messages no longer pending
        self.stopped_at: Optional[int] = None
        self.interrupted = False
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.auth_failed = threading.Event()

    def on_error(self, exc: BaseException, messages: List[Mapping[str, Any]]) -> None:
        """``SprigDestination`` ``on_error``: tally the reasons (called from its worker)."""
        with self._lock:
            self.errors[str(exc)] += len(messages)
        if isinstance(exc, SprigAuthError):
            self.auth_failed.set()


def _read_messages(
    stream: IO[bytes], state: _Replay, progress: _Progress
) -> Iterator[Tuple[int, Dict[str, Any]]]:
    for number, raw in enumerate(stream, 1):
        state.lines = number
        state.position += len(raw)
        progress.update(number, state.position, state.settled)
        message, problem = _parse_line(raw, number)
        if problem is not None:
            state.malformed.append(number)
            progress.note(f"line {number}: skipped, {problem}")
        elif message is None:
            state.blank += 1
        else:
            state.messages += 1
            yield number, message


def _wait(destination: SprigDestination, state: _Replay, progress: _Progress) -> None:
    """Flush the destination, keeping the progress display moving meanwhile."""
    # One flush() call only: each call wakes the worker, and a spare wake-up would send
    # part of the next chunk early (more requests than --dry-run shows).
    drained = destination.flush(timeout=0.2)
    while True:
        stats = destination.stats()
        state.settled = stats["received"] - stats["pending"]
        progress.update(state.lines, state.position, state.settled, force=True)
        if drained or not stats["pending"]:
            return
        time.sleep(0.05)


def _replay_live(state: _Replay, stream: IO[bytes], progress: _Progress, *, api_key: str,
                 endpoint: str, max_retries: int,
                 max_requests_per_second: Optional[float]) -> Dict[str, int]:
    destination = SprigDestination(
        api_key,
        endpoint=endpoint,
        on_error=state.on_error,
        # Replay alone decides when to send: at every REPLAY_CHUNK routed messages and at
        # the end. No timer (the interval is never reached) and no early wake (the queue
        # never holds max_batch_size), so every chunk goes out in one send cycle.
        flush_interval=3600.0,
        max_batch_size=REPLAY_CHUNK + 1,
        max_queue_size=2 * REPLAY_CHUNK + 2,
        max_retries=max_retries,
        max_requests_per_second=max_requests_per_second,
    )
    try:
        for number, message in _read_messages(stream, state, progress):
            if state.auth_failed.is_set():
                state.stopped_at = number
                break
            destination.send(message)
            if skip_reason(message) is None:
                state.routed += 1
                if state.routed % REPLAY_CHUNK == 0:
                    _wait(destination, state, progress)
        _wait(destination, state, progress)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        destination.shutdown(timeout=2.0 if state.interrupted else 10.0)
    return destination.stats()


def _replay_dry(state: _Replay, stream: IO[bytes], progress: _Progress) -> Dict[str, int]:
    counts: Dict[str, int] = {"received": 0, "skipped": 0, "delivered": 0, "failed": 0,
                              "dropped": 0, "pending": 0, "requests": 0}
    counts.update({f"skipped_{reason}": 0 for reason in (*SKIP_REASONS, _UNMAPPABLE)})
    items: List[Tuple[Dict[str, Any], Mapping[str, Any]]] = []

    def emit() -> None:
        for batch in coalesce(items):
            sys.stdout.write(f"POST /v2/users {_compact(batch.body)}\n")
            counts["requests"] += 1
            counts["delivered"] += len(batch.messages)
        items.clear()

    try:
        for _, message in _read_messages(stream, state, progress):
            counts["received"] += 1
            state.settled += 1
            reason = skip_reason(message)
            if reason is None:
                state.routed += 1
                body = map_message(message)
                if body is None:
                    reason = _UNMAPPABLE
                else:
                    items.append((body, message))
                if state.routed % REPLAY_CHUNK == 0:
                    emit()
            if reason is not None:
                counts["skipped"] += 1
                counts[f"skipped_{reason}"] += 1
        emit()
    except KeyboardInterrupt:
        state.interrupted = True
    sys.stdout.flush()
    return counts


def _replay_summary(state: _Replay, stats: Mapping[str, int], dry_run: bool) -> List[str]:
    lines = ["Replay summary" + (" (dry run: nothing was sent)" if dry_run else "")]

    def row(label: str, value: int, detail: str = "") -> None:
        lines.append(f"  {label:<12}{value:>8}{('  ' + detail) if detail else ''}")

    row("lines read", state.lines)
    if state.blank:
        row("blank", state.blank)
    shown = ", ".join(str(n) for n in state.malformed[:10])
    if len(state.malformed) > 10:
        shown += ", ..."
    row("malformed", len(state.malformed), f"(lines {shown})" if state.malformed else "")
    row("messages", state.messages)
    reasons = [f"{reason} {stats.get(f'skipped_{reason}', 0)}"
               for reason in (*SKIP_REASONS, _UNMAPPABLE) if stats.get(f"skipped_{reason}", 0)]
    row("skipped", stats.get("skipped", 0), f"({', '.join(reasons)})" if reasons else "")
    requests = stats.get("requests", 0)
    if dry_run:
        row("would send", stats.get("delivered", 0), "in " + _plural(requests, "request"))
    else:
        retries = stats.get("retries", 0)
        detail = "in " + _plural(requests, "request") + (f", {_plural(retries, 'retry')}"
                                                  if retries else "")
        row("delivered", stats.get("delivered", 0), detail)
        row("failed", stats.get("failed", 0))
        row("dropped", stats.get("dropped", 0))
        unsent = state.messages - stats.get("received", 0)
        if unsent > 0:
            row("not sent", unsent, "(read, but the replay stopped first)")
        for text, count in state.errors.most_common(5):
            lines.append(f"    {count} x {text}")
    if state.stopped_at is not None:
        lines.append(f"Stopped at line {state.stopped_at}: Sprig rejected the API key, so "
                     "the rest of the file was not read.")
    if state.interrupted:
        lines.append("Interrupted: the rest of the file was not read.")
    return lines
