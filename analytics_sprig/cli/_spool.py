"""``analytics-sprig spool status PATH`` and ``analytics-sprig spool drain PATH``.

``status`` reads a spool file (``SprigDestination(spool=PATH)``) without changing it: the
file is opened for reading only what the summary needs, a missing file is never created,
and a file that is not a readable spool is reported (exit 2), never moved aside (the
app's own destination does that when it opens it).

``drain`` sends what the spool holds now, through a :class:`SprigDestination` opened on
the same path (so with the same claims, retries, per-user order and accounting as the
app), and prints a summary like ``replay``'s. Before touching the spool it checks the API
key with one ``GET /v2/users/<id>``: a destination whose key Sprig rejects fails the rows
it takes, and failed rows leave the spool for good.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sqlite3
import stat
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .._errors import SprigAPIError, SprigAuthError, SprigError, SprigNetworkError
from ..batching._spool import APPLICATION_ID, SCHEMA_VERSION
from ..sprig._api import SprigClient, validate_endpoint
from ..sprig._destination import SprigDestination
from ._common import (
    API_KEY_ENV,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    api_key,
    err,
    plural,
    say,
)
from ._progress import CounterProgress, Progress

#: The user id of the key check's ``GET /v2/users/<id>`` (Sprig answers 404 for it).
KEY_CHECK_USER = "analytics-sprig-key-check"
#: How long a read of the spool waits for a writer's lock (SQLite's busy timeout).
BUSY_TIMEOUT = 5.0
#: A drain with nothing pending that settles nothing more for this long is over (more than
#: the destination's own poll interval, 1 s).
STALL_SECONDS = 3.0


@dataclass(frozen=True)
class SpoolInfo:
    """What a spool file holds (all rows, claimed ones included)."""

    rows: int
    messages: int
    #: Stored payload + references, what ``spool_max_bytes`` bounds (the file is larger).
    bytes: int
    claimed: int
    #: Seconds since the oldest row's oldest message; ``None`` when empty.
    oldest_age: Optional[float]


_EMPTY = SpoolInfo(rows=0, messages=0, bytes=0, claimed=0, oldest_age=None)


# -- reading a spool without changing it ----------------------------------------------------


def _display(path: str) -> str:
    """A path for a message: as given, with what a terminal cannot show escaped."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _one_line(text: str) -> str:
    """SQLite's text on one line (an integrity check's answer spans several)."""
    return " ".join(text.replace("*** in database main ***", "").split())


def _uri(path: str) -> str:
    """A ``file:`` URI that opens ``path`` read-write but never creates it."""
    raw = os.fsencode(os.path.abspath(path))
    return f"file:{urllib.parse.quote(raw)}?mode=rw"


@contextlib.contextmanager
def _connect(path: str, name: str) -> Iterator[sqlite3.Connection]:
    try:
        # mode=rw: a missing file is an error, not a new database. Read-write rather than
        # read-only so the WAL files SQLite creates to read are removed again on close (a
        # write-protected file is opened read-only by SQLite by itself).
        conn = sqlite3.connect(_uri(path), uri=True, timeout=BUSY_TIMEOUT,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open {name}: {_one_line(str(exc))}") from None
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _count_messages(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute(
            "SELECT coalesce(sum(CASE WHEN json_valid(refs) THEN json_array_length(refs) "
            "ELSE 0 END), 0) FROM spool_rows"
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError as exc:
        if "no such function" not in str(exc):  # not a SQLite without JSON functions
            raise
    count = 0
    for (refs,) in conn.execute("SELECT refs FROM spool_rows"):
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            value = json.loads(refs)
            count += len(value) if isinstance(value, list) else 0
    return count


def _read(conn: sqlite3.Connection, name: str) -> SpoolInfo:
    conn.execute("BEGIN")  # one snapshot for every read
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            return _EMPTY  # an empty database: the destination makes it a spool
        if app_id != APPLICATION_ID:
            raise UsageError(f"{name} is not an analytics-sprig spool (a SQLite database of "
                             "something else)")
        if version > SCHEMA_VERSION:
            raise UsageError(f"{name} was written by a newer analytics-sprig (spool schema "
                             f"{version}; this version reads {SCHEMA_VERSION})")
        problems = conn.execute("PRAGMA quick_check(1)").fetchall()
        if problems != [("ok",)]:
            found = _one_line(str(problems[0][0]) if problems else "no answer")
            raise UsageError(f"{name} is damaged ({found}); the app's destination moves it "
                             "aside when it opens it")
        rows, size = conn.execute("SELECT rows, bytes FROM spool_totals").fetchone()
        claimed = conn.execute(
            "SELECT count(*) FROM spool_rows WHERE claimant >= ''"
        ).fetchone()[0]
        oldest = conn.execute("SELECT min(created) FROM spool_rows").fetchone()[0]
        messages = _count_messages(conn)
    finally:
        with contextlib.suppress(Exception):
            conn.execute("COMMIT")
    age = None if oldest is None else max(0.0, time.time() - float(oldest))
    return SpoolInfo(rows=int(rows), messages=messages, bytes=int(size),
                     claimed=int(claimed), oldest_age=age)


def read_spool(path: str) -> Optional[SpoolInfo]:
    """What the spool at ``path`` holds; ``None`` if there is no file (none is created).

    Raises :class:`UsageError` (one line) for anything that is not a readable spool.
    """
    name = _display(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read {name}: {reason}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{name} is a directory, not a spool file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{name} is not a regular file, so not a spool")
    if st.st_size == 0:
        return _EMPTY
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {name}: Permission denied")
    try:
        with _connect(path, name) as conn:
            return _read(conn, name)
    except sqlite3.DatabaseError as exc:
        text = _one_line(str(exc)) or type(exc).__name__
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB
            raise UsageError(f"{name} is not a readable spool ({text})") from None
        raise UsageError(f"cannot read {name}: {text}") from None


# -- status ---------------------------------------------------------------------------------


def age_text(seconds: float) -> str:
    """``under a minute``, ``5 minutes``, ``3 hours``, ``2 days`` (rounded down)."""
    if seconds < 60:
        return "under a minute"
    if seconds < 3600:
        return plural(int(seconds // 60), "minute")
    if seconds < 2 * 86400:
        return plural(int(seconds // 3600), "hour")
    return plural(int(seconds // 86400), "day")


def _row(label: str, value: int, detail: str = "") -> str:
    return f"  {label:<12}{value:>8}{('  ' + detail) if detail else ''}"


def status_lines(name: str, info: Optional[SpoolInfo]) -> List[str]:
    """The ``spool status`` report."""
    if info is None:
        return [f"Spool status: {name}: no such file, nothing is waiting"]
    if info.rows == 0:
        return [f"Spool status: {name}: empty, nothing is waiting"]
    lines = [f"Spool status: {name}",
             _row("rows", info.rows, f"({plural(info.messages, 'message')})"),
             _row("bytes", info.bytes)]
    claimed = ""
    if info.claimed:
        claimed = ("(taken by a process that is sending them; rows of a process that died "
                   "go to the next one)")
    lines.append(_row("claimed", info.claimed, claimed))
    if info.oldest_age is not None:
        lines.append(f"  {'oldest row':<12}{age_text(info.oldest_age)} old")
    return lines


def run_status(args: Any) -> int:
    """The ``spool status`` command, from its parsed arguments."""
    info = read_spool(args.path)
    if args.json:
        document: Dict[str, Any] = {"path": args.path, "exists": info is not None}
        shown = info or _EMPTY
        document.update(rows=shown.rows, messages=shown.messages, bytes=shown.bytes,
                        claimed=shown.claimed, oldest_age_seconds=shown.oldest_age)
        say(json.dumps(document, ensure_ascii=True), sys.stdout)
    else:
        for line in status_lines(_display(args.path), info):
            say(line, sys.stdout)
    return EXIT_OK


# -- drain ----------------------------------------------------------------------------------


class _DrainCounter(CounterProgress):
    """A one-line counter on stderr, for terminals without ``rich``."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._drain_total = total

    def show(self, settled: int, *, force: bool = False) -> None:
        """Messages settled so far (delivered, failed, dropped or put back)."""
        now = time.monotonic()
        if now - self._shown < 0.2 and not force:
            return
        self._shown = now
        text = f"draining: {settled} of {plural(self._drain_total, 'message')} settled"
        sys.stderr.write("\r" + text.ljust(len(self._text)))
        sys.stderr.flush()
        self._text = text


class _DrainBar(Progress):
    """A ``rich`` progress bar (the ``cli`` extra) on stderr."""

    def __init__(self, total: int) -> None:
        progress = importlib.import_module("rich.progress")
        console = importlib.import_module("rich.console").Console(stderr=True)
        self._progress: Any = progress.Progress(
            progress.TextColumn("draining"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TextColumn("messages settled"),
            progress.TimeElapsedColumn(),
            console=console,
            transient=True,
            redirect_stdout=sys.stdout.isatty(),
        )
        self._task = self._progress.add_task("drain", total=total)
        self._shown = 0.0
        self._progress.start()

    def show(self, settled: int, *, force: bool = False) -> None:
        """Messages settled so far (delivered, failed, dropped or put back)."""
        now = time.monotonic()
        if now - self._shown < 0.1 and not force:
            return
        self._shown = now
        self._progress.update(self._task, completed=settled)

    def note(self, text: str) -> None:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


class _NoDisplay(Progress):
    def show(self, settled: int, *, force: bool = False) -> None:
        """Nothing to show."""


def _make_display(enabled: bool, total: int) -> Any:
    if not enabled or not sys.stderr.isatty():
        return _NoDisplay()
    try:
        return _DrainBar(total)
    except ImportError:
        return _DrainCounter(total)


class _Drain:
    """Counts and error bookkeeping for one drain."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.interrupted = False
        self.auth_failed = threading.Event()
        self._lock = threading.Lock()

    def on_error(self, exc: BaseException, messages: List[Mapping[str, Any]]) -> None:
        """``SprigDestination`` ``on_error`` (called from its threads)."""
        with self._lock:
            self.errors[str(exc) or type(exc).__name__] += len(messages)
        if isinstance(exc, SprigAuthError):
            self.auth_failed.set()


def _check_key(key: str, endpoint: str) -> Optional[str]:
    """One ``GET /v2/users/<id>``: why the drain must not start, or ``None``."""
    client = SprigClient(key, endpoint=endpoint, timeout=10.0, connect_timeout=5.0)
    try:
        client.get_user(KEY_CHECK_USER)
    except SprigAuthError:
        return f"Sprig rejected the API key; check --api-key or {API_KEY_ENV}"
    except SprigNetworkError as exc:
        return f"cannot reach Sprig at {endpoint} ({exc})"
    except SprigAPIError:
        return None  # the key passed; the drain retries what the server refuses for now
    except SprigError as exc:
        return f"cannot check the API key: {exc}"
    finally:
        client.close()
    return None


def _settled(stats: Mapping[str, int]) -> int:
    return (stats.get("delivered", 0) + stats.get("failed", 0) + stats.get("dropped", 0)
            + stats.get("spooled", 0))


def _drain(destination: SprigDestination, state: _Drain, display: Any) -> None:
    """Flush until the spool is empty or the destination gives up (Sprig fails)."""
    last, since, quiet = -1, time.monotonic(), False
    while True:
        if quiet:
            # Nothing in memory, yet rows wait that another process holds (a user's later
            # rows wait for it): flush() would re-claim in a loop, so let the destination
            # poll the file at its own pace for a while.
            time.sleep(0.25)
            drained = False
        else:
            # True once nothing is pending and no row waits that the destination would send
            # now: the spool is empty, or Sprig failed and the rows went back to it.
            drained = destination.flush(timeout=0.2)
        stats = destination.stats()
        settled = _settled(stats)
        display.show(settled, force=True)
        if drained or state.auth_failed.is_set():
            return
        now = time.monotonic()
        if settled != last or stats.get("pending", 0):
            last, since, quiet = settled, now, False
        elif now - since >= STALL_SECONDS:
            return  # those rows are another process's to send
        else:
            quiet = True
        if not quiet:
            time.sleep(0.05)


def drain_summary(name: str, before: SpoolInfo, stats: Mapping[str, int],
                  after: Optional[SpoolInfo], state: _Drain) -> List[str]:
    """The ``spool drain`` summary."""
    lines = [f"Spool drain summary: {name}",
             _row("rows before", before.rows, f"({plural(before.messages, 'message')})")]
    requests, retries = stats.get("requests", 0), stats.get("retries", 0)
    detail = "in " + plural(requests, "request") + (f", {plural(retries, 'retry')}"
                                                    if retries else "")
    lines.append(_row("delivered", stats.get("delivered", 0), detail))
    lines.append(_row("failed", stats.get("failed", 0)))
    lines.append(_row("dropped", stats.get("dropped", 0)))
    if stats.get("spooled", 0):
        lines.append(_row("put back", stats["spooled"], "(Sprig did not take them yet)"))
    if stats.get("spool_reclaimed", 0):
        lines.append(_row("reclaimed", stats["spool_reclaimed"],
                          "(rows a process that died had taken: possibly delivered twice)"))
    if after is not None:
        lines.append(_row("rows left", after.rows, f"({plural(after.messages, 'message')})"
                          if after.rows else ""))
    for text, count in state.errors.most_common(5):
        lines.append(f"    {plural(count, 'message')}: {text}")
    if state.interrupted:
        lines.append("Interrupted: what was not sent is back in the spool.")
    return lines


def run_drain(args: Any) -> int:
    """The ``spool drain`` command, from its parsed arguments."""
    endpoint = validate_endpoint(args.endpoint)
    key = api_key(args.api_key)  # fail before reading anything
    assert key is not None
    name = _display(args.path)
    before = read_spool(args.path)
    if before is None:
        say(f"Spool drain: {name}: no such file, nothing to send", sys.stdout)
        return EXIT_OK
    if before.rows == 0:
        say(f"Spool drain: {name}: empty, nothing to send", sys.stdout)
        return EXIT_OK
    problem = _check_key(key, endpoint)
    if problem is not None:
        err(f"{problem}; nothing was taken from {name}")
        return EXIT_FAILED
    state = _Drain()
    display = _make_display(args.progress, before.messages)
    destination = SprigDestination(
        key,
        endpoint=endpoint,
        on_error=state.on_error,
        max_retries=args.max_retries,
        max_requests_per_second=args.max_requests_per_second,
        spool=args.path,
    )
    try:
        try:
            _drain(destination, state, display)
        except KeyboardInterrupt:
            state.interrupted = True
        finally:
            # What is still pending goes back to the spool (within the shutdown's bound).
            destination.shutdown(timeout=2.0 if state.interrupted else 10.0)
    finally:
        display.close()
    stats = destination.stats()
    unreadable: Optional[str] = None
    try:
        after = read_spool(args.path) or _EMPTY
    except UsageError as exc:  # replaced meanwhile by something unreadable
        unreadable, after = str(exc), None
    for line in drain_summary(name, before, stats, after, state):
        say(line, sys.stdout)
    sys.stdout.flush()
    if unreadable is not None:
        err(f"after the drain, {unreadable}")
        return EXIT_FAILED
    if state.interrupted:
        return EXIT_INTERRUPTED
    if state.auth_failed.is_set():
        err(f"Sprig rejected the API key; check --api-key or {API_KEY_ENV}")
        return EXIT_FAILED
    lost = stats.get("failed", 0) + stats.get("dropped", 0)
    if lost:
        err(f"{plural(lost, 'message')} did not reach Sprig (see the summary)")
        return EXIT_FAILED
    if after is not None and after.rows:
        err(f"{plural(after.rows, 'row')} still in {name} (Sprig did not take them, or "
            "another process is sending them); run the drain again later")
        return EXIT_FAILED
    return EXIT_OK


def run_no_action(parser: Any) -> int:
    """``analytics-sprig spool`` without ``status`` or ``drain``: its usage, exit 2."""
    parser.print_usage(sys.stderr)
    err("spool needs an action: status or drain")
    return EXIT_USAGE
