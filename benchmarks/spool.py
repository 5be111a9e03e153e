"""Spool: cost of spooling bodies to the on-disk SQLite spool and draining them again.

10,000 bodies of a realistic size (a JSON payload of ~300 bytes plus its refs, the shape a
Sprig body and its message references take) are put into a fresh
:class:`analytics_sprig.batching._spool.Spool` in batches (``--batch``, default 100: one
transaction each), then claimed and deleted (``claim(--batch)`` + ``delete``) until it is
empty. Measured per body: the time to put, the time to drain, and the bytes on disk once all
are in (the database after a checkpoint; also the database + WAL as the puts left them).

Baseline, in the same run on the same rows: ``json.dumps`` of each row (key, payload, refs,
created) and ``json.loads`` back, the serialisation any store must do at least. Rounds are
interleaved and rotated, GC is collected and disabled while timing, medians reported.
Also printed, not part of a ratio: putting one body per call (a transaction each), as when
bodies are spooled one at a time.

Ratios: spool time (put + drain) / JSON round trip, target <= 10 (within an order of
magnitude of the serialisation alone); bytes on disk (checkpointed) / JSON
bytes, target <= 2.

    python benchmarks/spool.py            # 10,000 bodies, 5 rounds (~10 s)
    python benchmarks/spool.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from typing import Dict, List

import _common

from analytics_sprig.batching._spool import Spool, SpoolRow


def make_rows(count: int, users: int) -> List[SpoolRow]:
    """Bodies shaped like a Sprig user update: attributes, events, message references."""
    now = time.time()
    rows = []
    for n in range(count):
        user = f"user-{n % users:05d}"
        payload = {
            "userId": user,
            "emailAddress": f"{user}@example.com",
            "attributes": {"plan": "pro", "seats": n % 50, "company": "Example Corp"},
            "events": [
                {"event": "Signed Up", "timestamp": 1_700_000_000_000 + n},
                {"event": "Viewed Pricing Page", "timestamp": 1_700_000_000_500 + n},
            ],
        }
        refs = [[f"msg-{n:08d}-a", 0], [f"msg-{n:08d}-b", 1]]
        rows.append(SpoolRow(key=user, payload=payload, refs=refs, created=now - count + n))
    return rows


def json_bytes(row: SpoolRow) -> int:
    """Bytes of the JSON text of a row (the baseline's size per body)."""
    return len(json.dumps([row.key, row.payload, row.refs, row.created]).encode())


def json_round_trip(rows: List[SpoolRow]) -> None:
    texts = [json.dumps([r.key, r.payload, r.refs, r.created]) for r in rows]
    for text in texts:
        json.loads(text)


def disk_bytes(path: str) -> int:
    return sum(
        os.path.getsize(path + suffix)
        for suffix in ("", "-wal")
        if os.path.exists(path + suffix)
    )


def spool_run(rows: List[SpoolRow], batch: int, directory: str) -> Dict[str, float]:
    """Put all rows, note the bytes on disk, drain; seconds of each phase and bytes."""
    path = os.path.join(directory, f"spool-{time.monotonic_ns()}.db")
    spool = Spool(path)
    spool.status()  # open (and create) outside the timing
    refused: List[SpoolRow] = []

    def put_all() -> None:
        for start in range(0, len(rows), batch):
            refused.extend(spool.put(rows[start : start + batch]))

    claimed: List[int] = []

    def drain() -> None:
        while True:
            got = spool.claim(batch)
            if not got:
                return
            ids = [r.id for r in got]
            claimed.extend(ids)
            spool.delete(ids)

    put_seconds = _common.timed(put_all)
    size = disk_bytes(path)
    # The WAL holds up to ~4 MiB of pages that are also going to the database: the steady
    # state is the database after a checkpoint.
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpointed = disk_bytes(path)
    if refused or spool.status().rows != len(rows):
        raise RuntimeError(f"not all rows stored: {len(refused)} refused, {spool.status()}")
    drain_seconds = _common.timed(drain)
    if len(claimed) != len(rows) or len(set(claimed)) != len(rows) or spool.status().rows:
        raise RuntimeError(f"drain lost or repeated rows: {len(claimed)} claimed, {spool.status()}")
    spool.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return {
        "put": put_seconds,
        "drain": drain_seconds,
        "bytes": float(size),
        "checkpointed": float(checkpointed),
    }


def single_puts(rows: List[SpoolRow], directory: str) -> float:
    """Seconds to put ``rows`` one per call (one transaction each)."""
    path = os.path.join(directory, "single.db")
    spool = Spool(path)
    spool.status()

    def put_each() -> None:
        for r in rows:
            if spool.put([r]):
                raise RuntimeError("a row was refused")

    seconds = _common.timed(put_each)
    spool.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--bodies", type=int, default=None, help="bodies per run (default 10000)")
    parser.add_argument("--batch", type=int, default=100, help="rows per put / claim")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    count = _common.optional_int(args.bodies, 500 if args.quick else 10_000)
    rounds = _common.optional_int(args.rounds, 1 if args.quick else 5)
    rows = make_rows(count, users=max(1, count // 5))
    mean_json = sum(json_bytes(r) for r in rows) / count
    mean_payload = sum(len(json.dumps(r.payload)) + len(json.dumps(r.refs)) for r in rows) / count
    _common.header(
        "spool: put and drain bodies through the SQLite spool",
        bodies=count,
        batch=args.batch,
        rounds=rounds,
        payload_and_refs_bytes=f"{mean_payload:.0f}",
    )

    directory = tempfile.mkdtemp(prefix="spool-bench-")
    try:
        spool_results: List[Dict[str, float]] = []
        baseline: List[float] = []
        runs = {
            "spool": lambda: spool_results.append(spool_run(rows, args.batch, directory)),
            "json": lambda: baseline.append(_common.timed(lambda: json_round_trip(rows))),
        }
        started = time.monotonic()
        for order in _common.rotations(list(runs), rounds):
            for name in order:
                runs[name]()
        single = single_puts(rows[: min(count, 2000)], directory)
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    us = 1e6 / count
    put = [r["put"] for r in spool_results]
    drain = [r["drain"] for r in spool_results]
    total = [p + d for p, d in zip(put, drain)]
    disk = _common.median([r["bytes"] for r in spool_results]) / count
    stored = _common.median([r["checkpointed"] for r in spool_results]) / count
    print(f"   {rounds} rounds in {elapsed:.1f}s")
    print("per body, median over rounds (min, max):")
    print(f"  put, {args.batch} per transaction      {_common.describe(put, ' µs', us)}")
    print(f"  claim + delete, {args.batch} per call  {_common.describe(drain, ' µs', us)}")
    print(f"  spool total                   {_common.describe(total, ' µs', us)}")
    print(f"  JSON dumps + loads (baseline) {_common.describe(baseline, ' µs', us)}")
    single_us = single * 1e6 / min(count, 2000)
    print(f"  put, one body per transaction {single_us:.3f} µs (one run, not in a ratio)")
    print(f"bytes per body on disk: {stored:.0f} (database after a checkpoint); "
          f"{disk:.0f} (database + WAL right after the puts)")
    print(f"bytes per body as JSON: {mean_json:.0f} (baseline row); "
          f"{mean_payload:.0f} (payload + refs, what max_bytes counts)")
    time_ratio = _common.median([t / b for t, b in zip(total, baseline)])
    bytes_ratio = stored / mean_json
    print(f"ratio spool time ÷ JSON round trip (median of per-round ratios): {time_ratio:.3f}")
    print(f"ratio bytes on disk (checkpointed) ÷ JSON bytes: {bytes_ratio:.3f}")
    passed = _common.ratio_line("spool_time_vs_json", time_ratio, "<=", 10)
    passed = _common.ratio_line("spool_bytes_vs_json", bytes_ratio, "<=", 2) and passed
    _common.finish(passed, args.strict)


if __name__ == "__main__":
    main()
