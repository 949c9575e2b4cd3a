"""Test plugins and fake distributions, so registry tests do not depend on the built-in plugins."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset, Method
from easyrlhf_core.kit.config import BaseConfig, invalid, option
from easyrlhf_core.kit.shapes import DataSplits, Shape


@dataclass
class EchoConfig(BaseConfig):
    """Config of the echo test method."""

    beta: float = option(0.1, "A positive strength.")
    mode: str = option("fast", "Any string.")
    eval_fraction: float = option(0.0, "No held-out prompts: every prompt is a step.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise invalid("beta", "must be > 0")


class EchoMethod(Method):
    """Logs one metric per prompt; trains nothing (lifecycle tests only)."""

    name = "echo"
    description = "test method: logs one metric per training example"
    config_class = EchoConfig
    shape = Shape.PROMPT

    def train(self, run) -> None:
        for step, _record in enumerate(run.data.train, start=1):
            run.log_metrics(step, {"loss": 1.0 / step, "beta": run.config.beta})


class PromptsDataset(Dataset):
    """Three fixed prompts."""

    name = "test-prompts"
    description = "three fixed prompts"
    shapes = frozenset({Shape.PROMPT})

    def load(self, options):
        train = [{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]
        return DataSplits(options.shape, train, [], notes=["test note: 0 rows dropped"])


class EchoPlugin:
    """Test plugin: the echo method and a prompts dataset."""

    @staticmethod
    @hookimpl
    def register_methods(register):
        register(EchoMethod)

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(PromptsDataset)


def write_fake_distribution(
    root: Path, dist_name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> Path:
    """Write ``modules`` and a ``<dist>.dist-info`` with ``entry_points.txt`` under ``root``: what
    ``pip install`` leaves behind, found by ``importlib.metadata`` once ``root`` is on ``sys.path``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n", encoding="utf-8")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[easyrlhf]\n{lines}\n", encoding="utf-8")
    return root


def add_to_path(monkeypatch, root: Path) -> None:
    monkeypatch.syspath_prepend(str(root))
    for name in list(sys.modules):
        if name.startswith("fakeplug"):
            del sys.modules[name]
