"""The plugin manager: built-ins, entry-point plugins and the registries they fill."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

import pluggy

from cimguard import hookspecs
from cimguard.errors import CimguardError

#: Built-in plugins, imported exactly as a third-party plugin would be.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "cimguard_plugins.devices.gaussian",
    "cimguard_plugins.devices.pcm",
    "cimguard_plugins.devices.rram",
    "cimguard_plugins.devices.fefet",
    "cimguard_plugins.datasets.digits",
    "cimguard_plugins.datasets.npz",
    "cimguard_plugins.solvers.apgd",
    "cimguard_plugins.solvers.flwc",
    "cimguard_plugins.solvers.pgd",
    "cimguard_plugins.solvers.lwc",
    "cimguard_plugins.trainers.noise",
    "cimguard_plugins.trainers.trice",
    "cimguard_plugins.trainers.atrice",
    "cimguard_plugins.trainers.vanilla",
    "cimguard_plugins.trainers.certified",
)

#: Set to any non-empty value to skip loading plugins from the ``cimguard``
#: entry-point group (mirrors pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).
DISABLE_AUTOLOAD_ENV = "CIMGUARD_DISABLE_PLUGIN_AUTOLOAD"

#: The registries, by the hook that fills them.
REGISTRY_HOOKS: dict[str, str] = {
    "devices": "register_devices",
    "solvers": "register_solvers",
    "trainers": "register_trainers",
    "datasets": "register_datasets",
}

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """Names of one kind (devices, solvers, ...) and the plugin that registered each."""

    kind: str
    factories: dict[str, T] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, factory: T, owner: str) -> None:
        if not name or not isinstance(name, str):
            raise CimguardError(f"plugin {owner} registered a {self.kind[:-1]} with an invalid name {name!r}")
        if name in self.factories:
            raise CimguardError(
                f"{self.kind[:-1]} name {name!r} is registered twice: by plugin {self.owners[name]} "
                f"and by plugin {owner}"
            )
        self.factories[name] = factory
        self.owners[name] = owner

    def get(self, name: str) -> T:
        try:
            return self.factories[name]
        except KeyError:
            known = ", ".join(sorted(self.factories)) or "none"
            raise CimguardError(f"unknown {self.kind[:-1]} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self.factories)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: Entry-point plugins that could not be loaded: ``{name: one-line reason}``.
load_errors: dict[str, str] = {}
#: Versions of the distributions that provided entry-point plugins, by plugin name.
_versions: dict[str, str] = {}


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        _load_entry_points(manager)
    return manager


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    """Register the ``cimguard`` entry-point plugins.

    Unlike ``load_setuptools_entrypoints`` this keeps going past a plugin that
    fails to import or validate: one broken third-party package must not take the
    whole tool (``cimguard --help`` included) down with a traceback.
    """
    load_errors.clear()
    _versions.clear()
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if entry_point.group != hookspecs.PROJECT_NAME or manager.has_plugin(entry_point.name):
                continue
            try:
                manager.register(entry_point.load(), name=entry_point.name)
            except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported, not raised
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                load_errors[entry_point.name] = f"{type(exc).__name__}: {reason}".rstrip(": ")
                continue
            _versions[entry_point.name] = dist.version


pm: pluggy.PluginManager = _new_manager()
_registries: dict[str, Registry[Any]] | None = None


def plugin_label(plugin: object) -> str:
    """The name a user sees for a plugin: its entry-point name or module name."""
    return pm.get_name(plugin) or repr(plugin)


def _build_registry(kind: str) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind)
    hook = getattr(pm.hook, REGISTRY_HOOKS[kind])
    # Calling each implementation on its own tells us which plugin registered
    # which name, so duplicate names can be reported with both owners.
    for impl in reversed(hook.get_hookimpls()):
        owner = plugin_label(impl.plugin)
        impl.function(register=lambda name, factory, _owner=owner: registry.add(name, factory, _owner))
    return registry


def registry(kind: str) -> Registry[Any]:
    """The registry of ``kind`` ("devices", "solvers", "trainers", "datasets")."""
    global _registries
    if _registries is None:
        _registries = {}
    if kind not in _registries:
        _registries[kind] = _build_registry(kind)
    return _registries[kind]


def describe_plugins() -> list[dict[str, Any]]:
    """Every plugin, the hooks it implements and the names it registers."""
    rows = []
    for plugin in pm.get_plugins():
        label = plugin_label(plugin)
        hooks = sorted(impl_name for impl_name in dir(plugin) if impl_name in _hook_names() and _is_impl(plugin, impl_name))
        registered: dict[str, list[str]] = {}
        for kind in REGISTRY_HOOKS:
            names = [name for name, owner in registry(kind).owners.items() if owner == label]
            if names:
                registered[kind] = sorted(names)
        rows.append(
            {
                "name": label,
                "builtin": label in BUILTIN_PLUGINS,
                "version": _versions.get(label),
                "hooks": hooks,
                "registers": registered,
            }
        )
    for name, reason in load_errors.items():
        rows.append({"name": name, "builtin": False, "version": None, "hooks": [], "registers": {}, "error": reason})
    return sorted(rows, key=lambda row: (not row["builtin"], row["name"]))


def _hook_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("register_")}


def _is_impl(plugin: object, attr: str) -> bool:
    return any(impl.plugin is plugin for impl in getattr(pm.hook, attr).get_hookimpls())
