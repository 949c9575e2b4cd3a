"""The vLLM engine's tests: they run where vLLM is installed (CI's own venv: .ci/run), and are skipped
elsewhere (not collected). The tiny model has 32-wide attention heads: vLLM's CPU kernels take no narrower ones."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:  # the main venv: nothing here to run
    collect_ignore_glob = ["test_*.py"]

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) >= 2 else "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def vllm_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from easyrlhf_core.kit.tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("vllm-tiny"), head_dim=32)


@pytest.fixture(scope="session")
def vllm_prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = "apples trees rivers seas hills roads books songs".split()
    path = tmp_path_factory.mktemp("vllm-data") / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Say something about {w}."}]} for w in words]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
