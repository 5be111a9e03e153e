"""Concurrency and process life cycle: threads, fork(), shutdown under load, exit."""

from __future__ import annotations

import os
import re

import pytest

from .scenarios import (
    N_MESSAGES,
    Outcome,
    run_exit,
    run_fork,
    run_shutdown_under_load,
    run_threads,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]


def exactly_once(o: Outcome) -> None:
    """The server stored every sent message once, and nothing else."""
    assert not o.missing, sorted(o.missing)[:5]
    assert not o.unexpected
    assert o.duplicates == 0


def test_many_threads_each_call_counted_and_stored_once() -> None:
    o = run_threads(threads=16, calls=200)
    assert o.drained
    assert o.sent == 3200
    assert o.stats["received"] == o.stats["delivered"] == 3200
    assert o.accounted() and o.stats["pending"] == 0
    assert o.invariant_checks > 0 and not o.invariant_violations
    exactly_once(o)
    assert o.segment_received == 3200  # Segment's own queue got every call too
    assert o.stats["retries"] == 0 and not o.reported["failed"] and not o.reported["dropped"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_fork_children_and_parent_deliver_their_own_messages_exactly_once() -> None:
    o = run_fork(children=3, parent_calls=300)
    assert o.extra["pending_at_fork"] > 0  # the fork happened with the parent's work queued
    for child in o.extra["children"]:
        assert child["exit"] == 0, o.extra["children"]
        assert child["drained"] is True
        stats = child["stats"]
        # The child starts empty: the parent's pending messages are not re-sent by it.
        assert stats["received"] == stats["delivered"] == 100, stats
        assert stats["failed"] == stats["dropped"] == stats["pending"] == 0
        assert child["segment_received"] == 100
    assert o.drained
    parent = o.extra["parent_stats"]
    assert parent["received"] == parent["delivered"] == 300
    assert parent["failed"] == parent["dropped"] == parent["pending"] == 0
    assert o.stats["received"] == o.stats["delivered"] == 600  # the family's sum
    assert o.accounted()
    exactly_once(o)  # 300 from the parent + 3 x 100 from the children, each once
    assert len(o.stored) == 600
    assert o.segment_received == 300  # the parent's Segment traffic was not disturbed


def test_shutdown_under_load_returns_within_its_bound_and_accounts_for_everything() -> None:
    o = run_shutdown_under_load(timeout=1.0)
    # Bounded shutdown: the deadline, plus a little for closing the connection.
    assert o.extra["shutdown_seconds"] < 1.0 + 0.5, o.extra
    assert o.stats["received"] == o.sent
    assert o.accounted() and o.stats["pending"] == 0, o.stats
    assert o.invariant_checks > 0 and not o.invariant_violations, o.invariant_violations
    assert o.stats["dropped_shutdown"] > 0  # pending at the deadline + calls after it
    assert o.delivered > 0
    # Each dropped or failed message was reported to on_error, exactly once.
    assert o.extra["on_error_messages"] == o.failed + o.dropped
    assert len(o.reported["dropped"]) + len(o.reported["failed"]) == o.failed + o.dropped
    assert not o.silent_loss
    assert not o.unexpected and o.duplicates == 0
    # Delivered ones are stored; a request in flight at the deadline may have landed too
    # (counted as dropped: the worker could not know).
    assert o.delivered <= len(o.stored) <= o.delivered + o.stats["dropped_shutdown"]


def test_exit_with_server_hung_finishes_within_bound_and_logs_what_it_dropped() -> None:
    o = run_exit(blackholed=True)
    assert o.extra["returncode"] == 0, o.extra["stderr"]
    assert o.seconds < 5.0, o.seconds  # whole process, interpreter start included
    assert o.extra["exit_seconds"] < 1.0 + 0.5  # the final flush: shutdown_timeout=1
    assert o.stats["received"] == N_MESSAGES and o.stats["pending"] == 0
    assert o.stats["dropped"] == o.stats["dropped_shutdown"] == N_MESSAGES
    assert o.accounted()
    found = re.findall(r"dropped (\d+) message\(s\)", o.extra["stderr"])
    assert found == [str(N_MESSAGES)], o.extra["stderr"]
    assert o.reported["dropped"] == o.expected  # on_error heard about every one
    assert not o.stored


def test_exit_with_server_up_delivers_everything_in_the_final_flush() -> None:
    o = run_exit(blackholed=False)
    assert o.extra["returncode"] == 0, o.extra["stderr"]
    assert o.seconds < 5.0
    assert o.stats["delivered"] == o.stats["received"] == N_MESSAGES
    assert o.accounted() and o.stats["pending"] == 0
    exactly_once(o)
    assert "WARNING" not in o.extra["stderr"] and "ERROR" not in o.extra["stderr"]
