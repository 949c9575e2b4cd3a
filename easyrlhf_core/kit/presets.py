"""The configs that ship inside the package (``easyrlhf_core/configs``, also ``configs/`` in a checkout):
one YAML per method and the DeepSpeed presets, reachable by name where a path is asked for, so a
pip-installed user without a checkout can run ``--config rlhf`` or ``--deepspeed zero3``. A path wins."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_deepspeed"]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"  # easyrlhf_core/configs
DEEPSPEED_DIR = CONFIGS_DIR / "deepspeed"


def method_configs() -> list[str]:
    """Names of the shipped method configs (``rlhf`` for ``configs/rlhf.yaml``)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def deepspeed_presets() -> list[str]:
    """Names of the shipped DeepSpeed configs (``zero2``, ``zero3``, ``zero2_offload``, ``zero3_offload``)."""
    return sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))


def resolve_config_file(value: str) -> str:
    """``--config``: an existing file as given, else a shipped method config by name (``rlhf``, ``rlhf.yaml``)."""
    if Path(value).is_file():
        return value
    shipped = CONFIGS_DIR / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    return str(shipped) if shipped.is_file() and "/" not in value else value


def resolve_deepspeed(value: str) -> str:
    """``--deepspeed``: an existing file as given, else a shipped preset by name (``zero3``, ``zero3.json``)."""
    if Path(value).is_file():
        return value
    shipped = DEEPSPEED_DIR / (value if value.endswith(".json") else f"{value}.json")
    return str(shipped) if shipped.is_file() and "/" not in value else value
