"""The durable spool store (analytics_sprig.batching._spool.Spool), generic rows on SQLite.

Real files in tmp_path, real SQLite, real processes (multiprocessing "spawn", os.fork,
SIGKILL). Nothing here knows about Sprig.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from analytics_sprig.batching import _spool
from analytics_sprig.batching._spool import ClaimedRow, Spool, SpoolRow, SpoolStatus

SPAWN = multiprocessing.get_context("spawn")


class Records(logging.Handler):
    """Keeps every record logged to one test's logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def loud(self) -> List[str]:
        """Messages at WARNING or above."""
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def records(request: pytest.FixtureRequest) -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger(f"test_spool.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def log(records: Records, request: pytest.FixtureRequest) -> logging.Logger:
    return logging.getLogger(f"test_spool.{request.node.name}")


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "spool.db")


def row(key: str, n: int, created: Optional[float] = None) -> SpoolRow:
    """A row of realistic shape: a payload dict and refs (list of small lists)."""
    return SpoolRow(
        key=key,
        payload={"userId": key, "n": n, "attributes": {"plan": "pro", "seats": n % 7}},
        refs=[[f"message-{key}-{n}", n]],
        created=time.time() if created is None else created,
    )


def size_of(r: SpoolRow) -> int:
    return len(json.dumps(r.payload, separators=(",", ":"))) + len(
        json.dumps(r.refs, separators=(",", ":"))
    )


def ns(rows: List[ClaimedRow]) -> List[int]:
    return [r.payload["n"] for r in rows]


def write_garbage(target: str) -> bytes:
    data = b"this is not a SQLite database at all\n" * 200
    with open(target, "wb") as handle:
        handle.write(data)
    return data


def asides(target: str) -> List[str]:
    directory, name = os.path.split(target)
    return sorted(
        os.path.join(directory, entry)
        for entry in os.listdir(directory)
        if entry.startswith(name + ".corrupt-") and not entry.endswith(("-wal", "-shm"))
    )


def fill(target: str, count: int) -> None:
    spool = Spool(target)
    assert spool.put([row(f"k{i % 10}", i) for i in range(count)]) == []
    spool.close()


# -- basics ------------------------------------------------------------------------------


def test_constructor_and_empty_calls_never_touch_disk(tmp_path: Path) -> None:
    missing_dir = tmp_path / "not" / "there" / "spool.db"
    Spool(str(missing_dir))
    target = tmp_path / "spool.db"
    spool = Spool(str(target))
    assert spool.put([]) == []
    assert spool.claim(0) == []
    spool.delete([])
    spool.release([])
    assert not target.exists() and not missing_dir.parent.exists()
    assert spool.put([row("a", 1)]) == []
    assert target.exists()
    spool.close()


def test_round_trip_oldest_first_and_insertion_order_per_key(
    path: str, log: logging.Logger
) -> None:
    spool = Spool(path, logger=log)
    stamp = 1_700_000_000.25
    first = [row("a", 0, stamp), row("b", 1), row("a", 2)]
    assert spool.put(first) == []
    assert spool.put([row("c", 3), row("a", 4), row("b", 5)]) == []
    claimed = spool.claim(100)
    assert ns(claimed) == [0, 1, 2, 3, 4, 5]
    assert [r.id for r in claimed] == sorted(r.id for r in claimed)
    assert len({r.id for r in claimed}) == 6
    head = claimed[0]
    assert (head.key, head.payload, head.refs, head.created) == (
        "a",
        first[0].payload,
        first[0].refs,
        stamp,
    )
    assert [r.key for r in claimed if r.key == "a"] == ["a"] * 3
    assert spool.claim(100) == []  # all claimed
    spool.close()


def test_refs_are_returned_as_json_stored_them(path: str) -> None:
    spool = Spool(path)
    refs = [{"id": "m1", "at": 1.5}, ["m2", None, True], ("tuple", 3)]
    spool.put([SpoolRow("k", {"x": "é ☃ \u2028"}, refs, 1.0)])
    (claimed,) = spool.claim(1)
    assert claimed.refs == [{"id": "m1", "at": 1.5}, ["m2", None, True], ["tuple", 3]]
    assert claimed.payload == {"x": "é ☃ \u2028"}
    spool.close()


def test_claim_limit_release_delete_and_status(path: str) -> None:
    spool = Spool(path)
    now = time.time()
    spool.put([row(f"k{i}", i, now - 100 + i) for i in range(10)])
    first = spool.claim(4)
    assert ns(first) == [0, 1, 2, 3]
    status = spool.status()
    assert isinstance(status, SpoolStatus)
    assert (status.rows, status.claimed) == (10, 4)
    assert status.bytes == sum(size_of(row(f"k{i}", i)) for i in range(10))
    assert status.oldest_age is not None and 99 <= status.oldest_age <= 200
    spool.release([first[2].id, first[3].id])
    spool.delete([first[0].id, first[1].id])
    assert spool.status().rows == 8 and spool.status().claimed == 0
    assert ns(spool.claim(3)) == [2, 3, 4]  # released rows wait in their old place
    spool.close()


def test_status_of_an_empty_spool(path: str) -> None:
    spool = Spool(path)
    assert spool.status() == SpoolStatus(rows=0, bytes=0, oldest_age=None, claimed=0)
    spool.close()


def test_keys_waiting_lists_unclaimed_keys_only(path: str) -> None:
    spool = Spool(path)
    spool.put([row("a", 0), row("b", 1), row("c", 2), row("a", 3)])
    assert spool.keys_waiting() == {"a", "b", "c"}
    got = spool.claim(2)  # a(0), b(1)
    assert spool.keys_waiting() == {"a", "c"}  # a still has row 3 waiting
    spool.delete([r.id for r in got])
    spool.claim(10)
    assert spool.keys_waiting() == set()
    spool.close()


def test_delete_and_release_touch_only_own_claims(path: str) -> None:
    one, two = Spool(path), Spool(path)
    one.put([row(f"k{i}", i) for i in range(4)])
    mine = one.claim(2)
    two.delete([r.id for r in mine])
    two.release([r.id for r in mine])
    assert one.status().claimed == 2 and one.status().rows == 4
    assert ns(two.claim(10)) == [2, 3]
    one.delete([r.id for r in mine])
    assert one.status().rows == 2
    one.close()
    two.close()


def test_a_key_held_by_another_claimant_is_skipped_until_deleted(path: str) -> None:
    one, two = Spool(path), Spool(path)
    one.put([row("a", 0), row("b", 1), row("a", 2), row("c", 3), row("a", 4)])
    assert ns(one.claim(1)) == [0]
    assert ns(two.claim(10)) == [1, 3]  # a's later rows wait for one's claim
    assert ns(one.claim(10)) == [2, 4]  # the holder itself gets them, in order
    two.delete([r.id for r in two.claim(10)])
    one.close()
    two.close()


def test_released_key_goes_to_the_next_claimant_in_order(path: str) -> None:
    one, two = Spool(path), Spool(path)
    one.put([row("a", 0), row("a", 1)])
    held = one.claim(1)
    assert two.claim(10) == []
    one.release([r.id for r in held])
    assert ns(two.claim(10)) == [0, 1]
    one.close()
    two.close()


def test_unencodable_rows_are_returned_and_the_rest_stored(
    path: str, log: logging.Logger, records: Records
) -> None:
    spool = Spool(path, logger=log)
    bad = SpoolRow("k", {"x": object()}, [], 1.0)
    also_bad = SpoolRow("k", {"x": 1}, [], "yesterday")  # type: ignore[arg-type]
    good = row("k", 1)
    assert spool.put([bad, good, also_bad]) == [bad, also_bad]
    assert ns(spool.claim(10)) == [1]
    assert len(records.loud()) == 1
    spool.close()


def test_file_is_wal_versioned_and_ours(path: str) -> None:
    spool = Spool(path)
    spool.put([row("a", 1)])
    assert spool._conn is not None
    assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == _spool.SCHEMA_VERSION >= 1
        assert raw.execute("PRAGMA application_id").fetchone()[0] == _spool.APPLICATION_ID
        assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    spool.close()


def test_ids_of_a_new_file_start_at_a_random_offset(tmp_path: Path) -> None:
    firsts = []
    for n in range(3):
        spool = Spool(str(tmp_path / f"s{n}.db"))
        spool.put([row("a", 1)])
        firsts.append(spool.claim(1)[0].id)
        spool.close()
    assert len(set(firsts)) == 3
    assert all(0 < i < 2**53 for i in firsts)


def test_close_is_final_and_idempotent(path: str) -> None:
    spool = Spool(path)
    spool.put([row("a", 1)])
    spool.close()
    spool.close()
    assert spool.usable is False
    rows = [row("b", 2)]
    assert spool.put(rows) == rows
    assert spool.claim(10) == []
    assert spool.status().rows == 0
    assert Spool(path).status().rows == 1  # nothing lost by closing


def test_draining_a_big_spool_gives_the_space_back(path: str) -> None:
    spool = Spool(path)
    blob = "x" * 2000
    spool.put([SpoolRow(f"k{i}", {"blob": blob}, [], 1.0) for i in range(5000)])
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    big = os.path.getsize(path)
    assert big > 10_000_000
    while True:
        claimed = spool.claim(500)
        if not claimed:
            break
        spool.delete([r.id for r in claimed])
    spool.close()  # checkpoints into the main file
    assert os.path.getsize(path) < big / 10


# -- bounded -----------------------------------------------------------------------------


def test_max_bytes_evicts_the_oldest_unclaimed_rows(
    path: str, log: logging.Logger, records: Records
) -> None:
    each = size_of(row("a", 10))
    assert all(size_of(row("a", n)) == each for n in range(10, 40))
    spool = Spool(path, max_bytes=10 * each, logger=log)
    assert spool.put([row("a", n) for n in range(10, 20)]) == []
    claimed = spool.claim(3)  # 10, 11, 12 are in flight: never evicted
    evicted = spool.put([row("a", n) for n in range(20, 25)])
    assert [r.payload["n"] for r in evicted] == [13, 14, 15, 16, 17]
    assert all(isinstance(r, SpoolRow) and r.key == "a" for r in evicted)
    status = spool.status()
    assert status.bytes == 10 * each and status.rows == 10 and status.bytes <= spool.max_bytes
    spool.delete([r.id for r in claimed])
    assert ns(spool.claim(100)) == [18, 19, 20, 21, 22, 23, 24]
    assert len(records.loud()) == 1 and "full" in records.loud()[0]
    spool.close()


def test_a_batch_larger_than_the_bound_keeps_its_newest_rows(path: str) -> None:
    each = size_of(row("a", 10))
    spool = Spool(path, max_bytes=4 * each)
    spool.put([row("a", 10), row("a", 11)])
    refused = spool.put([row("a", n) for n in range(20, 26)])
    assert [r.payload["n"] for r in refused] == [10, 11, 20, 21]  # stored ones first
    assert ns(spool.claim(10)) == [22, 23, 24, 25]
    spool.close()


def test_a_row_that_can_never_fit_evicts_nothing(path: str) -> None:
    each = size_of(row("a", 10))
    spool = Spool(path, max_bytes=3 * each)
    spool.put([row("a", 10), row("a", 11)])
    spool.claim(1)  # 10 is claimed: room for unclaimed rows is 2 rows
    huge = SpoolRow("b", {"blob": "x" * (3 * each)}, [], 1.0)
    small = row("a", 12)
    assert spool.put([huge, small]) == [huge]
    assert spool.status().rows == 3
    spool.close()


def test_bytes_are_tracked_across_processes_and_deletes(path: str) -> None:
    one, two = Spool(path), Spool(path)
    rows = [row(f"k{i}", i) for i in range(20)]
    one.put(rows[:10])
    two.put(rows[10:])
    assert one.status().bytes == sum(size_of(r) for r in rows)
    claimed = two.claim(5)
    two.delete([r.id for r in claimed])
    assert one.status().bytes == sum(size_of(r) for r in rows[5:])
    one.close()
    two.close()


# -- bounded waits, threads --------------------------------------------------------------


def test_a_lock_held_elsewhere_fails_calls_within_busy_timeout(
    path: str, log: logging.Logger, records: Records
) -> None:
    spool = Spool(path, busy_timeout=0.2, logger=log)
    spool.put([row("a", 0)])
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        rows = [row("a", 1)]
        assert spool.put(rows) == rows
        assert spool.claim(10) == []
        spool.delete([1])  # nothing claimed: no transaction, returns at once
        assert time.monotonic() - start < 0.2 * 2 + 2
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert spool.usable
    assert len(records.loud()) == 1  # the first failure, then rate-limited
    assert ns(spool.claim(10)) == [0]
    spool.close()


def test_threads_sharing_one_spool_claim_each_row_once(path: str) -> None:
    spool = Spool(path)
    seen: List[int] = []
    seen_lock = threading.Lock()
    done_putting = threading.Event()

    def producer(base: int) -> None:
        for start in range(0, 250, 25):
            batch = [row(f"k{(base + n) % 13}", base + n) for n in range(start, start + 25)]
            assert spool.put(batch) == []

    def consumer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            claimed = spool.claim(17)
            if not claimed:
                if done_putting.is_set() and spool.status().rows == 0:
                    return
                time.sleep(0.001)
                continue
            with seen_lock:
                seen.extend(r.payload["n"] for r in claimed)
            spool.delete([r.id for r in claimed])

    producers = [threading.Thread(target=producer, args=(1000 * p,)) for p in range(4)]
    consumers = [threading.Thread(target=consumer) for _ in range(2)]
    for thread in producers + consumers:
        thread.start()
    for thread in producers:
        thread.join(30)
    done_putting.set()
    for thread in consumers:
        thread.join(30)
    expected = sorted(1000 * p + n for p in range(4) for n in range(250))
    assert sorted(seen) == expected
    spool.close()


# -- several processes -------------------------------------------------------------------


def _drain_worker(target: str, barrier: Any, out: str) -> None:
    spool = Spool(target, busy_timeout=10.0)
    spool.status()  # open before the race starts
    barrier.wait(60)
    claimed: List[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = spool.claim(20)
        if not rows:
            if spool.status().rows == 0:
                break
            time.sleep(0.001)
            continue
        claimed.extend(r.id for r in rows)
        spool.delete([r.id for r in rows])
        # Between claims, leave the file's lock to the other process for a moment: SQLite's
        # busy handler is not fair, and on a loaded machine one process could otherwise
        # take every row before the other got a turn (still correct, but then the test
        # would not show two claimants racing).
        time.sleep(0.002)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"ids": claimed, "usable": spool.usable, "reclaimed": spool.reclaimed}, handle)
    spool.close()


@pytest.mark.timeout(120)
def test_two_processes_claim_every_row_exactly_once(path: str, tmp_path: Path) -> None:
    spool = Spool(path)
    for start in range(0, 5000, 500):
        spool.put([row(f"user-{n % 97}", n) for n in range(start, start + 500)])
    assert spool.status().rows == 5000
    barrier = SPAWN.Barrier(3)
    outs = [str(tmp_path / f"out{n}.json") for n in range(2)]
    workers = [SPAWN.Process(target=_drain_worker, args=(path, barrier, out)) for out in outs]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    for worker in workers:
        worker.join(100)
        assert worker.exitcode == 0
    results = []
    for out in outs:
        with open(out, encoding="utf-8") as handle:
            results.append(json.load(handle))
    ids = [i for result in results for i in result["ids"]]
    assert len(ids) == 5000 and len(set(ids)) == 5000
    assert all(result["usable"] and result["reclaimed"] == 0 for result in results)
    assert all(result["ids"] for result in results)  # both really took part
    assert spool.status() == SpoolStatus(rows=0, bytes=0, oldest_age=None, claimed=0)
    spool.close()


def _claim_and_hang(target: str, count: int, report: Any) -> None:
    spool = Spool(target)
    report.put([r.id for r in spool.claim(count)])
    time.sleep(120)


def _state(pid: int) -> Optional[str]:
    info = _spool._proc_stat(pid)
    return None if info is None else info[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_rows_of_a_sigkilled_process_are_reclaimed_and_counted(
    path: str, log: logging.Logger, records: Records, reaped: bool
) -> None:
    if not reaped and _spool._proc_stat(os.getpid()) is None:
        pytest.skip("telling a zombie from a live process needs /proc")
    spool = Spool(path, logger=log)
    spool.put([row(f"k{n}", n) for n in range(100)])
    report = SPAWN.Queue()
    child = SPAWN.Process(target=_claim_and_hang, args=(path, 40, report))
    child.start()
    held = report.get(timeout=60)
    assert len(held) == 40
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    if reaped:
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
    else:  # killed but not yet waited for: a zombie, as after a crash under a busy parent
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z"
    assert spool.status().claimed == 40
    claimed = spool.claim(1000)
    assert ns(claimed) == list(range(100))  # nothing lost, in the old order
    assert set(held) <= {r.id for r in claimed}
    assert spool.reclaimed == 40
    assert any("reclaimed 40" in message for message in records.loud())
    child.join(30)
    spool.close()


def _claimant_rows(target: str, token: str, host: str, pid: int, started: Optional[str]) -> None:
    with sqlite3.connect(target) as raw:
        raw.execute(
            "INSERT INTO spool_claimants (token, host, pid, started) VALUES (?, ?, ?, ?)",
            (token, host, pid, started),
        )
        raw.execute("UPDATE spool_rows SET claimant = ? WHERE claimant IS NULL", (token,))


def test_claims_of_live_other_host_and_reused_pid_claimants(path: str) -> None:
    if _spool._proc_stat(os.getpid()) is None:
        pytest.skip("process start times need /proc")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = _spool._proc_stat(sleeper.pid)
        assert info is not None
        spool = Spool(path)
        host = socket.gethostname()
        cases = [
            ("live", host, sleeper.pid, info[1], False),
            ("other-host", host + ".elsewhere", 999_999, None, False),
            ("reused-pid", host, sleeper.pid, str(int(info[1]) - 1), True),
            ("gone", host, 2**22 + 12345, None, True),
        ]
        for n, (token, claim_host, pid, started, _) in enumerate(cases):
            spool.put([row(token, n)])
            _claimant_rows(path, token, claim_host, pid, started)
        claimed = spool.claim(10)
        assert sorted(r.key for r in claimed) == sorted(c[0] for c in cases if c[4])
        assert spool.reclaimed == 2
        assert spool.status().claimed == 4  # 2 still held by the live ones, 2 now by us
        spool.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_claims_of_a_closed_spool_in_this_process_are_reclaimed(path: str) -> None:
    old = Spool(path)
    old.put([row("a", 0), row("b", 1)])
    old.claim(2)
    live = Spool(path)
    live.put([row("c", 2)])
    held = live.claim(1)
    old.close()  # without releasing: possibly sent
    new = Spool(path)
    assert ns(new.claim(10)) == [0, 1]  # live's claim is not touched
    assert new.reclaimed == 2
    assert ns(held) == [2] and live.status().claimed == 3
    live.close()
    new.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # forks on purpose
def test_forked_child_uses_its_own_connection_and_parent_keeps_working(path: str) -> None:
    spool = Spool(path)
    spool.put([row(f"k{n}", n) for n in range(10)])
    parent_held = spool.claim(3)
    spool._lock.acquire()  # as if another thread were mid-call at fork time
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            spool.after_fork_in_child()
            got = spool.claim(100)
            spool.delete([r.id for r in parent_held])  # not the child's: ignored
            spool.delete([r.id for r in got])
            spool.put([row("child", 100)])
            result = {"got": [r.payload["n"] for r in got], "usable": spool.usable}
            os.write(write_end, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    spool._lock.release()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        result = json.loads(reader.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert result == {"got": list(range(3, 10)), "usable": True}
    assert spool.status().rows == 4 and spool.status().claimed == 3
    spool.delete([r.id for r in parent_held])
    assert ns(spool.claim(10)) == [100]
    spool.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # forks on purpose
def test_a_fork_is_noticed_without_after_fork_in_child(path: str) -> None:
    spool = Spool(path)
    spool.put([row("a", 0), row("b", 1)])
    spool.claim(1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            got = spool.claim(10)
            code = 0 if [r.payload["n"] for r in got] == [1] and spool._pid == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert spool.status().claimed == 2
    # The child exited holding its claim: the parent reclaims it as a possible duplicate.
    assert ns(spool.claim(10)) == [1]
    assert spool.reclaimed == 1
    spool.close()


# -- corrupt, foreign or unreadable files -------------------------------------------------


def assert_fresh_after_move(
    spool: Spool, target: str, records: Records, original: Optional[bytes] = None
) -> None:
    assert spool.put([row("a", 1)]) == []
    assert spool.usable
    assert ns(spool.claim(10)) == [1]
    moved = asides(target)
    assert len(moved) == 1
    if original is not None:
        with open(moved[0], "rb") as handle:
            assert handle.read() == original
    loud = records.loud()
    assert len(loud) == 1, loud
    assert target in loud[0] and moved[0] in loud[0]


def test_a_file_that_is_not_sqlite_is_moved_aside(
    path: str, log: logging.Logger, records: Records
) -> None:
    original = write_garbage(path)
    assert_fresh_after_move(Spool(path, logger=log), path, records, original)


@pytest.mark.parametrize("damage", ["half", "header-only", "pages"])
def test_a_damaged_database_is_moved_aside(
    path: str, log: logging.Logger, records: Records, damage: str
) -> None:
    fill(path, 3000)
    size = os.path.getsize(path)
    assert size > 200_000 and not os.path.exists(path + "-wal")
    with open(path, "r+b") as handle:
        if damage == "half":
            handle.truncate(size // 2)
        elif damage == "header-only":
            handle.truncate(100)
        else:  # overwrite late pages, keeping the header and the first rows readable
            handle.seek(size * 2 // 3)
            handle.write(b"\xa5" * 20_000)
    with open(path, "rb") as handle:
        original = handle.read()
    spool = Spool(path, logger=log)
    # Found when the file is opened, not half way through a drain: the first claim
    # already comes from a fresh spool.
    assert spool.claim(1) == []
    assert_fresh_after_move(spool, path, records, original)


@pytest.mark.parametrize("kind", ["foreign", "missing-column", "missing-trigger"])
def test_a_database_with_the_wrong_schema_is_moved_aside(
    path: str, log: logging.Logger, records: Records, kind: str
) -> None:
    if kind == "foreign":
        with sqlite3.connect(path) as raw:
            raw.execute("CREATE TABLE accounts (name TEXT)")
            raw.execute("INSERT INTO accounts VALUES ('precious')")
    else:
        fill(path, 3)
        with sqlite3.connect(path) as raw:
            if kind == "missing-column":  # an older or foreign layout under our id and version
                raw.execute("DROP TABLE spool_claimants")
                raw.execute("CREATE TABLE spool_claimants (token TEXT PRIMARY KEY, pid INTEGER)")
            else:
                raw.execute("DROP TRIGGER spool_rows_delete")
    assert_fresh_after_move(Spool(path, logger=log), path, records)
    if kind == "foreign":  # the data is kept aside, not destroyed
        with sqlite3.connect(asides(path)[0]) as raw:
            assert raw.execute("SELECT name FROM accounts").fetchall() == [("precious",)]


def assert_unusable(spool: Spool, records: Records) -> None:
    rows = [row("a", 1), row("b", 2)]
    assert spool.put(rows) == rows
    assert spool.claim(10) == []
    assert spool.keys_waiting() == set()
    spool.delete([1, 2])
    spool.release([1, 2])
    assert spool.status() == SpoolStatus(rows=0, bytes=0, oldest_age=None, claimed=0)
    assert spool.usable is False
    assert spool.put(rows) == rows  # still a cheap no-op: nothing more is logged
    loud = records.loud()
    assert len(loud) == 1, loud
    assert spool.path in loud[0]
    assert all(r.levelno == logging.ERROR for r in records.records if r.levelno >= logging.WARNING)
    spool.close()


def test_a_directory_at_the_path_makes_the_spool_unusable(
    path: str, log: logging.Logger, records: Records
) -> None:
    os.mkdir(path)
    (Path(path) / "keep").write_text("x")
    assert_unusable(Spool(path, logger=log), records)
    assert (Path(path) / "keep").read_text() == "x"
    assert asides(path) == []


def test_a_path_under_a_regular_file_makes_the_spool_unusable(
    tmp_path: Path, log: logging.Logger, records: Records
) -> None:
    (tmp_path / "file").write_text("x")
    assert_unusable(Spool(str(tmp_path / "file" / "spool.db"), logger=log), records)


_READ_ONLY_CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from analytics_sprig.batching._spool import Spool, SpoolRow
    class Keep(logging.Handler):
        lines = []
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                self.lines.append(record.getMessage())
    log = logging.getLogger("child")
    log.propagate = False
    log.addHandler(Keep())
    spool = Spool(sys.argv[1], logger=log)
    rows = [SpoolRow("a", {"n": 1}, [], 1.0)]
    out = {
        "put": spool.put(rows) == rows,
        "claim": spool.claim(5),
        "status": spool.status().rows,
        "usable": spool.usable,
        "lines": Keep.lines,
    }
    print(json.dumps(out))
    """
)


def test_a_directory_without_write_permission_makes_the_spool_unusable(
    log: logging.Logger, records: Records
) -> None:
    base = tempfile.mkdtemp(prefix="spool-ro-")
    try:
        os.chmod(base, 0o755)
        locked = os.path.join(base, "locked")
        os.mkdir(locked)
        os.chmod(locked, 0o555)
        target = os.path.join(locked, "spool.db")
        if os.geteuid() != 0:
            assert_unusable(Spool(target, logger=log), records)
            return
        # root ignores permission bits: check it as an unprivileged user instead.
        nobody = 65534
        try:
            probe = subprocess.run(
                [sys.executable, "-c", "import analytics_sprig.batching._spool"],
                user=nobody,
                capture_output=True,
                cwd=base,
                timeout=60,
            )
            runs = probe.returncode == 0
        except OSError:  # e.g. the interpreter lives under a directory only root may enter
            runs = False
        if not runs:
            pytest.skip(
                "running as root (permission bits do not apply) and the package cannot be "
                "imported as an unprivileged user here"
            )
        completed = subprocess.run(
            [sys.executable, "-c", _READ_ONLY_CHILD, target],
            user=nobody,
            capture_output=True,
            text=True,
            cwd=base,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        out = json.loads(completed.stdout)
        assert out["put"] is True and out["claim"] == [] and out["status"] == 0
        assert out["usable"] is False
        assert len(out["lines"]) == 1 and target in out["lines"][0]
        assert os.listdir(locked) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_spool_of_a_newer_schema_is_left_alone(
    path: str, log: logging.Logger, records: Records
) -> None:
    fill(path, 5)
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version={_spool.SCHEMA_VERSION + 1}")
    with open(path, "rb") as handle:
        before = handle.read()
    spool = Spool(path, logger=log)
    assert_unusable(spool, records)
    assert "newer" in records.loud()[0]
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert asides(path) == []


def test_a_file_that_cannot_be_moved_aside_makes_the_spool_unusable(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write_garbage(path)

    def refuse(source: Any, target: Any) -> None:
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(os, "rename", refuse)
    assert_unusable(Spool(path, logger=log), records)
    with open(path, "rb") as handle:
        assert handle.read() == original


def test_when_the_fresh_spool_fails_too_the_spool_is_unusable(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_garbage(path)

    def never_ours(self: Spool, conn: sqlite3.Connection) -> None:
        raise _spool._Corrupt("simulated: the new file is unreadable too")

    monkeypatch.setattr(Spool, "_check_schema", never_ours)
    assert_unusable(Spool(path, logger=log), records)
    assert len(asides(path)) == 1
    assert "moved aside" in records.loud()[0]


def test_a_file_replaced_under_an_open_spool_is_followed(
    path: str, tmp_path: Path, log: logging.Logger, records: Records
) -> None:
    spool = Spool(path, logger=log)
    spool.put([row("a", 0), row("b", 1)])
    old = spool.claim(1)
    # Another process moves the file aside with its WAL (as a recovery does), and a garbage
    # file lands at the path (e.g. a broken copy) while we still have the old one open.
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, str(tmp_path / ("moved" + suffix)))
    replacement = str(tmp_path / "replacement")
    original = write_garbage(replacement)
    os.replace(replacement, path)
    assert_fresh_after_move(spool, path, records, original)
    spool.put([row("c", 2)])
    spool.delete([r.id for r in old])  # an id of the old file: touches nothing here
    assert ns(spool.claim(10)) == [2]
    assert spool.status().rows == 2
    spool.close()


def test_undecodable_rows_are_discarded_and_counted(
    path: str, log: logging.Logger, records: Records
) -> None:
    spool = Spool(path, logger=log)
    spool.put([row("a", 0), row("b", 1), row("c", 2)])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE spool_rows SET payload = '{broken' WHERE key = 'b'")
    assert ns(spool.claim(10)) == [0, 2]
    assert spool.discarded == 1
    assert spool.status().rows == 2
    assert len(records.loud()) == 1
    spool.close()


def test_unusable_spool_calls_do_not_wait(path: str) -> None:
    os.mkdir(path)
    spool = Spool(path)
    spool.status()
    start = time.monotonic()
    for _ in range(1000):
        spool.put([row("a", 1)])
        spool.claim(10)
    assert time.monotonic() - start < 2.0


def test_invalid_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        Spool("x.db", max_bytes=0)
    with pytest.raises(ValueError):
        Spool("x.db", busy_timeout=-1)


def test_public_names(tmp_path: Path) -> None:
    assert set(_spool.__all__) == {"ClaimedRow", "Spool", "SpoolRow", "SpoolStatus"}
    spool = Spool(str(tmp_path / "s.db"))
    assert spool.usable is True and spool.reclaimed == 0 and spool.discarded == 0
    assert "s.db" in repr(spool)
    fields: Dict[str, Any] = {"rows": 0, "bytes": 0, "oldest_age": None, "claimed": 0}
    assert SpoolStatus(**fields) == spool.status()
    spool.close()


def _malformed_once(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make Spool.<name> fail once the way SQLite reports a damaged page."""
    real = getattr(Spool, name)
    calls = []

    def flaky(self: Spool, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(self, *args)

    monkeypatch.setattr(Spool, name, flaky)


def test_corruption_found_by_a_put_keeps_the_rows_in_a_fresh_spool(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(path, logger=log)
    spool.put([row("old", 0)])
    _malformed_once(monkeypatch, "_put")
    assert spool.put([row("new", 1)]) == []  # retried once, on the fresh spool
    assert ns(spool.claim(10)) == [1]
    (moved,) = asides(path)
    with sqlite3.connect(moved) as raw:  # the old rows are kept aside for salvage
        assert raw.execute("SELECT key FROM spool_rows").fetchall() == [("old",)]
    loud = records.loud()
    assert len(loud) == 1 and moved in loud[0] and "malformed" in loud[0]
    spool.close()


def test_corruption_found_by_a_claim_moves_the_file_aside(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(path, logger=log)
    spool.put([row("old", 0)])
    _malformed_once(monkeypatch, "_claim")
    assert spool.claim(10) == []  # the fresh spool is empty
    assert spool.usable and len(asides(path)) == 1 and len(records.loud()) == 1
    spool.close()


def test_errors_are_classified_without_sqlite_error_codes(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python < 3.11 has no ``sqlite_errorcode``: exception types and messages decide."""
    monkeypatch.setattr(_spool, "_error_code", lambda exc: None)
    write_garbage(path)
    spool = Spool(path, busy_timeout=0.1, logger=log)
    assert_fresh_after_move(spool, path, records)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        rows = [row("b", 2)]
        assert spool.put(rows) == rows  # busy: transient, not corrupt
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert spool.usable and len(asides(path)) == 1
    spool.close()


def test_a_recovery_moves_the_live_wal_aside_with_the_file(
    path: str, log: logging.Logger, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection keeps the WAL alive; the fresh spool must not inherit it."""
    other = Spool(path)
    other.put([row("old", n) for n in range(5)])  # committed to the WAL, not yet checkpointed
    assert os.path.getsize(path + "-wal") > 0
    spool = Spool(path, logger=log)
    assert spool.status().rows == 5
    _malformed_once(monkeypatch, "_claim")
    assert spool.claim(10) == []
    assert spool.status().rows == 0  # truly fresh: none of the old WAL's pages
    (moved,) = asides(path)
    assert os.path.exists(moved + "-wal")
    spool.put([row("new", 9)])
    assert other.status().rows == 1  # the other connection follows the path to the new file
    with sqlite3.connect(moved) as raw:  # the old rows, with their WAL, are kept aside
        assert raw.execute("SELECT count(*) FROM spool_rows").fetchone()[0] == 5
    assert len(records.loud()) == 1
    spool.close()
    other.close()


def test_bad_arguments_never_raise_out_of_calls(
    path: str, log: logging.Logger, records: Records
) -> None:
    spool = Spool(path, logger=log)
    spool.put([row("a", 0)])
    held = spool.claim(1)
    not_a_row: Any = {"key": "a"}
    assert spool.put([not_a_row]) == [not_a_row]
    assert spool.put(None) == []  # type: ignore[arg-type]
    assert spool.claim("many") == []  # type: ignore[arg-type]
    spool.delete(["x"])  # type: ignore[list-item]
    spool.release(None)  # type: ignore[arg-type]
    assert spool.status().claimed == 1 and spool.usable
    assert len(records.loud()) == 5
    spool.delete([r.id for r in held])
    assert spool.status().rows == 0
    spool.close()


def test_recovery_never_closes_a_connection_to_a_file_replaced_meanwhile(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing it could delete the -wal of the file now at the path (SQLite unlinks by name)."""
    spool = Spool(path)
    spool.put([row("a", 0)])
    old = spool._conn
    assert old is not None
    abandoned: List[Any] = []
    monkeypatch.setattr(_spool, "_abandon", abandoned.append)
    other = str(tmp_path / "other.db")
    fill(other, 1)
    os.replace(other, path)  # replaced between our identity check and our failing query
    spool._recover("simulated")
    assert abandoned == [old]
    assert spool.status().rows == 1  # the replacement, opened as it is (nothing moved aside)
    assert asides(path) == []
    spool.close()
