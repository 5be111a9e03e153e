"""Latency: the coalescing workload against servers 50 ms away, Sprig's drain vs Segment's.

Sprig across the internet: every request, Sprig's ``/v2/users`` and Segment's
``/v1/batch`` alike, is answered 50 ms (``--latency``) after the fake server read it, as a
plain WAN round trip. The workload and the measurement are ``benchmarks/coalescing.py``'s
(``compare_drains``): ``--users`` users (2,000) x 10 interleaved calls (2 identify, 5
track, 3 page) through a real ``segment.analytics.Client``; one run with a
``SprigDestination`` (default options; Segment's consumer stopped) timed from the first
call until ``flush()`` returns with everything delivered, one run of a plain client
(analytics-python's consumer as shipped, 100 messages per batch, one request at a time)
timed from the first call until ``Client.flush()`` returns. The fake runs in a child
process; GC collected and disabled while timing; rounds rotated; medians.

Issue 9's target: Sprig drain / Segment drain <= 1.0 (the single-request engine measured
9.6 at 200 users). Also printed: requests sent (one per user at best: Sprig takes one
user per request, Segment 100 messages), calls per request, CPU and threads.

    python benchmarks/latency.py            # 2,000 users at 50 ms, 3 rounds (~1.5 min)
    python benchmarks/latency.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging

import _common
from coalescing import CALLS_PER_USER, compare_drains, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--users", type=int, default=None, help="users (10 calls each)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (runs per variant)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds the fake server waits before each answer (0.05)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="+/- seconds of uniform jitter on the latency (0)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    users = _common.optional_int(args.users, 100 if args.quick else 2000)
    rounds = _common.optional_int(args.rounds, 1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING)
    _common.header("latency: drain to Sprig vs analytics-python's drain to Segment, far away",
                   users=users, calls=users * CALLS_PER_USER, rounds=rounds,
                   order="interleaved", latency=f"{args.latency * 1000:g} ms",
                   jitter=f"{args.jitter * 1000:g} ms")
    with _common.ServerProcess(latency=args.latency, jitter=args.jitter or None) as server:
        result = compare_drains(server, users=users, rounds=rounds, interleave=True,
                                drain_only=False)
    report(result, drain_only=False)
    for label, name in (("Sprig", "sprig"), ("Segment", "segment")):
        rate = _common.median([r / s for r, s in zip(result.requests[name],
                                                     result.seconds[name])])
        print(f"  {label} requests per second of drain, median: {rate:.0f}")
    passed = _common.ratio_line("latency_drain", result.ratio(), "<=", 1.0)
    _common.finish(passed, args.strict)


if __name__ == "__main__":
    main()
