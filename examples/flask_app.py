"""A small Flask app that sends Segment calls to Sprig through analytics-sprig.

Shows the three places an app touches analytics:

- startup (:func:`create_app`): one analytics-python ``Client`` for the process, with a
  ``SprigDestination`` plugin built from environment variables;
- per request (the routes): ``identify`` / ``track`` / ``page`` calls, which only queue
  work, so requests never wait on Segment or Sprig;
- shutdown (``atexit``): flush what is queued and stop the background workers.

Run it::

    pip install flask
    python examples/flask_app.py          # then: curl -X POST localhost:5000/signup ...

With ``SEGMENT_WRITE_KEY`` and ``SPRIG_API_KEY`` set it talks to the real services;
without them it starts a local fake of both (``FakeSprig``) so it runs offline, and
``GET /debug/sprig`` shows what the fake received.

Under a pre-fork server (gunicorn) this setup is fork-safe: each worker process gets a
fresh delivery thread.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Dict, Optional, Tuple

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
) -> Flask:
    """Build the app; arguments override the environment (tests pass a FakeSprig's URL)."""
    app = Flask(__name__)

    write_key = segment_write_key or os.environ.get("SEGMENT_WRITE_KEY")
    api_key = sprig_api_key or os.environ.get("SPRIG_API_KEY")
    endpoint = sprig_endpoint or os.environ.get("SPRIG_ENDPOINT", DEFAULT_ENDPOINT)
    local: Optional[FakeSprig] = None
    if not write_key and not api_key:
        # Local run with no keys: one fake plays both Segment's and Sprig's APIs.
        local = FakeSprig().start()
        write_key, api_key = "local-write-key", "local-sprig-key"
        segment_host = endpoint = local.url
    if not write_key or not api_key:
        raise RuntimeError("set both SEGMENT_WRITE_KEY and SPRIG_API_KEY, or neither")

    # --- startup: one client per process, plugins added once ---------------------------
    analytics = Client(write_key, host=segment_host)
    sprig = SprigDestination(api_key=api_key, endpoint=endpoint)
    analytics.add_plugin(sprig)

    # --- shutdown: Flask has no app-exit hook; atexit runs on normal interpreter exit ---
    stopped = threading.Event()

    def shutdown() -> None:
        if stopped.is_set():
            return  # once only: a second Client.shutdown() would wait on a stopped queue
        stopped.set()
        atexit.unregister(shutdown)
        analytics.shutdown()  # flushes Segment and Sprig, stops their threads
        if local is not None:
            local.stop()

    atexit.register(shutdown)
    app.extensions["analytics"] = analytics
    app.extensions["sprig"] = sprig
    app.extensions["analytics_shutdown"] = shutdown
    app.extensions["fake_sprig"] = local

    def context() -> Dict[str, Any]:
        # Request details Segment destinations use; never put secrets here.
        return {"ip": request.remote_addr, "userAgent": request.headers.get("User-Agent", "")}

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
        body: Dict[str, Any] = {"stats": sprig.stats()}
        if local is not None:
            body["users"] = local.users
        return jsonify(body), 200

    return app


if __name__ == "__main__":
    application = create_app()
    fake = application.extensions["fake_sprig"]
    if fake is not None:
        print(f"No SEGMENT_WRITE_KEY/SPRIG_API_KEY: using a local fake at {fake.url}")
    # No reloader: it would start a second process with its own analytics client.
    application.run(port=int(os.environ.get("PORT", "5000")), use_reloader=False)
