"""The InstructGPT pipeline in one command: SFT -> reward model -> PPO, each stage a method of its own."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Method
from easyrlhf_core.kit.config import LoraOptions, invalid, option
from easyrlhf_core.kit.errors import ConfigError

from .grpo import GRPOConfig, RLOOConfig
from .ppo.config import PPOConfig
from .rm import RMConfig
from .sft import SFTConfig

if TYPE_CHECKING:
    from easyrlhf_core.kit.shapes import DataSplits
    from easyrlhf_core.kit.context import PluginLookup, RunContext

#: The RL stage's methods (``rl_method``), each with its own group of options.
RL_METHODS = ("ppo", "grpo", "rloo")
STAGE_GROUPS = ("sft", "rm", *RL_METHODS)


@dataclass
class RLHFConfig:
    """The pipeline's options. Shared options set here (model, seed, max_steps, precision, lora, ...)
    apply to every stage that does not set its own; ``sft``, ``rm`` and ``ppo`` hold each
    stage's options. In a stage group, ``model`` means "use this trained model as the stage's result and
    skip training it" (``--set rm.model=PATH``)."""

    model: str | None = option(
        None, "Starting model for SFT: Hub id, directory or .gguf; empty: the embedded SmolLM2-135M-Instruct."
    )
    output_dir: str | None = option(None, "Run directory (stages in sft/, rm/, ppo/); empty: runs/rlhf-<timestamp>.")
    dataset: str = option(
        "hh-rlhf",
        "Dataset plugin of every stage whose data it yields (hh-rlhf: all three; "
        "a prompt-only dataset such as arithmetic: the RL stage only); a stage's "
        "own `dataset` wins.",
    )
    data_files: list[str] = option([], "Local data files for `dataset`, given to the stages that take it.")
    skip_bad_rows: bool = option(False, "Skip (and count) malformed data rows in every stage.")
    seed: int = option(42, "Random seed of every stage.")
    max_steps: int = option(-1, "Steps of every stage (PPO: iterations); -1: each stage's own setting.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "Precision of every stage.")
    gradient_checkpointing: bool = option(False, "Recompute activations to save memory, in every stage.")
    deepspeed: str | None = option(None, "DeepSpeed JSON config for every stage (ZeRO-2 for PPO).")
    lora: LoraOptions = option(LoraOptions(), "LoRA adapters for every stage (--lora).")
    trust_remote_code: bool = option(False, "Allow custom model code.")
    max_train_samples: int | None = option(None, "Training examples per stage at most.")
    max_eval_samples: int | None = option(200, "Evaluation examples per stage at most.")
    report_to: list[str] = option(
        [], "Live trackers for every stage, e.g. [tensorboard]: stages under OUTPUT_DIR/logs/<stage>."
    )
    env: str | None = option(
        None, "Environment plugin for the RL stage (--env): it trains on episodes, scored by the environment."
    )
    rl_method: Literal["ppo", "grpo", "rloo"] = option(
        "ppo", "The RL stage: ppo (the InstructGPT recipe, default), grpo or rloo; its options are in its group."
    )
    sft: SFTConfig = option(SFTConfig(), "SFT stage: conversations (hh-rlhf chosen side, or slimorca).")
    rm: RMConfig = option(RMConfig(), "Reward-model stage: preference pairs, initialised from the SFT model.")
    ppo: PPOConfig = option(
        PPOConfig(),
        "PPO stage: prompts; policy from the SFT model, reward (and value "
        "model) from the RM stage unless ppo.reward names a reward function.",
    )
    grpo: GRPOConfig = option(
        GRPOConfig(),
        "GRPO stage (rl_method: grpo): prompts; policy from the SFT model, "
        "scored by the RM stage's model unless grpo.reward(s) name rewards.",
    )
    rloo: RLOOConfig = option(RLOOConfig(), "RLOO stage (rl_method: rloo): as grpo.")

    def __post_init__(self) -> None:
        if self.deepspeed is not None:  # a shipped preset by name, as for every method
            from easyrlhf_core.kit.presets import resolve_deepspeed

            self.deepspeed = resolve_deepspeed(self.deepspeed)
        if self.max_steps == 0 or self.max_steps < -1:
            raise invalid("max_steps", "must be a positive integer, or -1 for each stage's own setting")
        for name in RL_METHODS:
            if getattr(self, name).model is not None:
                raise invalid(
                    f"{name}.model",
                    f"{name.upper()} starts from the SFT stage's model; to skip SFT give sft.model=PATH instead",
                )
        if self.rm.model is not None and self.rl_has_reward():
            raise invalid(
                "rm.model",
                f"is used only when the {self.rl_method} stage is scored by the reward model; "
                f"{self.rl_method} names its own reward: drop one of them",
            )
        if self.rl.reward_model is not None and self.rm.model is not None:
            raise invalid(
                f"{self.rl_method}.reward_model",
                "conflicts with rm.model; give the trained reward model once, as rm.model",
            )

    @property
    def rl(self) -> Any:
        """The options of the RL stage ``rl_method`` selects."""
        return getattr(self, self.rl_method)

    @property
    def stages(self) -> tuple[str, str, str]:
        return ("sft", "rm", self.rl_method)

    def rl_has_reward(self) -> bool:
        """The RL stage names its own reward (a function, a directory, or a rewards list): no RM stage."""
        rl = self.rl
        has_env = self.env is not None or getattr(rl, "env", None) is not None  # the environment scores the episodes
        return has_env or rl.reward is not None or rl.reward_model is not None or bool(getattr(rl, "rewards", []))

    def validate_for_run(self) -> None:
        from easyrlhf_core.kit.trackers import check_trackers

        check_trackers(self.report_to)
        for name in self.stages:
            stage = getattr(self, name)
            if name == self.rl_method and self.env is not None and stage.env is None:
                stage = dataclasses.replace(stage, env=self.env)  # --env is the RL stage's
            if name == self.rl_method and not self.rl_has_reward():
                if self.rm.model is not None:  # a given reward model must be one, before SFT trains
                    dataclasses.replace(stage, reward_model=self.rm.model).validate_for_run()
                continue  # otherwise its reward model arrives from the RM stage
            stage.validate_for_run()


#: Shared options that flow from the top of the config into every stage.
#: Options that reach a stage only with the top-level dataset (see :func:`stage_data`).
DATA_OPTIONS = ("dataset", "data_files")
SHARED = tuple(
    f.name
    for f in dataclasses.fields(RLHFConfig)
    if f.name not in ("model", "output_dir", "rl_method", "env", *STAGE_GROUPS, *DATA_OPTIONS)
)


def stage_data(config: RLHFConfig, name: str, set_here: Any, registry: PluginLookup) -> dict[str, Any]:
    """``dataset`` / ``data_files`` for stage ``name``: the top-level dataset, when the user set it (or its
    files) and the stage did not set its own and the dataset yields the stage's shape; its files travel
    with it."""
    stage = getattr(config, name)
    top_set = any(set_here(key, getattr(config, key), _default(RLHFConfig, key)) for key in DATA_OPTIONS)
    own_set = any(set_here(f"{name}.{key}", getattr(stage, key), _default(type(stage), key)) for key in DATA_OPTIONS)
    if not top_set or own_set:
        return {}
    shape = registry.get("methods", name).shape
    dataset_cls = registry.datasets.get(config.dataset)
    if dataset_cls is None or shape not in dataset_cls.obj.shapes:
        return {}
    return {"dataset": config.dataset, "data_files": list(config.data_files)}


def stage_config(config: RLHFConfig, name: str, output_dir: Path, registry: PluginLookup) -> Any:
    """A stage's config: its own group, plus each shared option the user set at the top (in a file, a flag
    or ``--set``) that they did not also set for this stage, plus its output dir. What counts is what was
    set, not the value: ``--set sft.max_steps=-1`` keeps SFT at -1 under a top-level ``--max-steps 5``."""
    from easyrlhf_core.kit.config import explicit_keys

    stage = getattr(config, name)
    given = explicit_keys(config)

    def set_here(dotted: str, value: Any, default: Any) -> bool:
        """Set by the user: by a flag or --set, or by a file to something else than the default (a full
        dump, such as configs/rlhf.yaml or a run's config.yaml, lists every key at its default)."""
        return dotted in given and (not given[dotted] or value != default)

    inherited: dict[str, Any] = stage_data(config, name, set_here, registry)
    for key in SHARED:
        value = getattr(config, key)
        if dataclasses.is_dataclass(value):  # a group (lora): field by field
            top_default, stage_default = _default(RLHFConfig, key), _default(type(stage), key)
            fields = {
                f.name: getattr(value, f.name)
                for f in dataclasses.fields(value)
                if set_here(f"{key}.{f.name}", getattr(value, f.name), getattr(top_default, f.name))
                and not set_here(
                    f"{name}.{key}.{f.name}", getattr(getattr(stage, key), f.name), getattr(stage_default, f.name)
                )
            }
            if fields:
                inherited[key] = dataclasses.replace(getattr(stage, key), **fields)
        elif set_here(key, value, _default(RLHFConfig, key)) and not set_here(
            f"{name}.{key}", getattr(stage, key), _default(type(stage), key)
        ):
            inherited[key] = value
    if name == config.rl_method and config.env is not None and getattr(stage, "env", None) is None:
        inherited["env"] = config.env  # --env is the RL stage's
    env = inherited.get("env") or getattr(stage, "env", None)
    own_data = any(set_here(f"{name}.{key}", getattr(stage, key), _default(type(stage), key)) for key in DATA_OPTIONS)
    if env is not None and "dataset" not in inherited and not own_data:
        default = getattr(registry.get("environments", env), "default_dataset", None)
        if default:  # the environment's own problems, as for a single-method run
            inherited.update(dataset=default, data_files=[])
    return dataclasses.replace(stage, output_dir=str(output_dir), **inherited)


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


class RLHFPipeline(Method):
    """SFT -> RM -> PPO, as in InstructGPT (the RL stage selectable: GRPO or RLOO)."""

    name = "rlhf"
    description = "The whole InstructGPT pipeline: SFT, then a reward model, then PPO (or rl_method: grpo | rloo)"
    config_class = RLHFConfig
    shape = None
    runs_stages = True
    supports_lora = True  # every stage (sft, rm, ppo / grpo / rloo) takes the pipeline's lora options

    def load_data(self, config: RLHFConfig, registry: PluginLookup) -> dict[str, DataSplits]:
        """Every stage's data, read before any model loads: bad data fails in seconds, not hours."""
        return {
            name: registry.get("methods", name)().load_data(cfg, registry)
            for name, cfg in self.plan(config, Path(config.output_dir or "."), registry).items()
            if cfg is not None
        }

    def train(self, run: RunContext) -> None:
        config: RLHFConfig = run.config
        plan = self.plan(config, run.output_dir, run.registry)
        data = run.data
        sft_model = config.sft.model or self.run_stage(run, "sft", plan["sft"], data["sft"], model=config.model)
        rl = config.rl_method
        reward_model = config.rm.model or config.rl.reward_model
        if reward_model is None and not config.rl_has_reward():
            reward_model = self.run_stage(run, "rm", plan["rm"], data["rm"], model=sft_model)
        else:
            run.log(
                "rlhf: rm stage skipped: "
                + (f"using rm.model={reward_model}" if reward_model else f"{rl} names its own reward")
            )
        policy = self.run_stage(run, rl, plan[rl], data[rl], model=sft_model, reward_model=reward_model)
        self.link_final_model(run, Path(policy))

    def plan(self, config: RLHFConfig, output_dir: Path, registry: PluginLookup) -> dict[str, Any]:
        """Each stage's config (None for a stage given as a trained model)."""
        skip_rm = config.rm.model is not None or config.rl_has_reward()
        rl = config.rl_method
        plan = {
            "sft": None if config.sft.model else stage_config(config, "sft", output_dir / "sft", registry),
            "rm": None if skip_rm else stage_config(config, "rm", output_dir / "rm", registry),
            rl: stage_config(config, rl, output_dir / rl, registry),
        }
        self.check_dataset_used(config, plan, registry)
        return plan

    @staticmethod
    def check_dataset_used(config: RLHFConfig, plan: dict[str, Any], registry: PluginLookup) -> None:
        """A top-level ``dataset`` that no stage takes is a mistake worth one line, not a silent default."""
        from easyrlhf_core.kit.config import explicit_keys

        given = explicit_keys(config)
        if not any(key in given for key in DATA_OPTIONS):
            return
        if any(
            cfg is not None and cfg.dataset == config.dataset and cfg.data_files == list(config.data_files)
            for cfg in plan.values()
        ):
            return
        entry = registry.datasets.get(config.dataset)
        if entry is None:
            raise ConfigError(
                f"unknown dataset '{config.dataset}'; `easyrlhf list-plugins` lists the datasets", where="dataset"
            )
        yields = ", ".join(sorted(str(s) for s in entry.obj.shapes)) or "nothing"
        wants = ", ".join(
            f"{name}: {registry.get('methods', name).shape}" for name, cfg in plan.items() if cfg is not None
        )
        raise ConfigError(
            f"no stage can use dataset '{config.dataset}' (it yields {yields}; the stages want "
            f"{wants}), or every stage sets its own; set it per stage, e.g. "
            f"--set {config.rl_method}.dataset={config.dataset}",
            where="dataset",
        )

    def run_stage(self, run: RunContext, name: str, stage_cfg: Any, data: DataSplits, **models: Any) -> str:
        """Train one stage into ``OUTPUT_DIR/<name>`` (skipped when already complete); its model path."""
        from easyrlhf_core.kit.checkpoints import is_complete_run

        stage_dir = run.output_dir / name
        trains = not is_complete_run(stage_dir)
        cfg = dataclasses.replace(stage_cfg, **{k: v for k, v in models.items() if v is not None or k == "model"})
        model = run.run_stage(run.registry.get("methods", name)(), cfg, data, stage_dir)
        if trains:
            self.log_stage_metrics(run, name, stage_dir)
        return str(model)

    def log_stage_metrics(self, run: RunContext, name: str, stage_dir: Path) -> None:
        """The stage's last value of every metric, prefixed ``<stage>/``, as one row of the pipeline's metrics."""
        from easyrlhf_core.kit.metrics import last_values

        if not run.is_main_process:
            return
        last = last_values(stage_dir / "metrics.jsonl")
        last.pop("step", None)
        if not last:
            return
        stages = run.config.stages
        run.progress.start(len(stages), description=self.name)  # the stage's own display has closed
        run.log_metrics(
            stages.index(name) + 1, {f"{name}/{k}": v for k, v in last.items() if isinstance(v, (int, float))}
        )

    def link_final_model(self, run: RunContext, policy: Path) -> None:
        """``OUTPUT_DIR/model`` points at the PPO policy (a relative symlink: no second copy)."""
        if not run.is_main_process:
            return
        link = run.model_dir
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                raise ConfigError(
                    "the run directory already has a model/ that is not the pipeline's link", where=str(link)
                )
        os.symlink(os.path.relpath(policy, run.output_dir), link)
        run.log(f"rlhf: final policy {policy} (linked as {link})")


@hookimpl
def register_methods(register: Any) -> None:
    register(RLHFPipeline)
