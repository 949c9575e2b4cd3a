"""llama.cpp's own ``convert_hf_to_gguf.py``: found in a llama.cpp checkout (``EASYRLHF_LLAMA_CPP``) or taken
once from the llama-cpp-python source distribution on PyPI (it vendors llama.cpp) into the cache, then run as
a subprocess with the current Python."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from easyrlhf_core.kit.errors import EasyRLHFError, one_line
from easyrlhf_core.kit.model_loading import cache_dir

#: The llama-cpp-python release whose vendored llama.cpp converts (and, installed, quantizes and loads).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: A llama.cpp checkout to take the converter from instead of the PyPI sdist.
CHECKOUT_ENV = "EASYRLHF_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
#: What the converter needs beside it: its model classes and its own gguf-py (newer than PyPI's gguf).
_PARTS = (CONVERTER, "conversion/", "gguf-py/gguf/")
_LAUNCHER = Path(__file__).with_name("launch_converter.py")
#: The converter's output types; q4_k_m is made from its lossless ``auto`` output by the quantizer.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")

Log = Callable[[str], None]


def converter_path(log: Log = lambda _msg: None, cache: Path | None = None) -> Path:
    """``convert_hf_to_gguf.py`` of ``$EASYRLHF_LLAMA_CPP`` or of the cached llama-cpp-python sdist (fetched
    with ``pip download`` on first use)."""
    checkout = os.environ.get(CHECKOUT_ENV)
    if checkout:
        found = Path(checkout).expanduser() / CONVERTER
        if not found.is_file():
            raise EasyRLHFError(f"no {CONVERTER} in {checkout}; point it at a llama.cpp checkout", where=CHECKOUT_ENV)
        return found
    target = (cache or cache_dir()) / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION
    if not (target / CONVERTER).is_file():
        log(f"fetching llama.cpp's {CONVERTER} from the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (once)")
        fetch_converter(target)
    return target / CONVERTER


def fetch_converter(target: Path) -> None:
    """``pip download`` the llama-cpp-python sdist and extract the converter's files into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, spec],
            capture_output=True,
            text=True,
        )
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if result.returncode != 0 or not archives:
            said = one_line(result.stderr)[-300:] or "no sdist downloaded"
            raise EasyRLHFError(
                f"cannot fetch llama.cpp's converter: `pip download --no-binary :all: {spec}` failed ({said}); "
                f"check the network or set {CHECKOUT_ENV} to a llama.cpp checkout",
                where="export --gguf",
            )
        extract_converter(archives[0], target)


def extract_converter(archive: Path, target: Path) -> None:
    """Only the converter's files from the sdist ``archive`` (under ``vendor/llama.cpp/``) into ``target``,
    written beside it first and renamed into place."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                _, _, inside = member.name.partition("/vendor/llama.cpp/")
                if inside and member.isfile() and inside.startswith(_PARTS) and ".." not in inside.split("/"):
                    member.name = inside
                    members.append(member)
            if not any(m.name == CONVERTER for m in members):
                raise EasyRLHFError(f"{archive.name} holds no vendor/llama.cpp/{CONVERTER}", where="export --gguf")
            tar.extractall(staging, members=members, filter="data")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run_converter(
    converter: Path,
    model_dir: Path,
    out: Path,
    outtype: str,
    log_file: Path,
    pre_tokenizer: str | None,
    model_name: str | None = None,
) -> None:
    """Convert ``model_dir`` to ``out`` (``--outtype outtype``) with the current Python; the converter's output
    goes to ``log_file``. ``pre_tokenizer``: the llama.cpp pre-tokenizer to declare when the converter does
    not recognise the tokenizer's (see launch_converter.py). ``model_name``: the GGUF's ``general.name``."""
    command = [sys.executable, str(_LAUNCHER), str(converter), pre_tokenizer or ""]
    command += [str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    command += ["--model-name", model_name] if model_name else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0 or not out.is_file():
        raise converter_error(log_file.read_text(encoding="utf-8", errors="replace"), log_file)


def converter_error(output: str, log_file: Path) -> EasyRLHFError:
    """The converter's failure as one line: what it said last, and what to do for the failures we know."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    if "BPE pre-tokenizer was not recognized" in output:
        return EasyRLHFError(
            "llama.cpp's converter does not know this tokenizer's pre-tokenizer (its hash is not in llama.cpp's "
            f"list); export a model llama.cpp supports, or a newer converter with {CHECKOUT_ENV}; log: {log_file}",
            where="export --gguf",
        )
    if "No module named" in last:
        module = last.split("No module named", 1)[1].strip(" '\"")
        return EasyRLHFError(
            f"llama.cpp's converter needs the Python package {module!r}: pip install {module}", where="export --gguf"
        )
    unsupported = re.search(r"Model (\S+) is not supported", output)
    if unsupported:
        return EasyRLHFError(
            f"llama.cpp's converter does not support the architecture {unsupported.group(1)}; "
            f"export a model of an architecture llama.cpp runs (Llama, Qwen2, Mistral, Gemma ...)",
            where="export --gguf",
        )
    return EasyRLHFError(f"llama.cpp's converter failed: {last[-300:]}; log: {log_file}", where="export --gguf")
