"""Throughput: events per second the Sprig destination delivers, against a plain httpx loop.

One event per distinct user (a ``track`` each), so coalescing cannot help: every event is
one ``POST /v2/users``. Both variants talk to the same fake Sprig, which runs in a child
process on 127.0.0.1 (so its CPU time is not taken from this process):

- ``destination``: a ``SprigDestination`` with default options. Timed from the first
  ``send()`` (the same routing + non-blocking put the pipeline's destination hook does) to
  ``flush()`` returning with every message delivered. Its worker maps each message, builds
  the request, posts it on its one pooled connection and checks the answer.
- ``httpx loop``: one ``httpx.Client`` (same headers, one pooled connection) posting the
  very same bodies sequentially with ``post("/v2/users", json=body)`` and checking each
  status. The bodies are mapped before timing, so the loop does strictly less work.

The messages are the normalized dicts analytics-python produces (``Client(send=False)``
returns them), built before timing. The server's store is reset between blocks, outside
the timing. Rounds alternate which variant goes first; GC is collected and disabled while
timing; figures are medians over rounds, and the ratio is the median of per-round ratios.

    python benchmarks/throughput.py            # full run (~25 s)
    python benchmarks/throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable, Dict, List, Tuple

import _common
import httpx
from segment.analytics import Client

from analytics_sprig import SprigDestination
from analytics_sprig.sprig._api import USER_AGENT
from analytics_sprig.sprig._mapping import map_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--events", type=int, default=None, help="events (users) per block")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (blocks per variant)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    events = _common.optional_int(args.events, 50 if args.quick else 1000)
    rounds = _common.optional_int(args.rounds, 2 if args.quick else 9)
    logging.basicConfig(level=logging.WARNING)
    _common.header("throughput: events/s to a loopback fake Sprig", events_per_block=events,
                   rounds=rounds)

    maker = Client(_common.WRITE_KEY, send=False)  # send=False: returns normalized messages

    def messages(tag: str) -> List[Dict[str, Any]]:
        made = []
        for i in range(events):
            _, message = maker.track(f"{tag}-user-{i}", "Order Completed", {"total": i})
            made.append(message)
        return made

    with _common.ServerProcess() as server:
        sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url)
        http = httpx.Client(
            base_url=server.url,
            headers={
                "Authorization": f"API-Key {_common.API_KEY}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
        )

        def destination_block(batch: List[Dict[str, Any]]) -> Callable[[], None]:
            def run() -> None:
                send = sprig.send
                for message in batch:
                    send(message)
                if not sprig.flush(timeout=120):
                    raise RuntimeError("the Sprig destination did not drain")

            return run

        def httpx_block(bodies: List[Dict[str, Any]]) -> Callable[[], None]:
            def run() -> None:
                post = http.post
                for body in bodies:
                    response = post("/v2/users", json=body)
                    if response.status_code != 202:
                        raise RuntimeError(f"fake Sprig answered {response.status_code}")

            return run

        def block(name: str, tag: str) -> Tuple[float, float]:
            batch = messages(tag)
            bodies = []  # mapped untimed, for the httpx loop
            for message in batch:
                body = map_message(message)
                assert body is not None
                bodies.append(body)
            run = destination_block(batch) if name == "destination" else httpx_block(bodies)
            server.reset()
            return _common.timed_cpu(run)

        block("destination", "warm")
        block("httpx", "warm")
        seconds: Dict[str, List[float]] = {"destination": [], "httpx": []}
        cpu: Dict[str, List[float]] = {"destination": [], "httpx": []}
        started = time.monotonic()
        for index, order in enumerate(_common.rotations(["destination", "httpx"], rounds)):
            for name in order:
                wall, used = block(name, f"r{index}")
                seconds[name].append(wall)
                cpu[name].append(used)
        elapsed = time.monotonic() - started
        counts = server.counts()
        stats = sprig.stats()
        sprig.shutdown(timeout=10)
        http.close()

    expected = events * (rounds + 1)
    if stats["delivered"] != expected or stats["requests"] != expected:
        raise RuntimeError(f"unexpected destination counters: {stats}")
    if counts.get("/v2/users") != events:  # the last block's requests (reset before each)
        raise RuntimeError(f"the fake server saw {counts}, expected {events} requests")

    rates = {name: [events / s for s in values] for name, values in seconds.items()}
    print(f"   {rounds} rounds in {elapsed:.1f}s; one request per event "
          f"(destination: {stats['requests']} requests for {stats['delivered']} events)")
    print("events/s, median over rounds (min, max):")
    print(f"  SprigDestination (send -> flush)   {_common.describe(rates['destination'])}")
    print(f"  plain httpx.Client loop            {_common.describe(rates['httpx'])}")
    print("CPU µs per event in this process (all its threads; the server is another process):")
    scale = 1e6 / events
    print(f"  SprigDestination                   {_common.describe(cpu['destination'], '', scale)}")
    print(f"  plain httpx.Client loop            {_common.describe(cpu['httpx'], '', scale)}")
    ratio = _common.median(
        [d / h for d, h in zip(rates["destination"], rates["httpx"])]
    )
    print(f"ratio destination ÷ httpx loop (median of per-round ratios): {ratio:.3f}")
    passed = _common.ratio_line("throughput", ratio, ">=", 0.8)
    _common.finish(passed, args.strict)


if __name__ == "__main__":
    main()
