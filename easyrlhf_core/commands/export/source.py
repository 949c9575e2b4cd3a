"""What ``easyrlhf export`` converts: a run's ``model/`` or a model directory, a causal LM, LoRA adapters merged
into their base, staged with a chat template llama.cpp, Ollama and LM Studio can render."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.kit.errors import EasyRLHFError

Log = Callable[[str], None]

#: The files a chat template can come from (``tokenizer_config.json``'s ``chat_template`` key wins, as in
#: transformers and the converter).
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:generation|endgeneration)\s*-?%\}")


def find_model_dir(path: str) -> Path:
    """``RUN_DIR/model`` for a run directory, ``path`` itself for a model directory (config.json or a LoRA
    adapter); else one line saying what was found."""
    from easyrlhf_core.runtime.run import CHECKPOINTS_DIR, MODEL_DIR

    given = Path(path).expanduser()
    if given.is_file() and given.suffix == ".gguf":
        raise EasyRLHFError("already a GGUF file; give the run directory or model directory it came from", where=path)
    if not given.is_dir():
        raise EasyRLHFError("no such directory; give a run directory or a model directory", where=path)
    for candidate in (given / MODEL_DIR, given):
        if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
            return candidate
    if (given / CHECKPOINTS_DIR).is_dir():
        raise EasyRLHFError(
            f"the run saved no {MODEL_DIR}/ (it has not finished); finish it with `easyrlhf run ... --resume`, "
            f"or export a checkpoint directory under {CHECKPOINTS_DIR}/",
            where=path,
        )
    raise EasyRLHFError(
        f"not a run directory (no {MODEL_DIR}/) nor a model directory (no config.json or adapter_config.json)",
        where=path,
    )


def require_causal_lm(model_dir: Path) -> None:
    """GGUF runners generate text: refuse a reward model (sequence classifier), one line naming it."""
    from easyrlhf_core.kit.model_dirs import inspect_model

    if inspect_model(str(model_dir), "RUN_DIR").kind != "causal_lm":
        raise EasyRLHFError(
            "a reward model (sequence classifier): llama.cpp, Ollama and LM Studio run causal LMs; export a "
            "policy (an sft, dpo, ppo or grpo run)",
            where=str(model_dir),
        )


def is_adapter(model_dir: Path) -> bool:
    """A LoRA adapter directory (``--save-adapter-only``): adapter weights and the name of their base."""
    return (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file()


def merge_adapter(adapter_dir: Path, out: Path, log: Log) -> None:
    """The adapter's base model (as ``--model`` resolves it) with the adapter merged in, and the tokenizer the
    run saved beside the adapter (else the base's), written to ``out`` as a plain transformers directory."""
    from transformers import AutoTokenizer

    from easyrlhf_core.kit.model_loading import load_causal_lm, resolve_model, weights_errors

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = config.get("base_model_name_or_path")
    if not base_name:
        raise EasyRLHFError("adapter_config.json names no base model (base_model_name_or_path)", where=str(adapter_dir))
    try:
        base = resolve_model(base_name, log)
    except EasyRLHFError as exc:
        raise EasyRLHFError(
            f"the adapter's base model {base_name} cannot be loaded ({exc.message}); put it back there or set "
            f"base_model_name_or_path in adapter_config.json",
            where=str(adapter_dir),
        ) from None
    log(f"merging the LoRA adapter in {adapter_dir} into its base ({base.source})")
    from peft import PeftModel

    model = load_causal_lm(base.path)
    with weights_errors(adapter_dir):
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir if has_tokenizer else base.path))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def chat_template(model_dir: Path) -> str | None:
    """The model's chat template as transformers reads it: ``tokenizer_config.json``'s ``chat_template`` (a
    string, or the one named ``default`` of a list), else ``chat_template.jinja``, else ``chat_template.json``."""
    config = _read_json(model_dir / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    found = _read_json(model_dir / "chat_template.json").get("chat_template")
    return found if isinstance(found, str) else None


def portable_template(template: str) -> str:
    """``template`` without transformers' ``{% generation %}`` markers (they only mark the assistant's tokens
    for training; other Jinja engines refuse the unknown tag)."""
    return _GENERATION_TAGS.sub("", template)


def stage(model_dir: Path, staging: Path) -> None:
    """``staging``: ``model_dir``'s files linked, with the chat template the model is chatted with (its own,
    or easyrlhf's ChatML default when it has none) made portable and written to ``chat_template.jinja``."""
    from easyrlhf_core.kit.model_loading import DEFAULT_CHAT_TEMPLATE

    template = portable_template(chat_template(model_dir) or DEFAULT_CHAT_TEMPLATE)
    staging.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.name not in (*TEMPLATE_FILES, "tokenizer_config.json"):
            (staging / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    config = _read_json(model_dir / "tokenizer_config.json")
    config.pop("chat_template", None)
    (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (staging / "chat_template.jinja").write_text(template, encoding="utf-8")


def declared_pre_tokenizer(model_dir: Path) -> str | None:
    """``gpt-2`` when tokenizer.json splits text exactly as GPT-2 does (byte-level, GPT-2's regex, no prefix
    space, nothing else): the llama.cpp pre-tokenizer to declare if the converter does not recognise the
    vocabulary's hash. None for anything else (the converter decides alone)."""
    pre: Any = _read_json(model_dir / "tokenizer.json").get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    gpt2 = isinstance(pre, dict) and pre.get("type") == "ByteLevel"
    if gpt2 and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EasyRLHFError(f"cannot read it ({exc})", file=path) from None
    return data if isinstance(data, dict) else {}
