"""Memory: what a waiting call costs while Sprig does not answer, and proof the buffer is capped.

A ``SprigDestination`` (default options, ``max_queue_size`` from ``--cap``) sends to a fake
Sprig in a child process that reads every request and never answers (a black hole; the
destination's ``timeout`` is raised to 10 minutes so nothing times out meanwhile): the
first bodies go in flight and stay there, everything else waits in the users' lanes. One
warm-up call is sent first and the measurement starts once it is in flight (the engine's
threads, HTTP sessions and connections then exist).

Calls are the normalized dicts analytics-python builds (``Client(send=False)`` returns
them), made one at a time as an app would and handed to ``send()`` (the routing and
non-blocking hand-off the pipeline's destination hook does), so the only reference to an
accepted call is the destination's. Memory is sampled after each step once the planner has
taken everything off the hand-off: Python's own allocations (``tracemalloc``, started after
the warm-up: exact, what the destination retains) and the process's resident set size
(``VmRSS``/``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` where there is no ``/proc``).

Shapes, each in a fresh child process of this script (so one cannot reuse another's memory):

- ``track``: one small ``track()`` per user (3 properties): one body per call. ``3 x cap``
  calls are offered in 30 steps: the first ``cap`` fill the buffer (``max_queue_size``
  counts bodies, in flight included), the rest are dropped (``dropped_queue_full``). Gives
  bytes per waiting call (= per body) and the growth after the cap (the plateau);
- ``track100``: the same with 100 properties per call, ``cap / 2`` users: Sprig gets only
  the event name and time, so a waiting call should cost about as much as a small one;
- ``merged``: ``cap / 2`` users x 10 interleaved small calls (5 track, 3 page, 2 identify):
  calls merge into their user's waiting body, so this gives bytes per merged call.

Ratios: growth after the cap / growth while filling (``track``, tracemalloc), target <=
0.05; bytes per waiting ``track100`` call / per small ``track`` call, target <= 1.5 (what
waits is what Sprig needs, not the whole message).

    python benchmarks/memory.py            # cap 10000 (the default), ~20 s
    python benchmarks/memory.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Optional, Tuple

import _common
from segment.analytics import Client

from analytics_sprig import SprigDestination

STEPS = 30
SHAPES = ("track", "track100", "merged")


def rss() -> Tuple[int, Optional[int]]:
    """(current RSS or, without /proc, peak RSS; peak RSS) in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        current = int(fields["VmRSS"].split()[0]) * 1024
        peak = int(fields["VmHWM"].split()[0]) * 1024
        return current, peak
    except (OSError, KeyError, ValueError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
        return peak, None


def calls_for(shape: str, cap: int) -> Tuple[List[Tuple[str, str, int]], int]:
    """``(calls as (kind, userId, step), users)`` for a shape."""
    if shape == "track":
        users = 3 * cap
        return [("track", f"user-{u}", 0) for u in range(users)], users
    if shape == "track100":
        users = max(1, cap // 2)
        return [("track100", f"user-{u}", 0) for u in range(users)], users
    users = max(1, cap // 2)
    pattern = ("identify", "track", "page", "track", "page", "track", "identify", "track",
               "page", "track")
    return [(pattern[step], f"user-{u}", step) for step in range(10) for u in range(users)], users


def message_maker() -> Callable[[str, str, int], Dict[str, Any]]:
    """Build a normalized message as analytics-python would."""
    maker = Client(_common.WRITE_KEY, send=False)  # send=False: returns normalized messages
    hundred = {f"property_{i}": f"value {i} " * 4 for i in range(100)}

    def make(kind: str, user_id: str, step: int) -> Dict[str, Any]:
        if kind == "track":
            _, made = maker.track(user_id, "Item Purchased",
                                  {"sku": f"sku-{step}", "price": 19.99, "currency": "EUR"})
        elif kind == "track100":
            _, made = maker.track(user_id, "Item Purchased", dict(hundred))
        elif kind == "identify":
            _, made = maker.identify(user_id, {"email": f"{user_id}@example.com",
                                               "plan": "pro", "logins": step})
        else:
            _, made = maker.page(user_id, "Docs", f"Step {step}", {"path": f"/docs/{step}"})
        result: Dict[str, Any] = made
        return result

    return make


def run_shape(shape: str, cap: int) -> Dict[str, Any]:
    """Measure one shape in this process; returns what the parent prints."""
    make = message_maker()
    calls, users = calls_for(shape, cap)
    with _common.ServerProcess() as server:
        server.blackhole()
        sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                                 max_queue_size=cap, timeout=600.0)
        worker = sprig._worker

        def settled() -> bool:
            # The planner has placed (merged or dropped) everything handed to it: not just
            # an empty hand-off (the planner may be halfway through what it took from it).
            stats = sprig.stats()
            with worker._lock:
                planned = worker._planned == worker._handed and not worker._inbox
            return planned and stats["received"] == stats["pending"] + stats["dropped"]

        # Warm up the allocator (messages made and freed) and the engine: one call per
        # possible request in flight goes out and stays there (the server never answers),
        # so every sender thread, session and connection exists before the baseline.
        for kind, user_id, step in calls[: min(len(calls), cap)]:
            make(kind, "warm-" + user_id, step)
        warm = min(sprig.stats()["concurrency"], max(1, cap // 4))
        for index in range(warm):
            sprig.send(make("track", f"warm-up-{index}", 0))
        # A flush makes them due at once and starts a sender for each (it times out: the
        # server never answers). Without it they would go one after another here.
        sprig.flush(timeout=1.0)
        if not _common.wait_until(lambda: sprig.stats()["in_flight"] >= warm, 30):
            raise RuntimeError(f"the warm-up calls never went in flight: {sprig.stats()}")
        time.sleep(0.5)  # their requests are written and their threads wait for answers
        gc.collect()
        gc.disable()  # the messages are acyclic; GC would only add noise
        tracemalloc.start()
        try:
            traced0 = tracemalloc.get_traced_memory()[0]
            rss0, peak0 = rss()
            step_size = max(1, len(calls) // STEPS)
            samples: List[Dict[str, Any]] = []
            offered = 0
            send = sprig.send
            while offered < len(calls):
                for kind, user_id, step in calls[offered: offered + step_size]:
                    send(make(kind, user_id, step))
                offered = min(len(calls), offered + step_size)
                if not _common.wait_until(settled, 60):
                    raise RuntimeError(f"the planner did not settle: {sprig.stats()}")
                gc.collect()
                stats = sprig.stats()
                samples.append({"offered": offered, "traced": tracemalloc.get_traced_memory()[0]
                                - traced0, "rss": rss()[0] - rss0,
                                "pending": stats["pending"], "dropped": stats["dropped"],
                                "in_flight": stats["in_flight"]})
            _, peak_end = rss()
        finally:
            tracemalloc.stop()
            gc.enable()
        stats = sprig.stats()
        sprig.shutdown(timeout=1)
    accepted = stats["pending"] - warm  # without the warm-up calls
    invariant = (stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
                 + stats["pending"])
    if stats["received"] != invariant:
        raise RuntimeError(f"counters do not add up: {stats}")
    full = next((i for i, s in enumerate(samples) if s["dropped"]), None)
    result: Dict[str, Any] = {
        "shape": shape, "cap": cap, "users": users, "offered": len(calls),
        "accepted": accepted, "dropped": stats["dropped"],
        "dropped_queue_full": stats["dropped_queue_full"], "pending": stats["pending"],
        "requests": stats["requests"], "samples": samples, "warm": warm,
        "peak_rss": [peak0, peak_end],
    }
    at_fill = samples[full] if full is not None else samples[-1]
    filled = at_fill["offered"] - at_fill["dropped"]
    result["traced_per_call"] = at_fill["traced"] / filled
    result["rss_per_call"] = at_fill["rss"] / filled
    result["bodies"] = min(users, cap)
    result["traced_per_body"] = samples[-1]["traced"] / max(1, min(users, cap - warm))
    if full is not None:
        result["offered_at_cap"] = at_fill["offered"]
        result["growth_before_cap"] = at_fill["traced"]
        result["growth_after_cap"] = samples[-1]["traced"] - at_fill["traced"]
        result["rss_before_cap"] = at_fill["rss"]
        result["rss_after_cap"] = samples[-1]["rss"] - at_fill["rss"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--cap", type=int, default=None, help="max_queue_size (default 10000)")
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    cap = _common.optional_int(args.cap, 1000 if args.quick else 10000)
    # The queue-full warning is logged once per overflow episode; keep the output clean.
    logging.basicConfig(level=logging.ERROR)
    if args.shape:
        print(json.dumps(run_shape(args.shape, cap)))
        return

    _common.header("memory: waiting calls with Sprig not answering", max_queue_size=cap,
                   shapes=",".join(SHAPES))
    results: Dict[str, Dict[str, Any]] = {}
    for shape in SHAPES:
        completed = subprocess.run(
            [sys.executable, __file__, "--shape", shape, "--cap", str(cap)],
            capture_output=True, text=True, timeout=600,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"shape {shape} failed:\n{completed.stdout}{completed.stderr}")
        results[shape] = json.loads(completed.stdout.strip().splitlines()[-1])

    track = results["track"]
    print(f"track: {track['offered']} calls, one per user (tracemalloc / RSS growth):")
    print(f"{'offered':>8} {'pending':>8} {'in_flight':>9} {'dropped':>8} "
          f"{'traced KiB':>11} {'RSS KiB':>9}")
    for sample in track["samples"][:: max(1, len(track["samples"]) // 10)] + \
            track["samples"][-1:]:
        print(f"{sample['offered']:>8} {sample['pending']:>8} {sample['in_flight']:>9} "
              f"{sample['dropped']:>8} {sample['traced'] / 1024:>11.0f} "
              f"{sample['rss'] / 1024:>9.0f}")
    for shape in SHAPES:
        r = results[shape]
        print(f"{shape:>9}: {r['offered']} calls for {r['users']} users: accepted "
              f"{r['accepted']}, dropped {r['dropped']} (queue_full "
              f"{r['dropped_queue_full']}), pending {r['pending']} ({r['warm']} warm-up calls "
              "in flight included), "
              f"{r['requests']} requests sent (never answered)")
        print(f"{'':>11}per waiting call {r['traced_per_call']:.0f} bytes (tracemalloc), "
              f"{r['rss_per_call']:.0f} bytes (RSS); per body {r['traced_per_body']:.0f} bytes")
    if "growth_before_cap" not in track:
        raise RuntimeError("the buffer never filled up; is the server answering?")
    expected_dropped = track["offered"] + track["warm"] - cap
    after = track["offered"] - track["offered_at_cap"]
    print(f"plateau: after the cap ({cap} bodies, in flight included) {after} more calls "
          f"offered; growth while filling {track['growth_before_cap'] / 2**20:.2f} MiB traced "
          f"({track['rss_before_cap'] / 2**20:.2f} MiB RSS), after the cap "
          f"{track['growth_after_cap'] / 1024:.0f} KiB traced "
          f"({track['rss_after_cap'] / 1024:.0f} KiB RSS)")
    print(f"peak RSS (VmHWM) of the track run: {track['peak_rss'][0] / 2**20:.1f} -> "
          f"{(track['peak_rss'][1] or 0) / 2**20:.1f} MiB")
    if track["pending"] != cap or track["dropped"] != expected_dropped:
        raise RuntimeError(f"the cap did not hold: pending {track['pending']} (expected "
                           f"{cap}), dropped {track['dropped']} (expected {expected_dropped})")
    growth = max(0.0, track["growth_after_cap"]) / track["growth_before_cap"]
    heavy = results["track100"]["traced_per_call"] / track["traced_per_call"]
    print(f"merged calls: {results['merged']['traced_per_call']:.0f} bytes per call, "
          f"{results['merged']['traced_per_body']:.0f} bytes per body of 10 calls")
    plateau_ok = _common.ratio_line("memory_growth_after_cap", growth, "<=", 0.05)
    heavy_ok = _common.ratio_line("memory_track100_vs_track", heavy, "<=", 1.5)
    _common.finish(plateau_ok and heavy_ok, args.strict)


if __name__ == "__main__":
    main()
