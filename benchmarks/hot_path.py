"""Hot path: what a plugin costs the app's thread per ``Client.track()`` call.

Variants, all real ``segment.analytics.Client`` objects with ``send=True`` in this process:

- ``bare``: the pipeline is installed (``import analytics_sprig``) but the client has no
  plugins: the baseline of both ratios;
- ``noop``: one no-op destination plugin (issue 2, target <= 1.10);
- ``sprig``: a ``SprigDestination`` (issue 4, target <= 1.10);
- ``uninstalled``: the same bare client after ``analytics_sprig.uninstall()``, i.e. the
  original SDK's code path (reinstalled and plugins re-added right after its block).

Segment's network is never measured: each client's consumer threads are stopped before
timing, so calls are validated, normalised and put on Segment's queue, which is emptied
between blocks, outside the timing. The Sprig destination's worker never sends while
calls are timed: ``flush_interval`` is an hour and ``max_batch_size`` / ``max_queue_size``
are far above a block, so it only wakes on the ``flush()`` made between blocks, outside
the timing, against a fake Sprig in a child process.

Each round times one block of ``--calls`` calls per variant (GC collected, then disabled),
rotating which variant goes first; the figure per variant is the median over rounds of
µs per call, and each ratio is the median over rounds of that round's variant ÷ bare.

    python benchmarks/hot_path.py            # full run (~15 s)
    python benchmarks/hot_path.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable, Dict, List

import _common
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import SprigDestination, hookimpl

EVENT = "Order Completed"
PROPERTIES = {"total": 10, "currency": "USD"}
USERS = 10  # distinct userIds, cycled: a flush between blocks is then a few requests


class NoopDestination:
    """A destination plugin that does nothing: the pipeline's own per-call cost."""

    @hookimpl
    def analytics_destination(self, message: Dict[str, Any], client: Any) -> None:
        """Receive the normalized message and ignore it."""


def make_client(server_url: str) -> Client:
    client = Client(_common.WRITE_KEY, host=server_url, send=True, upload_interval=0.05)
    _common.stop_segment_consumers(client)
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--calls", type=int, default=None, help="calls per block")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (blocks per variant)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    calls = _common.optional_int(args.calls, 200 if args.quick else 2000)
    rounds = _common.optional_int(args.rounds, 3 if args.quick else 41)
    # Nothing here should log; a queue-full warning would mean the setup is wrong.
    logging.basicConfig(level=logging.WARNING)

    _common.header("hot path: Client.track() per call", calls_per_block=calls, rounds=rounds)
    user_ids = [f"user-{i % USERS}" for i in range(calls)]

    with _common.ServerProcess() as server:
        bare = make_client(server.url)
        noop_client = make_client(server.url)
        sprig_client = make_client(server.url)
        noop = NoopDestination()
        sprig = SprigDestination(
            api_key=_common.API_KEY,
            endpoint=server.url,
            flush_interval=3600.0,  # never wakes by itself while a block is timed
            max_batch_size=100 * calls,  # the early-wake mark is min(this, queue/2)
            max_queue_size=1000 * calls,
        )
        noop_client.add_plugin(noop)
        sprig_client.add_plugin(sprig)

        def block(client: Client) -> Callable[[], None]:
            track = client.track

            def run() -> None:
                for user_id in user_ids:
                    track(user_id, EVENT, PROPERTIES)

            return run

        def uninstalled() -> None:
            block(bare)()

        def time_uninstalled() -> float:
            analytics_sprig.uninstall()
            try:
                return _common.timed(uninstalled)
            finally:
                analytics_sprig.install()  # clients forgot their plugins: add them back
                noop_client.add_plugin(noop)
                sprig_client.add_plugin(sprig)

        variants: Dict[str, Callable[[], float]] = {
            "bare": lambda: _common.timed(block(bare)),
            "noop": lambda: _common.timed(block(noop_client)),
            "sprig": lambda: _common.timed(block(sprig_client)),
            "uninstalled": time_uninstalled,
        }
        clients = (bare, noop_client, sprig_client)

        def settle() -> None:
            # Outside the timing: Sprig's worker sends what was queued, Segment's queues
            # are emptied (their consumers are stopped).
            if not sprig.flush(timeout=60):
                raise RuntimeError("the Sprig destination did not drain")
            for client in clients:
                _common.clear_segment_queue(client)

        for run in variants.values():  # warm-up: caches, the worker thread, connections
            run()
        settle()

        per_call: Dict[str, List[float]] = {name: [] for name in variants}
        started = time.monotonic()
        for order in _common.rotations(list(variants), rounds):
            for name in order:
                per_call[name].append(variants[name]() / calls)
                settle()
        elapsed = time.monotonic() - started

        stats = sprig.stats()
        sprig.shutdown(timeout=10)
        for client in clients:
            _common.clear_segment_queue(client)

    expected = calls * (rounds + 1)
    if stats["received"] != expected or stats["delivered"] != expected:
        raise RuntimeError(f"Sprig destination lost messages: {stats}")

    print(f"   {rounds} rounds in {elapsed:.1f}s; Sprig delivered {stats['delivered']} "
          f"messages in {stats['requests']} requests between blocks (untimed)")
    print("µs per track() call, median over rounds (min, max):")
    labels = {
        "uninstalled": "original SDK (uninstall())",
        "bare": "pipeline installed, no plugin",
        "noop": "one no-op destination plugin",
        "sprig": "SprigDestination attached",
    }
    for name in ("uninstalled", "bare", "noop", "sprig"):
        print(f"  {labels[name]:<32} {_common.describe(per_call[name], ' µs', 1e6)}")

    def ratio(name: str, base: str = "bare") -> float:
        return _common.median([v / b for v, b in zip(per_call[name], per_call[base])])

    installed_overhead = ratio("bare", "uninstalled")
    noop_ratio = ratio("noop")
    sprig_ratio = ratio("sprig")
    print("ratios (median of per-round ratios):")
    print(f"  installed, no plugin ÷ uninstalled      {installed_overhead:.3f}")
    print(f"  one no-op destination ÷ bare            {noop_ratio:.3f}   (issue 2: <= 1.10)")
    print(f"  SprigDestination ÷ bare                 {sprig_ratio:.3f}   (issue 4: <= 1.10)")
    noop_ok = _common.ratio_line("hot_path_noop_plugin", noop_ratio, "<=", 1.10)
    sprig_ok = _common.ratio_line("hot_path_sprig", sprig_ratio, "<=", 1.10)
    _common.finish(noop_ok and sprig_ok, args.strict)


if __name__ == "__main__":
    main()
