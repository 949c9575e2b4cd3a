"""The end-of-run summary: what was trained on what, what changed, where the model is, what to run next.

Printed after training (main process) and written to ``OUTPUT_DIR/summary.json``. What changed comes from the
method (:meth:`easyrlhf_core.kit.bases.Method.what_changed`, a list of
:class:`~easyrlhf_core.kit.findings.Finding`); for a policy trained on preference pairs,
:func:`~easyrlhf_core.kit.findings.held_out_pairs_change` scores the run's own held-out pairs with the start
model and with the trained one, with 95% intervals (Wilson for shares, bootstrap for the mean margin change).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easyrlhf_core.kit.context import RunContext

from easyrlhf_core.kit.findings import Finding

__all__ = []

SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------------------------------
# The summary itself


@dataclass
class RunSummary:
    """What ``summary.json`` holds."""

    method: str
    model: str
    trained: str
    dataset: str
    train_examples: int
    train_examples_used: int | None  # None: all train_examples (the method dropped none)
    steps: int | None
    seconds: float
    output_dir: str
    model_dir: str
    changed: list[Finding] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)
    #: the verdict the findings' words give: True when a held-out change excludes "no change", False when
    #: within noise, None when the method reported no such measurement
    beyond_noise: bool | None = None

    def lines(self) -> list[str]:
        """The summary as a newcomer reads it."""
        steps = f", {self.steps} steps" if self.steps is not None else ""
        used, total = self.train_examples_used, self.train_examples
        count = (
            f"{used} of {total} {self.dataset} examples (the rest too long for max_length)"
            if used is not None and used != total
            else f"{total} {self.dataset} examples"
        )
        trained = f"  trained  {self.trained} on {count}{steps}, in {_duration(self.seconds)}"
        out = ["", "Summary", trained]
        for i, finding in enumerate(self.changed):
            out.append(f"  {'changed' if i == 0 else '':7}  {finding.text}")
        out.append(f"  model    {self.model_dir}")
        for i, command in enumerate(self.next_commands):
            out.append(f"  {'next' if i == 0 else '':7}  {command}")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """The summary ``summary.json`` holds (keys it does not know are ignored); TypeError when one is missing."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["changed"] = [
            Finding(str(f.get("text", "")), dict(f.get("figures") or {}))
            for f in values.get("changed") or []
            if isinstance(f, dict)
        ]
        return cls(**values)


def read_summary(run_dir: Path) -> RunSummary | None:
    """The run's ``summary.json``, or None when it has none (a run that has not finished; a pipeline, whose
    stages have theirs). An unreadable one is an error naming the file."""
    from easyrlhf_core.kit.errors import EasyRLHFError

    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return RunSummary.from_json(data)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise EasyRLHFError(f"not a summary written by easyrlhf ({exc})", file=path) from None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _is_reward_model(model_dir: Path) -> bool:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return any(str(a).endswith("SequenceClassification") for a in config.get("architectures") or [])


def next_commands(run: RunContext) -> list[str]:
    """What to run next with the trained model: talk to it, evaluate it, the full pipeline."""
    model = shlex.quote(str(run.model_dir))
    dataset = getattr(run.config, "dataset", "hh-rlhf") or "hh-rlhf"
    files = getattr(run.config, "data_files", None) or []
    data = f" --dataset {dataset}" + (f" --data-files {shlex.quote(','.join(files))}" if files else "")
    if _is_reward_model(run.model_dir):
        return [
            f"easyrlhf eval --model {model}{data}",
            f"easyrlhf run --method ppo --reward-model {model} --max-steps 10",
        ]
    from easyrlhf_core.kit.model_loading import DEFAULT_MODEL_ID

    start = shlex.quote(run.config.model or DEFAULT_MODEL_ID)  # the default's id finds the embedded copy offline
    compare, reference = f" --compare {start}", f" --reference {start}"
    commands = [
        f"easyrlhf chat {model}{compare}",
        f"easyrlhf eval --model {model}{reference}{data}",
        "easyrlhf run --method rlhf --max-steps 10   # the whole SFT -> RM -> PPO pipeline",
    ]
    if run.method.name == "dpo" and dataset != "hh-rlhf":  # the quick start's next step: human preferences
        commands.insert(0, "easyrlhf run --config quickstart-hh --output-dir runs/quickstart-hh   # DPO on hh-rlhf")
    return commands


def lora_trained(run: RunContext) -> str | None:
    """``"LoRA r16"`` when the saved model really trained LoRA adapters (``run.lora_applied``, read from the
    model at save time), else None: ``--lora`` alone is never taken as proof."""
    lora = getattr(run.config, "lora", None)
    if not run.lora_applied or lora is None:
        return None
    return f"LoRA r{lora.r}"


def build_summary(run: RunContext, changed: list[Finding]) -> RunSummary:
    from easyrlhf_core.kit.metrics import last_values

    config = run.config
    how = f"{run.method.name} ({lora_trained(run) or 'all weights'})"
    start = config.model or "SmolLM2-135M-Instruct (embedded default)"
    step = last_values(run.metrics_path).get("step")
    train = len(run.data.train) if run.data is not None and hasattr(run.data, "train") else 0
    return RunSummary(
        method=run.method.name,
        model=start,
        trained=f"{how} from {start}",
        dataset=str(getattr(config, "dataset", "")),
        train_examples=train,
        train_examples_used=run.train_examples_used,
        steps=int(step) if isinstance(step, (int, float)) else None,
        seconds=time.time() - run.started,
        output_dir=str(run.output_dir),
        model_dir=str(run.model_dir),
        changed=changed,
        next_commands=next_commands(run),
        beyond_noise=verdict(changed),
    )


def verdict(changed: list[Finding]) -> bool | None:
    """``beyond_noise`` of the findings that carry one: True when any is beyond noise; None when none does."""
    verdicts = [f.figures["beyond_noise"] for f in changed if isinstance(f.figures.get("beyond_noise"), bool)]
    return any(verdicts) if verdicts else None


def write_summary(run: RunContext, summary: RunSummary) -> Path:
    """``summary.json`` (written whole, atomically) and the summary on stderr."""
    path = run.output_dir / SUMMARY_FILE
    tmp = path.with_name(f".{SUMMARY_FILE}.tmp")
    tmp.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print("\n".join(summary.lines()), file=sys.stderr, flush=True)
    return path
