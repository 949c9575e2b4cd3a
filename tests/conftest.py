"""Shared fixtures: tiny models and tokenizers built locally (never downloaded), offline settings,
and a CLI runner that resets the plugin registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet before anything imports transformers / datasets.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from tests.helpers import build_tiny_tokenizer, run_cli  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own easyrlhf cache dir."""
    cache = tmp_path_factory.getbasetemp() / "easyrlhf-cache"
    monkeypatch.setenv("EASYRLHF_CACHE", str(cache))
    monkeypatch.delenv("EASYRLHF_LOAD_PLUGINS", raising=False)  # a developer's own selection must not leak in


@pytest.fixture(autouse=True)
def _fresh_registry():
    from easyrlhf_core.runtime import registry

    registry.reset_registry()
    yield
    registry.reset_registry()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (~400 tokens) with a ChatML template; pad == eos like SmolLM2."""
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_causal_lm: Path) -> Path:
    """A 2-layer random Llama (hidden 32) with the tiny tokenizer, saved like a Hub model dir: the shipped
    ``tiny_causal_lm`` fixture (:mod:`easyrlhf_core.kit.testing`) under the name the tests use."""
    return tiny_causal_lm


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory):
    """Subprocess runs several tests use, each run once (:class:`tests.subprocess_runs.SharedRuns`)."""
    from tests.subprocess_runs import SharedRuns

    return SharedRuns(tmp_path_factory.mktemp("shared-runs"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module's tests (the tiny model is faster so; the cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli_run():
    """``cli_run("run", "--method", ...)`` -> click Result with ``exit_code``, ``stdout``, ``stderr``."""
    return run_cli
