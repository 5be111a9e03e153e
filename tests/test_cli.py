"""The ``analytics-sprig`` command line, driven end to end against the local fake Sprig.

Commands run in-process through ``main([...])`` (output captured with capsys), with the
real analytics-python client, the real destination and real HTTP on 127.0.0.1; a few run
as subprocesses (``python -m analytics_sprig``) to cover the entry point and signals.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

import httpx
import pytest

from analytics_sprig import MessageDropped, SprigAPIError, cli
from analytics_sprig.cli import _progress, _replay
from analytics_sprig.cli._common import json_kind, plural
from analytics_sprig.cli._demo import DEMO_API_KEY, computed_requests
from analytics_sprig.sprig._routing import skip_reason
from analytics_sprig.testing import FakeSprig

KEY = "cli-test-key"
PURGE = "/v2/purge/visitors"
USERS = "/v2/users"
UUID = re.compile(r"request id ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")

# 2024-05-01T12:00:00Z in epoch milliseconds.
T0 = 1714564800000


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # No real key may leak in from the machine running the tests, and the layout is fixed.
    monkeypatch.delenv("SPRIG_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture
def sprig() -> Iterator[FakeSprig]:
    with FakeSprig(api_key=KEY) as server:
        yield server


def sprig_bodies(sprig: FakeSprig, path: str = USERS) -> List[Any]:
    return [r.json for r in sprig.requests if r.path == path]


def by_user(bodies: List[Any]) -> List[Any]:
    """Bodies grouped by user, each user's in sending order.

    Several requests are in flight at once: different users' requests may arrive in any
    order, one user's never do.
    """
    return sorted(bodies, key=lambda body: str(body.get("userId")))


# -- demo -----------------------------------------------------------------------------------

OPTED_OUT_EVENTS = ("Payment Details Updated", "Password Changed", "Impersonation Started")


def test_demo_prints_both_sides_and_opted_out_calls_only_on_segments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    segment_part, sprig_part = out.split("== What Sprig received (POST /v2/users): 2 requests ==")
    assert "== What Segment received (POST /v1/batch): 17 messages ==" in segment_part
    # Each Integrations name used to opt out is visible on Segment's side...
    for name in ('{"Sprig":false}', '{"Sprig Cloud":false}', '{"UserLeap":false}',
                 '{"All":false}'):
        assert re.search(rf"integrations {re.escape(name)}\s+not sent: opted out of Sprig",
                         segment_part)
    for event in OPTED_OUT_EVENTS:
        assert f'"{event}"' in segment_part
    # ... and the calls are absent from Sprig's.
    body_part = sprig_part.split("SprigDestination.stats():")[0]
    for event in OPTED_OUT_EVENTS:
        assert event not in body_part
    assert "support_notes" not in body_part  # the identify opted out via "UserLeap"
    assert "acme-inc" not in body_part and "anon-5f1c9e" not in body_part
    # What did reach Sprig, mapped.
    for text in ('"plan.tier":"pro"', '"power_users":true', '"churn_risk":false',
                 'emailAddress: "ada@example.com"', '"Viewed Pricing Page"', '"Loaded a Page"',
                 '"Survey Eligible"', 'userId: "user-108"', "-> 202 Accepted"):
        assert text in body_part
    assert "'skipped_integrations': 4" in sprig_part
    assert "'delivered': 11" in sprig_part
    assert "reached Segment but not Sprig" in sprig_part
    assert DEMO_API_KEY not in out + err


def test_demo_side_by_side_on_a_wide_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "180")
    assert cli.main(["demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [line for line in lines if "What Segment received" in line]
    assert len(titles) == 1
    assert "| What Sprig received (POST /v2/users): 2 requests" in titles[0]
    # Rows pair a Segment message (left) with a line of a Sprig body (right).
    row = next(line for line in lines if '"Signed In"  -> Sprig' in line)
    assert " | " in row
    assert all(len(line) <= 180 for line in lines)


def test_demo_json_shows_sprig_got_exactly_the_routed_mapped_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sprig_target"] == "local"
    segment, requests, stats = result["segment"], result["sprig"], result["stats"]
    assert len(segment) == 17
    # Every opt-out name appears on a call that reached Segment.
    opted_out = [m for m in segment if skip_reason(m) == "integrations"]
    used = {name for m in opted_out for name, on in m["integrations"].items() if on is False}
    assert used == {"Sprig", "Sprig Cloud", "UserLeap", "All"}
    # What Sprig received is exactly the mapping of the routed Segment messages.
    assert [r["body"] for r in requests] == [r.body for r in computed_requests(segment)]
    assert {(r["method"], r["path"], r["status"]) for r in requests} == {("POST", USERS, 202)}
    sent_events = {e["event"] for r in requests for e in r["body"].get("events", [])}
    assert not sent_events & {m.get("event") for m in opted_out}
    assert stats["received"] == len(segment)
    assert stats["received"] == sum(stats[k] for k in
                                    ("skipped", "delivered", "failed", "dropped", "pending"))
    assert (stats["skipped_integrations"], stats["skipped_type"],
            stats["skipped_anonymous"]) == (4, 1, 1)


class _Terminal(io.StringIO):
    """Standard input that claims to be a terminal, with a typed answer."""

    def isatty(self) -> bool:
        return True


def test_demo_with_a_key_but_no_terminal_only_hints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPRIG_API_KEY", "sk-live-do-not-print")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert cli.main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "SPRIG_API_KEY is set" in err and "interactive terminal" in err
    assert "What Sprig received (POST /v2/users): 2 requests" in out  # the local fake
    assert "sk-live-do-not-print" not in out + err


def test_demo_asks_on_a_terminal_and_sends_to_the_chosen_sprig(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "real" Sprig here is a second local fake that only accepts the user's key.
    with FakeSprig(api_key="users-own-key") as real:
        monkeypatch.setenv("SPRIG_API_KEY", "users-own-key")
        monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
        assert cli.main(["demo", "--endpoint", real.url]) == 0
        out, err = capsys.readouterr()
        assert "[y/N]" in err
        assert "What was sent to Sprig (POST /v2/users): 2 requests" in out
        assert set(real.users) == {"user-42", "user-108"}
        assert real.users["user-42"]["attributes"]["plan.tier"] == "pro"
        assert "purge --user-id user-42 --user-id user-108" in out
        assert "users-own-key" not in out + err


def test_demo_on_a_terminal_answering_no_stays_local(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSprig() as real:
        monkeypatch.setenv("SPRIG_API_KEY", "users-own-key")
        monkeypatch.setattr(sys, "stdin", _Terminal("\n"))
        assert cli.main(["demo", "--endpoint", real.url]) == 0
        out, _ = capsys.readouterr()
        assert "What Sprig received" in out
        assert real.requests == []


def test_demo_as_a_subprocess() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    env["COLUMNS"] = "100"
    done = subprocess.run([sys.executable, "-m", "analytics_sprig", "demo"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "== What Segment received (POST /v1/batch): 17 messages ==" in done.stdout
    assert "== What Sprig received (POST /v2/users): 2 requests ==" in done.stdout
    assert "Traceback" not in done.stderr


# -- replay ---------------------------------------------------------------------------------

GOOD_AND_BAD = [
    {"type": "identify", "userId": "u-1", "messageId": "m1",
     "traits": {"email": "a@example.com", "plan": {"tier": "pro"}, "vip": True},
     "timestamp": "2024-05-01T12:00:00.000Z", "integrations": {}},
    {"type": "track", "userId": "u-1", "event": "Order Completed", "properties": {"total": 10},
     "timestamp": "2024-05-01T12:00:01.000Z", "messageId": "m2"},
    "{not json",
    "[1, 2]",
    "",
    {"userId": "u-2", "event": "No Type"},
    # Exports may only carry originalTimestamp: it becomes the event time.
    {"type": "page", "userId": "u-2", "name": "Pricing", "messageId": "m3",
     "originalTimestamp": "2024-05-01T12:00:02Z"},
    {"type": "track", "userId": "u-1", "event": "Secret", "integrations": {"Sprig": False},
     "timestamp": "2024-05-01T12:00:03Z"},
    {"type": "group", "userId": "u-1", "groupId": "g1"},
    {"type": "track", "anonymousId": "anon-1", "event": "Browsed"},
    {"type": "alias", "userId": "u-3", "previousId": "anon-1",
     "timestamp": "2024-05-01T12:00:04Z"},
]
EXPECTED_BODIES = [
    {"userId": "u-1", "emailAddress": "a@example.com",
     "attributes": {"plan.tier": "pro", "vip": True},
     "events": [{"event": "Order Completed", "timestamp": T0 + 1000}]},
    {"userId": "u-2", "events": [{"event": "Viewed Pricing Page", "timestamp": T0 + 2000}]},
    {"userId": "u-3"},
]


def write_lines(path: Path, lines: List[Any]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                   for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "export.jsonl", GOOD_AND_BAD)


def replay(sprig: FakeSprig, *args: str, key: str = KEY) -> int:
    return cli.main(["replay", *args, "--api-key", key, "--endpoint", sprig.url,
                     "--no-progress"])


def test_replay_skips_bad_lines_and_delivers_the_good_ones(
    sprig: FakeSprig, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replay(sprig, str(export)) == 0
    out, err = capsys.readouterr()
    assert "line 3: skipped, invalid JSON" in err
    assert "line 4: skipped, not a JSON object (an array)" in err
    assert 'line 6: skipped, no "type" field' in err
    assert "line 5" not in err  # a blank line is not an error
    assert by_user(sprig_bodies(sprig)) == by_user(EXPECTED_BODIES)
    assert all(r.headers["authorization"] == f"API-Key {KEY}" for r in sprig.requests)
    assert re.search(r"malformed\s+3\s+\(lines 3, 4, 6\)", out)
    assert re.search(r"skipped\s+3\s+\(integrations 1, type 1, anonymous 1\)", out)
    assert re.search(r"delivered\s+4\s+in 3 requests", out)
    assert re.search(r"failed\s+0", out) and re.search(r"dropped\s+0", out)
    assert KEY not in out + err


def test_replay_dry_run_prints_the_requests_and_sends_nothing(
    sprig: FakeSprig, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No API key is needed for a dry run.
    assert cli.main(["replay", str(export), "--dry-run", "--endpoint", sprig.url]) == 0
    out, err = capsys.readouterr()
    assert sprig.requests == []
    lines = out.splitlines()
    assert all(line.startswith("POST /v2/users {") for line in lines)
    assert [json.loads(line[len("POST /v2/users "):]) for line in lines] == EXPECTED_BODIES
    assert "line 3: skipped" in err
    assert re.search(r"would send\s+4\s+in 3 requests", err)  # the summary is on stderr


def test_replay_dry_run_shows_exactly_the_requests_a_real_run_makes(
    sprig: FakeSprig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small chunk makes the file span several send cycles, as a big export does.
    monkeypatch.setattr(_replay, "REPLAY_CHUNK", 4)
    lines: List[Any] = []
    for i in range(23):
        user = f"u-{i % 3}"
        if i % 5 == 0:
            lines.append({"type": "identify", "userId": user, "traits": {"n": i}})
        elif i % 7 == 0:
            lines.append({"type": "group", "userId": user, "groupId": "g"})
        else:
            lines.append({"type": "track", "userId": user, "event": f"E{i}",
                          "timestamp": f"2024-05-01T12:00:{i:02d}Z"})
    path = write_lines(tmp_path / "many.jsonl", lines)
    assert cli.main(["replay", str(path), "--dry-run"]) == 0
    dry = [json.loads(line.split(" ", 2)[2]) for line in capsys.readouterr().out.splitlines()]
    assert replay(sprig, str(path)) == 0
    assert by_user(sprig_bodies(sprig)) == by_user(dry)
    assert 3 < len(dry) < 20  # coalesced within chunks, not across them


def test_replay_exits_1_when_sprig_rejects_a_message(
    sprig: FakeSprig, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sprig.inject(status=400, body={"error": "bad event"}, path=USERS)
    assert replay(sprig, str(export)) == 1
    out, _ = capsys.readouterr()
    # The first request to arrive failed: u-1's carries two messages, the others one.
    rejected = next(r.json for r in sprig.requests if r.status == 400)
    lost = 2 if rejected["userId"] == "u-1" else 1
    assert re.search(rf"failed\s+{lost}\n", out)
    assert re.search(rf"delivered\s+{4 - lost}\s+in 3 requests", out)
    assert f"{'2 messages' if lost == 2 else '1 message'}: Sprig answered HTTP 400: bad event" \
        in out
    delivered = [r.json for r in sprig.requests if r.status == 202]
    assert by_user(delivered) == by_user([b for b in EXPECTED_BODIES if b != rejected])


def test_replay_with_a_rejected_key_fails_cleanly(
    sprig: FakeSprig, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replay(sprig, str(export), key="wrong-key-123") == 1
    out, err = capsys.readouterr()
    assert "rejected the API key" in err
    assert "Traceback" not in err
    assert "wrong-key-123" not in out + err
    # At most the first request of each user went out (at once); after the first 401,
    # nothing else touches the network.
    assert {r.status for r in sprig.requests} == {401}
    assert 1 <= len(sprig.requests) <= 3
    assert re.search(r"failed\s+4", out)


def test_replay_reads_stdin_and_gzip(
    sprig: FakeSprig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = "".join(json.dumps(line) + "\n" for line in GOOD_AND_BAD if isinstance(line, dict))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    assert replay(sprig, "-") == 0
    assert by_user(sprig_bodies(sprig)) == by_user(EXPECTED_BODIES)
    sprig.reset()
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress(data.encode()))
    assert replay(sprig, str(path)) == 0
    assert by_user(sprig_bodies(sprig)) == by_user(EXPECTED_BODIES)
    assert "malformed" in capsys.readouterr().out


def test_replay_strict_makes_malformed_lines_an_error(
    sprig: FakeSprig, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replay(sprig, str(export), "--strict") == 1
    assert by_user(sprig_bodies(sprig)) == by_user(EXPECTED_BODIES)  # still delivered
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "EXPORT"], "no Sprig API key"),
        (["replay", "EXPORT", "--api-key", "k", "--endpoint", "http://example.com"],
         "plain http"),
        (["replay", "EXPORT", "--api-key", "k", "--endpoint", "not a url"], "endpoint"),
        (["replay", "MISSING", "--api-key", "k"], "cannot read"),
        (["replay"], "the following arguments are required: FILE"),
        (["purge", "--api-key", "k"], "nothing to purge"),
        (["purge", "--user-id", "u", "--delay-seconds", "-1", "--api-key", "k"], "must be >= 0"),
        (["bogus"], "invalid choice"),
        ([], "usage:"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(
    args: List[str], message: str, export: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(export) if a == "EXPORT" else str(tmp_path / "missing") if a == "MISSING"
            else a for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("analytics-sprig ")
    for command in ("demo", "replay", "purge", "serve-fake"):
        assert cli.main([command, "--help"]) == 0
        assert "usage: analytics-sprig " + command in capsys.readouterr().out


# -- purge ----------------------------------------------------------------------------------


def test_purge_of_250_ids_makes_3_requests(
    sprig: FakeSprig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"user-{i}" for i in range(250)]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# exported from the privacy queue\n" + "\n".join(ids) + "\n\n")
    code = cli.main(["purge", "--ids-file", str(ids_file), "--api-key", KEY,
                     "--endpoint", sprig.url])
    assert code == 0
    out = capsys.readouterr().out
    bodies = sprig_bodies(sprig, PURGE)
    assert [len(b["userIds"]) for b in bodies] == [100, 100, 50]
    assert [i for b in bodies for i in b["userIds"]] == ids
    assert all(set(b) == {"userIds"} for b in bodies)  # no delay given: Sprig's default
    assert len(UUID.findall(out)) == 3
    assert "Submitted 250 user ids in 3 requests; Sprig deletes them after its default" in out


def test_purge_ids_and_emails_with_a_delay(
    sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.post(f"{sprig.url}{USERS}", json={"userId": "u-1"},
               headers={"Authorization": f"API-Key {KEY}"})
    code = cli.main(["purge", "--user-id", "u-1", "--user-id", "u-2", "--user-id", "u-1",
                     "--email", "a@example.com", "--delay-seconds", "0",
                     "--api-key", KEY, "--endpoint", sprig.url])
    assert code == 0
    assert sprig_bodies(sprig, PURGE) == [
        {"userIds": ["u-1", "u-2"], "emails": ["a@example.com"], "delaySeconds": 0}
    ]
    assert "u-1" not in sprig.users  # delaySeconds 0: deleted at once
    assert ("Submitted 2 user ids and 1 email in 1 request; Sprig deletes them with no delay."
            in capsys.readouterr().out)


def test_purge_reports_what_was_accepted_before_a_failure(
    sprig: FakeSprig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sprig.inject(status=None, path=PURGE)  # the first request is answered normally
    sprig.inject(status=400, body={"error": "ids not found"}, path=PURGE)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(f"user-{i}" for i in range(250)))
    code = cli.main(["purge", "--ids-file", str(ids_file), "--api-key", KEY,
                     "--endpoint", sprig.url])
    assert code == 1
    out, err = capsys.readouterr()
    assert len(UUID.findall(out)) == 1
    assert "purge request 2/3 failed: Sprig answered HTTP 400: ids not found" in err
    assert "1 earlier request for 100 visitors was accepted" in err
    assert len(sprig_bodies(sprig, PURGE)) == 2  # stopped at the failure


def test_purge_with_a_rejected_key(
    sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["purge", "--user-id", "u", "--api-key", "nope-key-42",
                     "--endpoint", sprig.url])
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "wrong or revoked" in err
    assert "nope-key-42" not in err


# -- serve-fake -----------------------------------------------------------------------------


def _lines(stream: Any) -> queue.Queue[Optional[str]]:
    lines: queue.Queue[Optional[str]] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_serve_fake_runs_in_the_foreground_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics_sprig", "serve-fake", "--port", "0",
         "--api-key", "serve-key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = _lines(process.stdout)
        first = lines.get(timeout=30)
        assert first is not None, process.stderr.read() if process.stderr else ""
        match = re.match(r"Fake Sprig listening on (http://127\.0\.0\.1:\d+) ", first)
        assert match, first
        url = match.group(1)
        response = httpx.post(f"{url}{USERS}", json={"userId": "u-1"},
                              headers={"Authorization": "API-Key serve-key"})
        assert response.status_code == 202
        assert lines.get(timeout=10) == "POST /v2/users 202"
        assert httpx.post(f"{url}{USERS}", json={"userId": "u-1"}).status_code == 401
        assert lines.get(timeout=10) == "POST /v2/users 401"
        process.terminate()
        assert process.wait(timeout=10) == 0  # SIGTERM stops it like Ctrl-C
        assert lines.get(timeout=10) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_fake_on_a_busy_port_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main(["serve-fake", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


# -- progress -------------------------------------------------------------------------------


def test_the_plain_progress_counter_keeps_notes_readable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _progress.CounterProgress(total=1000)
    progress.update(10, 500, 3, force=True)
    progress.note("line 7: skipped, invalid JSON")
    progress.close()
    err = capsys.readouterr().err
    assert "replaying: 10 lines read (50% of the file), 3 messages settled" in err
    assert "\rline 7: skipped, invalid JSON\n" in err



# -- wording --------------------------------------------------------------------------------


def test_the_summary_counts_failures_by_cause_without_repeating_counts() -> None:
    state = _replay._Replay()
    state.lines = state.messages = 14
    state.on_error(MessageDropped("shutdown", "13 message(s) pending at shutdown deadline"),
                   [{}] * 13)
    state.on_error(SprigAPIError(400, "bad event"), [{}])
    stats = {"received": 14, "skipped": 0, "delivered": 0, "failed": 1, "dropped": 13,
             "pending": 0, "requests": 1}
    lines = _replay._replay_summary(state, stats, dry_run=False)
    assert "    13 messages: dropped: still waiting to be sent when the replay stopped" in lines
    assert "    1 message: Sprig answered HTTP 400: bad event" in lines
    assert not any(" x " in line or "(s)" in line for line in lines)
    assert "  delivered          0  in 1 request" in lines


@pytest.mark.parametrize(("count", "noun", "text"), [
    (1, "visitor", "1 visitor"), (2, "visitor", "2 visitors"), (0, "email", "0 emails"),
    (1, "retry", "1 retry"), (3, "retry", "3 retries"), (2, "user id", "2 user ids"),
    (2, "earlier request", "2 earlier requests"), (5, "day", "5 days"), (2, "box", "2 boxes"),
])
def test_plurals(count: int, noun: str, text: str) -> None:
    assert plural(count, noun) == text


def test_json_kinds_have_their_article() -> None:
    assert [json_kind(v) for v in (1, 1.5, "s", True, None, [], {})] == [
        "an integer", "a number", "a string", "a boolean", "null", "an array", "an object"]


@pytest.mark.parametrize("where", ["while reading", "after reading everything"])
def test_an_interrupted_replay_says_what_was_read(
    where: str, sprig: FakeSprig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_replay, "REPLAY_CHUNK", 2)
    lines: List[Any] = [{"type": "track", "userId": f"u-{i}", "event": "E"} for i in range(5)]
    path = write_lines(tmp_path / "export.jsonl", lines)
    real_wait = _replay._wait
    waits = []

    def wait(*args: Any) -> None:
        waits.append(1)
        real_wait(*args)
        # The first chunk's wait comes while lines remain; the third, after the last line.
        if len(waits) == (1 if where == "while reading" else 3):
            raise KeyboardInterrupt

    monkeypatch.setattr(_replay, "_wait", wait)
    assert replay(sprig, str(path)) == 130
    out = capsys.readouterr().out
    if where == "while reading":
        assert "Interrupted at line 2: the rest of the input was not read." in out
    else:
        assert "Interrupted after the whole input was read, before everything was sent." in out
        assert "the rest of the input was not read" not in out


def test_verbose_shows_the_librarys_info_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("analytics_sprig")
    with cli._logging(1):
        logger.info("an info line")
        logger.debug("a debug line")
    with cli._logging(0):
        logger.warning("a warning")
        logger.error("an error")
    err = capsys.readouterr().err
    assert "analytics-sprig: INFO: an info line" in err and "debug line" not in err
    assert "a warning" not in err and "analytics-sprig: ERROR: an error" in err
