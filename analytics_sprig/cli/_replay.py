"""``analytics-sprig replay``: stream a JSON-lines Segment export through
:class:`SprigDestination` (or, for ``--dry-run``, through the same routing, mapping and
coalescing without sending), with a progress display and a summary.

The pieces, kept apart so the delivery wiring can change without touching the rest:

- reading and parsing: :mod:`._input` (files, stdin, gzip, per-line problems), driven by
  :func:`_read_messages`, which records every input problem in :class:`_Replay`;
- delivery: :func:`_replay_live` and :func:`_replay_dry`, which consume
  :func:`_read_messages` and return the destination's ``stats()`` (or the same counters);
- reporting: :func:`_replay_summary` and :func:`_exit_code`, from :class:`_Replay` and
  those stats; :func:`run` ties them together for the command.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .._errors import MessageDropped, SprigAuthError
from ..batching._backend import Skip
from ..sprig._api import validate_endpoint
from ..sprig._destination import SprigDestination
from ..sprig._planning import SprigPlanner
from ..sprig._routing import SKIP_REASONS, FailReason, SkipReason
from ._common import (
    API_KEY_ENV,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    api_key,
    compact,
    err,
    numbered,
    plural,
    printable,
)
from ._input import InputError, open_input, parse_line, read_lines
from ._progress import Progress, make_progress

_Progress = Progress  # the name the delivery wiring below uses

#: Replay plans this many messages at a time, coalesced per user (fewer requests against
#: Sprig's rate limit), hands the requests to the destination and waits for them; the
#: dry run plans the same chunks, so it prints exactly the requests a real run makes.
REPLAY_CHUNK = 10000

#: Malformed lines reported one by one; later ones are only counted (a binary file would
#: otherwise print a line of stderr per newline byte).
MAX_LINE_NOTES = 100


def _describe_error(exc: BaseException) -> str:
    """What happened to the messages ``on_error`` got, without repeating their count."""
    if isinstance(exc, MessageDropped):
        if exc.reason == "shutdown":
            return "dropped: still waiting to be sent when the replay stopped"
        if exc.reason == "queue_full":
            return "dropped: the destination's queue was full"
        return f"dropped ({exc.reason})"
    return str(exc) or type(exc).__name__


class _Replay:
    """Counts and error bookkeeping for one replay run."""

    def __init__(self) -> None:
        self.name = "the input"
        self.lines = 0
        self.blank = 0
        self.malformed: List[int] = []
        self.messages = 0
        self.routed = 0
        self.position = 0  # bytes read
        self.settled = 0  # messages no longer pending
        self.stopped_at: Optional[int] = None
        self.interrupted = False
        self.eof = False  # every line was read
        self.input_error: Optional[str] = None  # why the input could not be read (on)
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.auth_failed = threading.Event()

    def on_error(self, exc: BaseException, messages: List[Mapping[str, Any]]) -> None:
        """``SprigDestination`` ``on_error``: tally the reasons (called from its worker)."""
        with self._lock:
            self.errors[_describe_error(exc)] += len(messages)
        if isinstance(exc, SprigAuthError):
            self.auth_failed.set()

    def problem(self, number: int, text: str, progress: Progress) -> None:
        """Count line ``number`` as malformed and report it (the first ones)."""
        self.malformed.append(number)
        if len(self.malformed) <= MAX_LINE_NOTES:
            progress.note(f"line {number}: skipped, {text}")
        if len(self.malformed) == MAX_LINE_NOTES:
            progress.note(f"(more malformed lines are counted in the summary but not shown "
                          f"one by one after the first {MAX_LINE_NOTES})")


def _read_messages(
    stream: IO[bytes], state: _Replay, progress: _Progress
) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield ``(line number, message)``; record blank and malformed lines and read errors.

    Ends quietly when the input cannot be read on (``state.input_error``) and sets
    ``state.eof`` when every line was read, so the caller always gets to send what was read.
    """
    number = 0
    try:
        for raw, too_long in read_lines(stream):
            number += 1
            state.lines = number
            state.position += len(raw)
            progress.update(number, state.position, state.settled)
            if too_long:
                state.problem(number, "longer than 1 MiB (Segment messages are at most "
                              "32 KB)", progress)
                continue
            message, problem = parse_line(raw, number)
            if problem is not None:
                state.problem(number, problem, progress)
            elif message is None:
                state.blank += 1
            else:
                state.messages += 1
                yield number, message
    except InputError as exc:
        where = f" after line {number}" if number else ""
        state.input_error = f"cannot read {state.name}{where}: {exc}"
        return
    state.eof = True


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


def _chunks(messages: Iterator[Tuple[int, Dict[str, Any]]], state: _Replay
            ) -> Iterator[List[Dict[str, Any]]]:
    """The messages in chunks of :data:`REPLAY_CHUNK` (each coalesced on its own)."""
    chunk: List[Dict[str, Any]] = []
    for number, message in messages:
        if state.auth_failed.is_set():
            state.stopped_at = number
            break
        chunk.append(message)
        if len(chunk) == REPLAY_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _replay_live(state: _Replay, stream: IO[bytes], progress: _Progress, *, api_key: str,
                 endpoint: str, max_retries: int,
                 max_requests_per_second: Optional[float]) -> Dict[str, int]:
    destination = SprigDestination(
        api_key,
        endpoint=endpoint,
        on_error=state.on_error,
        max_queue_size=REPLAY_CHUNK,
        max_retries=max_retries,
        max_requests_per_second=max_requests_per_second,
    )
    try:
        for chunk in _chunks(_read_messages(stream, state, progress), state):
            # The same planning as --dry-run: the requests it printed are the ones sent.
            destination.send_batch(chunk)
            _wait(destination, state, progress)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        destination.shutdown(timeout=2.0 if state.interrupted else 10.0)
    stats = destination.stats()
    state.routed = stats["received"] - sum(stats[f"skipped_{r.value}"] for r in SKIP_REASONS)
    return stats


def _replay_dry(state: _Replay, stream: IO[bytes], progress: _Progress) -> Dict[str, int]:
    counts: Dict[str, int] = {"received": 0, "skipped": 0, "delivered": 0, "failed": 0,
                              "dropped": 0, "pending": 0, "requests": 0}
    counts.update({f"skipped_{reason.value}": 0 for reason in SkipReason})
    counts.update({f"failed_{reason.value}": 0 for reason in FailReason})
    planner = SprigPlanner()
    try:
        for chunk in _chunks(_read_messages(stream, state, progress), state):
            bodies, others = planner.bodies(chunk)
            counts["received"] += len(chunk)
            state.settled += len(chunk)
            for plan in others:
                if isinstance(plan, Skip):
                    counts["skipped"] += 1
                    counts[f"skipped_{plan.reason.value}"] += 1
                else:
                    counts["failed"] += 1
                    counts[f"failed_{plan.reason.value}"] += 1
            for body in bodies:
                sys.stdout.write(printable(f"POST /v2/users {compact(body.payload)}\n"))
                counts["requests"] += 1
                counts["delivered"] += len(body.refs)
            state.routed += len(chunk) - sum(
                1 for plan in others
                if isinstance(plan, Skip) and plan.reason in SKIP_REASONS
            )
    except KeyboardInterrupt:
        state.interrupted = True
    sys.stdout.flush()
    return counts


# -- reporting ------------------------------------------------------------------------------


def _replay_summary(state: _Replay, stats: Mapping[str, int], dry_run: bool) -> List[str]:
    """The summary: what was read, skipped and sent (or would be, with ``--dry-run``)."""
    title = "Replay summary" + (" (dry run: nothing was sent)" if dry_run else "")
    if state.lines == 0:
        return [f"{title}: no line was read" + ("." if dry_run else ", nothing was sent.")]
    lines = [title]

    def row(label: str, value: int, detail: str = "") -> None:
        lines.append(f"  {label:<12}{value:>8}{('  ' + detail) if detail else ''}")

    row("lines read", state.lines)
    if state.blank:
        row("blank", state.blank)
    row("malformed", len(state.malformed),
        f"({numbered('line', state.malformed)})" if state.malformed else "")
    row("messages", state.messages)
    reasons = [f"{reason.value.replace('_', ' ')} {stats[f'skipped_{reason.value}']}"
               for reason in SkipReason if stats.get(f"skipped_{reason.value}", 0)]
    row("skipped", stats.get("skipped", 0), f"({', '.join(reasons)})" if reasons else "")
    requests = stats.get("requests", 0)
    if dry_run:
        row("would send", stats.get("delivered", 0), "in " + plural(requests, "request"))
        if stats.get("failed", 0):
            reasons = [f"{reason.value} {stats[f'failed_{reason.value}']}"
                       for reason in FailReason if stats.get(f"failed_{reason.value}", 0)]
            row("would fail", stats["failed"], f"({', '.join(reasons)})" if reasons else "")
    else:
        retries = stats.get("retries", 0)
        detail = "in " + plural(requests, "request") + (f", {plural(retries, 'retry')}"
                                                        if retries else "")
        row("delivered", stats.get("delivered", 0), detail)
        row("failed", stats.get("failed", 0))
        row("dropped", stats.get("dropped", 0))
        unsent = state.messages - stats.get("received", 0)
        if unsent > 0:
            row("not sent", unsent, "(read, but the replay stopped first)")
        for text, count in state.errors.most_common(5):
            lines.append(f"    {plural(count, 'message')}: {text}")
    if state.stopped_at is not None:
        lines.append(f"Stopped at line {state.stopped_at}: Sprig rejected the API key, so "
                     "the rest of the input was not read.")
    if state.interrupted:
        if state.eof:
            lines.append("Interrupted after the whole input was read, before everything "
                         "was sent.")
        else:
            lines.append(f"Interrupted at line {state.lines}: the rest of the input was not "
                         "read.")
    return lines


def _exit_code(state: _Replay, stats: Mapping[str, int], *, strict: bool,
               dry_run: bool = False) -> int:
    """The exit code, after printing the one-line error that explains it (if any)."""
    if state.interrupted:
        return EXIT_INTERRUPTED
    code = EXIT_OK
    if state.auth_failed.is_set():
        err(f"Sprig rejected the API key; check --api-key or {API_KEY_ENV}")
        code = EXIT_FAILED
    elif stats.get("failed", 0) or stats.get("dropped", 0):
        lost = stats.get("failed", 0) + stats.get("dropped", 0)
        err(f"{plural(lost, 'message')} {'would not reach' if dry_run else 'did not reach'} "
            "Sprig (see the summary)")
        code = EXIT_FAILED
    if state.input_error is not None:
        err(state.input_error)
        return EXIT_USAGE
    if code != EXIT_OK:
        return code
    if state.messages == 0:
        bad = len(state.malformed)
        if state.lines == 0:
            why = "it is empty"
        elif not bad:
            why = "it has only blank lines"
        elif not state.blank:
            why = "its only line is malformed" if bad == 1 else f"all {bad} lines are malformed"
        else:
            why = (f"{plural(bad, 'line')} {'is' if bad == 1 else 'are'} malformed, the "
                   f"{'other is' if state.blank == 1 else 'others are'} blank")
        err(f"nothing to replay in {state.name}: {why}")
        return EXIT_FAILED
    if strict and state.malformed:
        err(f"{plural(len(state.malformed), 'malformed line')} (--strict)")
        return EXIT_FAILED
    return EXIT_OK


def run(args: Any) -> int:
    """The ``replay`` command, from its parsed arguments."""
    endpoint = validate_endpoint(args.endpoint)
    key = None if args.dry_run else api_key(args.api_key)  # fail before reading anything
    state = _Replay()
    state.name = "stdin" if args.file == "-" else args.file
    stats: Mapping[str, int] = {}
    try:
        with open_input(args.file) as source:
            progress = make_progress(args.progress, source.size)
            try:
                if source.note:
                    progress.note(source.note)
                if args.dry_run:
                    progress.note(f"Dry run: the requests below would go to {endpoint}; "
                                  "nothing is sent.")
                    stats = _replay_dry(state, source.stream, progress)
                else:
                    assert key is not None
                    stats = _replay_live(state, source.stream, progress, api_key=key,
                                         endpoint=endpoint, max_retries=args.max_retries,
                                         max_requests_per_second=args.max_requests_per_second)
            finally:
                progress.close()
    except InputError as exc:  # raised on opening: nothing was read
        state.input_error = str(exc)
    summary = "\n".join(_replay_summary(state, stats, args.dry_run))
    # With --dry-run stdout carries only the requests, so the summary goes to stderr.
    out = sys.stderr if args.dry_run else sys.stdout
    print(summary, file=out)
    out.flush()
    return _exit_code(state, stats, strict=args.strict, dry_run=args.dry_run)
