"""Runs llama.cpp's ``convert_hf_to_gguf.py`` as its ``__main__``, with its own ``gguf-py`` first on the path.

``python launch_converter.py CONVERTER PRE_TOKENIZER ARGS...``: the converter names a BPE tokenizer's
pre-tokenizer by the hash of how it splits a test text, and stops on a hash it does not list (a tokenizer
trained for a small model has a vocabulary of its own, so its hash is new even when it splits text exactly
as GPT-2 does). PRE_TOKENIZER, when not empty, is the llama.cpp pre-tokenizer that tokenizer.json's
pre_tokenizer says it is (easyrlhf declares ``gpt-2`` for GPT-2's byte-level split only); it is used only for
a hash the converter does not list, so a model llama.cpp knows converts exactly as the converter does alone.

Run as a script, by path: it imports nothing of easyrlhf.
"""

import os
import runpy
import sys


def main() -> None:
    converter, pre_tokenizer, *args = sys.argv[1:]
    here = os.path.dirname(os.path.abspath(converter))
    sys.path[0:1] = [here, os.path.join(here, "gguf-py")]  # in place of this file's own directory
    if pre_tokenizer:
        from conversion import base  # the converter's model classes, beside it

        recognised = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):  # type: ignore[no-untyped-def]
            try:
                return recognised(self, tokenizer)
            except NotImplementedError:
                print(f"easyrlhf: pre-tokenizer declared as {pre_tokenizer!r} (from tokenizer.json)", file=sys.stderr)
                return pre_tokenizer

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [converter, *args]
    runpy.run_path(converter, run_name="__main__")


if __name__ == "__main__":
    main()
