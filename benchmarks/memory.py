"""Memory: with Sprig unreachable, what each queued message costs, and proof the queue is capped.

A ``SprigDestination`` (default options; ``max_queue_size`` from ``--cap``) points at a
closed port on 127.0.0.1, so every request is refused. One warm-up message is sent first;
once its first request was refused the worker holds it in flight, retrying with backoff (10
retries, minutes of budget), and takes nothing else off the queue. Then ``3 x cap``
messages are offered with ``send()`` (the routing + non-blocking put the pipeline's
destination hook does), in 30 steps; after each step the process's resident set size
(``VmRSS`` from ``/proc/self/status``, peak ``VmHWM``; ``ru_maxrss`` where there is no
``/proc``) and the destination's counters are sampled, with GC collected.

The messages are the normalized dicts analytics-python builds for a ``track()`` call
(``Client(send=False)`` returns them), made one at a time as an app would, so the only
reference to an accepted message is the destination's queue: the growth per message is what
the queue retains. A dropped message is freed at once.

Printed: bytes per queued message (RSS growth while the queue fills / ``cap``), RSS growth
after the cap was reached (about 0: the plateau), and the counters: ``cap`` queued,
``2 x cap`` dropped (``dropped_queue_full``), ``pending`` = ``cap`` + the warm-up message.
The ratio line is RSS growth after the cap / growth before it; target <= 0.05.

    python benchmarks/memory.py            # cap 10000 (the default), 30000 offered (~5 s)
    python benchmarks/memory.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import socket
import sys
import time
from typing import Dict, List, Optional, Tuple

import _common
from segment.analytics import Client

from analytics_sprig import SprigDestination

STEPS_PER_CAP = 10


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def memory() -> Tuple[int, Optional[int]]:
    """(current RSS or, without /proc, peak RSS; peak RSS) in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) * 1024
        peak = int(fields["VmHWM"].split()[0]) * 1024
        return rss, peak
    except (OSError, KeyError, ValueError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
        return peak, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--cap", type=int, default=None, help="max_queue_size (default 10000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    cap = _common.optional_int(args.cap, 1000 if args.quick else 10000)
    offered_total = 3 * cap
    # The queue-full warning is logged once per overflow episode; keep the output clean.
    logging.basicConfig(level=logging.ERROR)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    _common.header("memory: queue growth with Sprig unreachable", max_queue_size=cap,
                   offered=offered_total, endpoint=f"{endpoint} (closed port)")

    maker = Client(_common.WRITE_KEY, send=False)  # send=False: returns normalized messages
    counter = 0

    def message() -> Dict[str, object]:
        nonlocal counter
        counter += 1
        _, made = maker.track(f"user-{counter}", "Item Purchased",
                              {"sku": f"sku-{counter}", "price": 19.99, "currency": "EUR"})
        made_dict: Dict[str, object] = made
        return made_dict

    sample = message()
    print(f"   message: a normalized track() dict, {len(json.dumps(sample))} bytes as JSON")

    sprig = SprigDestination(api_key=_common.API_KEY, endpoint=endpoint, max_queue_size=cap)
    # Warm up the allocator (messages made and freed) and the destination: one message is
    # sent, and once its first request was refused the worker is busy retrying it (backoff,
    # up to 10 retries), so its thread, HTTP client and TLS context exist before the
    # baseline and it takes nothing more off the queue during the measurement.
    for _ in range(cap):
        message()
    sprig.send(message())
    deadline = time.monotonic() + 30
    while sprig.stats()["retries"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never tried to send")
        time.sleep(0.01)
    gc.collect()
    gc.disable()  # the messages are acyclic; GC would only add noise
    try:
        rss0, peak0 = memory()
        step = max(1, cap // STEPS_PER_CAP)
        offered = 0
        samples: List[Tuple[int, int, Dict[str, int]]] = []
        while offered < offered_total:
            for _ in range(min(step, offered_total - offered)):
                sprig.send(message())
                offered += 1
            gc.collect()
            rss, _ = memory()
            samples.append((offered, rss, sprig.stats()))
        rss_end, peak_end = memory()
    finally:
        gc.enable()
    stats = sprig.stats()
    sprig.shutdown(timeout=1)

    print(f"{'offered':>8} {'pending':>8} {'dropped':>8} {'RSS MiB':>9} {'growth KiB':>11}")
    for offered, rss, snap in samples:
        print(f"{offered:>8} {snap['pending']:>8} {snap['dropped']:>8} "
              f"{rss / 2**20:>9.2f} {(rss - rss0) / 1024:>11.0f}")

    # The first sample at which the queue was full (something had been dropped).
    full = next((i for i, (_, _, s) in enumerate(samples) if s["dropped"]), None)
    if full is None:
        raise RuntimeError("the queue never filled up; is the endpoint reachable?")
    at_cap_rss = samples[full][1]
    accepted = offered_total - stats["dropped"]
    growth_before = at_cap_rss - rss0
    growth_after = rss_end - at_cap_rss
    per_message = growth_before / accepted
    print(f"offered {offered_total}: queued {accepted}, dropped {stats['dropped']} "
          f"(dropped_queue_full={stats['dropped_queue_full']}; 2 x cap = {2 * cap}); "
          f"pending {stats['pending']} = queue + 1 warm-up message in flight, "
          f"{stats['requests']} requests tried")
    invariant = (stats["skipped"] + stats["delivered"] + stats["failed"] + stats["dropped"]
                 + stats["pending"])
    print(f"stats invariant received == skipped+delivered+failed+dropped+pending: "
          f"{stats['received']} == {invariant}")
    print(f"RSS growth while filling: {growth_before / 2**20:.2f} MiB -> "
          f"{per_message:.0f} bytes per queued message")
    print(f"RSS growth after the cap, while {offered_total - samples[full][0]} more messages "
          f"were offered: {growth_after / 1024:.0f} KiB")
    if peak0 is not None and peak_end is not None:
        print(f"peak RSS (VmHWM) {peak0 / 2**20:.2f} -> {peak_end / 2**20:.2f} MiB")
    if (stats["received"] != invariant or stats["dropped"] != 2 * cap
            or stats["pending"] != cap + 1):
        raise RuntimeError(f"counters do not add up: {stats}")
    ratio = max(0.0, growth_after) / growth_before if growth_before > 0 else float("inf")
    passed = _common.ratio_line("memory_growth_after_cap", ratio, "<=", 0.05)
    _common.finish(passed, args.strict)


if __name__ == "__main__":
    main()
