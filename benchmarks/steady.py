"""Steady load: 1,000 users x 1 call/s for 20 s to a Sprig 50 ms away; drops, drain and delays.

A paced producer (``--producers`` threads, default 2) makes ``--users`` users (1,000) call
``track()`` once a second each for ``--seconds`` (20), spread evenly over each second,
through a real ``segment.analytics.Client``. The fake server (a child process) answers every
request 50 ms (``--latency``) after reading it. Two variants, run one after the other
(rotated over ``--rounds``):

- ``sprig``: the client has a ``SprigDestination`` (default options) and its Segment
  consumer stopped; a call is delivered when the destination's ``on_delivered`` reports its
  messageId (the answer to the request carrying it has arrived);
- ``segment``: a plain client (no plugins), analytics-python's consumer as shipped; a call
  is delivered when the ``/v1/batch`` POST carrying it returned (the consumer's
  ``request`` is wrapped to stamp the batch's messageIds). The baseline for the delays.

Neither variant is flushed: after the load, the benchmark waits for the last delivery
(what a running service sees). Printed per variant: dropped calls, how long after the last
call everything was delivered, the delay from each call to its delivery (p50, p90, p99,
max), requests and calls per request, CPU of this process (all its threads) per request,
threads, how late the producer's calls started against their schedule (the app's thread
starved of the GIL shows here), and for Sprig a timeline (every 2 s: calls, deliveries,
pending, in flight, threads). GC is collected and disabled during each run.

Targets (issue 9): 0 dropped; everything delivered within 2 s of the load ending; p50/p99
delay reported (against Segment's, measured in the same run).

    python benchmarks/steady.py            # 1,000 users x 20 s, 2 rounds (~2 min)
    python benchmarks/steady.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any, Callable, Dict, List

import _common
from segment.analytics import Client

from analytics_sprig import SprigDestination

EVENT = "Heartbeat"
#: Seconds between samples of the destination's counters (the timeline).
SAMPLE_EVERY = 0.5


class Sampler:
    """A thread sampling ``probe()`` every :data:`SAMPLE_EVERY` seconds until stopped."""

    def __init__(self, probe: Callable[[], Dict[str, Any]]) -> None:
        self.samples: List[Dict[str, Any]] = []
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            sample = self._probe()
            sample["t"] = time.monotonic()
            sample["threads"] = threading.active_count()
            self.samples.append(sample)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_variant(name: str, server: _common.ServerProcess, load: _common.PacedLoad
                ) -> Dict[str, Any]:
    """One run of ``name`` (``sprig`` or ``segment``) under ``load``."""
    clock = _common.DeliveryClock()
    total = load.total
    before = threading.active_count()
    client = Client(_common.WRITE_KEY, host=server.url, send=True, max_queue_size=total + 1)
    sprig = None
    if name == "sprig":
        _common.stop_segment_consumers(client)  # its queue only fills; nothing sends it
        sprig = SprigDestination(api_key=_common.API_KEY, endpoint=server.url,
                                 on_delivered=clock.on_delivered)
        client.add_plugin(sprig)

        def probe() -> Dict[str, Any]:
            assert sprig is not None
            stats = sprig.stats()
            return {key: stats[key] for key in ("delivered", "pending", "in_flight",
                                                "requests", "dropped", "concurrency")}

        def done() -> bool:
            assert sprig is not None
            return sprig.stats()["pending"] == 0
    else:
        clock.watch_segment(client)

        def probe() -> Dict[str, Any]:
            return {"delivered": len(clock.delivered)}

        def done() -> bool:
            return len(clock.delivered) >= total

    track = client.track

    def call(user_id: str, k: int) -> str:
        _, message = track(user_id, EVENT, {"n": k})
        message_id: str = message["messageId"]
        return message_id

    server.reset()
    with _common.gc_paused(), Sampler(probe) as sampler:
        cpu = time.process_time()
        load.run(call)
        drained = _common.wait_until(done, 300, step=0.01)
        cpu = time.process_time() - cpu
    counts = server.counts()
    result: Dict[str, Any] = {
        "name": name,
        "drained": drained,
        "delays": clock.delays(load.called),
        "lags": list(load.lags),
        "cpu": cpu,
        "samples": sampler.samples,
        "started": load.started,
        "ended": load.ended,
        "threads": max([s["threads"] for s in sampler.samples] or [0]) - before,
    }
    last = max(clock.delivered.values()) if clock.delivered else load.ended
    result["drain"] = last - load.ended
    if sprig is not None:
        stats = sprig.stats()
        client.remove_plugin(sprig)
        sprig.shutdown(timeout=10)
        _common.clear_segment_queue(client)
        result.update(received=stats["received"], delivered=stats["delivered"],
                      dropped=stats["dropped"], failed=stats["failed"],
                      requests=counts.get("/v2/users", 0), retries=stats["retries"],
                      concurrency_min=min([s["concurrency"] for s in sampler.samples]
                                          or [stats["concurrency"]]))
    else:
        client.shutdown()
        result.update(received=total, delivered=len(clock.delivered),
                      dropped=total - len(clock.delivered), failed=0,
                      requests=counts.get("/v1/batch", 0), retries=0)
    client.join()
    return result


def summary(result: Dict[str, Any], total: int) -> str:
    """Two lines of figures for one run."""
    delays = result["delays"]
    p = _common.percentile
    requests = max(1, result["requests"])
    lags = result["lags"]
    return (
        f"delivered {result['delivered']}/{total}, dropped {result['dropped']}, failed "
        f"{result['failed']}; drained {result['drain']:.2f} s after the last call"
        f"{'' if result['drained'] else ' (NOT drained: gave up)'}\n"
        f"      delay call -> delivered: p50 {p(delays, 50) * 1e3:.0f} ms, p90 "
        f"{p(delays, 90) * 1e3:.0f} ms, p99 {p(delays, 99) * 1e3:.0f} ms, max "
        f"{max(delays or [0]) * 1e3:.0f} ms\n"
        f"      {result['requests']} requests ({total / requests:.2f} calls each), "
        f"{result['retries']} retries; CPU {result['cpu']:.2f} s "
        f"({result['cpu'] / requests * 1e3:.2f} ms per request); +{result['threads']} "
        f"threads; producer lag p99 {p(lags, 99) * 1e3:.1f} ms, max "
        f"{max(lags or [0]) * 1e3:.1f} ms"
    )


def timeline(result: Dict[str, Any], load: _common.PacedLoad, every: float = 2.0) -> None:
    """Print the Sprig run's counters every ``every`` seconds."""
    print(f"   {'t (s)':>6} {'delivered':>9} {'pending':>8} {'in_flight':>9} "
          f"{'requests':>8} {'threads':>7}")
    start = result["started"]
    next_at = every
    previous = 0
    for sample in result["samples"]:
        t = sample["t"] - start
        if t + 1e-9 < next_at:
            continue
        next_at += every
        print(f"   {t:>6.1f} {sample['delivered'] - previous:>+9} {sample['pending']:>8} "
              f"{sample['in_flight']:>9} {sample['requests']:>8} {sample['threads']:>7}")
        previous = sample["delivered"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--users", type=int, default=None, help="users (1,000)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the load (20)")
    parser.add_argument("--rate", type=float, default=1.0, help="calls per user per second")
    parser.add_argument("--producers", type=int, default=2, help="producer threads (2)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds the fake server waits before each answer (0.05)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (runs per variant)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    users = _common.optional_int(args.users, 100 if args.quick else 1000)
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 20.0)
    rounds = _common.optional_int(args.rounds, 1 if args.quick else 2)
    logging.basicConfig(level=logging.WARNING)
    _common.header("steady: paced load to a Sprig far away", users=users,
                   calls_per_user_per_s=args.rate, seconds=seconds, producers=args.producers,
                   latency=f"{args.latency * 1000:g} ms", rounds=rounds)

    results: Dict[str, List[Dict[str, Any]]] = {"sprig": [], "segment": []}
    total = 0
    with _common.ServerProcess(latency=args.latency) as server:
        for order in _common.rotations(list(results), rounds):
            for name in order:
                load = _common.PacedLoad(users, args.rate, seconds, args.producers)
                total = load.total
                result = run_variant(name, server, load)
                results[name].append(result)
                print(f"-- {name}: {summary(result, total)}")
                if name == "sprig":
                    timeline(result, load)

    def med(name: str, key: str) -> float:
        return _common.median([r[key] for r in results[name]])

    def pct(name: str, q: float) -> float:
        return _common.median([_common.percentile(r["delays"], q) for r in results[name]])

    print(f"medians over {rounds} round(s)          Sprig      Segment")
    print(f"  dropped                      {med('sprig', 'dropped'):>9.0f}  "
          f"{med('segment', 'dropped'):>9.0f}")
    print(f"  drained after the load (s)   {med('sprig', 'drain'):>9.2f}  "
          f"{med('segment', 'drain'):>9.2f}")
    for q in (50, 99):
        print(f"  delay p{q} (ms)               {pct('sprig', q) * 1e3:>9.0f}  "
              f"{pct('segment', q) * 1e3:>9.0f}")
    print(f"  requests                     {med('sprig', 'requests'):>9.0f}  "
          f"{med('segment', 'requests'):>9.0f}")
    print(f"  ratio delay p50 Sprig ÷ Segment: {pct('sprig', 50) / pct('segment', 50):.3f}; "
          f"p99: {pct('sprig', 99) / pct('segment', 99):.3f}")
    dropped = max(r["dropped"] + r["failed"] for r in results["sprig"])
    drain = max(r["drain"] if r["drained"] else float("inf") for r in results["sprig"])
    dropped_ok = _common.ratio_line("steady_dropped", float(dropped), "<=", 0)
    drain_ok = _common.ratio_line("steady_drain_seconds", drain, "<=", 2.0)
    _common.finish(dropped_ok and drain_ok, args.strict)


if __name__ == "__main__":
    main()
