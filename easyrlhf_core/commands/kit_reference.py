"""docs/kit.md, the plugin kit name by name, generated from the code (``python -m easyrlhf_core.commands.kit_reference
--write``; ``--check`` exits 1 when the file is stale).

The rule: a kit module's public names are its ``__all__``; every kit module (:data:`KIT_MODULES`, plus every
module of the ``easyrlhf_core.kit`` package) defines one. Each name is rendered with its signature and the
first paragraph of its docstring (a constant: its ``#:`` comment); a class also with its own public methods and
fields. The source is read with :mod:`ast`, never imported: no torch, and the same text on every machine.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KIT_MODULES", "Entry", "kit_modules", "hooks", "module_entries", "render", "main"]

ROOT = Path(__file__).resolve().parents[1]  # the easyrlhf_core package
PACKAGE = "easyrlhf_core"
#: The order docs/kit.md lists the kit in (the package itself first, for ``hookimpl``); a kit module missing
#: here is listed after these, so none is ever left out.
KIT_MODULES = ("easyrlhf_core",) + tuple(
    f"easyrlhf_core.kit.{name}"
    for name in (
        "bases",
        "hooks",
        "context",
        "config",
        "presets",
        "errors",
        "shapes",
        "rows",
        "data_loading",
        "dataset_cache",
        "model_loading",
        "model_dirs",
        "causal_lm",
        "chat_template",
        "shared_prefix_packing",
        "shared_prefix_forward",
        "completion_logprobs",
        "trainer_method",
        "trainer_run",
        "stopping",
        "distributed",
        "zero",
        "checkpoints",
        "metrics",
        "faults",
        "trackers",
        "rewards",
        "online",
        "online_trl",
        "rl_math",
        "findings",
        "stats",
        "testing",
        "tiny_models",
    )
)
COMMAND = "python -m easyrlhf_core.commands.kit_reference --write"
DOC = ROOT.parent / "docs" / "kit.md"
_VALUE_CHARS = 60


@dataclass
class Entry:
    """One rendered name: ``text`` is its signature line, ``summary`` its one line, ``members`` sub-lines."""

    module: str
    name: str
    text: str
    summary: str
    members: list[str] = field(default_factory=list)
    origin: str = ""  # the module that defines a re-exported name


def kit_modules() -> list[str]:
    """:data:`KIT_MODULES`, then any module of the ``easyrlhf_core.kit`` package they leave out."""
    package = ROOT / "kit"
    found = [f"{PACKAGE}.kit.{p.stem}" for p in sorted(package.glob("*.py")) if p.stem != "__init__"]
    return list(KIT_MODULES) + [m for m in found if m not in KIT_MODULES]


def _path(module: str) -> Path:
    parts = module.split(".")[1:]
    base = ROOT.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _tree(module: str) -> tuple[ast.Module, list[str]]:
    source = _path(module).read_text(encoding="utf-8")
    return ast.parse(source), source.splitlines()


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, looking into ``if`` and ``try`` blocks (not ``if TYPE_CHECKING``)."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(_top_level(ast.Module(body=node.body + node.orelse, type_ignores=[])))
        else:
            out.append(node)
    return out


def _assigns(node: ast.stmt, name: str) -> ast.expr | None:
    """The value ``node`` assigns to ``name`` (a module-level ``name = value``), else None."""
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
        return node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
        return node.value
    return None


def public_names(module: str) -> list[str]:
    """The module's ``__all__``; a kit module without one is an error."""
    tree, _ = _tree(module)
    for node in _top_level(tree):
        value = _assigns(node, "__all__")
        if value is not None:
            return [str(n) for n in ast.literal_eval(value)]
    raise ValueError(f"{module} defines no __all__: every kit module lists its public names there")


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line, its reST roles and literals as Markdown code."""
    if not doc:
        return ""
    text = " ".join(doc.strip().split("\n\n")[0].split())

    def role(match: re.Match[str]) -> str:  # :class:`~a.b.C` -> `C`, :func:`a.f` -> `a.f`
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    text = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _comment(lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines right above line ``lineno`` (1-based), joined."""
    out: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        out.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(out)


def _arguments(args: ast.arguments, drop_first: bool) -> str:
    def one(arg: ast.arg, default: ast.expr | None, star: str = "") -> str:
        text = star + arg.arg + (f": {ast.unparse(arg.annotation)}" if arg.annotation else "")
        if default is not None:
            text += (" = " if arg.annotation else "=") + ast.unparse(default)
        return text

    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = [one(a, d) for a, d in zip(positional, defaults)]
    if len(args.posonlyargs):
        parts.insert(len(args.posonlyargs), "/")
    if drop_first and positional:
        parts.pop(0)
    if args.vararg:
        parts.append(one(args.vararg, None, "*"))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [one(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        parts.append(one(args.kwarg, None, "**"))
    return ", ".join(parts)


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef, name: str, method: bool = False) -> str:
    decorators = {ast.unparse(d) for d in node.decorator_list}
    drop_first = method and "staticmethod" not in decorators
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    kinds = ("classmethod", "staticmethod", "fixture")
    prefix = next((f"{kind} " for kind in kinds if any(kind in d for d in decorators)), "")
    if "property" in decorators:
        return f"{name}: {ast.unparse(node.returns) if node.returns else 'Any'} (property)"
    return f"{prefix}{name}({_arguments(node.args, drop_first)}){returns}"


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


def _class(node: ast.ClassDef, name: str) -> Entry:
    bases = ", ".join(ast.unparse(b) for b in [*node.bases, *node.keywords])
    dataclass_ = _is_dataclass(node)
    entry = Entry(
        "",
        name,
        f"{'@dataclass ' if dataclass_ else ''}class {name}" + (f"({bases})" if bases else ""),
        _summary(ast.get_docstring(node)),
    )
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        entry.members.append(f"`{name}({_arguments(init.args, True)})`")
    fields: list[str] = []
    attributes: list[str] = []
    for member in node.body:
        if isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
            if not member.target.id.startswith("_"):
                annotation = ast.unparse(member.annotation)
                is_field = dataclass_ and "ClassVar" not in annotation
                (fields if is_field else attributes).append(f"{member.target.id}: {annotation}")
        elif isinstance(member, ast.Assign):
            attributes += [t.id for t in member.targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    if fields:
        entry.members.append("fields: " + ", ".join(f"`{f}`" for f in fields))
    if attributes:
        entry.members.append("class attributes: " + ", ".join(f"`{a}`" for a in attributes))
    for member in node.body:
        if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_"):
            line = f"`{_function(member, member.name, method=True)}`"
            doc = _summary(ast.get_docstring(member))
            entry.members.append(f"{line}: {doc}" if doc else line)
    return entry


def _value(node: ast.expr | None) -> str:
    text = " ".join(ast.unparse(node).split()) if node is not None else "..."
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _path(module).name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _entry(module: str, name: str) -> Entry:
    tree, lines = _tree(module)
    for node in _top_level(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return Entry(module, name, _function(node, name), _summary(ast.get_docstring(node)))
        if isinstance(node, ast.ClassDef) and node.name == name:
            entry = _class(node, name)
            entry.module = module
            return entry
        value = _assigns(node, name)
        if value is not None:
            return Entry(module, name, f"{name} = {_value(value)}", _summary(_comment(lines, node.lineno)))
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    origin = _resolve(module, node)
                    entry = _entry(origin, alias.name)
                    entry.module, entry.origin = module, entry.origin or origin
                    return entry
    submodule = f"{module}.{name}"
    if _path(submodule).exists():
        summary = _summary(ast.get_docstring(_tree(submodule)[0]))
        return Entry(module, name, name, f"the module `{submodule}`: {summary}")
    raise ValueError(f"{module}.__all__ names {name!r}, which the module does not define")


def module_entries(module: str) -> list[Entry]:
    """Every public name of ``module``, in ``__all__`` order."""
    return [_entry(module, name) for name in public_names(module)]


def hooks() -> list[Entry]:
    """The hook specifications (``easyrlhf_core.kit.hooks``): what a plugin implements."""
    tree, _ = _tree(f"{PACKAGE}.kit.hooks")
    return [
        Entry(f"{PACKAGE}.kit.hooks", n.name, _function(n, n.name), _summary(ast.get_docstring(n)))
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and any(ast.unparse(d) == "hookspec" for d in n.decorator_list)
    ]


def _bullet(entry: Entry) -> list[str]:
    origin = f" (from `{entry.origin}`)" if entry.origin else ""
    out = [f"- `{entry.text}`{origin}" + (f": {entry.summary}" if entry.summary else "")]
    out += [f"  - {member}" for member in entry.members]
    return out


def render() -> str:
    """The text of docs/kit.md."""
    out = [
        "# The plugin kit, name by name",
        "",
        f"<!-- Generated from the code by `{COMMAND}`; do not edit. tests/test_kit_reference.py fails when this",
        "file and the code differ. -->",
        "",
        "Every public name a plugin may import, with its signature and the first paragraph of its docstring "
        "(a constant: its `#:` comment). A kit module's public names are its `__all__`; a class is shown with "
        "its own fields and public methods (inherited ones under their base class). "
        "[docs/plugins.md](plugins.md) says how the pieces fit; `help(module.name)` says more.",
        "",
        "## Hooks",
        "",
        "A plugin module implements any of these with `@easyrlhf_core.hookimpl` (specifications in "
        "`easyrlhf_core.kit.hooks`); each calls `register` once per class it provides.",
        "",
    ]
    for entry in hooks():
        out += _bullet(entry)
    for module in kit_modules():
        tree, _ = _tree(module)
        out += ["", f"## `{module}`", "", _summary(ast.get_docstring(tree)), ""]
        for entry in module_entries(module):
            out += _bullet(entry)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--write``: (re)write docs/kit.md; ``--check``: 1 when it differs from the code; else print it."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--write" in argv:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
        return 0
    if "--check" in argv:
        stale = not DOC.is_file() or DOC.read_text(encoding="utf-8") != text
        print(f"{DOC} is {'stale: run `' + COMMAND + '`' if stale else 'up to date'}")
        return int(stale)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
