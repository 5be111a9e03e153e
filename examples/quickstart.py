"""Quickstart: Segment's analytics-python with the Sprig destination, in one file.

Runs with no account and no network: a local fake stands in for both Segment's API and
Sprig's (``analytics_sprig.testing.FakeSprig``, on 127.0.0.1). Then it prints what Segment
received and what Sprig received: side by side on a terminal of 150 columns or more, one
after the other on a narrower one.

    python examples/quickstart.py

In your app, drop the fake: ``Client("YOUR_WRITE_KEY")`` and
``SprigDestination(api_key="YOUR_SPRIG_API_KEY")`` (or use the module-level
``segment.analytics`` with ``analytics.add_plugin(...)``). For a longer tour of every
routing rule, run ``analytics-sprig demo``.
"""

from __future__ import annotations

from segment.analytics import Client

from analytics_sprig import SprigDestination
from analytics_sprig.cli import print_report
from analytics_sprig.testing import FakeSprig


def main() -> None:
    """Send a few calls through analytics-python + SprigDestination and show both sides."""
    with FakeSprig(api_key="local-sprig-key") as local:
        # --- the setup your app does once, at startup ---------------------------------
        analytics = Client("local-write-key", host=local.url)  # host: only for the fake
        sprig = SprigDestination(api_key="local-sprig-key", endpoint=local.url)
        analytics.add_plugin(sprig)

        # --- calls, exactly as with plain analytics-python ------------------------------
        analytics.identify("user-1", {"email": "ada@example.com", "plan": {"tier": "pro"},
                                      "power_users": True})  # an Engage audience boolean
        analytics.track("user-1", "Order Completed", {"total": 10})
        analytics.page("user-1", name="Pricing")  # -> event "Viewed Pricing Page"
        analytics.page("user-1")                  # -> event "Loaded a Page"
        analytics.alias("anon-7", "user-2")       # makes sure user-2 exists in Sprig
        # Opted out of Sprig (any of its names works); these still reach Segment.
        analytics.track("user-1", "Password Changed", integrations={"Sprig": False})
        analytics.track("user-1", "Card Updated", integrations={"Sprig Cloud": False})
        analytics.track("user-1", "Note Added", integrations={"UserLeap": False})
        analytics.track("user-1", "Audit Logged", integrations={"All": False})
        # Not for Sprig: group calls, and calls with no userId.
        analytics.group("user-1", "acme-inc", {"name": "Acme Inc"})
        analytics.track(anonymous_id="anon-7", event="Browsed")

        analytics.flush()  # Segment's queue and every plugin's, blocking until sent

        print("Quickstart: the calls in examples/quickstart.py went through analytics-python")
        print(f"with SprigDestination, to local fakes of Segment's and Sprig's APIs at "
              f"{local.url}.\n")
        print_report(local, sprig)

        # --- at exit -----------------------------------------------------------------
        analytics.shutdown()  # flush, then stop every plugin's worker


if __name__ == "__main__":
    main()
