"""A small Flask app that sends Segment calls to Sprig through analytics-sprig.

Shows the three places an app touches analytics:

- startup (:func:`create_app`): one analytics-python ``Client`` for the process, with a
  ``SprigDestination`` plugin, both configured from the environment;
- per request (the routes): ``identify`` / ``track`` / ``page`` calls, which only queue
  work, so requests never wait on Segment or Sprig;
- shutdown (``atexit``): ``client.shutdown(timeout=...)``: flush what is queued and stop the
  background threads, within one deadline even if Segment or Sprig is down.

Environment:

- ``SEGMENT_WRITE_KEY`` and ``SPRIG_API_KEY``: both, or neither (then a local fake of both
  services is started, so the app runs offline; ``GET /debug/sprig`` shows the worker's
  counters and, from the process that runs the fake, what it got);
- ``SEGMENT_HOST`` (default: Segment's API) and ``SPRIG_ENDPOINT`` (default: Sprig's API);
- ``ANALYTICS_SHUTDOWN_TIMEOUT`` (default 5 s): the exit deadline, kept well under a
  pre-fork server's graceful timeout (gunicorn: 30 s) so a worker is never killed mid-exit.

Run it with Flask's development server, or under gunicorn with ``--preload``::

    pip install flask gunicorn
    python examples/flask_app.py
    gunicorn --preload --workers 2 --bind 127.0.0.1:5000 examples.flask_app:app

then::

    curl -X POST http://127.0.0.1:5000/signup -H 'Content-Type: application/json' \\
        -d '{"user_id": "user-1", "email": "a@example.com", "plan": "pro"}'

Fork safety (gunicorn ``--preload``, uWSGI without ``lazy-apps``): the client and the
destination are created once, in the master, before the workers are forked. In each
worker, analytics-sprig replaces what does not survive ``fork()``: the client has a plugin,
so its Segment queue and consumer thread are fresh (with analytics-python's HTTP session),
and the Sprig destination starts a fresh, empty worker. What the master had queued stays
the master's. Each worker flushes and stops its own at exit (``atexit`` runs when gunicorn
stops a worker with SIGTERM). Responses carry ``X-Worker-PID`` to show which worker answered.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from flask import Flask, jsonify, request
from segment.analytics import Client

from analytics_sprig import DEFAULT_ENDPOINT, SprigDestination
from analytics_sprig.testing import FakeSprig


def create_app(
    *,
    segment_write_key: Optional[str] = None,
    segment_host: Optional[str] = None,
    sprig_api_key: Optional[str] = None,
    sprig_endpoint: Optional[str] = None,
    shutdown_timeout: Optional[float] = None,
) -> Flask:
    """Build the app; arguments override the environment (tests pass a FakeSprig's URL)."""
    app = Flask(__name__)

    write_key = segment_write_key or os.environ.get("SEGMENT_WRITE_KEY")
    api_key = sprig_api_key or os.environ.get("SPRIG_API_KEY")
    segment_host = segment_host or os.environ.get("SEGMENT_HOST") or None
    endpoint = sprig_endpoint or os.environ.get("SPRIG_ENDPOINT") or DEFAULT_ENDPOINT
    if shutdown_timeout is None:
        shutdown_timeout = float(os.environ.get("ANALYTICS_SHUTDOWN_TIMEOUT", "5"))
    local: Optional[FakeSprig] = None
    if not write_key and not api_key:
        # Local run with no keys: one fake plays both Segment's and Sprig's APIs.
        local = FakeSprig().start()
        write_key, api_key = "local-write-key", "local-sprig-key"
        segment_host = endpoint = local.url
    if not write_key or not api_key:
        raise RuntimeError("set both SEGMENT_WRITE_KEY and SPRIG_API_KEY, or neither")
    started_in = os.getpid()  # the fake's thread lives in this process only

    def report(exc: Exception, messages: List[Dict[str, Any]]) -> None:
        # Calls Sprig never got (failed, or dropped at the shutdown deadline): say so.
        app.logger.warning("analytics: %d call(s) not delivered to Sprig: %s [pid %d]",
                           len(messages), exc, os.getpid())

    # --- startup: one client per process, plugins added once ---------------------------
    analytics = Client(write_key, host=segment_host)
    sprig = SprigDestination(api_key=api_key, endpoint=endpoint, on_error=report)
    analytics.add_plugin(sprig)

    # --- shutdown: Flask has no app-exit hook; atexit runs on normal interpreter exit ---
    stopped = threading.Event()

    def shutdown() -> None:
        if stopped.is_set():
            return  # once only (atexit, and tests calling it by hand)
        stopped.set()
        atexit.unregister(shutdown)
        # One deadline for Segment's queue and Sprig's together; what Sprig could not take
        # by then is dropped and reported through on_error.
        analytics.shutdown(timeout=shutdown_timeout)
        if local is not None and os.getpid() == started_in:
            local.stop()

    atexit.register(shutdown)
    app.extensions["analytics"] = analytics
    app.extensions["sprig"] = sprig
    app.extensions["analytics_shutdown"] = shutdown
    app.extensions["fake_sprig"] = local

    def context() -> Dict[str, Any]:
        # Request details Segment destinations use; never put secrets here.
        return {"ip": request.remote_addr, "userAgent": request.headers.get("User-Agent", "")}

    @app.after_request
    def worker_pid(response: Any) -> Any:
        response.headers["X-Worker-PID"] = str(os.getpid())
        return response

    # --- per request --------------------------------------------------------------------
    @app.post("/signup")
    def signup() -> Tuple[Any, int]:
        data = request.get_json(silent=True) or {}
        user_id = str(data.get("user_id") or "")
        if not user_id:
            return jsonify(error="user_id is required"), 400
        traits = {"email": data.get("email"), "plan": {"tier": data.get("plan", "free")}}
        analytics.identify(user_id, traits, context=context())
        analytics.track(user_id, "Signed Up", {"plan": data.get("plan", "free")},
                        context=context())
        return jsonify(ok=True), 201

    @app.post("/orders")
    def order() -> Tuple[Any, int]:
        data = request.get_json(silent=True) or {}
        user_id = str(data.get("user_id") or "")
        if not user_id:
            return jsonify(error="user_id is required"), 400
        analytics.track(user_id, "Order Completed", {"total": data.get("total", 0)},
                        context=context())
        # Payment details stay out of Sprig, but still reach Segment.
        analytics.track(user_id, "Payment Method Saved", integrations={"Sprig": False},
                        context=context())
        return jsonify(ok=True), 201

    @app.get("/pricing")
    def pricing() -> Tuple[Any, int]:
        user_id = request.args.get("user_id")
        if user_id:
            analytics.page(user_id, category="Marketing", name="Pricing", context=context())
        else:  # anonymous visitors reach Segment; Sprig needs a userId, so it skips them
            analytics.page(anonymous_id=request.args.get("anonymous_id", "anonymous"),
                           name="Pricing", context=context())
        return jsonify(plans=["free", "pro"]), 200

    @app.get("/debug/sprig")
    def debug_sprig() -> Tuple[Any, int]:
        # Per process: under a pre-fork server, each worker has its own destination.
        body: Dict[str, Any] = {"pid": os.getpid(), "stats": sprig.stats()}
        if local is not None and os.getpid() == started_in:
            body["users"] = local.users
        elif local is not None:  # a forked worker holds a stale copy of the fake's memory
            body["users_in_pid"] = started_in
        return jsonify(body), 200

    return app


_app: Optional[Flask] = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # ``app`` for ``gunicorn examples.flask_app:app``, built on first access so that
    # importing this module (for create_app) starts nothing.
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _app_lock:
        if _app is None:
            _app = create_app()
        return _app


if __name__ == "__main__":
    application = create_app()
    fake = application.extensions["fake_sprig"]
    if fake is not None:
        print(f"No SEGMENT_WRITE_KEY/SPRIG_API_KEY: using a local fake at {fake.url}")
    # No reloader: it would start a second process with its own analytics client.
    application.run(port=int(os.environ.get("PORT", "5000")), use_reloader=False)
