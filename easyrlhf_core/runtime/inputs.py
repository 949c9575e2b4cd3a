"""What a run was started from, so ``--resume`` continues the same run: ``OUTPUT_DIR/inputs.json``.

At the start of a run (not on ``--resume``) the claiming process records the model and the dataset it
was given (``model``, ``dataset``, ``data_files``) and, for local files, a fingerprint of each: the model
directory's ``config.json``, its tokenizer files (contents), its weights (sizes, and each safetensors
file's header), every data file (size and contents; the first and last 16 MB of a file over 256 MB).
Only headers and small files are read for a model, so this is cheap.

``--resume`` compares (:func:`check_same_inputs`): a different model or dataset than the run was started
with, or a model directory or data file that changed on disk since, is refused with one line naming both.
Everything else may change on resume (``max_steps`` to train further, say).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError

INPUTS_FILE = "inputs.json"
#: The config keys that say what a run trains on; ``--resume`` must give the same ones.
IDENTITY_KEYS = ("model", "dataset", "data_files")
#: Files of a model directory whose contents make its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WHOLE_FILE_LIMIT = 32 * 2**20  # larger files: their size and first and last MB (a resume of 50 big shards
_EDGE = 2**20  # reads 100 MB, not every byte)
_FLAGS = {"model": "--model", "dataset": "--dataset", "data_files": "--data-files"}


def file_digest(path: Path) -> str:
    """sha256 of a file's size and contents (of its first and last MB when it is over 32 MB)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as fh:
        if size <= _WHOLE_FILE_LIMIT:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            digest.update(fh.read(_EDGE))
    return digest.hexdigest()[:16]


def _weights_digest(files: list[Path]) -> str:
    """Names, sizes and (safetensors) headers of the weight files: the tensors' names, shapes and offsets."""
    from easyrlhf_core.kit.checkpoints import safetensors_header

    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        if path.suffix == ".safetensors":
            digest.update(json.dumps(safetensors_header(path), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def model_fingerprint(path: Path) -> dict[str, str]:
    """``{"config": ..., "tokenizer": ..., "weights": ...}`` digests of a local model directory (or of a
    single file, ``.gguf``, as ``{"file": ...}``)."""
    if path.is_file():
        return {"file": file_digest(path)}
    parts: dict[str, str] = {}
    if (path / "config.json").is_file():
        parts["config"] = file_digest(path / "config.json")
    tokenizer = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
    if tokenizer:
        parts["tokenizer"] = hashlib.sha256(
            "".join(f"{p.name}={file_digest(p)};" for p in tokenizer).encode()
        ).hexdigest()[:16]
    weights = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if weights:
        parts["weights"] = _weights_digest(weights)
    return parts


def _local_model(name: Any) -> Path | None:
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    return path.resolve() if path.exists() else None


def describe_inputs(config: Any) -> dict[str, Any]:
    """The run's model and data, with fingerprints of the local ones (what :data:`INPUTS_FILE` holds)."""
    model = getattr(config, "model", None)
    record: dict[str, Any] = {key: getattr(config, key, None) for key in IDENTITY_KEYS}
    local = _local_model(model)
    record["model_path"] = str(local) if local else None
    record["model_fingerprint"] = model_fingerprint(local) if local else None
    files = {}  # in the order given: the order decides the rows read
    for name in getattr(config, "data_files", None) or []:
        path = Path(name).expanduser()
        if path.is_file():
            files[str(path.resolve())] = file_digest(path)
    record["data_file_fingerprints"] = files
    record["recorded"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return record


def write_inputs(output_dir: Path, config: Any) -> None:
    """Record the run's inputs at its start (:data:`INPUTS_FILE`)."""
    (output_dir / INPUTS_FILE).write_text(json.dumps(describe_inputs(config), indent=2) + "\n", encoding="utf-8")


def _same_name(key: str, before: Any, now: Any, record: dict[str, Any]) -> bool:
    """The same input: for local paths the same resolved paths (``./m``, ``../x/m`` and a symlink to it are
    one; the same string from another directory is not), in the same order; else equal as given."""
    if key == "model" and record.get("model_path"):
        local = _local_model(now)
        return local is not None and str(local) == record["model_path"]
    files = record.get("data_file_fingerprints") or {}
    if key == "data_files" and files and len(files) == len(before or []):
        return [str(Path(n).expanduser().resolve()) for n in now or []] == list(files)
    return before == now or (not before and not now)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(none)"
    return str(value) if value else "(the default)"


def check_same_inputs(output_dir: Path, config: Any, config_file: str = "config.yaml") -> None:
    """On ``--resume``: refuse (one line naming both) a model or dataset other than the run's, or a model
    directory or data file changed on disk since the run started. A run from before :data:`INPUTS_FILE`
    existed is checked on the names in its ``config_file`` only."""
    import yaml

    try:
        record = json.loads((output_dir / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    try:
        saved_config = yaml.safe_load((output_dir / config_file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        saved_config = {}
    if not isinstance(record, dict) or not isinstance(saved_config, dict):
        return
    for key in IDENTITY_KEYS:
        if key not in saved_config and key not in record:
            continue
        before = record[key] if key in record else saved_config.get(key)
        now = getattr(config, key, None)
        if not _same_name(key, before, now, record):
            flag = _FLAGS[key]
            raise ConfigError(
                f"this run was started with {key} {_shown(before)}, this command gives "
                f"{_shown(now)}; --resume continues the same run: pass {flag} {_shown(before)}, or "
                f"start a new run in another --output-dir",
                where=flag,
            )
    _check_model_unchanged(record)
    _check_data_unchanged(record)


def _check_model_unchanged(record: dict[str, Any]) -> None:
    before, path = record.get("model_fingerprint"), record.get("model_path")
    if not before or not path or not Path(path).exists():
        return  # a Hub id, or a path that is gone (the model check before loading says so)
    now = model_fingerprint(Path(path))
    changed = [part for part in sorted(set(before) | set(now)) if before.get(part) != now.get(part)]
    if changed:
        what = ", ".join(
            f"{part} ({before.get(part, 'none')} at the start, {now.get(part, 'none')} now)" for part in changed
        )
        raise EasyRLHFError(
            f"the model changed on disk since this run started ({record.get('recorded', '?')}): "
            f"its {what} differ; the checkpoints were trained from the earlier one: put it back, "
            f"or start a new run in another --output-dir",
            where=path,
        )


def _check_data_unchanged(record: dict[str, Any]) -> None:
    for name, before in (record.get("data_file_fingerprints") or {}).items():
        path = Path(name)
        now = file_digest(path) if path.is_file() else "missing"
        if now != before:
            raise EasyRLHFError(
                f"this data file changed since the run started ({record.get('recorded', '?')}; "
                f"fingerprint {before} at the start, {now} now); a resumed run must read the same "
                f"rows in the same order: put the original back, or start a new run in another "
                f"--output-dir",
                where=name,
            )
