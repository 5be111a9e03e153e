"""The generic plugin pipeline for analytics-python: host, hook specs, discovery.

Nothing here knows about Sprig: any destination or filter is a plugin.
"""

from ._discovery import ENTRY_POINT_GROUP, load_plugins
from ._host import fork_safe, install, installed, pipeline_of, uninstall
from ._manager import PipelineManager

__all__ = [
    "ENTRY_POINT_GROUP",
    "PipelineManager",
    "fork_safe",
    "install",
    "installed",
    "load_plugins",
    "pipeline_of",
    "uninstall",
]
