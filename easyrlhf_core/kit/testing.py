"""Testing a plugin: a registry holding the plugin under test, and the CLI run in-process.

Works whether or not the plugin's package is installed: a plugin registered here replaces an installed
entry point of the same name (or the same module), so it is never registered twice.

With pytest, the fixtures below come with EasyRLHF (a ``pytest11`` entry point): no conftest needed::

    import my_plugin

    def test_my_method_trains(easyrlhf_plugin, easyrlhf_cli, tmp_path):
        easyrlhf_plugin("my-plugin", my_plugin)          # registered for this test only
        result = easyrlhf_cli("run", "--method", "my-method", "--output-dir", str(tmp_path / "run"))
        assert result.exit_code == 0, result.stderr

Tiny models, built locally once per session (never downloaded): ``tiny_causal_lm`` and ``tiny_reward_model``
are model directories to pass as ``--model`` / ``--reward-model`` (:mod:`easyrlhf_core.kit.tiny_models`).

Without pytest: ``with plugin_registered("my-plugin", my_plugin): run_cli("list-plugins")``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from easyrlhf_core.runtime import registry

__all__ = ["run_cli", "plugin_registered", "easyrlhf_plugin", "easyrlhf_cli", "tiny_causal_lm", "tiny_reward_model"]


@contextmanager
def plugin_registered(name: str, plugin: object) -> Iterator[registry.Registry]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) as ``name`` for the ``with``
    block; yields the fresh registry. The cached registry is rebuilt on the way in and out."""
    registry.register_plugin(name, plugin)
    try:
        yield registry.get_registry()
    finally:
        registry.unregister_plugin(name)


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``easyrlhf <args>`` in this process, with a fresh registry: a click ``Result`` with
    ``exit_code``, ``stdout`` and ``stderr`` (an ``Error: ...`` line is on stderr)."""
    from click.testing import CliRunner

    from easyrlhf_core.commands.cli import cli

    registry.reset_registry()
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, prog_name="easyrlhf")


# --------------------------------------------------------------------------------------------------
# pytest fixtures (registered through the ``pytest11`` entry point ``easyrlhf``)

try:
    import pytest
except ImportError:  # pytest is only needed to use the fixtures
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def easyrlhf_plugin() -> Iterator[Callable[[str, object], registry.Registry]]:
        """``easyrlhf_plugin(name, plugin)`` registers a plugin for the current test and returns the
        registry; everything registered is removed after the test."""
        names: list[str] = []

        def register(name: str, plugin: object) -> registry.Registry:
            registry.register_plugin(name, plugin)
            names.append(name)
            return registry.get_registry()

        yield register
        for name in names:
            registry.unregister_plugin(name)
        registry.reset_registry()

    @pytest.fixture
    def easyrlhf_cli() -> Callable[..., Any]:
        """``easyrlhf_cli("run", "--method", ...)``: :func:`run_cli`."""
        return run_cli

    @pytest.fixture(scope="session")
    def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A directory holding a tiny random Llama causal LM (2 layers, hidden 32) and its byte-level BPE
        tokenizer with a ChatML chat template, pad == eos; built once per session
        (:func:`easyrlhf_core.kit.tiny_models.save_tiny_causal_lm`). Pass it as ``--model``."""
        from easyrlhf_core.kit.tiny_models import save_tiny_causal_lm

        return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))

    @pytest.fixture(scope="session")
    def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A directory holding a tiny random sequence classifier with one label (a reward model) and the same
        tokenizer; built once per session (:func:`easyrlhf_core.kit.tiny_models.save_tiny_reward_model`). Pass
        it as ``--reward-model``."""
        from easyrlhf_core.kit.tiny_models import save_tiny_reward_model

        return save_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward-model"))
