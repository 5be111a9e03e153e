"""examples/flask_app.py under a real pre-fork server: gunicorn ``--preload``, 2 workers.

The app (its analytics-python client and Sprig destination) is built once in gunicorn's
master, then forked. Driven with real HTTP requests until both workers answered, every
worker's calls must reach the fake Segment (``/v1/batch``) and the fake Sprig, and on
SIGTERM each worker must exit within the app's shutdown deadline even with Sprig
accepting connections and never answering, reporting what it dropped.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from analytics_sprig.testing import FakeSprig

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
SHUTDOWN_TIMEOUT = 2.0  # the example's ANALYTICS_SHUTDOWN_TIMEOUT for this run
# A worker notices SIGTERM at once (gunicorn's wake-up pipe), then runs the app's atexit.
EXIT_BOUND = SHUTDOWN_TIMEOUT + 1.0 + 1.0  # deadline + 1 s + gunicorn's own exit

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="a pre-fork server needs os.fork()"),
]


class Gunicorn:
    """A gunicorn master process whose stderr is read line by line in a thread."""

    def __init__(self, args: List[str], env: Dict[str, str]) -> None:
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(args, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> List[re.Match[str]]:
        """Wait until ``count`` stderr lines match ``pattern``; return their matches."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"gunicorn never logged {pattern!r}:\n"
                                         + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.1))

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def post(port: int, path: str, body: Dict[str, object]) -> Tuple[int, int]:
    """One request on a new connection (so either worker may take it): (status, pid)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=json.dumps(body),
                           headers={"Content-Type": "application/json", "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, int(response.headers["X-Worker-PID"])
    finally:
        connection.close()


def drive_until_each_worker_answered(
    port: int, prefix: str, workers: Set[int], per_worker: int = 2, limit: int = 400
) -> Dict[int, List[str]]:
    """POST /signup for new users until every worker took ``per_worker`` of them."""
    users: Dict[int, List[str]] = {}
    for i in range(limit):
        user_id = f"{prefix}-{i}"
        status, pid = post(port, "/signup", {"user_id": user_id, "plan": "pro"})
        assert status == 201
        users.setdefault(pid, []).append(user_id)
        if set(users) == workers and all(len(u) >= per_worker for u in users.values()):
            return users
    raise AssertionError(f"requests never reached every worker: {sorted(users)} of {workers}")


def documented_curl(port: int) -> List[str]:
    """The example's documented curl command, pointed at ``port`` instead of 5000."""
    doc = ast.get_docstring(ast.parse((ROOT / "examples" / "flask_app.py").read_text())) or ""
    command = doc[doc.index("curl "):].split("\n\n")[0].replace("\\\n", " ")
    assert "127.0.0.1:5000" in command
    return shlex.split(command.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie not yet reaped by gunicorn's master counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_gunicorn_preload_workers_deliver_to_segment_and_sprig_and_exit_bounded(
    tmp_path: Path,
) -> None:
    pytest.importorskip("flask", reason="flask (test extra) is not installed")
    gunicorn = pytest.importorskip("gunicorn", reason="gunicorn (test extra) is not installed")
    from gunicorn.config import KNOWN_SETTINGS

    with FakeSprig() as segment, FakeSprig(api_key="prefork-key") as sprig:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "SEGMENT_WRITE_KEY": "prefork-write-key",
            "SEGMENT_HOST": segment.url,
            "SPRIG_API_KEY": "prefork-key",
            "SPRIG_ENDPOINT": sprig.url,
            "ANALYTICS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        }
        args = [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
                "--bind", "127.0.0.1:0", "--graceful-timeout", "30",
                "--worker-tmp-dir", str(tmp_path), "examples.flask_app:app"]
        if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
            args.insert(3, "--no-control-socket")  # gunicorn 27+: no socket in $HOME
        server = Gunicorn(args, env)
        try:
            [listening] = server.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)")
            port = int(listening.group(1))
            booted = server.wait_for(r"Booting worker with pid: (\d+)", count=WORKERS)
            workers = {int(m.group(1)) for m in booted}
            assert len(workers) == WORKERS and server.process.pid not in workers

            # 0. The README-style curl of the example's docstring works as printed.
            documented: List[str] = []
            if shutil.which("curl"):
                done = subprocess.run(documented_curl(port), capture_output=True, text=True,
                                      timeout=30)
                assert done.returncode == 0, done.stderr
                assert json.loads(done.stdout) == {"ok": True}
                documented.append("user-1")

            # 1. Every worker's calls reach both Segment and Sprig.
            users = drive_until_each_worker_answered(port, "signup", workers)
            everyone = [u for per_worker in users.values() for u in per_worker] + documented

            def delivered(_: FakeSprig) -> bool:
                to_segment = {m.get("userId") for m in segment.segment_messages}
                return set(everyone) <= to_segment and set(everyone) <= set(sprig.users)

            assert segment.wait_for(delivered, timeout=15) and sprig.wait_for(delivered, 1)
            for pid, ids in users.items():
                for user_id in ids:
                    kinds = sorted(m["type"] for m in segment.segment_messages
                                   if m.get("userId") == user_id)
                    assert kinds == ["identify", "track"], (pid, user_id)
                    assert [e["event"] for e in sprig.users[user_id]["eventLog"]] \
                        == ["Signed Up"], (pid, user_id)

            # 2. Sprig accepts and never answers; each worker then holds undelivered calls.
            sprig.blackhole()
            stuck = drive_until_each_worker_answered(port, "late", workers, per_worker=1)
            late = [u for per_worker in stuck.values() for u in per_worker]
            assert segment.wait_for(
                lambda s: set(late) <= {m.get("userId") for m in s.segment_messages}, 15)

            # 3. SIGTERM: every worker exits within the app's deadline, and says what it
            #    dropped (the example's on_error logs it with the worker's pid).
            terminated = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            exited: Dict[int, float] = {}
            while len(exited) < WORKERS and time.monotonic() - terminated < 30:
                for pid in workers - set(exited):
                    if not alive(pid):
                        exited[pid] = time.monotonic() - terminated
                time.sleep(0.02)
            assert set(exited) == workers, f"workers still running 30 s after SIGTERM: " \
                f"{workers - set(exited)}\n{server.text()}"
            for pid, took in exited.items():
                assert took < EXIT_BOUND, (pid, took, server.text())
            assert server.process.wait(15) == 0, server.text()
            log = server.text()
            for pid in workers:
                assert re.search(rf"not delivered to Sprig: .*\[pid {pid}\]", log), log
            assert "Traceback" not in log, log
        finally:
            server.kill()
            sprig.blackhole(False)
        # Nothing reached Segment twice (the master's queue was never sent by a worker).
        ids = [m["messageId"] for m in segment.segment_messages]
        assert len(ids) == len(set(ids))
    assert gunicorn is not None
