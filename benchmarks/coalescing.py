"""Coalescing: a busy workload drained to Sprig, against analytics-python draining it to Segment.

Workload: ``--users`` users (2,000) x 10 mixed calls each (2 identify, 5 track, 3 page),
made through a real ``segment.analytics.Client``. By default each user's 10 calls are made
back to back (a request handler identifying a user, then tracking what they do), users one
after another; ``--interleave`` makes call 1 of every user, then call 2, ... instead.

Two runs per round, each timed on its own from the same starting point, the first call,
to the moment its own sink is drained; the other sink is paused, so the two drains never
share the CPU:

- ``sprig``: the client has a ``SprigDestination`` attached (defaults, except
  ``max_queue_size`` = the whole workload, so nothing can be dropped) and its Segment
  consumer stopped (calls still land on Segment's queue, which nothing drains). Timed until
  ``SprigDestination.flush()`` returns with every message delivered. Messages for a user
  waiting together are merged into one ``POST /v2/users``.
- ``segment``: a plain client (no plugins) with its consumer running as usual
  (``upload_size`` 100). Timed until its queue is drained (``Client.flush()``).

With ``--drain-only`` the calls are made first with both sinks paused and only the drains
are timed, so neither competes with the app thread for the GIL: the Sprig worker gets
``flush_interval`` = 1 h, ``max_batch_size`` = the workload and ``max_queue_size`` = twice
it, so it first wakes at the last call, and the timer starts when the calls return; the
Segment client's consumer is stopped during the calls and a fresh ``Consumer`` (defaults)
is started on its queue when the timer starts.

Both send to one fake server (Sprig's ``/v2/users`` and Segment's ``/v1/batch``) in a
child process on 127.0.0.1, reset between runs. GC is collected and disabled while timing;
rounds alternate which run goes first; figures are medians, the ratio is the median of
per-round ratios. Request counts come from the server.

    python benchmarks/coalescing.py            # full run (~40 s)
    python benchmarks/coalescing.py --drain-only   # drains only (~30 s)
    python benchmarks/coalescing.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable, Dict, List, Tuple

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--users", type=int, default=None, help="users (10 calls each)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (runs per variant)")
    parser.add_argument("--interleave", action="store_true",
                        help="make call n of every user before call n+1 of any")
    parser.add_argument("--drain-only", action="store_true",
                        help="make the calls with both sinks paused, then time the drains")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    users = _common.optional_int(args.users, 50 if args.quick else 2000)
    rounds = _common.optional_int(args.rounds, 2 if args.quick else 7)
    total = users * CALLS_PER_USER
    logging.basicConfig(level=logging.WARNING)
    _common.header("coalescing: drain to Sprig vs analytics-python's drain to Segment",
                   users=users, calls=total, rounds=rounds,
                   order="interleaved" if args.interleave else "per user",
                   timed="drains only" if args.drain_only else "from the first call")
    drain_only = args.drain_only
    calls = workload(users, args.interleave)

    with _common.ServerProcess() as server:

        def sprig_run() -> Tuple[float, Dict[str, Any]]:
            client = Client(_common.WRITE_KEY, host=server.url, send=True,
                            max_queue_size=total + 1, upload_interval=0.05)
            _common.stop_segment_consumers(client)
            if drain_only:  # the worker first wakes when the last call is queued
                sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                                         max_queue_size=2 * total, max_batch_size=total,
                                         flush_interval=3600.0)
            else:
                sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                                         max_queue_size=total)
            client.add_plugin(sprig)
            run = make_calls(client, calls)

            def drain() -> None:
                if not sprig.flush(timeout=300):
                    raise RuntimeError("the Sprig destination did not drain")

            def timed() -> None:
                run()
                drain()

            server.reset()
            if drain_only:
                run()
                seconds = _common.timed(drain)
            else:
                seconds = _common.timed(timed)
            stats = sprig.stats()
            client.remove_plugin(sprig)
            sprig.shutdown(timeout=10)
            _common.clear_segment_queue(client)
            if stats["delivered"] != total or stats["received"] != total:
                raise RuntimeError(f"Sprig destination did not deliver everything: {stats}")
            return seconds, {"requests": server.counts().get("/v2/users", 0),
                             "worker_requests": stats["requests"]}

        def segment_run() -> Tuple[float, Dict[str, Any]]:
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

                seconds = _common.timed(drain)
                consumer.pause()
                consumer.join()
            else:
                seconds = _common.timed(timed)
            client.shutdown()
            counts = server.counts()
            return seconds, {"requests": counts.get("/v1/batch", 0)}

        runs: Dict[str, Callable[[], Tuple[float, Dict[str, Any]]]] = {
            "sprig": sprig_run,
            "segment": segment_run,
        }
        for run in runs.values():  # warm-up
            run()
        seconds: Dict[str, List[float]] = {name: [] for name in runs}
        requests: Dict[str, List[int]] = {name: [] for name in runs}
        started = time.monotonic()
        for order in _common.rotations(list(runs), rounds):
            for name in order:
                took, info = runs[name]()
                seconds[name].append(took)
                requests[name].append(info["requests"])
                if name == "sprig" and info["requests"] != info["worker_requests"]:
                    raise RuntimeError(f"server and worker disagree: {info}")
        elapsed = time.monotonic() - started

    print(f"   {rounds} rounds in {elapsed:.1f}s")
    since = "the calls returned" if drain_only else "the first call"
    print(f"seconds from {since} until drained, median over rounds (min, max):")
    print(f"  SprigDestination.flush() (Sprig)     {_common.describe(seconds['sprig'], ' s')}")
    print(f"  analytics-python flush() (Segment)   {_common.describe(seconds['segment'], ' s')}")
    print(f"requests for {total} calls (per run): Sprig {sorted(set(requests['sprig']))} "
          f"(one per user would be {users}), Segment /v1/batch "
          f"{sorted(set(requests['segment']))}")
    print(f"calls per Sprig request: {total / _common.median(requests['sprig']):.2f}")
    ratio = _common.median([s / g for s, g in zip(seconds["sprig"], seconds["segment"])])
    print(f"ratio Sprig drain ÷ Segment drain (median of per-round ratios): {ratio:.3f}")
    passed = _common.ratio_line("coalescing", ratio, "<=", 1.0)
    _common.finish(passed, args.strict)


if __name__ == "__main__":
    main()
