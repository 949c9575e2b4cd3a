"""What ``easyrlhf export --gguf`` runs: find the model, merge LoRA, stage the chat template, convert with
llama.cpp's converter, quantize when the converter cannot, and write the Ollama Modelfile."""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.commands.export import converter, modelfile, quantize, source
from easyrlhf_core.kit.errors import EasyRLHFError
from easyrlhf_core.kit.model_loading import model_label

Log = Callable[[str], None]

#: ``--quantize`` choices: the first is the default.
QUANTIZE = ("q8_0", "q4_k_m", "f16")


def stderr_log(message: str) -> None:
    print(f"[easyrlhf export] {message}", file=sys.stderr, flush=True)


@dataclass
class ExportRequest:
    """The options of ``easyrlhf export`` (docs/export.md)."""

    path: str
    quantize: str = QUANTIZE[0]
    out: str | None = None
    ollama: bool = False


@dataclass
class Exported:
    """What an export wrote."""

    gguf: Path
    modelfile: Path | None = None


def output_path(request: ExportRequest, model_dir: Path) -> Path:
    """``--out``, or ``<name>-<quantize>.gguf`` beside the model directory (in the run directory for a run)."""
    if request.out:
        out = Path(request.out).expanduser()
        if out.suffix != ".gguf":
            raise EasyRLHFError("must name a .gguf file", where="--out")
        if out.is_dir():
            raise EasyRLHFError("is a directory; name the .gguf file to write", where="--out")
        return out
    return model_dir.parent / f"{model_label(str(model_dir))}-{request.quantize}.gguf"


def export_gguf(request: ExportRequest, log: Log = stderr_log) -> Exported:
    """Write the GGUF (and the Modelfile with ``ollama``); every input is checked before anything converts."""
    if request.quantize not in QUANTIZE:
        raise EasyRLHFError(f"one of {', '.join(QUANTIZE)}, not {request.quantize!r}", where="--quantize")
    model_dir = source.find_model_dir(request.path)
    source.require_causal_lm(model_dir)
    out = output_path(request, model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    k_quant = request.quantize in quantize.K_QUANTS
    if k_quant:
        quantize.check_quantizer(request.quantize)  # before minutes of converting
    script = converter.converter_path(log)
    log_file = out.with_name(out.name + ".log")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        work = Path(tmp)
        model = model_dir
        if source.is_adapter(model_dir):
            model = work / "merged"
            source.merge_adapter(model_dir, model, log)
        staged = work / "staged"
        source.stage(model, staged)
        written = work / out.name
        converted = work / "lossless.gguf" if k_quant else written
        log(f"converting {model_dir} with llama.cpp's {converter.CONVERTER} ({request.quantize})")
        converter.run_converter(
            script,
            staged,
            converted,
            "auto" if k_quant else request.quantize,
            log_file,
            source.declared_pre_tokenizer(model),
            model_name=model_label(str(model_dir)),
        )
        if k_quant:
            log(f"quantizing to {request.quantize} with llama.cpp's quantizer")
            quantize.run_quantize(converted, written, request.quantize, log_file)
        written.replace(out)
        result = Exported(gguf=out)
        if request.ollama:
            result.modelfile = write_modelfile(staged, out, log)
    log_file.unlink(missing_ok=True)
    return result


def write_modelfile(staged: Path, gguf: Path, log: Log) -> Path:
    """``Modelfile`` beside ``gguf``, its TEMPLATE from the chat template the GGUF carries."""
    tokenizer = _tokenizer(staged)

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))

    special = [str(t) for t in tokenizer.all_special_tokens]
    special += [str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", 0)]
    eos = [tokenizer.eos_token] if tokenizer.eos_token else []
    eos += [str(t) for t in tokenizer.convert_ids_to_tokens(_generation_eos_ids(staged))]
    text, how = modelfile.modelfile(gguf.name, render, list(dict.fromkeys(special)), eos)
    path = gguf.parent / "Modelfile"
    path.write_text(text, encoding="utf-8")
    log(f"Modelfile TEMPLATE: {how}")
    return path


def _generation_eos_ids(model_dir: Path) -> list[int]:
    """``eos_token_id`` of generation_config.json (else config.json): one id or several."""
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if ids is not None:
                return [i for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int)]
    return []


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))
