"""Coalescing: a busy workload drained to Sprig, against analytics-python draining it to Segment.

Workload: ``--users`` users (2,000) x 10 mixed calls each (2 identify, 5 track, 3 page),
made through a real ``segment.analytics.Client``. By default the calls are interleaved:
call 1 of every user, then call 2 of every user, ... (many users active at once, as in a
busy service); ``--per-user`` makes each user's 10 calls back to back instead.

Two runs per round, each timed on its own from the same starting point, the first call,
to the moment its own sink is drained; the other sink is paused, so the two drains never
share the CPU:

- ``sprig``: the client has a ``SprigDestination`` attached (default options) and its
  Segment consumer stopped (calls still land on Segment's queue, which nothing drains).
  Timed until ``SprigDestination.flush()`` returns with every message delivered. Calls for
  a user merge into that user's waiting body: one ``POST /v2/users`` per user at best.
- ``segment``: a plain client (no plugins) with its consumer running as shipped
  (``upload_size`` 100). Timed until its queue is drained (``Client.flush()``).

With ``--drain-only`` the calls are made first with both sinks paused and only the drains
are timed: the Sprig destination gets ``flush_interval`` = 1 h (no body is due before the
flush; its planner still merges the calls as they arrive) and the Segment client's
consumer is stopped during the calls, a fresh ``Consumer`` (defaults) started on its queue
when the timer starts.

Both send to one fake server (Sprig's ``/v2/users`` and Segment's ``/v1/batch``) in a
child process on 127.0.0.1, reset between runs; ``--latency`` makes it answer every
request (both APIs) that many seconds late (``benchmarks/latency.py`` runs this at 50 ms).
GC is collected and disabled while timing; rounds rotate which run goes first; figures
are medians, the ratio is the median of per-round ratios. Request counts come from the
server (and are checked against the destination's own count).

Targets (issue 9): requests <= 1.1 x users (2,200 for 2,000 users: one per user, give or
take); the drain ratio Sprig / Segment is reported against <= 1.0.

    python benchmarks/coalescing.py              # 2,000 users, 7 rounds (~1 min)
    python benchmarks/coalescing.py --drain-only
    python benchmarks/coalescing.py --per-user
    python benchmarks/coalescing.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import _common
from segment.analytics import Client
from segment.analytics.consumer import Consumer

from analytics_sprig import SprigDestination

CALLS_PER_USER = 10
# The per-user call pattern: 2 identify, 5 track, 3 page.
PATTERN = ("identify", "page", "track", "track", "page", "track", "identify", "track",
           "page", "track")
Call = Tuple[str, str, int]


def workload(users: int, interleave: bool) -> List[Call]:
    """The calls as (kind, userId, step), in the order they are made."""
    if interleave:
        return [(PATTERN[step], f"user-{u}", step) for step in range(CALLS_PER_USER)
                for u in range(users)]
    return [(PATTERN[step], f"user-{u}", step) for u in range(users)
            for step in range(CALLS_PER_USER)]


def make_calls(client: Client, calls: List[Call]) -> Callable[[], None]:
    """A function making ``calls`` through ``client``."""
    identify, track, page = client.identify, client.track, client.page

    def run() -> None:
        for kind, user_id, step in calls:
            if kind == "identify":
                identify(user_id, {"email": f"{user_id}@example.com",
                                   "plan": {"tier": "pro", "seats": step}, "logins": step})
            elif kind == "track":
                track(user_id, "Item Viewed", {"sku": f"sku-{step}", "price": 9.5})
            else:
                page(user_id, "Docs", f"Step {step}", {"path": f"/docs/{step}"})

    return run


@dataclass
class Drains:
    """What :func:`compare_drains` measured, per variant (``sprig``, ``segment``)."""

    users: int
    total: int
    seconds: Dict[str, List[float]] = field(default_factory=lambda: {"sprig": [], "segment": []})
    cpu: Dict[str, List[float]] = field(default_factory=lambda: {"sprig": [], "segment": []})
    requests: Dict[str, List[int]] = field(default_factory=lambda: {"sprig": [], "segment": []})
    threads: List[int] = field(default_factory=list)  # Sprig threads at the end of a drain
    elapsed: float = 0.0

    def ratio(self) -> float:
        """Median of the per-round ratios Sprig drain / Segment drain."""
        return _common.median([s / g for s, g in zip(self.seconds["sprig"],
                                                     self.seconds["segment"])])


def compare_drains(server: _common.ServerProcess, *, users: int, rounds: int,
                   interleave: bool, drain_only: bool) -> Drains:
    """Run both drains ``rounds`` times (rotated) after a smaller warm-up round."""
    result = Drains(users=users, total=users * CALLS_PER_USER)

    def sprig_run(calls: List[Call]) -> Tuple[float, float, Dict[str, int]]:
        total = len(calls)
        before = threading.active_count()
        client = Client(_common.WRITE_KEY, host=server.url, send=True,
                        max_queue_size=total + 1, upload_interval=0.05)
        _common.stop_segment_consumers(client)
        if drain_only:  # no body is due before the flush
            sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                                     flush_interval=3600.0, max_queue_size=2 * total)
        else:
            sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url)
        client.add_plugin(sprig)
        run = make_calls(client, calls)

        def drain() -> None:
            if not sprig.flush(timeout=600):
                raise RuntimeError(f"the Sprig destination did not drain: {sprig.stats()}")

        def timed() -> None:
            run()
            drain()

        server.reset()
        if drain_only:
            run()
            seconds, cpu = _common.timed_cpu(drain)
        else:
            seconds, cpu = _common.timed_cpu(timed)
        threads = threading.active_count() - before
        stats = sprig.stats()
        client.remove_plugin(sprig)
        sprig.shutdown(timeout=10)
        _common.clear_segment_queue(client)
        if stats["delivered"] != total or stats["received"] != total:
            raise RuntimeError(f"Sprig destination did not deliver everything: {stats}")
        requests = server.counts().get("/v2/users", 0)
        if requests != stats["requests"]:
            raise RuntimeError(f"server saw {requests} requests, the destination "
                               f"counted {stats['requests']}")
        return seconds, cpu, {"requests": requests, "threads": threads}

    def segment_run(calls: List[Call]) -> Tuple[float, float, Dict[str, int]]:
        total = len(calls)
        client = Client(_common.WRITE_KEY, host=server.url, send=True,
                        max_queue_size=total + 1)
        run = make_calls(client, calls)

        def timed() -> None:
            run()
            client.flush()  # analytics-python's own: blocks until its queue is drained

        server.reset()
        if drain_only:
            _common.stop_segment_consumers(client)
            run()
            consumer = Consumer(client.queue, _common.WRITE_KEY, host=server.url)

            def drain() -> None:
                consumer.start()
                client.queue.join()

            seconds, cpu = _common.timed_cpu(drain)
            consumer.pause()
            consumer.join()
        else:
            seconds, cpu = _common.timed_cpu(timed)
        client.shutdown()
        return seconds, cpu, {"requests": server.counts().get("/v1/batch", 0)}

    runs = {"sprig": sprig_run, "segment": segment_run}
    warm = workload(min(users, 200), interleave)
    for run in runs.values():  # warm-up: imports, caches, connections
        run(warm)
    calls = workload(users, interleave)
    started = time.monotonic()
    for order in _common.rotations(list(runs), rounds):
        for name in order:
            seconds, cpu, info = runs[name](calls)
            result.seconds[name].append(seconds)
            result.cpu[name].append(cpu)
            result.requests[name].append(info["requests"])
            if name == "sprig":
                result.threads.append(info["threads"])
    result.elapsed = time.monotonic() - started
    return result


def report(result: Drains, *, drain_only: bool) -> None:
    """Print the figures (not the ratio lines)."""
    users, total = result.users, result.total
    print(f"   {len(result.seconds['sprig'])} rounds in {result.elapsed:.1f}s")
    since = "the calls returned" if drain_only else "the first call"
    print(f"seconds from {since} until drained, median over rounds (min, max):")
    print(f"  SprigDestination.flush() (Sprig)     "
          f"{_common.describe(result.seconds['sprig'], ' s')}")
    print(f"  analytics-python flush() (Segment)   "
          f"{_common.describe(result.seconds['segment'], ' s')}")
    print(f"requests for {total} calls (per run): Sprig /v2/users "
          f"{sorted(set(result.requests['sprig']))} (one per user would be {users}), "
          f"Segment /v1/batch {sorted(set(result.requests['segment']))}")
    sprig_requests = _common.median(result.requests["sprig"])
    print(f"calls per Sprig request: {total / sprig_requests:.2f}")
    sprig_cpu = _common.median(result.cpu["sprig"])
    print(f"CPU seconds of this process (app thread + delivery threads), median: Sprig "
          f"{sprig_cpu:.2f} ({sprig_cpu / sprig_requests * 1e3:.2f} ms per Sprig request), "
          f"Segment {_common.median(result.cpu['segment']):.2f}")
    print(f"Sprig delivery threads alive after a drain: {sorted(set(result.threads))}")
    print(f"ratio Sprig drain ÷ Segment drain (median of per-round ratios): "
          f"{result.ratio():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--users", type=int, default=None, help="users (10 calls each)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (runs per variant)")
    parser.add_argument("--per-user", action="store_true",
                        help="make each user's 10 calls back to back (default: interleaved)")
    parser.add_argument("--drain-only", action="store_true",
                        help="make the calls with both sinks paused, then time the drains")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the fake server waits before each answer (default 0)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    users = _common.optional_int(args.users, 50 if args.quick else 2000)
    rounds = _common.optional_int(args.rounds, 2 if args.quick else 7)
    interleave = not args.per_user
    logging.basicConfig(level=logging.WARNING)
    _common.header("coalescing: drain to Sprig vs analytics-python's drain to Segment",
                   users=users, calls=users * CALLS_PER_USER, rounds=rounds,
                   order="interleaved" if interleave else "per user",
                   timed="drains only" if args.drain_only else "from the first call",
                   latency=f"{args.latency * 1000:g} ms")
    with _common.ServerProcess(latency=args.latency or None) as server:
        result = compare_drains(server, users=users, rounds=rounds, interleave=interleave,
                                drain_only=args.drain_only)
    report(result, drain_only=args.drain_only)
    bound = round(1.1 * users)
    requests_ok = _common.ratio_line("coalescing_requests",
                                     _common.median(result.requests["sprig"]), "<=", bound)
    drain_ok = _common.ratio_line("coalescing_drain", result.ratio(), "<=", 1.0)
    _common.finish(requests_ok and drain_ok, args.strict)


if __name__ == "__main__":
    main()
