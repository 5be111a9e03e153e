"""Test helpers: a local fake Sprig (and Segment ``/v1/batch``) server.

``from analytics_sprig.testing import FakeSprig``
"""

from .fake_server import FakeSprig, RecordedRequest, serve

__all__ = ["FakeSprig", "RecordedRequest", "serve"]
