"""K-quants (q4_k_m) the converter cannot write: llama.cpp's quantizer, through llama-cpp-python's bindings
(``llama_cpp.llama_model_quantize``) when it is installed, else a ``llama-quantize`` executable on PATH.

Run as a script (``python quantize.py IN OUT FTYPE``) it quantizes through the bindings, importing nothing of
easyrlhf: the quantizer runs in a process of its own, so a crash in C is an exit code, not ours.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

#: ``--quantize`` name -> (llama.cpp's ``LLAMA_FTYPE_*`` constant, ``llama-quantize``'s type name).
K_QUANTS = {"q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K_M")}


def quantize_command(source: Path, out: Path, quant: str) -> list[str]:
    """The command that quantizes ``source`` to ``out``; one line saying what to install when there is none."""
    from easyrlhf_core.commands.export.converter import LLAMA_CPP_PYTHON_VERSION
    from easyrlhf_core.kit.errors import EasyRLHFError

    ftype, type_name = K_QUANTS[quant]
    if importlib.util.find_spec("llama_cpp") is not None:
        return [sys.executable, str(Path(__file__)), str(source), str(out), ftype]
    binary = shutil.which("llama-quantize")
    if binary is not None:
        return [binary, str(source), str(out), type_name]
    raise EasyRLHFError(
        f"{quant} needs llama.cpp's quantizer: pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (it builds "
        f"llama.cpp, minutes), or put llama.cpp's llama-quantize on PATH; q8_0 and f16 need neither",
        where="--quantize",
    )


def check_quantizer(quant: str) -> None:
    """One line saying what to install when there is no quantizer for ``quant``."""
    quantize_command(Path("in.gguf"), Path("out.gguf"), quant)


def run_quantize(source: Path, out: Path, quant: str, log_file: Path) -> None:
    """Quantize ``source`` (the converter's lossless output) to ``out``, the quantizer's output in ``log_file``."""
    from easyrlhf_core.kit.errors import EasyRLHFError

    command = quantize_command(source, out, quant)
    with log_file.open("a", encoding="utf-8") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0 or not out.is_file():
        lines = [line.strip() for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines()]
        last = next((line for line in reversed(lines) if line), "no output")
        raise EasyRLHFError(f"llama.cpp's quantizer failed (exit {code}): {last[-300:]}; log: {log_file}", where=quant)


def main() -> None:
    """``quantize.py IN OUT FTYPE``: llama.cpp's ``llama_model_quantize`` through llama-cpp-python."""
    import llama_cpp

    source, out, ftype = sys.argv[1:4]
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    code = llama_cpp.llama_model_quantize(source.encode(), out.encode(), params)
    sys.exit(1 if code != 0 else 0)


if __name__ == "__main__":
    sys.path.pop(0)  # this file's directory: its modules must not shadow llama_cpp's imports
    main()
