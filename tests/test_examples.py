"""The examples run: the quickstart as a script, the Flask app through Flask's test client."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from analytics_sprig.testing import FakeSprig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_prints_both_sides_with_opt_outs_only_on_segments() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    env["COLUMNS"] = "100"
    done = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    segment_part, sprig_part = done.stdout.split("== What Sprig received")
    assert "== What Segment received (POST /v1/batch): 11 messages ==" in segment_part
    body_part = sprig_part.split("SprigDestination.stats():")[0]
    for event in ("Password Changed", "Card Updated", "Note Added", "Audit Logged"):
        assert f'"{event}"' in segment_part
        assert event not in body_part
    for text in ('"plan.tier":"pro"', '"power_users":true', '"Order Completed"',
                 '"Viewed Pricing Page"', '"Loaded a Page"', 'userId: "user-2"'):
        assert text in body_part
    assert "4 calls opted out of Sprig" in done.stdout
    assert "Traceback" not in done.stderr


def load_flask_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_app_example",
                                                  EXAMPLES / "flask_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def flask_example() -> ModuleType:
    pytest.importorskip("flask")  # a test extra, not a dependency of the package
    return load_flask_example()


@pytest.fixture
def sprig() -> Iterator[FakeSprig]:
    with FakeSprig(api_key="flask-key") as server:
        yield server


def test_flask_app_sends_per_request_calls_and_shuts_down(
    flask_example: ModuleType, sprig: FakeSprig
) -> None:
    app = flask_example.create_app(segment_write_key="wk", segment_host=sprig.url,
                                   sprig_api_key="flask-key", sprig_endpoint=sprig.url)
    client = app.test_client()
    assert client.post("/signup", json={"user_id": "u-1", "email": "a@example.com",
                                        "plan": "pro"}).status_code == 201
    assert client.post("/orders", json={"user_id": "u-1", "total": 30}).status_code == 201
    assert client.get("/pricing?user_id=u-1").status_code == 200
    assert client.get("/pricing?anonymous_id=a-9").status_code == 200
    assert client.post("/signup", json={}).status_code == 400

    analytics: Any = app.extensions["analytics"]
    assert analytics.flush(timeout=10)
    user = sprig.users["u-1"]
    assert user["emailAddress"] == "a@example.com"
    assert user["attributes"] == {"plan.tier": "pro"}
    assert [e["event"] for e in user["eventLog"]] == [
        "Signed Up", "Order Completed", "Viewed Pricing Page"
    ]
    assert set(sprig.users) == {"u-1"}  # the anonymous page view stayed out of Sprig
    # The opted-out call still reached Segment.
    segment = sprig.segment_messages
    assert [m.get("event") for m in segment if m["type"] == "track"] == [
        "Signed Up", "Order Completed", "Payment Method Saved"
    ]
    assert segment[0]["context"]["ip"] == "127.0.0.1"

    stats = client.get("/debug/sprig").get_json()["stats"]
    assert (stats["delivered"], stats["skipped_integrations"], stats["skipped_anonymous"]) \
        == (4, 1, 1)

    app.extensions["analytics_shutdown"]()
    sprig_plugin = app.extensions["sprig"]
    analytics.track("u-1", "After Shutdown")
    assert sprig_plugin.stats()["dropped_shutdown"] == 1  # the worker is stopped
    app.extensions["analytics_shutdown"]()  # idempotent (atexit may call it again)


def test_flask_app_runs_offline_with_a_local_fake(
    flask_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SEGMENT_WRITE_KEY", "SPRIG_API_KEY", "SPRIG_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    app = flask_example.create_app()
    local = app.extensions["fake_sprig"]
    try:
        assert local is not None and local.url.startswith("http://127.0.0.1:")
        client = app.test_client()
        assert client.post("/signup", json={"user_id": "u-7"}).status_code == 201
        assert app.extensions["analytics"].flush(timeout=10)
        body = client.get("/debug/sprig").get_json()
        assert body["users"]["u-7"]["attributes"] == {"plan.tier": "free"}
        assert [m["type"] for m in local.segment_messages] == ["identify", "track"]
    finally:
        app.extensions["analytics_shutdown"]()
    assert local.requests  # it kept what it recorded, and is stopped
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local.port), timeout=1).close()


def test_flask_app_refuses_half_a_configuration(
    flask_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGMENT_WRITE_KEY", raising=False)
    monkeypatch.setenv("SPRIG_API_KEY", "only-sprig")
    with pytest.raises(RuntimeError, match="both SEGMENT_WRITE_KEY and SPRIG_API_KEY"):
        flask_example.create_app()


def documented_curl(module: ModuleType) -> List[str]:
    """The curl command of the module's docstring, as a shell would split it."""
    doc = module.__doc__ or ""
    start = doc.index("curl ")
    command = doc[start:].split("\n\n")[0]
    return shlex.split(command.replace("\\\n", " "))


def parse_curl(argv: List[str]) -> Tuple[str, str, Dict[str, str], str]:
    """(method, url, headers, body) of a curl command using -X, -H and -d only."""
    assert argv[0] == "curl"
    method, url, headers, body = "GET", "", {}, ""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(args)
            method = "POST" if method == "GET" else method
        else:
            assert not arg.startswith("-"), f"unexpected curl option {arg}"
            url = arg
    return method, url, headers, body


def test_flask_docstring_curl_command_works_as_printed(
    flask_example: ModuleType, sprig: FakeSprig
) -> None:
    method, url, headers, body = parse_curl(documented_curl(flask_example))
    assert url.startswith("http://127.0.0.1:5000/")  # where both documented servers listen
    assert "gunicorn --preload --workers 2 --bind 127.0.0.1:5000 examples.flask_app:app" \
        in (flask_example.__doc__ or "")
    app = flask_example.create_app(segment_write_key="wk", segment_host=sprig.url,
                                   sprig_api_key="flask-key", sprig_endpoint=sprig.url)
    try:
        response = app.test_client().open(url.split("5000", 1)[1], method=method,
                                          headers=headers, data=body)
        assert response.status_code == 201, response.get_data(as_text=True)
        assert app.extensions["analytics"].flush(timeout=10) is True
        user_id = json.loads(body)["user_id"]
        assert sprig.users[user_id]["emailAddress"] == json.loads(body)["email"]
        assert response.headers["X-Worker-PID"] == str(os.getpid())
    finally:
        app.extensions["analytics_shutdown"]()


def test_flask_app_reads_hosts_and_keys_from_the_environment(
    flask_example: ModuleType, sprig: FakeSprig, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSprig() as segment:
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "env-write-key")
        monkeypatch.setenv("SEGMENT_HOST", segment.url)
        monkeypatch.setenv("SPRIG_API_KEY", "flask-key")
        monkeypatch.setenv("SPRIG_ENDPOINT", sprig.url)
        monkeypatch.setenv("ANALYTICS_SHUTDOWN_TIMEOUT", "3")
        assert flask_example._app is None  # importing the module built nothing
        app = flask_example.app  # what gunicorn's examples.flask_app:app looks up
        try:
            assert flask_example.app is app  # built once
            assert app.extensions["fake_sprig"] is None
            analytics = app.extensions["analytics"]
            assert (analytics.write_key, analytics.host) == ("env-write-key", segment.url)
            client = app.test_client()
            assert client.post("/orders", json={"user_id": "u-env", "total": 5}).status_code \
                == 201
            assert analytics.flush(timeout=10) is True
            assert [m["event"] for m in segment.segment_messages] == [
                "Order Completed", "Payment Method Saved"]
            assert [e["event"] for e in sprig.users["u-env"]["eventLog"]] == ["Order Completed"]
            started = time.monotonic()
            sprig.blackhole()
            client.post("/orders", json={"user_id": "u-late"})
            assert sprig.wait_for_requests(2, timeout=5)
            app.extensions["analytics_shutdown"]()  # the atexit handler
            assert time.monotonic() - started < 3 + 1  # ANALYTICS_SHUTDOWN_TIMEOUT + 1 s
            assert app.extensions["sprig"].stats()["dropped_shutdown"] == 1
        finally:
            sprig.blackhole(False)
            app.extensions["analytics_shutdown"]()
            flask_example._app = None
    with pytest.raises(AttributeError):
        flask_example.not_an_attribute  # noqa: B018
