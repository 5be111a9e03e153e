"""A durable spool: rows waiting for delivery, kept in an embedded SQLite database.

Generic: a row is a ``key`` (rows of one key come back in insertion order), a JSON
``payload`` and JSON ``refs``; nothing here knows what they mean.

Design notes (the why):

- One ``sqlite3`` connection per :class:`Spool`, opened lazily on the first call (a
  constructor never touches the disk), used from a few threads under one lock. WAL mode,
  ``synchronous=NORMAL``; every wait is bounded by ``busy_timeout`` (SQLite's busy handler)
  or a bounded lock acquire, never an open-ended retry loop.
- Several processes may share one file. A claim is a ``BEGIN IMMEDIATE`` transaction that
  marks rows with the claimant's token, so each row is claimed by exactly one claimant. A
  claimant is one Spool in one process (host, pid, process start time, random token). Rows
  whose claimant died (same host, pid gone, or pid reused by another process) are put back
  and counted in :attr:`Spool.reclaimed`, since they may have been delivered already.
- Bounded by ``max_bytes`` of stored payload+refs, kept in a one-row totals table by
  triggers so the check is O(1); beyond it the oldest unclaimed rows are evicted and handed
  back to the caller to count.
- A file that is not a readable spool is renamed to ``<path>.corrupt-<timestamp>`` (with its
  ``-wal``/``-shm``) with one log line and a fresh spool is created; if that fails the spool
  becomes unusable (one log line) and every call is a cheap no-op. Public methods never raise.
- Ids start at a random offset in every new file, so an id claimed from a file that was
  since replaced cannot name a row of the new file; deletes and releases also only touch
  rows this Spool itself claimed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
)

__all__ = ["ClaimedRow", "Spool", "SpoolRow", "SpoolStatus"]

_T = TypeVar("_T")

#: Bumped on any schema change; a migration from N-1 goes into ``_MIGRATIONS[N-1]``.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a spool file ("Spr1"), so a foreign database is recognised.
APPLICATION_ID = 0x53707231

#: version -> statements that turn a schema of that version into version + 1.
_MIGRATIONS: Dict[int, Sequence[str]] = {}

_SCHEMA = (
    # claimant: NULL while waiting, else the token of the Spool that claimed the row.
    """CREATE TABLE spool_rows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        refs TEXT NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        claimant TEXT
    )""",
    # Serves "unclaimed, oldest first" (claimant IS NULL ordered by id) and "claimed rows".
    "CREATE INDEX spool_rows_claimant ON spool_rows (claimant, id)",
    """CREATE TABLE spool_totals (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    "INSERT INTO spool_totals (one, rows, bytes) VALUES (1, 0, 0)",
    """CREATE TABLE spool_claimants (
        token TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started TEXT
    ) WITHOUT ROWID""",
    """CREATE TRIGGER spool_rows_insert AFTER INSERT ON spool_rows BEGIN
        UPDATE spool_totals SET rows = rows + 1, bytes = bytes + NEW.size;
    END""",
    """CREATE TRIGGER spool_rows_delete AFTER DELETE ON spool_rows BEGIN
        UPDATE spool_totals SET rows = rows - 1, bytes = bytes - OLD.size;
    END""",
)

#: table -> column names, as ``PRAGMA table_info`` lists them.
_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "spool_rows": ("id", "key", "payload", "refs", "created", "size", "claimant"),
    "spool_totals": ("one", "rows", "bytes"),
    "spool_claimants": ("token", "host", "pid", "started"),
}
_OTHER_OBJECTS = ("spool_rows_claimant", "spool_rows_insert", "spool_rows_delete")

# "claimant >= ''" rather than "IS NOT NULL" throughout: a range the planner serves from the
# index (claimed rows are few) instead of scanning the table.
# Rows of keys that another claimant holds are skipped, so one key's rows are never in
# flight in two claimants at once (per-key order holds across processes too).
_CLAIM_SQL = """
    SELECT id, key, payload, refs, created FROM spool_rows
    WHERE claimant IS NULL
      AND key NOT IN (SELECT key FROM spool_rows WHERE claimant >= '' AND claimant != ?)
    ORDER BY id LIMIT ?
"""

#: A fresh file's first id is random below this (JSON-safe, far from the int64 limit).
_ID_SPACE = 2**52
#: Fresh spools one Spool may create after finding its file unreadable before giving up.
_MAX_RECOVERIES = 3
#: Seconds between two log lines about transient failures (busy, disk full, I/O error).
_WARN_INTERVAL = 60.0
#: Free pages worth giving back to the file system once the spool is empty (4 MiB of 4 KiB).
_VACUUM_FREE_PAGES = 1024


@dataclass(frozen=True)
class SpoolRow:
    """A row to store: ``key`` orders (same key, insertion order), the rest is carried."""

    key: str
    #: JSON-serialisable (a dict); stored as JSON text.
    payload: Any
    #: JSON-serialisable (a list of small dicts/lists); returned as JSON round-trips it.
    refs: Any
    #: ``time.time()`` of the oldest message in the row.
    created: float


@dataclass(frozen=True)
class ClaimedRow:
    """A stored row claimed by this :class:`Spool`; ``id`` is what delete/release take."""

    id: int
    key: str
    payload: Any
    refs: Any
    created: float


@dataclass(frozen=True)
class SpoolStatus:
    """What the spool holds: all rows, their payload+refs bytes, the oldest row's age."""

    rows: int
    #: Sum of stored payload+refs bytes (what ``max_bytes`` bounds; the file is larger).
    bytes: int
    #: Seconds since the oldest ``created``; ``None`` when empty.
    oldest_age: Optional[float]
    #: Rows currently claimed, by any process.
    claimed: int


#: (index in the caller's list, (key, payload JSON, refs JSON, created, size)).
_Encoded = Tuple[int, Tuple[str, str, str, float, int]]


class _Corrupt(Exception):
    """The file is not a readable spool; it may be moved aside."""


class _Unusable(Exception):
    """The spool cannot be used and the file must be left as it is."""


@dataclass(frozen=True)
class _Claimant:
    token: str
    host: str
    pid: int
    #: Process start time (``/proc/<pid>/stat`` field 22), to tell a reused pid apart.
    started: Optional[str]


# Tokens of Spools open in this process: a claim by this pid whose token is not here was
# left by a closed Spool and may be reclaimed.
_LIVE_TOKENS: Set[str] = set()
_LIVE_LOCK = threading.Lock()
# Connections deliberately never closed (see _abandon).
_ABANDONED: List[sqlite3.Connection] = []


def _abandon(connection: sqlite3.Connection) -> None:
    """Drop a connection without ever closing it.

    Used for a connection inherited over fork, and for one whose file was renamed away by
    someone else. Closing either is unsafe: SQLite deletes ``<path>-wal``/``-shm`` *by name*
    on the last close, which would then be the WAL of another process's (or the new) file.
    The extra reference keeps it from being closed even at interpreter exit.
    """
    _ABANDONED.append(connection)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(connection))


def _proc_stat(pid: int) -> Optional[Tuple[str, str]]:
    """``(state, start time)`` of ``pid`` from ``/proc``, or ``None`` if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0].decode("ascii", "replace"), fields[19].decode("ascii", "replace")


def _this_process() -> _Claimant:
    pid = os.getpid()
    info = _proc_stat(pid)
    claimant = _Claimant(
        token=secrets.token_hex(8),
        host=socket.gethostname(),
        pid=pid,
        started=info[1] if info is not None else None,
    )
    with _LIVE_LOCK:
        _LIVE_TOKENS.add(claimant.token)
    return claimant


def _error_code(exc: BaseException) -> Optional[int]:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code & 0xFF if isinstance(code, int) else None


def _is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (both raise exactly ``sqlite3.DatabaseError``)."""
    code = _error_code(exc)
    if code is not None:
        return code in (11, 26)
    return type(exc) is sqlite3.DatabaseError


def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock past busy_timeout."""
    code = _error_code(exc)
    if code is not None:
        return code in (5, 6)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _encode(value: Any) -> str:
    # ensure_ascii (the default) makes len() the byte size.
    return json.dumps(value, separators=(",", ":"))


def _decode(text: Any) -> Any:
    return json.loads(text)


class Spool:
    """A bounded, multi-process-safe store of rows waiting for delivery (see the module doc).

    Every public method is safe to call from several threads, never raises, and returns a
    neutral value (``put``: all rows as not stored; ``claim``: ``[]``) when the spool is
    busy past ``busy_timeout``, failing, unusable or closed.
    """

    #: ``False`` after an unrecoverable error or :meth:`close`; every call is then a no-op.
    usable: bool
    #: Rows this Spool put back after their claimant died: possibly delivered twice.
    reclaimed: int
    #: Stored rows deleted because their JSON could not be decoded (tampered or damaged).
    discarded: int

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        busy_timeout: float = 5.0,
        logger: logging.Logger = logging.getLogger("analytics_sprig"),  # noqa: B008
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must not be negative")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.busy_timeout = float(busy_timeout)
        self.usable = True
        self.reclaimed = 0
        self.discarded = 0
        self._logger = logger
        # Bounds a thread's wait for another thread's call (itself bounded by busy_timeout).
        self._lock_timeout = 2 * self.busy_timeout + 5.0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: Optional[sqlite3.Connection] = None
        self._identity: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of the open file
        self._me: Optional[_Claimant] = None
        self._closed = False
        self._recoveries = 0
        self._warned_at: Optional[float] = None
        self._full_warned_at: Optional[float] = None
        self._wal_warned = False

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, usable={self.usable})"

    # -- public API --------------------------------------------------------------------

    def put(self, rows: Sequence[SpoolRow]) -> List[SpoolRow]:
        """Append ``rows`` in one transaction; return the rows that are not (or no longer) stored.

        Beyond ``max_bytes`` the oldest unclaimed rows are evicted to make room, stored ones
        first, then the oldest of ``rows`` itself; a row larger than the room left next to
        the claimed rows is refused without evicting anything. The returned list holds the
        evicted stored rows (oldest first), then the refused ones of ``rows`` (in order),
        including any whose payload or refs is not JSON-serialisable. If the spool is
        unusable, busy or failing, all of ``rows`` are returned.
        """
        try:
            rows = list(rows)
        except Exception as exc:
            self._logger.warning("spool %s: put() needs a sequence of rows (%r)", self.path, exc)
            return []
        if not rows:
            return []
        if self._closed or not self.usable:
            return rows
        encoded: List[_Encoded] = []
        refused: Set[int] = set()  # indexes into rows
        for index, row in enumerate(rows):
            try:
                payload, refs = _encode(row.payload), _encode(row.refs)
                size = len(payload) + len(refs)
                encoded.append((index, (str(row.key), payload, refs, float(row.created), size)))
            except Exception:  # not JSON-serialisable, or not a SpoolRow at all
                refused.add(index)
        if refused:
            self._logger.warning(
                "spool %s: %d row(s) could not be stored as JSON and were returned",
                self.path,
                len(refused),
            )
        if not encoded:
            return rows
        result = self._call("put", lambda conn: self._put(conn, encoded), None)
        if result is None:
            return rows
        evicted, not_stored = result
        refused.update(not_stored)
        return evicted + [row for index, row in enumerate(rows) if index in refused]

    def claim(self, limit: int) -> List[ClaimedRow]:
        """Claim up to ``limit`` unclaimed rows, oldest first, in one ``BEGIN IMMEDIATE``.

        Each row is claimed by exactly one Spool, across processes. Rows of a key of which
        another claimant holds a row are skipped until that claim is deleted or released,
        so a key's rows are in flight in one claimant at a time, in insertion (id) order.
        Before claiming, rows held by a dead claimant on this host (pid gone or reused, or a
        closed Spool of this process) are put back and counted in :attr:`reclaimed`.
        """
        try:
            count = int(limit)
        except Exception:
            self._logger.warning("spool %s: claim() needs an int limit, got %r", self.path, limit)
            return []
        if count <= 0 or self._closed or not self.usable:
            return []
        return self._call("claim", lambda conn: self._claim(conn, count), [])

    def keys_waiting(self) -> Set[str]:
        """Keys of the unclaimed rows (so callers can hold back newer calls of those keys)."""
        if self._closed or not self.usable:
            return set()
        return self._call("keys_waiting", self._keys_waiting, set())

    def delete(self, ids: Iterable[int]) -> None:
        """Delete rows this Spool claimed (delivered, or failed for good); others are ignored."""
        wanted = self._ids("delete", ids)
        if wanted and not self._closed and self.usable:
            self._call("delete", lambda conn: self._delete(conn, wanted), None)

    def release(self, ids: Iterable[int]) -> None:
        """Give claims back (e.g. at shutdown): the rows wait again, in their old place."""
        wanted = self._ids("release", ids)
        if wanted and not self._closed and self.usable:
            self._call("release", lambda conn: self._release(conn, wanted), None)

    def status(self) -> SpoolStatus:
        """Rows, payload+refs bytes, age of the oldest row, claimed rows (all processes).

        ``oldest_age`` scans the table (O(rows)); the rest is O(claimed rows).
        """
        empty = SpoolStatus(rows=0, bytes=0, oldest_age=None, claimed=0)
        if self._closed or not self.usable:
            return empty
        return self._call("status", self._status, empty)

    def after_fork_in_child(self) -> None:
        """In a forked child: forget (never close) the parent's connection and lock.

        The next call opens a connection of the child's own, as a new claimant; rows the
        parent claimed stay the parent's. Also done automatically when a call notices the
        pid changed.
        """
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        if self._conn is not None:
            _abandon(self._conn)
        self._conn = None
        self._identity = None
        if self._me is not None:
            with _LIVE_LOCK:
                _LIVE_TOKENS.discard(self._me.token)
        self._me = None
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the connection; later calls are no-ops (``usable`` becomes ``False``).

        Rows still claimed stay claimed; once this process exits (or, within it, once this
        Spool is closed) another Spool reclaims them as possible duplicates. Release them
        first if they were not sent.
        """
        if os.getpid() != self._pid:
            self.after_fork_in_child()
        if not self._lock.acquire(timeout=self._lock_timeout):
            self._closed = True
            self.usable = False
            return
        try:
            if self._closed:
                return
            self._closed = True
            self.usable = False
            conn, self._conn = self._conn, None
            if conn is not None:
                if self._file_identity() == self._identity:
                    with contextlib.suppress(Exception):
                        self._forget_own_claimant(conn)
                    with contextlib.suppress(Exception):
                        conn.close()
                else:
                    _abandon(conn)
            if self._me is not None:
                with _LIVE_LOCK:
                    _LIVE_TOKENS.discard(self._me.token)
        finally:
            self._lock.release()

    # -- call plumbing -----------------------------------------------------------------

    def _ids(self, what: str, ids: Iterable[int]) -> List[int]:
        try:
            return [int(i) for i in ids]
        except Exception as exc:
            self._logger.warning("spool %s: %s() needs int ids (%r); ignored", self.path, what, exc)
            return []

    def _call(self, what: str, op: Callable[[sqlite3.Connection], _T], fallback: _T) -> _T:
        """Run ``op`` on an open connection; recover once from a corrupt file; never raise."""
        if os.getpid() != self._pid:
            self.after_fork_in_child()
        if not self._lock.acquire(timeout=self._lock_timeout):
            self._transient(what, "timed out waiting for another thread's call")
            return fallback
        try:
            return self._attempt(what, op, fallback)
        except Exception as exc:  # a bug or an OS surprise: never raise out of a public method
            self._transient(what, exc)
            return fallback
        finally:
            self._lock.release()

    def _attempt(self, what: str, op: Callable[[sqlite3.Connection], _T], fallback: _T) -> _T:
        for attempt in range(2):
            if self._closed or not self.usable:
                return fallback
            try:
                conn = self._connection()
                if conn is None:
                    return fallback
                result = op(conn)
            except sqlite3.Error as exc:
                if attempt == 0 and _is_corrupt(exc):
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    self._transient(what, exc)
                    return fallback
            else:
                return result
            self._recover(reason)  # then one more try, on the fresh spool
        return fallback

    def _transient(self, what: str, error: object) -> None:
        """Log a failure that a later call may not have, at most once per interval."""
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < _WARN_INTERVAL:
            return
        self._warned_at = now
        self._logger.warning("spool %s: %s failed (%s); the spool is kept", self.path, what, error)

    def _disable(self, message: str) -> None:
        self.usable = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        self._logger.error("spool %s: %s; spooling is off", self.path, message)

    def _file_identity(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _claimant(self) -> _Claimant:
        if self._me is None:
            self._me = _this_process()
        return self._me

    def _connection(self) -> Optional[sqlite3.Connection]:
        """The open connection, (re)opening it if needed; ``None`` if the spool is unusable."""
        if self._conn is not None:
            if self._file_identity() == self._identity:
                return self._conn
            # Someone renamed or removed the file (e.g. another process moved a corrupt one
            # aside): follow the path to the new file.
            self._logger.info("spool %s: the file was replaced; reopening it", self.path)
            _abandon(self._conn)
            self._conn = None
            self._identity = None
        try:
            self._conn = self._open()
        except _Corrupt as exc:
            return self._recover(str(exc))
        except _Unusable as exc:
            self._disable(str(exc))
            return None
        return self._conn

    def _recover(self, reason: str) -> Optional[sqlite3.Connection]:
        """Move an unreadable file aside and open a fresh spool, with one log line."""
        conn, self._conn = self._conn, None
        opened, self._identity = self._identity, None  # the file that was found unreadable
        if conn is not None:
            if self._file_identity() == opened:
                with contextlib.suppress(Exception):
                    conn.close()  # on the file at the path, about to be moved: safe
            else:
                _abandon(conn)  # already replaced: closing could delete the new file's WAL
        self._recoveries += 1
        if self._recoveries > _MAX_RECOVERIES:
            self._disable(f"still unreadable after {_MAX_RECOVERIES} fresh spools ({reason})")
            return None
        try:
            st: Optional[os.stat_result] = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._disable(f"unreadable ({reason}) and cannot be inspected ({exc})")
            return None
        aside: Optional[str] = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            self._disable(f"unreadable ({reason}) and not a regular file, so left in place")
            return None
        if st is not None and (opened is None or opened == (st.st_dev, st.st_ino)):
            try:
                aside = self._move_aside()
            except OSError as exc:
                self._disable(f"unreadable ({reason}) and could not be moved aside ({exc})")
                return None
        # else: another process already replaced the file we had open; just open the new one.
        try:
            self._conn = self._open()
        except (_Corrupt, _Unusable) as exc:
            where = f"moved aside to {aside}; " if aside else ""
            self._disable(f"unreadable ({reason}); {where}a fresh spool failed too ({exc})")
            return None
        except sqlite3.Error as exc:  # busy: the next call retries the open
            where = f"moved it aside to {aside}; " if aside else ""
            self._logger.warning(
                "spool %s was unreadable (%s); %sthe fresh spool is busy (%s)",
                self.path,
                reason,
                where,
                exc,
            )
            return None
        if aside is not None:
            self._logger.warning(
                "spool %s was unreadable (%s); moved it aside to %s and started a fresh spool",
                self.path,
                reason,
                aside,
            )
        return self._conn

    def _move_aside(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"{self.path}.corrupt-{stamp}"
        aside = base
        for n in range(1, 1000):
            if not os.path.lexists(aside):
                break
            aside = f"{base}-{n}"
        os.rename(self.path, aside)
        # The WAL belongs to the moved file; left in place SQLite would apply it to the new one.
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path + suffix, aside + suffix)
        return aside

    def _open(self) -> sqlite3.Connection:
        """Open and check (or create) the spool file.

        Raises ``_Corrupt`` (not a spool: move aside), ``_Unusable`` (leave the file alone,
        stop spooling) or a busy ``sqlite3.OperationalError`` (try again on the next call).
        """
        if os.path.isdir(self.path):
            raise _Unusable("the path is a directory")
        try:
            new = os.path.getsize(self.path) == 0
        except OSError:
            new = True
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # used from a few threads, under self._lock
            )
        except sqlite3.Error as exc:
            raise _Unusable(f"cannot open the file ({exc})") from exc
        # Recorded before checking, so a recovery can tell whether the file is still this one.
        self._identity = self._file_identity()
        try:
            self._prepare(conn, new)
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if _is_corrupt(exc):
                raise _Corrupt(f"{type(exc).__name__}: {exc}") from exc
            if isinstance(exc, sqlite3.OperationalError) and not _is_busy(exc):
                # read-only file or directory, cannot create the WAL, I/O error at open
                raise _Unusable(f"cannot use the file ({exc})") from exc
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection, new: bool) -> None:
        if new:
            # Only before the first page is written (a new spool): lets a drain shrink the
            # file. Never on an existing file: there it writes before the file is checked.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and not self._wal_warned:
            self._wal_warned = True  # e.g. a file system without shared memory
            self._logger.warning(
                "spool %s: WAL mode unavailable (journal_mode=%s)", self.path, mode
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")  # WAL shrinks back after checkpoints
        conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates, the others wait
        try:
            self._check_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        # Catches a truncated or damaged file now rather than half way through a claim.
        problems = conn.execute("PRAGMA quick_check(1)").fetchall()
        if problems != [("ok",)]:
            raise _Corrupt(f"integrity check: {problems[0][0] if problems else 'no answer'}")

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        }
        if app_id == 0 and version == 0 and not names:
            self._create(conn)
            return
        if app_id != APPLICATION_ID:
            raise _Corrupt(
                f"not a spool database (application_id {app_id}, tables {sorted(names)})"
            )
        if version > SCHEMA_VERSION:
            raise _Unusable(
                f"written by a newer version (schema {version} > {SCHEMA_VERSION}); left as it is"
            )
        while version < SCHEMA_VERSION:
            steps = _MIGRATIONS.get(version)
            if steps is None:
                raise _Corrupt(f"schema version {version} cannot be migrated")
            for statement in steps:
                conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version={version}")
        for table, expected in _COLUMNS.items():
            columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            if columns != expected:
                raise _Corrupt(f"table {table} has columns {columns}, expected {expected}")
        missing = [name for name in _OTHER_OBJECTS if name not in names]
        if missing:
            raise _Corrupt(f"schema lacks {', '.join(missing)}")
        if conn.execute("SELECT count(*) FROM spool_totals").fetchone()[0] != 1:
            raise _Corrupt("the totals row is missing")

    def _create(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        first = secrets.randbelow(_ID_SPACE)
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('spool_rows', ?)", (first,))
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A ``BEGIN IMMEDIATE`` transaction: takes the write lock first, waits ≤ busy_timeout."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise

    # -- operations (called with self._lock held and a connection open) -----------------

    def _put(
        self, conn: sqlite3.Connection, encoded: List[_Encoded]
    ) -> Tuple[List[SpoolRow], List[int]]:
        """Insert; return (evicted stored rows, indexes of the incoming rows not stored)."""
        evicted: List[SpoolRow] = []
        not_stored: List[int] = []
        with self._write(conn):
            total = conn.execute("SELECT bytes FROM spool_totals").fetchone()[0]
            incoming = sum(values[4] for _, values in encoded)
            if total + incoming > self.max_bytes:
                claimed = conn.execute(
                    "SELECT coalesce(sum(size), 0) FROM spool_rows WHERE claimant >= ''"
                ).fetchone()[0]
                room = self.max_bytes - claimed  # claimed rows cannot be evicted
                kept: List[_Encoded] = []
                for item in encoded:
                    if item[1][4] <= room:
                        kept.append(item)
                    else:
                        not_stored.append(item[0])  # could never fit: evict nothing for it
                excess = total + sum(values[4] for _, values in kept) - self.max_bytes
                excess = self._evict(conn, excess, evicted)
                dropped = 0
                while excess > 0 and dropped < len(kept):  # the batch alone is too big
                    excess -= kept[dropped][1][4]
                    not_stored.append(kept[dropped][0])
                    dropped += 1
                encoded = kept[dropped:]
            conn.executemany(
                "INSERT INTO spool_rows (key, payload, refs, created, size) VALUES (?, ?, ?, ?, ?)",
                [values for _, values in encoded],
            )
        if evicted or not_stored:
            now = time.monotonic()
            if self._full_warned_at is None or now - self._full_warned_at >= _WARN_INTERVAL:
                self._full_warned_at = now
                self._logger.warning(
                    "spool %s: full (max_bytes=%d); evicted %d oldest row(s), "
                    "did not store %d new row(s)",
                    self.path,
                    self.max_bytes,
                    len(evicted),
                    len(not_stored),
                )
        return evicted, sorted(not_stored)

    def _evict(self, conn: sqlite3.Connection, excess: int, evicted: List[SpoolRow]) -> int:
        """Delete the oldest unclaimed rows until ``excess`` bytes are freed; return the rest."""
        ids: List[Tuple[int]] = []
        last = -1
        while excess > 0:
            batch = conn.execute(
                "SELECT id, key, payload, refs, created, size FROM spool_rows "
                "WHERE claimant IS NULL AND id > ? ORDER BY id LIMIT 256",
                (last,),
            ).fetchall()
            if not batch:
                break
            for row_id, key, payload, refs, created, size in batch:
                if excess <= 0:
                    break
                ids.append((row_id,))
                evicted.append(SpoolRow(key, _lenient(payload), _lenient(refs), created))
                excess -= size
                last = row_id
        conn.executemany("DELETE FROM spool_rows WHERE id = ?", ids)
        return excess

    def _claim(self, conn: sqlite3.Connection, limit: int) -> List[ClaimedRow]:
        me = self._claimant()
        claimed: List[ClaimedRow] = []
        bad: List[Tuple[int]] = []
        with self._write(conn):
            conn.execute(
                "INSERT OR IGNORE INTO spool_claimants (token, host, pid, started) "
                "VALUES (?, ?, ?, ?)",
                (me.token, me.host, me.pid, me.started),
            )
            reclaimed = self._reclaim(conn, me)
            for row_id, key, payload, refs, created in conn.execute(_CLAIM_SQL, (me.token, limit)):
                try:
                    row = ClaimedRow(row_id, key, _decode(payload), _decode(refs), created)
                    claimed.append(row)
                except (TypeError, ValueError, RecursionError):
                    bad.append((row_id,))
            conn.executemany(
                "UPDATE spool_rows SET claimant = ? WHERE id = ?",
                [(me.token, row.id) for row in claimed],
            )
            conn.executemany("DELETE FROM spool_rows WHERE id = ?", bad)
            # Claimants holding nothing are forgotten (a live one registers again on claim).
            conn.execute(
                "DELETE FROM spool_claimants WHERE NOT EXISTS "
                "(SELECT 1 FROM spool_rows WHERE claimant = spool_claimants.token)"
            )
        self.reclaimed += reclaimed
        self.discarded += len(bad)
        if reclaimed:
            self._logger.warning(
                "spool %s: reclaimed %d row(s) claimed by a process that is gone; "
                "they may be delivered twice",
                self.path,
                reclaimed,
            )
        if bad:
            self._logger.warning(
                "spool %s: discarded %d row(s) whose JSON could not be decoded", self.path, len(bad)
            )
        return claimed

    def _reclaim(self, conn: sqlite3.Connection, me: _Claimant) -> int:
        """Put back rows of dead claimants on this host (and of unknown ones); return how many."""
        count = 0
        others = conn.execute(
            "SELECT token, pid, started FROM spool_claimants WHERE host = ? AND token != ?",
            (me.host, me.token),
        ).fetchall()
        for token, pid, started in others:
            if self._is_dead(me, token, pid, started):
                count += conn.execute(
                    "UPDATE spool_rows SET claimant = NULL WHERE claimant = ?", (token,)
                ).rowcount
                conn.execute("DELETE FROM spool_claimants WHERE token = ?", (token,))
        # A claim with no claimant record (cannot happen unless the file was edited): unknown owner.
        count += conn.execute(
            "UPDATE spool_rows SET claimant = NULL WHERE claimant >= '' "
            "AND claimant NOT IN (SELECT token FROM spool_claimants)"
        ).rowcount
        return count

    @staticmethod
    def _is_dead(me: _Claimant, token: str, pid: int, started: Optional[str]) -> bool:
        if pid == me.pid:
            if started is not None and me.started is not None and started != me.started:
                return True  # an earlier process that had our pid
            with _LIVE_LOCK:
                return token not in _LIVE_TOKENS  # a closed Spool of this process
        if me.started is not None:  # /proc is there
            info = _proc_stat(pid)
            if info is None:
                return True
            state, start = info
            return state in ("Z", "X", "x") or (started is not None and start != started)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by someone else
            return False
        return False

    def _keys_waiting(self, conn: sqlite3.Connection) -> Set[str]:
        query = "SELECT DISTINCT key FROM spool_rows WHERE claimant IS NULL"
        return {key for (key,) in conn.execute(query)}

    def _delete(self, conn: sqlite3.Connection, ids: List[int]) -> None:
        if self._me is None:
            return  # never claimed anything through this connection's owner
        token = self._me.token
        with self._write(conn):
            conn.executemany(
                "DELETE FROM spool_rows WHERE id = ? AND claimant = ?", [(i, token) for i in ids]
            )
            rows = conn.execute("SELECT rows FROM spool_totals").fetchone()[0]
        if rows == 0 and conn.execute("PRAGMA freelist_count").fetchone()[0] > _VACUUM_FREE_PAGES:
            # Drained after a big outage: shrink. The pragma frees one page per step and
            # returns no rows, so execute() would free one page; executescript runs it through.
            conn.executescript("PRAGMA incremental_vacuum")

    def _release(self, conn: sqlite3.Connection, ids: List[int]) -> None:
        if self._me is None:
            return
        token = self._me.token
        with self._write(conn):
            conn.executemany(
                "UPDATE spool_rows SET claimant = NULL WHERE id = ? AND claimant = ?",
                [(i, token) for i in ids],
            )

    def _status(self, conn: sqlite3.Connection) -> SpoolStatus:
        conn.execute("BEGIN")  # one snapshot for all three reads
        try:
            rows, size = conn.execute("SELECT rows, bytes FROM spool_totals").fetchone()
            claimed = conn.execute(
                "SELECT count(*) FROM spool_rows WHERE claimant >= ''"
            ).fetchone()[0]
            oldest = conn.execute("SELECT min(created) FROM spool_rows").fetchone()[0]
        finally:
            with contextlib.suppress(Exception):
                conn.execute("COMMIT")
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return SpoolStatus(rows=rows, bytes=size, oldest_age=age, claimed=claimed)

    def _forget_own_claimant(self, conn: sqlite3.Connection) -> None:
        if self._me is None:
            return
        with self._write(conn):
            conn.execute(
                "DELETE FROM spool_claimants WHERE token = ? AND NOT EXISTS "
                "(SELECT 1 FROM spool_rows WHERE claimant = ?)",
                (self._me.token, self._me.token),
            )


def _lenient(text: Any) -> Any:
    """Decoded JSON, or the raw text if it does not decode (only for reporting evictions)."""
    try:
        return _decode(text)
    except (TypeError, ValueError, RecursionError):
        return text
