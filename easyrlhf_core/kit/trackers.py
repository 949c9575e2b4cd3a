"""The live trackers ``report_to`` may name, and the check that each is installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from easyrlhf_core.kit.errors import ConfigError

__all__ = ["PACKAGES", "check_trackers"]


#: report_to name -> the package it needs.
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def check_trackers(names: list[str]) -> None:
    """Each ``report_to`` name is a tracker accelerate supports, its package is installed, and W&B can log
    (a login, or ``WANDB_MODE=offline``): one ConfigError naming ``report_to`` otherwise."""
    for name in names:
        if name == "none":
            continue
        if name not in PACKAGES:
            raise ConfigError(f"unknown logger '{name}'; choose from {', '.join(sorted(PACKAGES))}", where="report_to")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            extra = " (or pip install 'easyrlhf[tracking]')" if name == "tensorboard" else ""
            raise ConfigError(
                f"the '{name}' logger needs its package: pip install {PACKAGES[name]}{extra}", where="report_to"
            )
        if name == "wandb" and not _wandb_can_log():
            raise ConfigError(
                "the 'wandb' logger needs a login: run `wandb login` (or set WANDB_API_KEY), or set "
                "WANDB_MODE=offline to log locally and `wandb sync` later",
                where="report_to",
            )


def _wandb_can_log() -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8")
    except OSError:
        return False
