"""Test helpers: a local fake Sprig (and Segment ``/v1/batch``) server.

``from analytics_sprig.testing import FakeSprig``; it records requests, injects faults, and
simulates distance (``latency``, ``jitter``) and Sprig's rate limit (``rate_limit``).
"""

from .fake_server import FakeSprig, RecordedRequest, serve

__all__ = ["FakeSprig", "RecordedRequest", "serve"]
