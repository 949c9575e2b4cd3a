"""``easyrlhf export``: a trained model as a file other programs run.

``--gguf``: a GGUF file for llama.cpp, Ollama and LM Studio, written by llama.cpp's own converter. One job per
module: :mod:`.source` (which model: a run's ``model/`` or a model directory, LoRA merged, the chat template
staged), :mod:`.converter` (llama.cpp's ``convert_hf_to_gguf.py``, fetched once from the pinned
llama-cpp-python sdist, run as a subprocess), :mod:`.quantize` (k-quants through llama.cpp's quantizer),
:mod:`.modelfile` (the Ollama Modelfile) and :mod:`.runner` (the steps in order).
Nothing heavy is imported here.
"""

from __future__ import annotations

from easyrlhf_core.commands.export.runner import QUANTIZE, Exported, ExportRequest, export_gguf

__all__ = ["QUANTIZE", "ExportRequest", "Exported", "export_gguf"]
