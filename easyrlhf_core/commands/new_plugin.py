"""``easyrlhf new-plugin NAME``: write a pip-installable plugin package ``easyrlhf-plugin-NAME/``.

The files come from the templates in ``easyrlhf_core/templates/plugin`` (package data; ``*.tmpl``, with
``${name}``, ``${dist}``, ``${module}`` and ``${title}`` substituted by :class:`string.Template`): a
pyproject with the entry point, a module with a method, a dataset and a reward that work, tests on the
shipped fixtures, and a README. Light: no torch, it only writes files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["plugin_names", "write_plugin"]

#: Lowercase words of letters and digits joined by single ``-`` or ``_``, starting with a letter.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
PREFIX = "easyrlhf-plugin-"
#: The template directory that becomes the plugin's module.
PACKAGE_DIR = "package"


def plugin_names(name: str) -> dict[str, str]:
    """The substitutions for ``NAME``: ``name`` (the plugin, method and entry-point name), ``dist``
    (``easyrlhf-plugin-NAME``), ``module`` (``easyrlhf_plugin_NAME``, ``-`` as ``_``) and ``title`` (the
    class-name prefix, ``my-method`` -> ``MyMethod``); a :class:`ConfigError` for a name that cannot be one."""
    if name.startswith(PREFIX):
        raise ConfigError(
            f"give the name without the '{PREFIX}' prefix: `easyrlhf new-plugin {name[len(PREFIX) :] or 'NAME'}`",
            where="NAME",
        )
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid plugin name: use lowercase letters and digits, starting with a "
            f"letter, words joined by single '-' or '_' (e.g. 'my-method')",
            where="NAME",
        )
    return {
        "name": name,
        "dist": PREFIX + name,
        "module": "easyrlhf_plugin_" + name.replace("-", "_"),
        "title": "".join(word.capitalize() for word in re.split(r"[-_]", name)),
    }


def check_names_free(values: dict[str, str]) -> None:
    """Refuse a name whose plugin (entry point), method, dataset (``NAME-jsonl``) or reward (``NAME-length``)
    an installed plugin already has: the new one would clash with it, or silently not load."""
    from importlib.metadata import entry_points

    from easyrlhf_core.runtime.registry import get_registry

    name = values["name"]
    registry = get_registry()
    taken = [f"plugin '{name}'"] if any(ep.name == name for ep in entry_points(group="easyrlhf")) else []
    taken += [
        f"{kind} '{wanted}'"
        for kind, entries, wanted in (
            ("method", registry.methods, name),
            ("dataset", registry.datasets, f"{name}-jsonl"),
            ("reward", registry.rewards, f"{name}-length"),
        )
        if wanted in entries
    ]
    if taken:
        raise ConfigError(f"an installed plugin already has {', '.join(taken)}; choose another NAME", where="NAME")


def write_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write ``DIRECTORY/easyrlhf-plugin-NAME/`` from the templates; its path. Refuses (an
    :class:`EasyRLHFError`, nothing written) when the name is invalid or taken, or the target exists."""
    values = plugin_names(name)
    check_names_free(values)
    target = Path(directory) / values["dist"]
    if target.exists():
        raise EasyRLHFError("already exists; choose another NAME or --directory (nothing was written)", file=target)
    files = {_target_path(relative, values): Template(text).substitute(values) for relative, text in _templates()}
    try:
        for relative, text in sorted(files.items()):
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EasyRLHFError(f"cannot write the plugin package: {exc.strerror or exc}", file=target) from None
    return target


def _templates() -> Iterator[tuple[str, str]]:
    """``(relative path, text)`` of every ``*.tmpl`` file under the plugin templates."""
    root = resources.files("easyrlhf_core") / "templates" / "plugin"

    def walk(node: Traversable, prefix: str) -> Iterator[tuple[str, str]]:
        for child in node.iterdir():
            if child.is_dir():
                yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".tmpl"):
                yield f"{prefix}{child.name}", child.read_text(encoding="utf-8")

    yield from walk(root, "")


def _target_path(relative: str, values: dict[str, str]) -> str:
    """A template's path in the package: ``.tmpl`` dropped, the ``package/`` directory named as the module."""
    parts = relative.removesuffix(".tmpl").split("/")
    if parts[0] == PACKAGE_DIR:
        parts[0] = values["module"]
    return "/".join(parts)
