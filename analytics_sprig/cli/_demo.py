"""The demo session of ``analytics-sprig demo``, and the report of both sides.

A :class:`~analytics_sprig.testing.FakeSprig` on 127.0.0.1 stands in for Segment's
``/v1/batch`` and for Sprig's ``/v2`` API, so the real analytics-python ``Client`` with a
real :class:`~analytics_sprig.SprigDestination` runs end to end with no account and no
traffic leaving the machine. The report shows what Segment received and what Sprig
received (side by side on a terminal of at least :data:`COLUMNS_MIN_WIDTH` columns, else one
after the other), so the routing (opt-outs, types, anonymous calls) and the mapping can be
seen. The command itself is in :mod:`._demo_cmd`.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO

from segment.analytics import Client

from ..pipeline import install
from ..sprig._api import DEFAULT_ENDPOINT
from ..sprig._destination import SprigDestination
from ..sprig._planning import SprigPlanner
from ..sprig._routing import DEFAULT_TYPES, INTEGRATION_NAMES, skip_reason
from ..testing.fake_server import FakeSprig
from ._common import compact as _compact
from ._common import plural

#: Keys used against the local fake only; they are never printed.
DEMO_API_KEY = "demo-sprig-key"
DEMO_WRITE_KEY = "demo-segment-write-key"

DEMO_USER = "user-42"
NEW_USER = "user-108"
ANONYMOUS_ID = "anon-5f1c9e"

#: Below this many terminal columns the two sides are printed one after the other.
COLUMNS_MIN_WIDTH = 150
_SEPARATOR = " | "

#: The call types the destination sends by default, in Segment's order.
_SENT_TYPES = [t for t in ("identify", "track", "page", "screen", "group", "alias")
               if t in DEFAULT_TYPES]
_SKIP_TEXT = {
    "integrations": "not sent: opted out of Sprig",
    "type": "not sent: Sprig takes " + "/".join(_SENT_TYPES),
    "anonymous": "not sent: no userId (Sprig requires one)",
}
_STATUS_TEXT = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
                403: "Forbidden", 422: "Unprocessable", 429: "Too Many Requests"}


def send_session(client: Any) -> None:
    """Send the demo's session: one returning user, one anonymous visitor who signs up."""
    # A returning user: email and nested traits (plan.tier), then Engage audience booleans.
    client.identify(DEMO_USER, {
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "plan": {"tier": "pro", "seats": 5},
        "roles": ["admin", "billing"],
    })
    client.identify(
        DEMO_USER,
        {"power_users": True, "churn_risk": False},
        context={"personas": {"computation_class": "audience", "computation_key": "power_users"}},
    )
    client.track(DEMO_USER, "Signed In")
    client.track(DEMO_USER, "Report Exported", {"format": "csv"})
    client.track(DEMO_USER, "Order Completed", {"order_id": "o-1001", "total": 49.5})
    client.page(DEMO_USER, category="Marketing", name="Pricing")
    client.page(DEMO_USER, properties={"url": "https://example.com/settings"})
    # Opted out of Sprig, once under each name the Integrations object may use.
    client.track(DEMO_USER, "Payment Details Updated", integrations={"Sprig": False})
    client.track(DEMO_USER, "Password Changed", integrations={"Sprig Cloud": False})
    client.identify(DEMO_USER, {"support_notes": "vip"}, integrations={"UserLeap": False})
    # "All": false turns every destination off, unless one is named with true.
    client.track(DEMO_USER, "Impersonation Started", integrations={"All": False})
    client.track(DEMO_USER, "Survey Eligible", integrations={"All": False, "Sprig": True})
    client.group(DEMO_USER, "acme-inc", {"name": "Acme Inc", "plan": "enterprise"})
    # An anonymous visitor, who then signs up.
    client.page(anonymous_id=ANONYMOUS_ID, name="Home")
    client.alias(ANONYMOUS_ID, NEW_USER)
    client.identify(NEW_USER, {"email": "grace@example.com", "plan": {"tier": "free"}})
    client.track(NEW_USER, "Signed Up", context={"traits": {"email": "grace@example.com"}})


@dataclass(frozen=True)
class SprigRequestView:
    """One request to Sprig as the report shows it (``status`` is None when not observed)."""

    method: str
    path: str
    status: Optional[int]
    body: Any


def in_call_order(requests: Sequence[SprigRequestView],
                  messages: Sequence[Mapping[str, Any]]) -> List[SprigRequestView]:
    """``requests`` ordered by their user's first call, each user's kept in sending order.

    Several requests are in flight at once, so different users' requests reach Sprig in
    any order; a report in call order reads the same on every run.
    """
    first: Dict[str, int] = {}
    for index, message in enumerate(messages):
        first.setdefault(str(message.get("userId")), index)

    def key(request: SprigRequestView) -> int:
        body = request.body
        user = body.get("userId") if isinstance(body, dict) else None
        return first.get(str(user), len(messages)) if user is not None else len(messages)

    return sorted(requests, key=key)  # stable: a user's requests stay in sending order


def observed_requests(local: FakeSprig) -> List[SprigRequestView]:
    """The Sprig (``/v2``) requests the local fake recorded, in call order."""
    seen = [SprigRequestView(r.method, r.path, r.status, r.json)
            for r in local.requests if r.path.startswith("/v2/")]
    return in_call_order(seen, local.segment_messages)


def computed_requests(messages: Iterable[Mapping[str, Any]]) -> List[SprigRequestView]:
    """The ``/v2/users`` requests the destination makes for ``messages`` sent together."""
    messages = list(messages)
    bodies, _ = SprigPlanner().bodies(messages)
    return in_call_order([SprigRequestView("POST", "/v2/users", None, body.payload)
                          for body in bodies], messages)


# -- rendering ------------------------------------------------------------------------------


def _who(message: Mapping[str, Any]) -> str:
    user_id = message.get("userId")
    if user_id:
        return str(user_id)
    anonymous = message.get("anonymousId")
    return f"(anonymous {anonymous})" if anonymous else "(no id)"


def _what(message: Mapping[str, Any]) -> str:
    kind = message.get("type")
    if kind == "track":
        return _compact(message.get("event"))
    if kind in ("page", "screen"):
        name = message.get("name")
        return _compact(name) if name else "(no name)"
    if kind == "identify":
        traits = message.get("traits") or {}
        return "traits: " + ", ".join(str(k) for k in traits)
    if kind == "alias":
        return f"previousId {message.get('previousId')}"
    if kind == "group":
        return f"groupId {message.get('groupId')}"
    return ""


def segment_entries(messages: Sequence[Mapping[str, Any]], width: int) -> List[List[str]]:
    """One entry (a list of lines) per Segment message: what it was and where it went."""
    entries = []
    for number, message in enumerate(messages, 1):
        head = f"{number:>2} {message.get('type', '?'):<8} {_who(message)}  {_what(message)}"
        integrations = message.get("integrations") or {}
        if integrations:
            head += f"  integrations {_compact(integrations)}"
        reason = _reason(message)
        route = "-> Sprig" if reason is None else _SKIP_TEXT.get(reason, f"not sent: {reason}")
        if len(head) + 2 + len(route) <= width:
            entries.append([f"{head}  {route}"])
        else:
            entries.append([head, f"   {route}"])
    return entries


def _wrap_json_items(items: List[str], open_: str, close: str, width: int, indent: str,
                     sep: str = ",") -> List[str]:
    """Greedy-fill JSON items into lines of ``width``, continuation lines indented."""
    lines: List[str] = []
    current = indent + open_
    for index, item in enumerate(items):
        token = item + (sep if index < len(items) - 1 else close)
        if len(current) + len(token.rstrip()) > width and current.strip() not in ("", open_):
            lines.append(current.rstrip())
            current = indent + " " + token
        else:
            current += token
    lines.append(current if items else indent + open_ + close)
    return lines


def sprig_entries(requests: Sequence[SprigRequestView], width: int) -> List[List[str]]:
    """One entry per Sprig request: method, path, status, then the body field by field."""
    entries = []
    for number, request in enumerate(requests, 1):
        status = ""
        if request.status is not None:
            status = f" -> {request.status} {_STATUS_TEXT.get(request.status, '')}".rstrip()
        lines = [f"{number:>2} {request.method} {request.path}{status}"]
        body = request.body
        if not isinstance(body, dict):
            lines.append(f"   {_compact(body)}")
            entries.append(lines)
            continue
        for key, value in body.items():
            if key == "events" and isinstance(value, list):
                lines.append("   events:")
                lines.extend(f"     {_compact(event)}" for event in value)
            elif isinstance(value, dict) and value:
                head = f"   {key}: "
                pairs = [f"{_compact(k)}:{_compact(v)}" for k, v in value.items()]
                wrapped = _wrap_json_items(pairs, "{", "}", width, " " * len(head))
                lines.append(head + wrapped[0].lstrip())
                lines.extend(wrapped[1:])
            elif isinstance(value, list) and value:
                head = f"   {key}: "
                wrapped = _wrap_json_items([_compact(v) for v in value], "[", "]", width,
                                           " " * len(head))
                lines.append(head + wrapped[0].lstrip())
                lines.extend(wrapped[1:])
            else:
                lines.append(f"   {key}: {_compact(value)}")
        entries.append(lines)
    return entries


def _fit(entries: List[List[str]], width: int) -> List[str]:
    """Flatten entries into lines no wider than ``width`` (long lines wrap, indented)."""
    out: List[str] = []
    for entry in entries:
        for line in entry:
            if len(line) <= width:
                out.append(line)
                continue
            indent = " " * min(len(line) - len(line.lstrip()) + 3, width // 2)
            out.extend(textwrap.wrap(line, width, subsequent_indent=indent,
                                     break_long_words=True, break_on_hyphens=False))
    return out


def _reason(message: Mapping[str, Any]) -> Optional[str]:
    reason = skip_reason(message)
    return None if reason is None else str(getattr(reason, "value", reason))


def _explain(messages: Sequence[Mapping[str, Any]], requests: Sequence[SprigRequestView]
             ) -> List[str]:
    """What the routing did, in sentences whose counts match the report."""
    reasons = [_reason(m) for m in messages]
    opted_out = [m for m, r in zip(messages, reasons) if r == "integrations"]
    names: List[str] = []
    for message in opted_out:
        integrations = message.get("integrations") or {}
        keys = [k for k in (*INTEGRATION_NAMES, "All") if integrations.get(k) is False]
        if keys and f'"{keys[0]}": false' not in names:
            names.append(f'"{keys[0]}": false')
    lines = []
    if opted_out:
        lines.append(f"{plural(len(opted_out), 'call')} opted out of Sprig "
                     f"({', '.join(names)}) reached Segment but not Sprig.")
    others = []
    by_type = Counter(str(m.get("type")) for m, r in zip(messages, reasons) if r == "type")
    if by_type:
        kinds = ", ".join(plural(n, f"{kind} call") for kind, n in sorted(by_type.items()))
        taken = ", ".join(_SENT_TYPES[:-1]) + " and " + _SENT_TYPES[-1]
        others.append(f"{kinds} (Sprig takes {taken})")
    anonymous = reasons.count("anonymous")
    if anonymous:
        others.append(f"{plural(anonymous, 'anonymous call')} (Sprig needs a userId)")
    if others:
        lines.append("Also kept from Sprig: " + "; ".join(others) + ".")
    sent = reasons.count(None)
    posts = plural(len(requests), "POST /v2/users request")
    if sent == 0:
        lines.append("No call reached Sprig.")
    elif sent == 1:
        lines.append(f"{'The other' if len(messages) > 1 else 'The'} call reached Sprig in "
                     f"{posts}.")
    else:
        every = "The other" if sent < len(messages) else "All"
        lines.append(f"{every} {sent} calls reached Sprig in {posts}: calls for one user that "
                     "wait together are coalesced into one request.")
    return lines


def render_report(
    segment_messages: Sequence[Mapping[str, Any]],
    sprig_requests: Sequence[SprigRequestView],
    stats: Mapping[str, int],
    *,
    width: int,
    layout: str = "auto",
    sprig_label: str = "What Sprig received",
) -> str:
    """The demo's text report: both sides (columns or sections), the stats, the routing."""
    columns = layout == "columns" or (layout == "auto" and width >= COLUMNS_MIN_WIDTH)
    left_title = (f"What Segment received (POST /v1/batch): "
                  f"{plural(len(segment_messages), 'message')}")
    right_title = f"{sprig_label} (POST /v2/users): {plural(len(sprig_requests), 'request')}"
    out: List[str] = []
    if columns:
        col = max(40, (width - len(_SEPARATOR)) // 2)
        left = _fit(segment_entries(segment_messages, col), col)
        right = _fit(sprig_entries(sprig_requests, col), col)
        out.append(f"{left_title[:col]:<{col}}{_SEPARATOR}{right_title[:col]}")
        out.append(f"{'-' * col}-+-{'-' * col}")
        for index in range(max(len(left), len(right))):
            a = left[index] if index < len(left) else ""
            b = right[index] if index < len(right) else ""
            out.append(f"{a:<{col}}{_SEPARATOR}{b}".rstrip())
    else:
        col = max(40, min(width, 100))
        out.extend([f"== {left_title} ==", *_fit(segment_entries(segment_messages, col), col)])
        out.extend(["", f"== {right_title} ==", *_fit(sprig_entries(sprig_requests, col), col)])
    text_width = max(40, min(width, 120))
    out.append("")
    out.append("SprigDestination.stats():")
    pairs = [f"{key!r}: {value!r}" for key, value in stats.items()]
    out.extend(_wrap_json_items(pairs, "{", "}", text_width, "  ", sep=", "))
    out.append("")
    for line in _explain(segment_messages, sprig_requests):
        out.extend(textwrap.wrap(line, text_width))
    return "\n".join(out) + "\n"


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` wins; 100 when unknown)."""
    return shutil.get_terminal_size((100, 24)).columns


def print_report(
    local: FakeSprig,
    destination: SprigDestination,
    *,
    file: Optional[TextIO] = None,
    layout: str = "auto",
) -> None:
    """Print what ``local`` received as Segment and as Sprig (side by side when wide enough).

    For demos and examples wired like the quickstart: an analytics-python ``Client`` with
    ``host=local.url`` and a ``SprigDestination(endpoint=local.url)``, already flushed.
    """
    stream = sys.stdout if file is None else file
    stream.write(render_report(local.segment_messages, observed_requests(local),
                               destination.stats(), width=terminal_width(), layout=layout))
    stream.flush()


# -- the command ----------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What one demo run produced."""

    segment_messages: List[Dict[str, Any]]
    sprig_requests: List[SprigRequestView]
    stats: Dict[str, int]
    real: bool

    def as_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (``--json``)."""
        return {
            "sprig_target": "sprig" if self.real else "local",
            "segment": self.segment_messages,
            "sprig": [{"method": r.method, "path": r.path, "status": r.status, "body": r.body}
                      for r in self.sprig_requests],
            "stats": self.stats,
        }


def run_session(
    real_api_key: Optional[str] = None,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    timeout: float = 30.0,
) -> DemoResult:
    """Run the session through analytics-python + SprigDestination and collect both sides.

    Segment's side always goes to a local fake. Sprig's side goes to the same local fake,
    or, when ``real_api_key`` is given, to the Sprig API at ``endpoint``.
    """
    install()  # idempotent: the demo needs Client.add_plugin even after an uninstall()
    with FakeSprig(api_key=DEMO_API_KEY) as local:
        client = Client(DEMO_WRITE_KEY, host=local.url, upload_interval=0.05)
        destination = SprigDestination(
            api_key=real_api_key or DEMO_API_KEY,
            endpoint=endpoint if real_api_key else local.url,
            # Everything goes out at flush(), so the requests shown are deterministic.
            flush_interval=3600.0,
            max_retries=2 if real_api_key else 10,
        )
        client.add_plugin(destination)
        try:
            send_session(client)
            client.flush(timeout=timeout)
            messages = local.segment_messages
            # The local fake shows what arrived; for the real Sprig, what was sent.
            requests = computed_requests(messages) if real_api_key else observed_requests(local)
            stats = destination.stats()
        finally:
            client.shutdown()
            destination.shutdown(timeout=2.0)
    return DemoResult(messages, requests, stats, bool(real_api_key))
