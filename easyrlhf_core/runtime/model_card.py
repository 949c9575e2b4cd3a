"""The run directory's ``README.md``: a model card people can read (method, base model, data, key
hyperparameters, final metrics, how to load the model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.config import BaseConfig
from easyrlhf_core.kit.metrics import read_metrics
from easyrlhf_core.kit.shapes import DataSplits
from easyrlhf_core.runtime.plots import PLOTS_DIR

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext

_SHARED_KEYS = (
    "learning_rate",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "precision",
    "seed",
)


def method_options(config: Any) -> dict[str, Any]:
    """Options a method adds on top of :class:`BaseConfig` (its key hyperparameters)."""
    base = {f.name for f in dataclasses.fields(BaseConfig)}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in base}


def final_metrics(rows: list[dict]) -> dict[str, Any]:
    """The last value of every metric."""
    last: dict[str, Any] = {}
    for row in rows:
        last.update({k: v for k, v in row.items() if not isinstance(v, (dict, list))})
    return last


def _loader_snippet(model_dir: Path) -> str:
    config_file = model_dir / "config.json"
    adapter = (model_dir / "adapter_config.json").is_file()
    archs: list[str] = []
    if config_file.is_file():
        archs = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    if adapter:
        return (
            "from peft import AutoPeftModelForCausalLM\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{model_dir}")'
        )
    cls = (
        "AutoModelForSequenceClassification"
        if any("SequenceClassification" in a for a in archs)
        else "AutoModelForCausalLM"
    )
    return (
        f"from transformers import {cls}, AutoTokenizer\n"
        f'model = {cls}.from_pretrained("{model_dir}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_dir}")'
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_model_card(run: RunContext) -> Path:
    """Write ``README.md`` into the run directory."""
    config = run.config
    metrics_path = run.metrics_path
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    last = final_metrics(rows)
    lines = [
        f"# {run.output_dir.name}",
        "",
        f"Trained with **EasyRLHF**, method **{run.method.name}**: {run.method.description}.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{getattr(config, 'model', None) or 'SmolLM2-135M-Instruct (embedded default)'}` |",
    ]
    if isinstance(run.data, DataSplits):
        files = ", ".join(config.data_files) or "default source"
        lines.append(
            f"| data | `{config.dataset}` ({files}): {len(run.data.train)} train / "
            f"{len(run.data.eval)} eval {run.data.shape} examples |"
        )
        lines += [f"| data note | {note} |" for note in run.data.notes]
    lora = getattr(config, "lora", None)
    if lora is not None and run.lora_applied:  # adapters the saved model really trained, not just --lora
        lines.append(
            f"| LoRA | r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, targets={lora.target_modules} |"
        )
    lines += ["", "## Key hyperparameters", "", "| option | value |", "|---|---|"]
    shared = {k: getattr(config, k) for k in _SHARED_KEYS if hasattr(config, k)}
    for key, value in {**method_options(config), **shared}.items():
        if not dataclasses.is_dataclass(value):
            lines.append(f"| `{key}` | {_fmt(value)} |")
    lines += ["", "The full resolved config is in `config.yaml`; per-step metrics in `metrics.jsonl`.", ""]
    if last:
        lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in last.items()]
        lines.append("")
    plots = sorted((run.output_dir / PLOTS_DIR).glob("*.png"))
    if plots:
        lines += ["## Curves", ""] + [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots] + [""]
    if run.model_dir.is_dir():
        lines += ["## Load it", "", "```python", _loader_snippet(run.model_dir), "```", ""]
    path = run.output_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
