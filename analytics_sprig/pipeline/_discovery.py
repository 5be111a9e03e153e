"""Entry-point discovery of installed plugins: loaded only on request, never at import."""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Any, Iterable, List, Optional, Tuple

logger = logging.getLogger("analytics_sprig")

#: Packages declare plugin factories under this entry-point group, e.g. in pyproject.toml:
#: ``[project.entry-points."analytics_sprig.plugins"] myplugin = "mypkg:make_plugin"``.
ENTRY_POINT_GROUP = "analytics_sprig.plugins"


def _entry_points(group: str) -> Iterable[Any]:
    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=group)
    return metadata.entry_points().get(group, ())  # Python 3.9: a dict of groups


def load_plugins(
    client: Any = None,
    *,
    names: Optional[Iterable[str]] = None,
    group: str = ENTRY_POINT_GROUP,
) -> Tuple[List[object], List[Tuple[str, BaseException]]]:
    """Load the plugin factories installed under ``group`` and register their plugins.

    Each entry point names a callable taking no arguments that returns a plugin (an
    object with ``@hookimpl`` methods). ``names`` restricts loading to those entry-point
    names. Plugins are registered on ``client`` (the module-level default client when
    ``None``). A broken entry point (import error, factory error, invalid hooks) is
    logged and skipped. Returns ``(plugins, errors)`` with ``errors`` as
    ``[(entry point name, exception)]``.
    """
    import segment.analytics as analytics

    wanted = None if names is None else set(names)
    plugins: List[object] = []
    errors: List[Tuple[str, BaseException]] = []
    for entry_point in _entry_points(group):
        if wanted is not None and entry_point.name not in wanted:
            continue
        try:
            plugin = entry_point.load()()
            if client is None:
                analytics.add_plugin(plugin, entry_point.name)
            else:
                client.add_plugin(plugin, entry_point.name)
        except Exception as exc:
            logger.warning("skipping analytics plugin entry point %r: %r", entry_point.name, exc)
            errors.append((entry_point.name, exc))
            continue
        plugins.append(plugin)
    return plugins, errors
