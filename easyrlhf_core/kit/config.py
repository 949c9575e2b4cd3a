"""Method configs: typed dataclasses with ``help`` metadata, merged from layers with provenance.

Precedence: method defaults < ``--config`` file < flags < ``--set key=value``. Every value is checked
against its field's type before any model loads; an error names the file and line (or the flag) that
set the bad value, with a did-you-mean for unknown keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from easyrlhf_core.kit.errors import ConfigError

__all__ = [
    "BaseConfig",
    "LoraOptions",
    "option",
    "with_default",
    "invalid",
    "require_positive",
    "require_model_dir",
    "explicit_keys",
]


def option(
    default: Any = dataclasses.MISSING, help: str = "", *, deprecated_names: tuple[str, ...] = (), **kwargs: Any
) -> Any:
    """A dataclass field with ``help`` text: ``beta: float = option(0.1, "KL strength")``.
    ``deprecated_names``: former names of the option that configs may still use; each is read as this option,
    with one line in the log saying to use the new name."""
    metadata = {"help": help, "deprecated_names": tuple(deprecated_names)}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def with_default(cls: type, name: str, default: Any) -> Any:
    """Option ``name`` of the dataclass ``cls`` with another default, its help and former names kept: for a
    method whose default differs from a shared options class's (``max_new_tokens: int = with_default(
    SamplingOptions, "max_new_tokens", 64)``)."""
    declared = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return option(
        default, declared.metadata.get("help", ""), deprecated_names=declared.metadata.get("deprecated_names", ())
    )


def deprecated_names(cls: type) -> dict[str, str]:
    """``former name -> option`` for the options of dataclass ``cls`` declared with ``deprecated_names``."""
    return {old: f.name for f in dataclasses.fields(cls) for old in f.metadata.get("deprecated_names", ())}


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def invalid(key: str, message: str) -> ConfigError:
    """A validation error about ``key``, raised from ``__post_init__``; the loader adds where it was set."""
    return ConfigError(f"'{key}' {message}", key=key)


def require_positive(config: Any, *keys: str) -> None:
    """Raise :func:`invalid` for the first of ``keys`` whose value in ``config`` is not a positive integer."""
    for key in keys:
        if getattr(config, key) <= 0:
            raise invalid(key, "must be a positive integer")


def require_model_dir(key: str, path: str | None) -> None:
    """Raise :func:`invalid` unless ``path`` (the value of ``key``) is empty or a transformers model directory."""
    if path is not None and not (Path(path) / "config.json").is_file():
        raise invalid(key, f"is not a transformers model directory (no config.json): {path}")


# --------------------------------------------------------------------------------------------------
# Shared option groups


@dataclass
class LoraOptions:
    """Low-rank adapters (peft)."""

    enabled: bool = option(False, "Train LoRA adapters instead of all weights (--lora).")
    r: int = option(16, "Adapter rank.")
    alpha: int = option(32, "Adapter scaling (lora_alpha).")
    dropout: float = option(0.05, "Dropout on the adapter input.")
    target_modules: list[str] = option(["all-linear"], "Module names to adapt, or 'all-linear'.")

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise invalid("lora.r", "must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise invalid("lora.dropout", "must be in [0, 1)")
        if not self.target_modules:
            raise invalid("lora.target_modules", "name at least one module, or use ['all-linear']")


@dataclass
class BaseConfig:
    """Options every training method shares: model, data, output, optimisation, precision, LoRA."""

    # model
    model: str | None = option(
        None, "Hub id, local transformers directory or .gguf file; empty: the embedded SmolLM2-135M-Instruct."
    )
    trust_remote_code: bool = option(False, "Allow custom model code from the model repository.")
    # data
    dataset: str = option("hh-rlhf", "Dataset plugin name (see `easyrlhf list-plugins`).")
    data_files: list[str] = option([], "Local data files for the dataset plugin; empty: its default source.")
    eval_fraction: float = option(0.05, "Fraction of the data held out for evaluation when no eval split exists.")
    max_train_samples: int | None = option(None, "Use at most this many training examples.")
    max_eval_samples: int | None = option(200, "Use at most this many evaluation examples.")
    skip_bad_rows: bool = option(False, "Skip (and count) malformed data rows instead of stopping.")
    columns: dict[str, str] = option({}, "Map our field names to the file's column names, e.g. {prompt: question}.")
    max_length: int = option(512, "Maximum tokens per example (prompt + completion).")
    # output and logging
    output_dir: str | None = option(None, "Run directory; empty: runs/<method>-<timestamp>.")
    logging_steps: int = option(1, "Log metrics every N optimizer steps.")
    eval_steps: int | None = option(None, "Evaluate every N steps; empty: only at the end.")
    final_eval: bool = option(
        True,
        "Evaluate on the eval split once more at the end (eval_* rows in metrics.jsonl); "
        "false skips it (a method's run summary still scores its held-out examples).",
    )
    save_steps: int = option(100, "Save a checkpoint every N steps (0: never).")
    save_total_limit: int = option(2, "Keep at most this many checkpoints.")
    report_to: list[str] = option(
        [],
        "Live trackers, e.g. [tensorboard] or [wandb]: every metrics.jsonl row at its "
        "step, local ones under OUTPUT_DIR/logs.",
    )
    # optimisation
    seed: int = option(42, "Random seed for data order, initialisation and sampling.")
    max_steps: int = option(-1, "Stop after N optimizer steps (-1: run num_train_epochs).")
    num_train_epochs: float = option(1.0, "Epochs over the training data when max_steps is -1.")
    learning_rate: float = option(1e-5, "Peak learning rate.")
    lr_scheduler_type: str = option("linear", "transformers scheduler name (linear, cosine, constant, ...).")
    warmup_ratio: float = option(0.0, "Fraction of steps for linear warm-up.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    per_device_train_batch_size: int = option(4, "Examples per device per forward pass.")
    per_device_eval_batch_size: int = option(4, "Evaluation examples per device per forward pass.")
    gradient_accumulation_steps: int = option(1, "Forward passes per optimizer step.")
    # hardware
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto: fp32 on CPU, bf16 (or fp16) on GPUs that support it."
    )
    gradient_checkpointing: bool = option(False, "Recompute activations to save memory.")
    deepspeed: str | None = option(None, "DeepSpeed JSON config, e.g. configs/deepspeed/zero2.json.")
    collective_timeout: int = option(
        1800,
        "Seconds a multi-process run's collective (gradient sync, ZeRO "
        "gather, barrier) may wait for the other ranks; past it the run ends "
        "with an error naming the rank and the call instead of hanging.",
    )
    # adapters
    lora: LoraOptions = option(LoraOptions(), "LoRA adapters (peft).")
    save_adapter_only: bool = option(False, "With LoRA: save only the adapter in model/ instead of the merged model.")

    def eval_batch_size(self) -> int:
        """The evaluation batch per device (a method may derive it: grpo/rloo from ``num_generations``)."""
        return self.per_device_eval_batch_size

    def __post_init__(self) -> None:
        require_positive(
            self,
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "logging_steps",
            "save_total_limit",
        )
        if self.max_steps == 0 or self.max_steps < -1:
            raise invalid("max_steps", "must be a positive integer, or -1 to run num_train_epochs")
        if self.learning_rate <= 0:
            raise invalid("learning_rate", "must be > 0")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise invalid("eval_fraction", "must be in [0, 1)")
        if self.save_steps < 0:
            raise invalid("save_steps", "must be >= 0 (0: never)")
        if self.collective_timeout <= 0:
            raise invalid("collective_timeout", "must be > 0 (seconds)")
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise invalid("eval_steps", "must be a positive integer, or empty")
        if self.save_adapter_only and not self.lora.enabled:
            raise invalid("save_adapter_only", "needs LoRA: add --lora (or lora.enabled: true)")
        if self.deepspeed is not None:
            from easyrlhf_core.kit.presets import deepspeed_presets, resolve_deepspeed

            self.deepspeed = resolve_deepspeed(self.deepspeed)  # a shipped preset by name: --deepspeed zero3
            if not Path(self.deepspeed).is_file():
                raise invalid(
                    "deepspeed",
                    f"file not found: {self.deepspeed}; give a DeepSpeed JSON file or a "
                    f"shipped preset: {', '.join(deepspeed_presets())}",
                )

    def validate_for_run(self) -> None:
        """Checks that only a run needs, e.g. a required option without a default (PPO's reward);
        ``show-config`` skips them so it can print the defaults. Raise a ConfigError naming the flag."""
        from easyrlhf_core.kit.trackers import check_trackers

        check_trackers(self.report_to)


# --------------------------------------------------------------------------------------------------
# Layers and merging


@dataclass
class Layer:
    """Values from one source. ``lines`` maps dotted keys to line numbers (config files)."""

    values: dict[str, Any]
    source: str
    is_file: bool = False
    lines: dict[str, int] = field(default_factory=dict)

    def error(self, key: str, message: str) -> ConfigError:
        if self.is_file:
            return ConfigError(message, file=self.source, line=self.lines.get(key))
        return ConfigError(message, where=self.source if self.source != "--set" else f"--set {key}")


def plain_value(value: Any) -> Any:
    """A nested mapping set key by key (``--set reward_options.a.b=1``), with every ``--set`` leaf parsed;
    a top-level leaf stays as it is (:func:`coerce` reads it)."""
    if isinstance(value, dict):
        return {k: (v.parsed if isinstance(v, RawString) else plain_value(v)) for k, v in value.items()}
    return value


class RawString:
    """A --set value: parsed as YAML, but the raw text is kept for string fields (``model=007``)."""

    def __init__(self, raw: str, parsed: Any) -> None:
        self.raw, self.parsed = raw, parsed


def located_error(config: Any, message: str, key: str, within: str | None = None) -> ConfigError | None:
    """``message`` as a ConfigError at the file line or flag that set the dotted ``key`` of ``config`` (or, for
    a key set as part of a bigger value such as one item of a list, the one that set ``within``), as
    :func:`resolve_config` recorded them; None when no layer set either (a default, or a config built
    otherwise). For checks after the config is built, e.g. a reward's options."""
    layers: dict[str, Layer] = getattr(config, "_setting_layers", {})
    name = key if key in layers else within
    layer = layers.get(name) if name else None
    if layer is None:
        return None
    return layer.error(key if layer.is_file and key in layer.lines else (name or key), message)


def explicit_keys(config: Any) -> dict[str, bool]:
    """The dotted keys of ``config`` that a file, a flag or ``--set`` set, each mapped to whether a config
    file set it (a full dump such as ``show-config`` output sets every key), as :func:`resolve_config`
    recorded them; empty for a config built otherwise."""
    return getattr(config, "_explicit_keys", {})


def coerce(value: Any, hint: Any, key: str, layer: Layer) -> Any:
    """Check ``value`` against type ``hint``; convert the few safe cases (int -> float, str from --set)."""
    raw = value.raw if isinstance(value, RawString) else None
    if isinstance(value, RawString):
        value = value.parsed
    ok, result = _check(value, hint, raw)
    if not ok:
        raise layer.error(key, f"'{key}' must be {_type_name(hint)}, got {value!r}")
    return result


def _check(value: Any, hint: Any, raw: str | None) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, result = _check(value, arg, raw)
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        return (value in args, value)
    if hint is bool:
        return (isinstance(value, bool), value)
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool), value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads 1e-5 as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if hint is str:
        if isinstance(value, str):
            return True, value
        if raw is not None and value is not None:
            return True, raw.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, None
    if origin is list:
        return _check_list(value, args, raw)
    if origin is dict:
        key_t, val_t = args or (Any, Any)
        if not isinstance(value, dict):
            return False, None
        out_d = {}
        for k, v in value.items():
            ok_k, rk = _check(k, key_t, None)
            ok_v, rv = _check(v, val_t, None)
            if not (ok_k and ok_v):
                return False, None
            out_d[rk] = rv
        return True, out_d
    return (isinstance(value, hint), value) if isinstance(hint, type) else (True, value)


def _check_list(value: Any, args: tuple[Any, ...], raw: str | None) -> tuple[bool, Any]:
    """:func:`_check` for ``list[item]`` (``args``: the hint's arguments); a command-line string is split at
    commas."""
    (item,) = args or (Any,)
    if isinstance(value, str) and raw is not None:  # --set data_files=a.jsonl,b.jsonl
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        return False, None
    out = []
    for v in value:
        if item is str and not isinstance(v, str):  # [1, 2] is not a list of strings: no silent str()
            return False, None
        ok, r = _check(v, item, None)
        if not ok:
            return False, None
        out.append(r)
    return True, out


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or empty (null)" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_plural_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _plural_type_name(hint: Any) -> str:
    """What a list of ``hint`` holds, in words: ``strings``, ``integers``, ``lists of numbers``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        names = [_plural_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or nulls" if type(None) in args else "")
    if origin is Literal:
        return "values among " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"lists of {_plural_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "mappings"
    return {bool: "true or false values", int: "integers", float: "numbers", str: "strings"}.get(
        hint, f"{getattr(hint, '__name__', str(hint))} values"
    )


# --------------------------------------------------------------------------------------------------
# Output


def build_options(options_class: type, options: dict[str, Any], owner: str, where: str) -> Any:
    """``options`` (a plain mapping, e.g. a reward's ``reward_options``) as an instance of the dataclass
    ``options_class``: unknown names with a did-you-mean, wrong types and ``__post_init__`` failures are one
    ConfigError ``where: owner: what is wrong``, its ``key`` the option at fault when known (a caller that
    knows where the option was set can point there: :func:`located_error`)."""
    names = [f.name for f in dataclasses.fields(options_class)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{owner}: unknown option(s) {', '.join(map(str, unknown))}{hint}; known: {', '.join(names) or 'none'}",
            where=where,
            key=str(unknown[0]),
        )
    layer = Layer(values={}, source=where)
    hints = typing.get_type_hints(options_class)
    typed = {}
    for key, value in options.items():
        try:
            typed[key] = coerce(value, hints[key], key, layer)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc.message}", where=where, key=key) from None
    try:
        return options_class(**typed)
    except ConfigError as exc:
        raise ConfigError(f"{owner}: {exc.message}", where=where, key=exc.key) from None
