"""Shared fixtures: a loopback FakeSprig, real Segment clients and Sprig destinations.

Fixture names are relied on by several test modules; keep them stable:

- ``fake_sprig``: a started :class:`~analytics_sprig.testing.FakeSprig` with api_key
  ``"test-key"`` (it also accepts Segment's ``/v1/batch``).
- ``make_client(**kwargs)``: a real ``segment.analytics.Client("write-key", host=fake.url)``
  with a short upload interval; stopped (and its plugins shut down) at teardown.
- ``make_destination(**kwargs)``: a :class:`~analytics_sprig.SprigDestination` pointed at the
  fake, with test-sized windows and backoffs; ``shutdown(timeout=2)`` at teardown.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest
from segment.analytics import Client

import analytics_sprig
from analytics_sprig import SprigDestination
from analytics_sprig.testing import FakeSprig

API_KEY = "test-key"
WRITE_KEY = "write-key"

# Short enough to keep tests fast, long enough that a loaded 2-core machine still copes.
DESTINATION_DEFAULTS: dict[str, Any] = {
    "flush_interval": 0.02,
    "initial_backoff": 0.01,
    "max_backoff": 0.05,
    "timeout": 2.0,
    "connect_timeout": 1.0,
    "shutdown_timeout": 2.0,
}


@pytest.fixture
def fake_sprig() -> Iterator[FakeSprig]:
    """A FakeSprig on 127.0.0.1 expecting ``Authorization: API-Key test-key``."""
    with FakeSprig(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def make_client(fake_sprig: FakeSprig) -> Iterator[Callable[..., Client]]:
    """Factory of real Segment clients whose ``/v1/batch`` goes to ``fake_sprig``."""
    clients: List[Client] = []

    def make(**kwargs: Any) -> Client:
        analytics_sprig.install()  # idempotent; guards against a test that uninstalled it
        kwargs.setdefault("host", fake_sprig.url)
        kwargs.setdefault("upload_interval", 0.05)
        kwargs.setdefault("max_retries", 3)
        kwargs.setdefault("timeout", 5)
        client = Client(WRITE_KEY, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        # Bounded teardown: Client.shutdown()/join() could wait on a blackholed server.
        for consumer in client.consumers or ():
            consumer.pause()
            if consumer.is_alive():
                consumer.join(2)
        analytics_sprig.pipeline_of(client).shutdown(2)


@pytest.fixture
def make_destination(fake_sprig: FakeSprig) -> Iterator[Callable[..., SprigDestination]]:
    """Factory of SprigDestinations pointed at ``fake_sprig`` with test-sized timings."""
    destinations: List[SprigDestination] = []

    def make(**kwargs: Any) -> SprigDestination:
        options = {**DESTINATION_DEFAULTS, "endpoint": fake_sprig.url, **kwargs}
        api_key = options.pop("api_key", API_KEY)
        destination = SprigDestination(api_key, **options)
        destinations.append(destination)
        return destination

    yield make
    for destination in destinations:
        destination.shutdown(timeout=2)
