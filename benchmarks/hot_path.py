"""Hot path: what a plugin costs the app's thread per ``Client.track()`` call.

Variants, all real ``segment.analytics.Client`` objects with ``send=True`` in this process:

- ``bare``: the pipeline is installed (``import analytics_sprig``) but the client has no
  plugins: the baseline of every ratio;
- ``noop``: one no-op destination plugin (issue 2, target <= 1.10);
- ``sprig``: a ``SprigDestination`` with ``spool=`` unset (issue 9, target <= 1.05);
- ``sprig_spool``: the same with ``spool=<a temporary file>``, when this version of
  ``SprigDestination`` takes that option (same target);
- ``uninstalled``: the same bare client after ``analytics_sprig.uninstall()``, i.e. the
  original SDK's code path (reinstalled and plugins re-added right after its block).

Segment's network is never measured: each client's consumer threads are stopped before
timing, so calls are validated, normalised and put on Segment's queue, which is emptied
between blocks, outside the timing. The Sprig destinations never send while calls are
timed: ``flush_interval`` is an hour (no body is due before a flush), the calls cycle over
``USERS`` users so no body fills up (< 100 events each), and ``max_queue_size`` is far
above a block; they are flushed between blocks, outside the timing, against a fake Sprig
in a child process.

Two phases, each with its own ``bare`` baseline:

- **app thread** (the targets): the engine's planner thread is kept asleep while a block
  is timed (the benchmark sets ``analytics_sprig.batching._worker.PLAN_INTERVAL`` to an
  hour, so the planner takes the calls off the hand-off only when the flush between blocks
  wakes it). What is timed is then exactly the work on the app's thread: the call, the
  destination's routing and its non-blocking hand-off, as the single-thread engine was
  measured before;
- **as shipped** (reported): the planner runs as in production, taking the calls off the
  hand-off every 50 ms and mapping and merging them into the users' bodies while the block
  runs. In a loop of nothing but ``track()`` calls its work competes with the app's thread
  for the GIL, so this ratio includes the planner's CPU per call (``hot_path_sprig_shipped``).

Each round times one block of ``--calls`` calls per variant (GC collected, then disabled),
rotating which variant goes first; the figure per variant is the median over rounds of
µs per call (wall clock), and each ratio is the median over rounds of that round's
variant ÷ bare. The app thread's own CPU time (``thread_time``) is printed as well, and
the ratio of the fastest blocks (less sensitive to other processes on a shared machine).

    python benchmarks/hot_path.py            # full run (~40 s)
    python benchmarks/hot_path.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import inspect
import logging
import operator
import os
import shutil
import tempfile
import time
from functools import partial
from typing import Any, Callable, Dict, List, Tuple

import _common
from segment.analytics import Client

import analytics_sprig
import analytics_sprig.batching._worker as engine
from analytics_sprig import SprigDestination, hookimpl

EVENT = "Order Completed"
PROPERTIES = {"total": 10, "currency": "USD"}
#: Distinct userIds, cycled: a block of 2,000 calls is 50 per user (a body holds 100
#: events, so none fills up and becomes due early) and a flush between blocks is
#: ``USERS`` requests.
USERS = 40


class NoopDestination:
    """A destination plugin that does nothing: the pipeline's own per-call cost."""

    @hookimpl
    def analytics_destination(self, message: Dict[str, Any], client: Any) -> None:
        """Receive the normalized message and ignore it."""


def make_client(server_url: str) -> Client:
    client = Client(_common.WRITE_KEY, host=server_url, send=True, upload_interval=0.05)
    _common.stop_segment_consumers(client)
    return client


def timed_both(function: Callable[[], Any]) -> Tuple[float, float]:
    """``(wall seconds, this thread's CPU seconds)`` of ``function()``, GC paused."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        cpu = time.thread_time()
        start = time.perf_counter()
        function()
        return time.perf_counter() - start, time.thread_time() - cpu
    finally:
        if was_enabled:
            gc.enable()


def takes_spool() -> bool:
    """Whether this version of ``SprigDestination`` has a ``spool`` option."""
    return "spool" in inspect.signature(SprigDestination).parameters


Series = Dict[str, List[float]]


def measure(server_url: str, *, calls: int, rounds: int, with_spool: bool, spool_dir: str,
            planner_asleep: bool) -> Tuple[Series, Series, Dict[str, Dict[str, int]], float]:
    """One phase: ``(wall, app thread CPU, destination stats, elapsed)``, per call."""
    user_ids = [f"user-{i % USERS}" for i in range(calls)]
    bare = make_client(server_url)
    noop_client = make_client(server_url)
    noop = NoopDestination()
    noop_client.add_plugin(noop)
    # name -> (client, destination); every destination is flushed between blocks.
    sprigs: Dict[str, Tuple[Client, SprigDestination]] = {}
    options: Dict[str, Dict[str, Any]] = {"sprig": {}}
    if with_spool:
        tag = "asleep" if planner_asleep else "shipped"
        options["sprig_spool"] = {"spool": os.path.join(spool_dir, f"spool-{tag}.db")}
    for name, extra in options.items():
        destination = SprigDestination(
            api_key=_common.API_KEY,
            endpoint=server_url,
            flush_interval=3600.0,  # no body is due before a flush
            max_queue_size=1000 * calls,  # far from the bound and from its half
            **extra,
        )
        client = make_client(server_url)
        client.add_plugin(destination)
        sprigs[name] = (client, destination)

    def block(client: Client) -> Callable[[], None]:
        track = client.track

        def run() -> None:
            for user_id in user_ids:
                track(user_id, EVENT, PROPERTIES)

        return run

    def uninstalled() -> Tuple[float, float]:
        analytics_sprig.uninstall()
        try:
            return timed_both(block(bare))
        finally:
            analytics_sprig.install()  # clients forgot their plugins: add them back
            noop_client.add_plugin(noop)
            for client, destination in sprigs.values():
                client.add_plugin(destination)

    variants: Dict[str, Callable[[], Tuple[float, float]]] = {
        "bare": lambda: timed_both(block(bare)),
    }
    if not planner_asleep:
        variants["noop"] = lambda: timed_both(block(noop_client))
        variants["uninstalled"] = uninstalled
    def timed_client(client: Client) -> Callable[[], Tuple[float, float]]:
        return lambda: timed_both(block(client))

    for name, (client, _) in sprigs.items():
        variants[name] = timed_client(client)
    clients = [bare, noop_client] + [client for client, _ in sprigs.values()]

    primes = 0

    def settle() -> None:
        # Outside the timing: the Sprig destinations plan and send what was queued,
        # Segment's queues are emptied (their consumers are stopped).
        nonlocal primes
        for _, destination in sprigs.values():
            if not destination.flush(timeout=60):
                raise RuntimeError("a Sprig destination did not drain")
        if planner_asleep:
            # An idle planner wakes at the next call and takes what arrived meanwhile
            # before it sleeps for PLAN_INTERVAL: make that call here, untimed.
            for client, destination in sprigs.values():
                client.track(user_ids[0], EVENT, PROPERTIES)
                inbox: Any = getattr(destination._worker, "_inbox", None)
                if inbox is None or not _common.wait_until(partial(operator.not_, inbox), 10):
                    raise RuntimeError("the planner did not take the priming call")
                time.sleep(0.005)  # let it finish planning that call and fall asleep
            primes += 1
        for client in clients:
            _common.clear_segment_queue(client)

    shipped_interval = engine.PLAN_INTERVAL
    if planner_asleep:
        engine.PLAN_INTERVAL = 3600.0  # read by each planner when it starts to wait
    try:
        for run in variants.values():  # warm-up: caches, the threads, connections
            run()
        settle()
        wall: Series = {name: [] for name in variants}
        cpu: Series = {name: [] for name in variants}
        started = time.monotonic()
        for order in _common.rotations(list(variants), rounds):
            for name in order:
                seconds, used = variants[name]()
                wall[name].append(seconds / calls)
                cpu[name].append(used / calls)
                settle()
        elapsed = time.monotonic() - started
        for _, destination in sprigs.values():
            destination.flush(timeout=60)  # the last priming call
        stats = {name: destination.stats() for name, (_, destination) in sprigs.items()}
        for _, destination in sprigs.values():
            destination.shutdown(timeout=10)
    finally:
        engine.PLAN_INTERVAL = shipped_interval
    for client in clients:
        _common.clear_segment_queue(client)
    expected = calls * (rounds + 1) + primes
    for name, counters in stats.items():
        if counters["received"] != expected or counters["delivered"] != expected:
            raise RuntimeError(f"{name} lost messages: {counters}")
    return wall, cpu, stats, elapsed


LABELS = {
    "uninstalled": "original SDK (uninstall())",
    "bare": "pipeline installed, no plugin",
    "noop": "one no-op destination plugin",
    "sprig": "SprigDestination, spool unset",
    "sprig_spool": "SprigDestination, spool= set",
}


def ratio(series: Series, name: str, base: str = "bare") -> float:
    """Median of the per-round ratios ``name`` / ``base``."""
    return _common.median([v / b for v, b in zip(series[name], series[base])])


def show(title: str, wall: Series, cpu: Series, stats: Dict[str, Dict[str, int]],
         elapsed: float) -> None:
    """Print one phase's figures."""
    rounds = len(wall["bare"])
    counters = stats["sprig"]
    print(f"-- {title}: {rounds} rounds in {elapsed:.1f}s; Sprig delivered "
          f"{counters['delivered']} messages in {counters['requests']} requests between "
          "blocks (untimed)")
    names = [name for name in LABELS if name in wall]
    print("   µs per track() call, median over rounds (min, max), wall | app thread CPU:")
    for name in names:
        print(f"  {LABELS[name]:<32} {_common.describe(wall[name], ' µs', 1e6)} | "
              f"{_common.median(cpu[name]) * 1e6:.3f} µs")
    print("   ratios (median of per-round ratios)     wall    app thread CPU")
    rows = [("installed, no plugin ÷ uninstalled", "bare", "uninstalled"),
            ("one no-op destination ÷ bare", "noop", "bare"),
            ("SprigDestination ÷ bare", "sprig", "bare"),
            ("SprigDestination(spool=) ÷ bare", "sprig_spool", "bare")]
    for label, name, base in rows:
        if name in wall and base in wall:
            print(f"  {label:<38} {ratio(wall, name, base):.3f}   {ratio(cpu, name, base):.3f}"
                  f"   (fastest block ÷ fastest block: {min(wall[name]) / min(wall[base]):.3f})")


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
    with_spool = takes_spool()
    can_defer = isinstance(getattr(engine, "PLAN_INTERVAL", None), float)
    if not can_defer:
        raise RuntimeError("analytics_sprig.batching._worker.PLAN_INTERVAL is gone: "
                           "update the benchmark's way of keeping the planner asleep")

    _common.header("hot path: Client.track() per call", calls_per_block=calls, rounds=rounds,
                   users=USERS, spool_variant=with_spool)
    spool_dir = tempfile.mkdtemp(prefix="bench-hot-path-")
    try:
        with _common.ServerProcess() as server:
            asleep = measure(server.url, calls=calls, rounds=rounds, with_spool=with_spool,
                             spool_dir=spool_dir, planner_asleep=True)
            shipped = measure(server.url, calls=calls, rounds=rounds, with_spool=with_spool,
                              spool_dir=spool_dir, planner_asleep=False)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    show("app thread (planner asleep while timed)", *asleep)
    show("as shipped (planner running)", *shipped)
    if not with_spool:
        print("   (this SprigDestination has no spool= option: no spool variant)")
    asleep_wall, shipped_wall = asleep[0], shipped[0]
    noop_ok = _common.ratio_line("hot_path_noop_plugin", ratio(shipped_wall, "noop"), "<=", 1.10)
    _common.ratio_line("hot_path_sprig_shipped", ratio(shipped_wall, "sprig"), "<=", 1.05)
    sprig_ok = _common.ratio_line("hot_path_sprig", ratio(asleep_wall, "sprig"), "<=", 1.05)
    if with_spool:
        sprig_ok = _common.ratio_line("hot_path_sprig_spool", ratio(asleep_wall, "sprig_spool"),
                                      "<=", 1.05) and sprig_ok
    _common.finish(noop_ok and sprig_ok, args.strict)


if __name__ == "__main__":
    main()
