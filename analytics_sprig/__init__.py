"""analytics-sprig: a pluggy plugin pipeline for Segment's analytics-python, and Sprig.

Importing this package installs ``add_plugin`` / ``remove_plugin`` on
``segment.analytics`` and ``segment.analytics.Client`` (idempotent; :func:`uninstall`
undoes it)::

    import segment.analytics as analytics
    from analytics_sprig import SprigDestination

    analytics.write_key = "SEGMENT_WRITE_KEY"
    analytics.add_plugin(SprigDestination(api_key="SPRIG_API_KEY"))
    analytics.track("user-1", "Order Completed", {"total": 10})
    analytics.shutdown()

The library logs to the ``analytics_sprig`` logger only, which has a ``NullHandler``: nothing
is printed unless the application configures logging.
"""

import logging

from ._errors import (
    ConfigurationError,
    InvalidMessage,
    MessageDropped,
    SprigAPIError,
    SprigAuthError,
    SprigError,
    SprigNetworkError,
)
from ._version import __version__
from .hookspecs import hookimpl, hookspec
from .pipeline import (
    ENTRY_POINT_GROUP,
    fork_safe,
    install,
    installed,
    load_plugins,
    pipeline_of,
    uninstall,
)
from .sprig import DEFAULT_ENDPOINT, INTEGRATION_NAMES, SprigClient, SprigDestination

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENTRY_POINT_GROUP",
    "INTEGRATION_NAMES",
    "ConfigurationError",
    "InvalidMessage",
    "MessageDropped",
    "SprigAPIError",
    "SprigAuthError",
    "SprigClient",
    "SprigDestination",
    "SprigError",
    "SprigNetworkError",
    "__version__",
    "fork_safe",
    "hookimpl",
    "hookspec",
    "install",
    "installed",
    "load_plugins",
    "pipeline_of",
    "uninstall",
]

# Python's logging HOWTO for libraries: add only a NullHandler, so that in an app that
# configured no logging the last-resort handler does not print the library's warnings.
logging.getLogger("analytics_sprig").addHandler(logging.NullHandler())

install()
