"""Rate limited: 200 users x 1 call/s for 20 s against a Sprig allowing 20 requests/s.

The fake Sprig (a child process) holds a token bucket of ``--limit`` (20) requests/s per
API key, bursts of one second's worth, and answers a request beyond it ``429`` *without*
``Retry-After`` (the case the engine must handle by itself: AIMD). A paced producer
(``benchmarks/_common.py``'s ``PacedLoad``) makes ``--users`` users (200) call ``track()``
once a second each for ``--seconds`` (20) through a real ``segment.analytics.Client``
whose Segment consumer is stopped; the ``SprigDestination`` has default options. Nobody
flushes: after the load the benchmark waits for the last delivery.

The ideal client here sends exactly ``--limit`` requests/s, each carrying
``users / limit`` calls (10), and never sees a 429; the figures compare against that
baseline: 429s as a share of all requests answered from ``--settle`` seconds (5) after the
load started until the load ended (and until drained), messages per delivered request
against the ideal, accepted requests per second against the limit, drops, delays from call
to delivery (``on_delivered``), the engine's adaptive concurrency, and a timeline (every
2 s: requests, 429s, accepted, pending).

Targets (issue 9): 0 dropped (or failed); 429s <= 10 % of requests after the first 5 s.

    python benchmarks/rate_limited.py            # 200 users x 20 s at 20 requests/s (~35 s)
    python benchmarks/rate_limited.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any, Dict, List, Tuple

import _common
from segment.analytics import Client

from analytics_sprig import SprigDestination

EVENT = "Heartbeat"


def run_once(server: _common.ServerProcess, load: _common.PacedLoad) -> Dict[str, Any]:
    """One run of the load against the rate-limited fake."""
    clock = _common.DeliveryClock()
    total = load.total
    client = Client(_common.WRITE_KEY, host=server.url, send=True, max_queue_size=total + 1)
    _common.stop_segment_consumers(client)
    sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                             on_delivered=clock.on_delivered)
    client.add_plugin(sprig)
    track = client.track
    concurrency: List[Tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            concurrency.append((time.monotonic(), sprig.stats()["concurrency"]))

    def call(user_id: str, k: int) -> str:
        _, message = track(user_id, EVENT, {"n": k})
        message_id: str = message["messageId"]
        return message_id

    server.reset()
    sampler = threading.Thread(target=sample, name="sampler", daemon=True)
    with _common.gc_paused():
        sampler.start()
        cpu = time.process_time()
        load.run(call)
        drained = _common.wait_until(lambda: sprig.stats()["pending"] == 0, 600, step=0.01)
        cpu = time.process_time() - cpu
        stop.set()
        sampler.join()
    stats = sprig.stats()
    log = [(t, status) for t, status, path in server.log() if path == "/v2/users"]
    client.remove_plugin(sprig)
    sprig.shutdown(timeout=10)
    _common.clear_segment_queue(client)
    client.join()
    last = max(clock.delivered.values()) if clock.delivered else load.ended
    return {"stats": stats, "log": log, "drained": drained, "cpu": cpu,
            "delays": clock.delays(load.called), "started": load.started,
            "ended": load.ended, "drain": last - load.ended, "concurrency": concurrency,
            "total": total}


def share_429(log: List[Tuple[float, int]], start: float, end: float) -> Tuple[float, int, int]:
    """``(429 share, 429s, requests)`` among requests read in ``[start, end)``."""
    window = [status for t, status in log if start <= t < end]
    throttled = sum(1 for status in window if status == 429)
    return (throttled / len(window) if window else 0.0), throttled, len(window)


def report(result: Dict[str, Any], settle: float, limit: float, users: int) -> Dict[str, float]:
    """Print one run; return its figures."""
    stats, log = result["stats"], result["log"]
    start, end = result["started"], result["ended"]
    total = result["total"]
    accepted = sum(1 for _, status in log if 200 <= status < 300)
    load_share, load_429, load_requests = share_429(log, start + settle, end)
    all_share, all_429, all_requests = share_429(log, start + settle, float("inf"))
    in_load = [status for t, status in log if start + settle <= t < end]
    accepted_rate = sum(1 for s in in_load if 200 <= s < 300) / max(1e-9, end - start - settle)
    per_request = stats["delivered"] / max(1, accepted)
    ideal = users / limit
    delays = result["delays"]
    p = _common.percentile
    print(f"   {len(log)} requests: {accepted} accepted, {len(log) - accepted} answered 429; "
          f"{stats['retries']} retries; delivered {stats['delivered']}/{total}, dropped "
          f"{stats['dropped']}, failed {stats['failed']}; drained {result['drain']:.2f} s "
          f"after the last call{'' if result['drained'] else ' (NOT drained)'}")
    print(f"   429s after {settle:g} s: {load_429}/{load_requests} during the load "
          f"({load_share:.1%}), {all_429}/{all_requests} until drained ({all_share:.1%})")
    print(f"   messages per accepted request {per_request:.2f} (ideal {ideal:.2f}); accepted "
          f"{accepted_rate:.1f} requests/s after {settle:g} s (limit {limit:g}: "
          f"{accepted_rate / limit:.2f} of it)")
    print(f"   delay call -> delivered: p50 {p(delays, 50):.2f} s, p99 {p(delays, 99):.2f} s, "
          f"max {max(delays or [0]):.2f} s; CPU {result['cpu']:.2f} s")
    levels = [c for _, c in result["concurrency"]]
    print(f"   engine concurrency limit: min {min(levels or [0])}, max {max(levels or [0])}, "
          f"at the end {levels[-1] if levels else '?'}")
    print(f"   {'t (s)':>6} {'requests':>8} {'429s':>5} {'accepted':>8} {'concurrency':>11}")
    step = 2.0
    t0 = start
    while t0 < (log[-1][0] if log else start):
        window = [s for t, s in log if t0 <= t < t0 + step]
        level = [c for t, c in result["concurrency"] if t0 <= t < t0 + step]
        print(f"   {t0 - start + step:>6.0f} {len(window):>8} "
              f"{sum(1 for s in window if s == 429):>5} "
              f"{sum(1 for s in window if 200 <= s < 300):>8} "
              f"{(min(level) if level else '-'):>11}")
        t0 += step
    return {"share": load_share, "share_drained": all_share,
            "lost": float(stats["dropped"] + stats["failed"] + (0 if result["drained"] else 1)),
            "per_request": per_request, "accepted_rate": accepted_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--users", type=int, default=None, help="users (200)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the load (20)")
    parser.add_argument("--limit", type=float, default=None,
                        help="the fake's rate limit, requests/s (20)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds after the start not judged (5)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the fake server waits before each answer (0)")
    parser.add_argument("--producers", type=int, default=1, help="producer threads (1)")
    parser.add_argument("--rounds", type=int, default=None, help="runs (1)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    users = _common.optional_int(args.users, 20 if args.quick else 200)
    seconds = args.seconds if args.seconds is not None else (4.0 if args.quick else 20.0)
    limit = args.limit if args.limit is not None else (5.0 if args.quick else 20.0)
    settle = args.settle if args.settle is not None else (2.0 if args.quick else 5.0)
    rounds = _common.optional_int(args.rounds, 1)
    logging.basicConfig(level=logging.ERROR)  # retries are logged at DEBUG; losses above
    _common.header("rate limited: paced load to a Sprig with a token bucket", users=users,
                   seconds=seconds, limit=f"{limit:g} requests/s (429 without Retry-After)",
                   settle=f"{settle:g} s", latency=f"{args.latency * 1000:g} ms",
                   rounds=rounds)
    figures: List[Dict[str, float]] = []
    with _common.ServerProcess(rate_limit=limit, latency=args.latency or None) as server:
        for index in range(rounds):
            load = _common.PacedLoad(users, 1.0, seconds, args.producers)
            print(f"-- run {index + 1}: {load.total} calls")
            figures.append(report(run_once(server, load), settle, limit, users))
    share = _common.median([f["share"] for f in figures])
    lost = max(f["lost"] for f in figures)
    print(f"medians over {rounds} run(s): 429 share {share:.3f} (until drained "
          f"{_common.median([f['share_drained'] for f in figures]):.3f}), messages per "
          f"request {_common.median([f['per_request'] for f in figures]):.2f} (ideal "
          f"{users / limit:.2f}), accepted rate ÷ limit "
          f"{_common.median([f['accepted_rate'] for f in figures]) / limit:.2f}")
    lost_ok = _common.ratio_line("rate_limited_dropped", lost, "<=", 0)
    share_ok = _common.ratio_line("rate_limited_429_share", share, "<=", 0.10)
    _common.finish(lost_ok and share_ok, args.strict)


if __name__ == "__main__":
    main()
