"""Config layering: method defaults < ``--config`` file < flags < ``--set``, merged with provenance (the file
line or flag that set each key)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from easyrlhf_core.kit.config import Layer, plain_value, RawString, coerce, deprecated_names
from easyrlhf_core.kit.errors import ConfigError

__all__ = ["load_yaml_layer", "parse_set_options", "resolve_config", "config_to_yaml"]


def _deprecated_notice(old: str, new: str, layer: Layer) -> None:
    """One line on stderr saying to use the new name (not in the rank processes of a launched run: the
    launcher has said it)."""
    import os
    import sys

    from easyrlhf_core.kit.distributed import LAUNCHED_ENV

    if os.environ.get(LAUNCHED_ENV) == "1":
        return
    where = f"--set {old}" if layer.source == "--set" else layer.source
    if layer.is_file and old in layer.lines:
        where += f":{layer.lines[old]}"
    print(
        f"[easyrlhf] warning: {where}: '{old}' is deprecated; use '{new}' (the same option, renamed)",
        file=sys.stderr,
        flush=True,
    )


def load_yaml_layer(path: str | Path) -> Layer:
    """Read a YAML config file (or a shipped method config by name: ``--config rlhf``), remembering the line
    of every key."""
    from easyrlhf_core.kit.presets import method_configs, resolve_config_file

    path = Path(resolve_config_file(str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found; check the --config path, or name a shipped config: {', '.join(method_configs())}",
            file=path,
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 ({exc.reason})", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"invalid YAML: {problem}", file=path, line=mark.line + 1 if mark is not None else None
        ) from None
    if values is None:
        values, node = {}, None
    if not isinstance(values, dict):
        raise ConfigError("a config file must be a mapping of option: value", file=path, line=1)
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return Layer(values=values, source=str(path), is_file=True, lines=lines)


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    """The line of every mapping key below ``node``: ``a.b`` for mappings, ``a[0].b`` inside lists."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", lines)
    elif isinstance(node, yaml.SequenceNode) and prefix:
        for i, item in enumerate(node.value):
            _collect_lines(item, f"{prefix[:-1]}[{i}].", lines)


def parse_set_options(pairs: tuple[str, ...] | list[str]) -> Layer:
    """``("lora.r=8", "beta=0.2")`` -> a nested layer; values are parsed as YAML scalars."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{pair}'", where="--set")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{part}' is set both as a value and as a group", where=f"--set {key}")
        node[parts[-1]] = RawString(raw, value)
    return Layer(values=values, source="--set")


def resolve_config(cls: type, layers: list[Layer], method: str | None = None) -> Any:
    """Merge ``layers`` over the defaults of dataclass ``cls``; validate types, then ``__post_init__``.
    ``method`` names the method in the did-you-mean hint. The dotted keys the layers set are kept
    (:func:`explicit_keys`)."""
    values = _defaults_as_dict(cls)
    provenance: dict[str, Layer] = {}
    for layer in layers:
        _merge(cls, values, layer.values, layer, "", provenance, method)
    try:
        config = _build(cls, values)
    except ConfigError as exc:
        key = exc.key
        setter = provenance.get(key) if key else None
        if key and setter is not None:
            raise setter.error(key, exc.message) from None
        raise
    object.__setattr__(config, "_explicit_keys", {key: layer.is_file for key, layer in provenance.items()})
    object.__setattr__(config, "_setting_layers", dict(provenance))
    return config


def _defaults_as_dict(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
            out[f.name] = dataclasses.asdict(value) if is_instance else value
        elif isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = _defaults_as_dict(hints[f.name])
    return out


def _merge(
    cls: type,
    target: dict,
    incoming: dict,
    layer: Layer,
    prefix: str,
    provenance: dict[str, Layer],
    method: str | None = None,
) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    incoming = _renamed(cls, incoming, layer, prefix)
    for key, value in incoming.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise layer.error(
                dotted,
                f"unknown option '{dotted}'{hint}; `easyrlhf show-config --method {method or '...'}` lists the options",
            )
        hint_type = hints[key]
        if isinstance(hint_type, type) and dataclasses.is_dataclass(hint_type):
            if isinstance(value, RawString):
                value = value.parsed
            if not isinstance(value, dict):
                raise layer.error(
                    dotted,
                    f"'{dotted}' is a group of options; set its keys, "
                    f"e.g. {dotted}.{dataclasses.fields(hint_type)[0].name}",
                )
            sub = target.get(key)
            if not isinstance(sub, dict):
                sub = _defaults_as_dict(hint_type)
                target[key] = sub
            _merge(hint_type, sub, value, layer, dotted + ".", provenance, method)
            continue
        if typing.get_origin(hint_type) is dict and isinstance(value, dict):
            # a mapping set key by key (YAML, or dotted --set columns.prompt=question): merge into the current one
            _, value_type = typing.get_args(hint_type) or (Any, Any)
            merged = dict(target.get(key) or {})
            for name, item in value.items():
                merged[name] = coerce(plain_value(item), value_type, f"{dotted}.{name}", layer)
                provenance[f"{dotted}.{name}"] = layer
            target[key] = merged
            provenance[dotted] = layer
            continue
        target[key] = coerce(value, hint_type, dotted, layer)
        provenance[dotted] = layer


def _renamed(cls: type, incoming: dict, layer: Layer, prefix: str) -> dict:
    """``incoming`` with the deprecated names of ``cls``'s options replaced by the options' names (each said
    once in the log); a layer that sets both names of one option is an error."""
    former = deprecated_names(cls)
    if not any(key in former for key in incoming):
        return incoming
    out: dict = {}
    for key, value in incoming.items():
        new = former.get(key)
        if new is None:
            out[key] = value
            continue
        if new in incoming:
            raise layer.error(
                f"{prefix}{key}",
                f"'{prefix}{key}' is a deprecated name of '{prefix}{new}', which is set too; give only '{prefix}{new}'",
            )
        _deprecated_notice(f"{prefix}{key}", f"{prefix}{new}", layer)
        if f"{prefix}{key}" in layer.lines:  # errors about the value point at the line that set it
            layer.lines.setdefault(f"{prefix}{new}", layer.lines[f"{prefix}{key}"])
        out[new] = value
    return out


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            value = _build(hints[f.name], value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_to_yaml(config: Any, comments: bool = True) -> str:
    """YAML for a config, each option preceded by its help text when ``comments``."""
    lines: list[str] = []
    _emit(config, lines, indent="", comments=comments)
    return "\n".join(lines) + "\n"


def _emit(config: Any, lines: list[str], indent: str, comments: bool) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        help_text = f.metadata.get("help", "")
        if comments and help_text:
            lines.append(f"{indent}# {help_text}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            _emit(value, lines, indent + "  ", comments)
            continue
        dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, sort_keys=False, width=10_000)
        dumped = dumped.strip()
        if dumped.startswith("{") and dumped.endswith("}"):
            dumped = dumped[1:-1]
        lines.append(f"{indent}{dumped}")
