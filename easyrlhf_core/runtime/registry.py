"""Plugin discovery: entry points of group ``easyrlhf`` -> a pluggy manager -> a registry of names.

Each entry point loads in its own ``try``: a broken plugin is listed with status ``error`` and only the
commands that need it fail. Nothing is loaded at import time; call :func:`get_registry`.
``EASYRLHF_LOAD_PLUGINS`` (a comma list, as ``LLM_LOAD_PLUGINS``) limits the third-party plugins that load.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import pluggy

from easyrlhf_core.kit import hooks as hookspecs
from easyrlhf_core.kit.errors import PluginError
from easyrlhf_core.kit.context import provide_plugins
from easyrlhf_core.kit.hooks import BUILTIN_DISTRIBUTION

__all__ = ["get_registry", "Registry"]

ENTRY_POINT_GROUP = "easyrlhf"
#: Comma list of the third-party plugins to load (distribution or entry-point names); unset: all of them
LOAD_PLUGINS_ENV = "EASYRLHF_LOAD_PLUGINS"
KINDS = ("methods", "datasets", "rewards", "environments")
_KIND_SINGULAR = {
    "methods": "method",
    "datasets": "dataset",
    "rewards": "reward function",
    "environments": "environment",
}
_KIND_FLAG = {"methods": "--method", "datasets": "--dataset", "rewards": "--reward", "environments": "--env"}

T = TypeVar("T")


@dataclass
class PluginInfo:
    """One plugin: where it comes from and whether it loaded."""

    name: str
    package: str
    version: str
    status: str = "ok"
    error: str | None = None
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.name,
            "package": self.package,
            "version": self.version,
            "description": self.description,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class Entry(Generic[T]):
    """A registered method, dataset or reward class and the plugin that provides it."""

    name: str
    obj: T
    plugin: PluginInfo

    def as_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "plugin": self.plugin.name,
            "package": self.plugin.package,
            "version": self.plugin.version,
            "description": getattr(self.obj, "description", ""),
        }
        shapes = getattr(self.obj, "shapes", None)
        if shapes is not None:
            data["shapes"] = sorted(str(s) for s in shapes)
        shape = getattr(self.obj, "shape", None)
        if "shapes" not in data and hasattr(self.obj, "config_class"):
            data["shape"] = str(shape) if shape is not None else None
        return data


@dataclass
class Registry:
    """Everything the installed plugins provide, by kind and name."""

    plugins: list[PluginInfo] = field(default_factory=list)
    methods: dict[str, Entry] = field(default_factory=dict)
    datasets: dict[str, Entry] = field(default_factory=dict)
    rewards: dict[str, Entry] = field(default_factory=dict)
    environments: dict[str, Entry] = field(default_factory=dict)
    #: (kind, name) -> the entries that claim the same name
    conflicts: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        """The class registered as ``name``, or a :class:`PluginError` with a did-you-mean."""
        entries: dict[str, Entry] = getattr(self, kind)
        if (kind, name) in self.conflicts:
            raise PluginError(self.conflict_message(kind, name), where=_KIND_FLAG[kind])
        what = _KIND_SINGULAR[kind]
        if name not in entries:
            raise PluginError(unknown_name_message(what, name, list(entries)), where=_KIND_FLAG[kind])
        return entries[name].obj

    def conflict_message(self, kind: str, name: str) -> str:
        """The one sentence ``run`` and ``list-plugins`` both give for a name two plugins register."""
        owners = " and ".join(f"{e.plugin.package} (plugin {e.plugin.name})" for e in self.conflicts[(kind, name)])
        return (
            f"{_KIND_SINGULAR[kind]} '{name}' is registered by two plugins: {owners}; uninstall one of them "
            f"or leave one out of {LOAD_PLUGINS_ENV}"
        )

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Plugins and what they register; a name two plugins register is listed once per provider, each
        row with the same ``conflict`` sentence that ``run`` gives."""
        out: dict[str, list[dict[str, Any]]] = {"plugins": [p.as_dict() for p in self.plugins]}
        for kind in KINDS:
            rows = []
            for name, entry in getattr(self, kind).items():
                providers = self.conflicts.get((kind, name), [entry])
                for provider in providers:
                    row = provider.as_dict()
                    if len(providers) > 1:
                        row["conflict"] = self.conflict_message(kind, name)
                    rows.append(row)
            out[kind] = rows
        return out


def unknown_name_message(what: str, name: str, known: list[str]) -> str:
    """``unknown method 'dpp' (did you mean 'dpo'?); available: ...``"""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    available = ", ".join(sorted(known)) or "none installed"
    return f"unknown {what} '{name}'{hint}; available: {available}"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"] or dist.name, dist.version


def _normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, each run of ``-_.`` as ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def selected_entry_points(entry_points: list[metadata.EntryPoint], wanted: str | None) -> list[metadata.EntryPoint]:
    """The entry points to load: all of them when ``wanted`` (``EASYRLHF_LOAD_PLUGINS``) is None; otherwise the
    built-ins plus the plugins it names by distribution or entry-point name. A name matching none: PluginError."""
    if wanted is None:
        return list(entry_points)
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    chosen, matched = [], set()
    for ep in entry_points:
        package = _normalized(_distribution_of(ep)[0])
        hits = {name for name in names if _normalized(name) == package or name == ep.name}
        if hits or package == BUILTIN_DISTRIBUTION:
            chosen.append(ep)
            matched |= hits
    missing = [name for name in names if name not in matched]
    if missing:
        third_party = sorted(
            {
                f"{_distribution_of(ep)[0]} ({ep.name})"
                for ep in entry_points
                if _normalized(_distribution_of(ep)[0]) != BUILTIN_DISTRIBUTION
            }
        )
        raise PluginError(
            f"not an installed plugin package or plugin: {', '.join(repr(m) for m in missing)} "
            f"(installed third-party plugins: {', '.join(third_party) or 'none'}); pip install it "
            "or take it out of the list",
            where=LOAD_PLUGINS_ENV,
        )
    return chosen


def build_registry(extra_plugins: list[tuple[str, object]] | None = None) -> Registry:
    """Load the ``easyrlhf`` entry points :func:`selected_entry_points` picks (plus ``extra_plugins``, e.g.
    from tests, always) into a registry."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    loaded: list[tuple[PluginInfo, object]] = []
    extra = list(extra_plugins or [])
    extra_names = {name for name, _ in extra}
    installed: dict[int, PluginInfo] = {}  # id(module) -> its distribution, for extras that are installed too
    seen: set[str] = set()
    entry_points = selected_entry_points(
        list(metadata.entry_points(group=ENTRY_POINT_GROUP)), os.environ.get(LOAD_PLUGINS_ENV)
    )
    for ep in sorted(entry_points, key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        package, version = _distribution_of(ep)
        same = next((p for n, p in extra if n == ep.name and getattr(p, "__name__", None) == ep.value), None)
        if same is not None:  # this plugin, registered by hand (its own tests): that registration counts
            installed[id(same)] = PluginInfo(ep.name, package, version)
            continue
        info = PluginInfo(name=ep.name, package=package, version=version)
        try:
            module = ep.load()
            if any(module is plugin for _, plugin in extra):  # installed and registered by hand: once
                installed[id(module)] = info
                continue
            pm.register(module, name=ep.name if ep.name not in extra_names else f"{ep.name} ({package})")
            info.description = _first_line(module.__doc__)
        except Exception as exc:  # a broken plugin must not break the others
            info.status, info.error = "error", f"{type(exc).__name__}: {exc}"
            registry.plugins.append(info)
            continue
        registry.plugins.append(info)
        loaded.append((info, module))
    for name, plugin in extra:
        known = installed.get(id(plugin))
        info = PluginInfo(
            name=name,
            package=known.package if known else getattr(plugin, "__package_name__", name),
            version=known.version if known else getattr(plugin, "__version__", "0"),
            description=_first_line(plugin.__doc__),
        )
        registry.plugins.append(info)
        pm.register(plugin, name=name)
        loaded.append((info, plugin))

    all_plugins = [p for _, p in loaded]
    for info, plugin in loaded:
        others = [p for p in all_plugins if p is not plugin]
        for kind in KINDS:
            caller = pm.subset_hook_caller(f"register_{kind}", remove_plugins=others)
            try:
                caller(register=_registrar(registry, kind, info))
            except Exception as exc:
                info.status, info.error = "error", f"register_{kind} failed: {type(exc).__name__}: {exc}"
    return registry


def _registrar(registry: Registry, kind: str, info: PluginInfo) -> Callable[[Any], None]:
    entries: dict[str, Entry] = getattr(registry, kind)

    def register(obj: Any) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{_KIND_SINGULAR[kind]} {obj!r} has no 'name'")
        entry = Entry(name=name, obj=obj, plugin=info)
        if name in entries and entries[name].plugin is not info:
            first = entries[name]
            registry.conflicts.setdefault((kind, name), [first]).append(entry)
            for mine, other in ((info, first.plugin), (first.plugin, info)):  # both sides tell the same story
                mine.status = "conflict"
                mine.error = (
                    f"{_KIND_SINGULAR[kind]} '{name}' is also registered by {other.package} "
                    f"(plugin {other.name}); `easyrlhf run` refuses it until one is uninstalled "
                    f"or left out of {LOAD_PLUGINS_ENV}"
                )
            return
        entries[name] = entry

    return register


_registry: Registry | None = None
_extra: list[tuple[str, object]] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(_extra)
    return _registry


def register_plugin(name: str, plugin: object) -> None:
    """Add a plugin object by hand (tests, notebooks). Resets the cached registry."""
    global _registry
    _extra.append((name, plugin))
    _registry = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    global _registry
    _extra[:] = [(n, p) for n, p in _extra if n != name]
    _registry = None


def reset_registry() -> None:
    """Forget the cached registry (after installing or faking a distribution)."""
    global _registry
    _registry = None


provide_plugins(get_registry)  # the kit finds the installed plugins through this
