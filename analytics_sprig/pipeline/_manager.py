"""The per-client pluggy ``PluginManager``: every registration change reaches the host.

The host calls hook implementations from a per-call cache instead of through
``pm.hook`` (a pluggy hook call costs ~1.2 µs on the app's hot path, a direct call
~0.1 µs). That cache must never disagree with the manager, so registration is made
here, in ``register`` / ``unregister`` themselves: ``client.plugin_manager.register(p)``
is exactly ``client.add_plugin(p)``, and a plugin the pipeline cannot run (a wrapper, a
misspelled hook, a wrong argument name) is rejected at registration, never ignored.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Callable, List, Optional, Tuple, Union

import pluggy

from .. import hookspecs

#: Every hook of the pipeline; the host calls each implementation on its own.
PIPELINE_HOOKS = (
    "analytics_before",
    "analytics_enrich",
    "analytics_destination",
    "analytics_after",
    "analytics_flush",
    "analytics_shutdown",
)


class PipelineManager(pluggy.PluginManager):
    """A ``pluggy.PluginManager`` for one client's analytics pipeline.

    Works like any pluggy manager (``register``, ``unregister``, ``get_plugins``,
    ``set_blocked``, ``load_setuptools_entrypoints``, ``pm.hook.<name>(...)``...), with
    three differences:

    - ``register`` validates at once (``check_pending``: unknown hook names fail) and
      rejects wrapper implementations (``wrapper=True`` / ``hookwrapper=True``) with
      ``ValueError``; a rejected plugin is left unregistered;
    - every registration change rebuilds the pipeline's per-call cache;
    - hook call monitoring and tracing are refused (``NotImplementedError``): the pipeline
      calls implementations directly, so a monitor would silently miss most calls.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change: Optional[Callable[[], None]] = None
        # Guards registration and the cache rebuild that follows it, per client.
        self.registration_lock = threading.RLock()
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def register(self, plugin: Any, name: Optional[str] = None) -> Optional[str]:
        """Register ``plugin`` and make its hooks live for the client's next call.

        Raises pluggy's ``PluginValidationError`` for an unknown hook name or argument,
        ``ValueError`` for a wrapper implementation or a plugin (or name) already
        registered; in each case nothing of ``plugin`` stays registered.
        """
        with self.registration_lock:
            if self.is_registered(plugin):
                # pluggy raises ValueError; the existing registration must survive it.
                return super().register(plugin, name)
            try:
                # pluggy < 1.7 leaves a plugin half-registered when register() itself
                # rejects one of its hooks (wrong argument name), hence inside the try.
                registered = super().register(plugin, name)
                self.check_pending()
                _reject_wrappers(self, plugin)
            except Exception:
                if self.is_registered(plugin):
                    super().unregister(plugin)
                self._changed()
                raise
            self._changed()
            return registered

    def unregister(self, plugin: Any = None, name: Optional[str] = None) -> Any:
        """Unregister ``plugin`` (or the plugin registered as ``name``); see pluggy."""
        with self.registration_lock:
            try:
                return super().unregister(plugin, name)
            finally:
                self._changed()

    def add_hookspecs(self, module_or_class: Union[ModuleType, type]) -> None:
        """Add hook specifications (see pluggy); the per-call cache follows."""
        with self.registration_lock:
            super().add_hookspecs(module_or_class)
            self._changed()

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        """Refused: the pipeline calls hook implementations directly, not through pluggy."""
        raise NotImplementedError(
            "the analytics pipeline calls hook implementations directly (not through "
            "pm.hook), so hook call monitoring and tracing would miss its calls"
        )

    def enable_tracing(self) -> Callable[[], None]:
        """Refused, like :meth:`add_hookcall_monitoring`."""
        return self.add_hookcall_monitoring(None, None)

    def reset_after_fork(self) -> None:
        """In the child of ``fork()``: a lock a parent thread held must not stay held."""
        self.registration_lock = threading.RLock()

    def named_plugins(self) -> List[Tuple[str, object]]:
        """``(name, plugin)`` of every registered plugin, in registration order."""
        return [(name, plugin) for name, plugin in self.list_name_plugin()
                if plugin is not None]  # None: a blocked name


def _reject_wrappers(pm: pluggy.PluginManager, plugin: object) -> None:
    for hook in PIPELINE_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                raise ValueError(
                    f"{hook} of {impl.plugin_name!r} is a wrapper; the analytics "
                    "pipeline calls each implementation on its own, so wrappers "
                    "are not supported"
                )
