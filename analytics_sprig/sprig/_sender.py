"""The Sprig backend of the delivery engine: plans messages and sends one body at a time.

It plugs :class:`~analytics_sprig.sprig._planning.SprigPlanner` (route, filter, map, merge)
and the API client into the generic engine (:mod:`analytics_sprig.batching`), and owns the
one piece of delivery policy that is Sprig's own: the auth cool-down. After a 401/403 (a
wrong, revoked or other-environment key) every attempt fails at once, without a request,
for ``auth_cooldown`` seconds; then exactly one request probes the key again.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .._errors import MessageDropped, SprigAuthError
from ..batching._backend import Part, Plan, Reject, Skip
from ..batching._lanes import Body
from ..batching._ledger import DropReason
from ..pipeline._pipeline import Pipeline
from ._api import SprigClient, SprigSession
from ._mapping import Payload
from ._planning import Ref, SprigPlanner, describe, ref_of
from ._routing import FailReason, SkipReason

logger = logging.getLogger("analytics_sprig")

#: An inbox item: the normalized message and the Segment client it came through.
Item = Any


class SprigSender:
    """Backend for :class:`~analytics_sprig.batching._worker.BatchWorker` (see the
    :class:`~analytics_sprig.batching._backend.Backend` protocol)."""

    name = "Sprig"
    skip_reasons = tuple(SkipReason)
    fail_reasons = tuple(FailReason)

    def __init__(self, api: SprigClient, planner: SprigPlanner, *, auth_cooldown: float,
                 timeline: Optional[Pipeline] = None) -> None:
        self._api = api
        self.planner = planner
        self.merger = planner.merger
        self._auth_cooldown = auth_cooldown
        #: The destination's own plugins (``sprig.add_plugin``): their before/enrich hooks
        #: see a copy of each routed call before it is mapped, their after hooks after.
        self.timeline = timeline
        self._auth_lock = threading.Lock()
        self._probe_settled = threading.Condition(self._auth_lock)
        self._auth_error: Optional[SprigAuthError] = None
        self._auth_until = 0.0
        self._probing = False
        self.auth_errors = 0

    # -- planning (the engine's planner thread) --------------------------------------------

    def plan(self, item: Item) -> Plan[Payload]:
        """Plan an inbox item: ``(message, client)``, already routed on the app's thread."""
        message, client = item
        timeline = self.timeline
        if timeline is None or not timeline.active:
            return self.planner.plan_routed(message)
        try:
            copied = copy.deepcopy(message)  # Segment's queue holds the original
        except Exception as exc:
            return self.planner.rejected(message, exc)
        prepared = timeline.run_before(copied, client)
        if prepared is None:
            return Skip(SkipReason.PLUGIN)
        plan = self.planner.plan_routed(prepared)
        timeline.run_after(prepared, isinstance(plan, Part), client)
        return plan

    def plan_message(self, message: Any, client: Any = None) -> Plan[Payload]:
        """Route, then :meth:`plan` (for messages not routed on the app's thread)."""
        try:
            reason = self.planner.route(message)
        except Exception as exc:
            return self.planner.rejected(message, exc)
        if reason is not None:
            return Skip(reason)
        return self.plan((message, client))

    def bodies(self, messages: Iterable[Any]) -> Tuple[List[Body[Payload]],
                                                       List[Union[Skip, Reject]]]:
        """The requests ``messages`` make when they wait together, through the
        destination's own plugins too."""
        return self.planner.bodies(messages, self.plan_message)

    def rejected(self, item: Item, error: BaseException) -> Reject:
        """An item whose planning raised after all."""
        return self.planner.rejected(item[0], error)

    def ref(self, item: Item) -> Ref:
        """A light reference to an unplanned item."""
        return ref_of(item[0])

    @staticmethod
    def describe(refs: Sequence[Ref]) -> List[Dict[str, str]]:
        """What ``on_error`` / ``on_delivered`` receive."""
        return describe(refs)

    @staticmethod
    def dropped(reason: DropReason, detail: str) -> BaseException:
        """The error reported for dropped messages."""
        return MessageDropped(reason.value, detail)

    # -- sending (sender threads) ----------------------------------------------------------

    def open_session(self, timeout: Optional[float] = None) -> SprigSession:
        """One connection for one sender thread (``timeout``: a shorter attempt bound)."""
        return self._api.session(timeout)

    def precheck(self) -> None:
        """Fail at once during an auth cool-down; after it, exactly one request probes
        while the others wait for its answer (at most one request's ``timeout``)."""
        with self._auth_lock:
            if self._probing:
                self._probe_settled.wait(self._api.timeout + 1.0)
            error = self._auth_error
            if error is None:
                return
            if time.monotonic() < self._auth_until or self._probing:
                raise SprigAuthError(error.status_code, error.detail)
            self._probing = True  # this attempt probes; the others wait for it

    def send(self, session: SprigSession, body: Payload) -> None:
        """``POST /v2/users`` once."""
        try:
            session.upsert_user(body)
        except SprigAuthError as exc:
            self._auth_failed(exc)
            raise
        except Exception:
            self._probe_done()
            raise
        if self._auth_error is not None:
            with self._auth_lock:
                if self._auth_error is not None:
                    self._auth_error = None
                    self._end_probe()
                    logger.info("Sprig accepts the API key again")

    def _probe_done(self) -> None:
        with self._auth_lock:
            self._end_probe()

    def _end_probe(self) -> None:
        """(The caller holds the auth lock.)"""
        if self._probing:
            self._probing = False
            self._probe_settled.notify_all()

    def _auth_failed(self, exc: SprigAuthError) -> None:
        with self._auth_lock:
            first = self._auth_error is None
            self._auth_error = exc
            self._auth_until = time.monotonic() + self._auth_cooldown
            self._end_probe()
            self.auth_errors += 1
        if first:
            logger.error(
                "Sprig rejected the API key (HTTP %d): it is wrong or revoked, or it belongs "
                "to another Sprig environment (a Development key used for Production, or the "
                "reverse). Messages fail without being sent for %.0fs, then one request "
                "probes again.",
                exc.status_code, self._auth_cooldown,
            )
        else:
            logger.warning("Sprig still rejects the API key (HTTP %d)", exc.status_code)

    def after_fork_in_child(self) -> None:
        """A forked child starts with no cool-down and new locks."""
        self._auth_lock = threading.Lock()
        self._probe_settled = threading.Condition(self._auth_lock)
        self._auth_error = None
        self._probing = False
        self.auth_errors = 0
