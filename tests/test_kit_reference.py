"""docs/kit.md is the kit, generated from the code: it equals the generator's output, holds every core name a
built-in plugin uses, every name has a docstring, and docs/plugins.md names nothing the code lacks."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

from easyrlhf_core.commands import kit_reference

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def test_kit_md_is_generated_from_the_code():
    assert kit_reference.DOC.read_text(encoding="utf-8") == kit_reference.render(), (
        f"docs/kit.md is stale: run `{kit_reference.COMMAND}`"
    )


def test_the_generator_imports_no_kit_module():
    code = (
        "import sys; from easyrlhf_core.commands import kit_reference; kit_reference.render(); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'easyrlhf_core.runtime.run') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _public() -> dict[str, list[str]]:
    return {module: kit_reference.public_names(module) for module in kit_reference.kit_modules()}


def _core_uses_of_the_built_ins() -> dict[tuple[str, str], str]:
    """``(module, name)`` -> the first built-in file (plugins/, examples/) that uses it: imported ``from
    easyrlhf_core...``, or read as an attribute of a core module it imported (``lm.logprobs_from_logits``)."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules: dict[str, str] = {}  # local name -> core module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "easyrlhf_core":
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if _is_module(submodule):
                        modules[alias.asname or alias.name] = submodule
                    else:
                        found.setdefault((node.module, alias.name), path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "easyrlhf_core" and alias.asname:
                        modules[alias.asname] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                found.setdefault((modules[node.value.id], node.attr), path.name)
    return found


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_core_name_a_built_in_imports_is_documented_and_public():
    """The built-ins use only the kit: each core name they import (or read off a core module, at any depth:
    ``easyrlhf_core.kit.rl_math``) is a public name of a kit module, so docs/kit.md lists it."""
    public = _public()
    uses = _core_uses_of_the_built_ins()
    assert len(uses) > 50  # the walk found the plugins
    assert ("easyrlhf_core.kit.rl_math", "gae_advantages") in uses  # module attributes, two levels deep
    assert ("easyrlhf_core.kit.causal_lm", "logprobs_from_logits") in uses
    missing = [
        f"{module}.{name} ({where})"
        for (module, name), where in sorted(uses.items())
        if name not in public.get(module, [])
    ]
    assert not missing, f"used by a built-in but not a public kit name (its module's __all__): {missing}"


def test_built_ins_import_only_the_kit():
    """The package boundary is the rule: a built-in plugin, the example plugin and the plugin template import
    ``easyrlhf_core`` (for ``hookimpl``) and ``easyrlhf_core.kit...``, never the runtime or the commands."""
    paths = [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    paths += (ROOT / "easyrlhf_core" / "templates").rglob("*.py.tmpl")
    outside = []
    for path in sorted(paths):
        text = re.sub(r"\$\{\w+\}", "x", path.read_text(encoding="utf-8"))  # a template's placeholders
        for node in ast.walk(ast.parse(text)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                if (
                    module.split(".")[0] == "easyrlhf_core"
                    and module != "easyrlhf_core"
                    and not module.startswith("easyrlhf_core.kit")
                ):
                    outside.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    assert len(paths) > 30
    assert not outside, f"built-ins importing outside the kit: {outside}"


def test_the_kit_never_imports_the_runtime_or_the_commands():
    """The kit stands alone: the runtime drives it, never the other way round. The one exception is
    kit/testing.py, which drives the CLI in-process as a plugin's test would."""
    reaching_up = []
    for path in sorted((ROOT / "easyrlhf_core" / "kit").glob("*.py")):
        if path.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("easyrlhf_core.runtime", "easyrlhf_core.commands")
            ):
                reaching_up.append(f"kit/{path.name}:{node.lineno}: {node.module}")
    assert not reaching_up, f"kit modules importing the runtime or the commands: {reaching_up}"


def test_every_kit_name_has_a_docstring():
    """A class or function: its docstring; a constant: a ``#:`` comment above it."""
    undocumented = [
        f"{e.module}.{e.name}"
        for module in kit_reference.kit_modules()
        for e in kit_reference.module_entries(module)
        if not e.summary
    ]
    assert not undocumented, f"public kit names without a docstring: {undocumented}"
    assert all(e.summary for e in kit_reference.hooks())


def _dotted_names(text: str) -> set[str]:
    """``easyrlhf_core.x.y`` in code spans and code blocks, and ``from easyrlhf_core.x import a, b``."""
    names = set(re.findall(r"\beasyrlhf_core(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("easyrlhf_core"):
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_docs_name_nothing_the_code_lacks():
    """Every ``easyrlhf_core.x.y`` in docs/plugins.md and docs/data.md exists (a module, then attributes)."""
    names = set()
    for doc in (PLUGINS_DOC, ROOT / "docs" / "data.md"):
        names |= _dotted_names(doc.read_text(encoding="utf-8"))
    assert len(names) > 30
    missing = []
    for dotted in sorted(names):
        parts = dotted.split(".")
        depth = max(i for i in range(1, len(parts) + 1) if _is_module(".".join(parts[:i])))
        value = importlib.import_module(".".join(parts[:depth]))
        for attr in parts[depth:]:
            if not hasattr(value, attr):
                missing.append(dotted)
                break
            value = getattr(value, attr)
    assert not missing, f"named in the docs but not in the code: {missing}"


def test_plugins_md_names_every_hook_with_its_signature():
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    section = text[text.index("## 1. ") : text.index("## 2. ")]
    for hook in kit_reference.hooks():
        assert f"`{hook.text}`" in section, f"docs/plugins.md section 1 lacks the hook {hook.text}"
    assert "validate_for_run(self) -> None" in text
