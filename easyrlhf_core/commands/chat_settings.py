"""Which sampling settings ``easyrlhf chat`` decodes with, and where they came from.

The rule, in layers (a later one wins, setting by setting), as llama.cpp's ``common`` library does (it reads the
same GGUF keys onto the same defaults unless the user sets them):

1. llama.cpp's defaults (:data:`LLAMA_CPP_DEFAULTS`): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
   repetition penalty off;
2. the settings the model's own files give, and only those: a model directory's ``generation_config.json``
   (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``: the fields llama.cpp's converter
   copies into a GGUF), a GGUF file's ``general.sampling.*`` metadata (``temp``, ``top_k``, ``top_p``,
   ``min_p``, ``penalty_repeat``);
3. the flags (``--temperature``, ``--top-k``, ``--top-p``, ``--min-p``, ``--repetition-penalty``).

Greedy decoding instead: ``--greedy``; ``--compare`` without ``--sample`` or a sampling flag (two models
compared on one deterministic rule); a ``generation_config.json`` that says ``do_sample: false``
(transformers' reading; llama.cpp's converter drops it), or a temperature of 0 in the files (llama.cpp's rule).
Only chat reads a model's settings: every training path pins its own (:mod:`easyrlhf_core.kit.causal_lm`).

Importing this module is cheap: the GGUF reader loads when a GGUF is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError

if TYPE_CHECKING:
    from easyrlhf_core.kit.model_dirs import ModelRef

__all__ = [
    "SETTINGS",
    "OFF",
    "LLAMA_CPP_DEFAULTS",
    "GGUF_KEYS",
    "Recommended",
    "Decoding",
    "GREEDY",
    "read_generation_config",
    "read_gguf_sampling",
    "generation_config_file",
    "recommended",
    "check_flags",
    "decide",
]

#: The settings chat applies, in the order they are shown.
SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
#: Each setting's value that leaves the model's distribution as it is.
OFF: dict[str, float] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
#: llama.cpp's sampling defaults (``common/common.h``: temp 0.80, top_k 40, top_p 0.95, min_p 0.05,
#: penalty_repeat 1.00): what llama.cpp samples a GGUF with when neither its metadata nor the user say otherwise.
LLAMA_CPP_DEFAULTS: dict[str, float] = {**OFF, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
#: A GGUF's metadata keys of the settings chat applies (the names llama.cpp's converter writes).
GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
GGUF_PREFIX = "general.sampling."
#: generation_config.json fields that change the answer which chat does not apply, with their neutral values.
UNAPPLIED_FIELDS: dict[str, Any] = {
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "num_beams": 1,
    "penalty_alpha": None,
    "min_new_tokens": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
}
#: How the line chat prints names layer 1.
DEFAULTS_ORIGIN = "llama.cpp's defaults"


# --------------------------------------------------------------------------------------------------
# What a model's files recommend


@dataclass(frozen=True)
class Recommended:
    """What a model's files say about sampling: ``values`` (only the settings they give), ``greedy_because``
    (why they ask for greedy decoding, if they do), ``source`` (the file; None: no file), ``unapplied``
    (settings given that chat does not apply, or values out of range)."""

    source: str | None = None
    values: dict[str, float] | None = None
    greedy_because: str | None = None
    unapplied: tuple[str, ...] = ()


def _setting(name: str, value: Any) -> float | None:
    """``value`` as setting ``name`` takes it (top_k an int, the rest floats, 6 significant digits: GGUF
    stores float32), or None when it is not a number or out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if name == "top_k":
        return max(int(value), 0)  # llama.cpp and transformers: <= 0 is off
    number = float(f"{float(value):.6g}")
    valid = {
        "temperature": number >= 0,
        "top_p": 0 < number <= 1,
        "min_p": 0 <= number <= 1,
        "repetition_penalty": number > 0,
    }[name]
    return number if valid else None


def _recommended(source: str, given: dict[str, Any], greedy: str | None, unapplied: list[str]) -> Recommended:
    values: dict[str, float] = {}
    for name, raw in given.items():
        value = _setting(name, raw)
        if value is None:
            unapplied.append(f"{name} {raw!r} (out of range)")
        else:
            values[name] = value
    if values.get("temperature") == 0:  # llama.cpp: temperature <= 0 is greedy
        greedy = greedy or "temperature 0"
        del values["temperature"]
    return Recommended(source, values, greedy, tuple(unapplied))


def read_generation_config(path: Path) -> Recommended:
    """The sampling settings a ``generation_config.json`` sets explicitly (never transformers' defaults for the
    ones it leaves out); ``do_sample: false`` asks for greedy decoding."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EasyRLHFError(
            f"cannot read the model's generation settings ({exc}); fix or remove it", file=path
        ) from None
    if not isinstance(config, dict):
        raise EasyRLHFError("not a JSON object; fix or remove it", file=path)
    given = {name: config[name] for name in SETTINGS if config.get(name) is not None}
    unapplied = [name for name, neutral in UNAPPLIED_FIELDS.items() if config.get(name) not in (neutral, None, [], {})]
    greedy = "do_sample false" if config.get("do_sample") is False else None
    return _recommended(str(path), given, greedy, unapplied)


def _field_value(field: Any) -> Any:
    """A scalar GGUF metadata field's value (``contents()`` on gguf >= 0.11, the raw part before)."""
    if hasattr(field, "contents"):
        return field.contents()
    return field.parts[field.data[0]].tolist()[0]


def read_gguf_sampling(path: Path) -> Recommended:
    """The ``general.sampling.*`` settings in a GGUF file's metadata (read with the ``gguf`` package)."""
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
    except Exception as exc:
        raise EasyRLHFError(f"cannot read the GGUF metadata ({type(exc).__name__}: {exc})", file=path) from None
    sampling = {key: _field_value(field) for key, field in fields.items() if key.startswith(GGUF_PREFIX)}
    given = {GGUF_KEYS[key]: value for key, value in sampling.items() if key in GGUF_KEYS}
    unapplied = [key.removeprefix(GGUF_PREFIX) for key in sampling if key not in GGUF_KEYS]
    return _recommended(f"{path} metadata", given, None, unapplied)


def generation_config_file(model: str, follow_adapter: bool = True) -> Path | None:
    """The ``generation_config.json`` of a model directory (a LoRA adapter directory without one: its base
    model's) or of a Hub id already in the Hugging Face cache; None when there is none. Never downloads."""
    local = Path(model).expanduser()
    if local.is_dir():
        found = local / "generation_config.json"
        if found.is_file():
            return found
        adapter = local / "adapter_config.json"
        if follow_adapter and adapter.is_file():
            try:
                base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, json.JSONDecodeError, AttributeError):
                return None
            return generation_config_file(base, follow_adapter=False) if isinstance(base, str) and base else None
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "generation_config.json")
    except Exception:  # not a Hub id (a missing path), or no cache
        return None
    return Path(cached) if isinstance(cached, str) else None


def recommended(ref: ModelRef) -> Recommended:
    """What the files of the model ``ref`` names recommend: a GGUF's metadata for a ``.gguf`` file, else the
    model's ``generation_config.json`` (after it loaded: a Hub model's is then in the cache)."""
    if ref.name.endswith(".gguf"):
        return read_gguf_sampling(Path(ref.name).expanduser())
    found = generation_config_file(ref.path)
    return read_generation_config(found) if found is not None else Recommended()


# --------------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class Decoding:
    """How one model's answers are decoded (:func:`decide`): greedy or sampled with ``values`` (every setting
    of :data:`SETTINGS`; the repetition penalty applies to greedy decoding too); ``origin`` says why, ``shown``
    the settings the line names (those not off, and those a flag gave)."""

    greedy: bool
    values: dict[str, float]
    origin: str
    shown: tuple[str, ...] = ()

    def sampling_fields(self) -> dict[str, Any]:
        """The fields of :class:`easyrlhf_core.kit.rollout.Sampling` these settings fill."""
        fields: dict[str, Any] = {"greedy": self.greedy, "repetition_penalty": self.values["repetition_penalty"]}
        if not self.greedy:
            fields.update({name: self.values[name] for name in ("temperature", "top_k", "top_p", "min_p")})
        return fields

    def describe(self) -> str:
        """``temperature 0.8, top_k 40, ... (origin)``, or ``greedy (origin)``."""
        shown = [f"{name} {_number(self.values[name])}" for name in self.shown]
        return ", ".join((["greedy"] if self.greedy else []) + shown) + f" ({self.origin})"


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, int) else f"{value:g}"


#: Plain greedy decoding (what a :class:`~easyrlhf_core.commands.chat.ChatModel` decodes with unless told).
GREEDY = Decoding(True, dict(OFF), "--greedy")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_flags(sample: bool | None, flags: dict[str, float | None]) -> None:
    """The sampling flags given are in range, and none comes with ``--greedy``: else one
    :class:`ConfigError` naming the flag."""
    rules = {
        "temperature": (lambda v: v > 0, "must be > 0 (--greedy decodes greedily)"),
        "top_k": (lambda v: v >= 0, "must be >= 0 (0: off)"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "min_p": (lambda v: 0 <= v <= 1, "must be in [0, 1] (0: off)"),
        "repetition_penalty": (lambda v: v > 0, "must be > 0 (1.0: off)"),
    }
    for name, value in flags.items():
        if value is None:
            continue
        if sample is False:
            raise ConfigError("applies when sampling; leave out --greedy", where=_flag(name))
        valid, why = rules[name]
        if not valid(value):
            raise ConfigError(f"{why}, got {value:g}", where=_flag(name))


def _origin(shown: list[str], files_label: str, files: dict[str, float], given: dict[str, float]) -> str:
    """Where the shown settings came from: one source (``from FILE``), or ``temperature from --temperature;
    top_p from FILE; the rest llama.cpp's defaults`` (the flags first, the defaults last)."""
    flags_label = f"from {_flag(next(iter(given)))}" if len(given) == 1 else "from their flags"
    order = [flags_label, files_label, DEFAULTS_ORIGIN]
    groups: dict[str, list[str]] = {label: [] for label in order}
    for name in shown:
        groups[flags_label if name in given else files_label if name in files else DEFAULTS_ORIGIN].append(name)
    labels = [label for label in order if groups[label]]
    if len(labels) == 1:
        return labels[0]
    *named, rest = labels
    return "; ".join([f"{', '.join(groups[label])} {label}" for label in named] + [f"the rest {rest}"])


def decide(recommended: Recommended, sample: bool | None, flags: dict[str, float | None], compare: bool) -> Decoding:
    """The decoding of one model: ``sample`` True (``--sample``), False (``--greedy``) or None (not said);
    ``flags`` the sampling flags (None: not given); ``compare`` whether two models answer."""
    given = {name: value for name, value in flags.items() if value is not None}
    if sample is False:
        return GREEDY
    files = recommended.values or {}
    from_files = f"from {recommended.source}"
    unapplied = f"; not applied: {', '.join(recommended.unapplied)}" if recommended.unapplied else ""
    if sample is None and not given:
        if compare:
            return Decoding(
                True,
                dict(OFF),
                "--compare: the same answers every time; --sample samples each model with its own settings",
            )
        if recommended.greedy_because:
            penalty = files.get("repetition_penalty", 1.0)
            named: tuple[str, ...] = ("repetition_penalty",) if penalty != 1.0 else ()
            why = f"{from_files}: {recommended.greedy_because}{unapplied}"
            return Decoding(True, {**OFF, "repetition_penalty": penalty}, why, named)
    values = {**LLAMA_CPP_DEFAULTS, **files, **given}
    shown = [name for name in SETTINGS if name == "temperature" or name in given or values[name] != OFF[name]]
    origin = _origin(shown, from_files, files, given)
    if origin == DEFAULTS_ORIGIN and not files:
        origin += ": the model's files give none"
    return Decoding(False, values, origin + unapplied, tuple(shown))
