"""``analytics-sprig demo``: run the demo session (see :mod:`._demo`) and print the report."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Any, Optional

from ..sprig._api import DEFAULT_ENDPOINT, validate_endpoint
from ._common import API_KEY_ENV, EXIT_FAILED, EXIT_OK, PROG, err, note, plural
from ._demo import DEMO_USER, NEW_USER, DemoResult, render_report, run_session, terminal_width


def _ask_real_sprig(endpoint: str) -> bool:
    sys.stderr.write(
        f"{API_KEY_ENV} is set. Send the demo session to your real Sprig environment "
        f"({endpoint}) instead of the local fake?\n"
        f"It creates the demo visitors {DEMO_USER} and {NEW_USER} there. [y/N] "
    )
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except (EOFError, KeyboardInterrupt, OSError, ValueError):  # ValueError: not text
        return False
    return answer.strip().lower() in ("y", "yes")


def run(args: Any) -> int:
    """The ``demo`` command, from its parsed arguments."""
    endpoint = validate_endpoint(args.endpoint)
    real_key: Optional[str] = None
    env_key = os.environ.get(API_KEY_ENV)
    if env_key:
        if sys.stdin is not None and sys.stdin.isatty():
            if _ask_real_sprig(endpoint):
                real_key = env_key
        else:
            note(f"{API_KEY_ENV} is set: run `{PROG} demo` in an interactive terminal to be "
                 "offered to send the demo to your real Sprig environment. Using the local "
                 "fake.")
    result: DemoResult = run_session(real_key, endpoint=endpoint)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        if real_key:
            intro = ("analytics-sprig demo: a session went through analytics-python with "
                     "SprigDestination. Segment's API is a local fake; Sprig's is "
                     f"{endpoint}.")
            label = "What was sent to Sprig"
        else:
            intro = ("analytics-sprig demo: a session went through analytics-python with "
                     "SprigDestination. Segment's and Sprig's APIs are local fakes on "
                     "127.0.0.1: no account needed, nothing left this machine.")
            label = "What Sprig received"
        width = terminal_width()
        print("\n".join(textwrap.wrap(intro, max(40, min(width, 120)))))
        print()
        sys.stdout.write(render_report(result.segment_messages, result.sprig_requests,
                                       result.stats, width=width,
                                       layout=args.layout, sprig_label=label))
        if real_key:
            extra = "" if endpoint == DEFAULT_ENDPOINT else f" --endpoint {endpoint}"
            print(f"\nTo delete the demo visitors from Sprig: {PROG} purge "
                  f"--user-id {DEMO_USER} --user-id {NEW_USER} --delay-seconds 0{extra}")
    sys.stdout.flush()
    failed = result.stats.get("failed", 0) + result.stats.get("dropped", 0)
    if failed:
        err(f"{plural(failed, 'message')} did not reach Sprig (see the stats above)")
        return EXIT_FAILED
    return EXIT_OK
