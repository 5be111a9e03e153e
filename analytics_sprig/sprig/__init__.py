"""The Sprig destination: routing, mapping, API client, delivery and the plugin itself."""

from ._api import DEFAULT_ENDPOINT, SprigClient
from ._destination import SprigDestination
from ._routing import INTEGRATION_NAMES

__all__ = ["DEFAULT_ENDPOINT", "INTEGRATION_NAMES", "SprigClient", "SprigDestination"]
