"""Fault injection: 200 tracks over 50 users through a real Client, per fault class.

Each scenario (see ``scenarios.py``) runs against a loopback FakeSprig that misbehaves on
cue; the test checks the accounting (every message ends delivered, failed, dropped or
skipped, nothing pending, the invariant held in every sampled snapshot), what the server
stored (no loss when the outage fits the retry budget; duplicates only where a request the
client gave up on was processed anyway, and then exactly those), and what ``on_error`` was
told (exactly the messages that did not make it). ``figures.py`` prints the same runs as
the table in ``docs/reliability.md``.
"""

from __future__ import annotations

from typing import Callable, Dict

import pytest

from .scenarios import FAULT_SCENARIOS, N_MESSAGES, Outcome, run_fault

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]


def check_accounting(o: Outcome) -> None:
    """What holds in every scenario, whatever the fault."""
    assert o.drained, f"flush() did not drain: {o.stats}"
    assert o.stats["received"] == o.sent == N_MESSAGES
    assert o.accounted(), o.stats  # delivered + failed + dropped + skipped == received
    assert o.stats["pending"] == 0
    assert o.skipped == 0
    assert o.invariant_checks > 0 and not o.invariant_violations, o.invariant_violations
    # The server stored nothing nobody sent, and every delivered message at least once.
    assert not o.unexpected
    assert len(o.stored) == o.delivered
    # on_error heard about every message that did not make it, and only those.
    assert o.extra["on_error_messages"] == o.failed + o.dropped
    assert o.reported["failed"] | o.reported["dropped"] == o.missing
    assert not o.silent_loss
    # FakeSprig enforces Sprig's body rules: nothing was rejected as invalid.
    assert not [s for s in o.statuses if 400 <= s < 500 and s != 429], o.statuses
    # Segment's own delivery is untouched by whatever Sprig does.
    assert o.segment_received == N_MESSAGES


def check_zero_loss(o: Outcome) -> None:
    assert (o.delivered, o.failed, o.dropped) == (N_MESSAGES, 0, 0)
    assert not o.missing


def check_no_duplicates(o: Outcome) -> None:
    assert o.duplicates == 0, [k for k, n in o.stored.items() if n > 1][:5]
    assert all(n == 1 for n in o.stored.values())


def retried_answers(o: Outcome, *statuses: int) -> int:
    return sum(o.statuses[s] for s in statuses)


def healthy(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.stats["retries"] == 0
    assert set(o.statuses) == {202}
    # Coalescing: one request per user per batch window, never one per message.
    assert o.stats["requests"] < N_MESSAGES


def bursts_5xx(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert all(o.statuses[s] >= 1 for s in (500, 502, 503)), o.statuses
    # Each 5xx answer cost exactly one retry, and nothing else did.
    assert o.stats["retries"] == retried_answers(o, 500, 502, 503)
    assert o.stats["requests"] == sum(o.statuses.values())


def too_many_requests(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.statuses[429] >= 2
    assert o.stats["retries"] == o.statuses[429]


def no_answer(o: Outcome) -> None:
    """Reset or dropped connections: the server never processed those requests."""
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.statuses[0] >= 2  # recorded unanswered
    assert o.stats["retries"] == o.statuses[0]


def read_timeout(o: Outcome) -> None:
    check_zero_loss(o)
    # At-least-once: a request the client timed out on was processed later, and its retry
    # stored the same events again. Every duplicate is one of those, and each one counts.
    late = o.extra["late_events"]
    assert late > 0
    assert o.duplicates == late
    assert o.stats["retries"] >= 1


def slow_server(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.stats["retries"] == 0
    # The delay was real: no request answered in under 20 ms, at most 32 at once.
    assert o.seconds >= o.stats["requests"] * 0.02 / 32


def down_then_up(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.stats["retries"] >= 6


def hung_then_recovers(o: Outcome) -> None:
    check_zero_loss(o)
    check_no_duplicates(o)
    assert o.statuses[0] >= 1  # requests the server held and never answered
    assert o.stats["retries"] >= 2


def down_beyond_budget(o: Outcome) -> None:
    # The first request ran out of retries: its messages failed and were reported; the
    # server came back and every other message was delivered.
    assert o.failed > 0 and o.dropped == 0
    assert o.delivered == N_MESSAGES - o.failed
    assert o.reported["failed"] == o.missing and len(o.missing) == o.failed
    assert o.extra["error_kinds"] == {"SprigNetworkError": o.failed}
    check_no_duplicates(o)


def down_throughout(o: Outcome) -> None:
    assert (o.delivered, o.failed, o.dropped) == (0, N_MESSAGES, 0)
    assert o.reported["failed"] == o.expected
    assert o.extra["error_kinds"] == {"SprigNetworkError": N_MESSAGES}
    # Every request made exactly max_retries + 1 = 3 attempts, then gave up.
    assert o.stats["requests"] % 3 == 0
    assert o.stats["retries"] == o.stats["requests"] * 2 // 3
    assert not o.stored


def queue_full(o: Outcome) -> None:
    # Bounded memory: while the server hung, the queue held at most 50 messages; the rest
    # were dropped at once, counted and reported, and everything accepted was delivered.
    assert o.dropped > 0 and o.failed == 0
    assert o.stats["dropped_queue_full"] == o.dropped
    assert o.delivered == N_MESSAGES - o.dropped
    assert o.reported["dropped"] == o.missing and len(o.missing) == o.dropped
    assert o.extra["error_kinds"] == {"MessageDropped:queue_full": o.dropped}
    check_no_duplicates(o)


CHECKS: Dict[str, Callable[[Outcome], None]] = {
    "healthy": healthy,
    "5xx-bursts": bursts_5xx,
    "429-retry-after": too_many_requests,
    "429-no-retry-after": too_many_requests,
    "connection-reset": no_answer,
    "connection-dropped": no_answer,
    "read-timeout": read_timeout,
    "slow-server": slow_server,
    "down-then-up": down_then_up,
    "hung-then-recovers": hung_then_recovers,
    "down-beyond-budget": down_beyond_budget,
    "down-throughout": down_throughout,
    "queue-full": queue_full,
}


def test_every_scenario_has_checks() -> None:
    assert set(CHECKS) == set(FAULT_SCENARIOS)


@pytest.mark.parametrize("name", list(FAULT_SCENARIOS))
def test_fault(name: str) -> None:
    outcome = run_fault(name)
    check_accounting(outcome)
    if FAULT_SCENARIOS[name].fits_budget:
        check_zero_loss(outcome)
    CHECKS[name](outcome)
