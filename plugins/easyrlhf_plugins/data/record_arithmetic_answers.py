"""Record the embedded model's answers to the first arithmetic questions into the shipped file the arithmetic
dataset's preference pairs read (:mod:`.arithmetic_answers`):

    python -m easyrlhf_plugins.data.record_arithmetic_answers

SmolLM2-135M-Instruct, greedy, fp32, at most 48 new tokens, 16 questions per ``generate`` call."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from .arithmetic import problems, question
from .arithmetic_answers import ANSWERS_FILE

RECORDED = 400
MAX_NEW_TOKENS = 48


def record(path: Path = ANSWERS_FILE, count: int = RECORDED, batch_size: int = 16) -> None:
    """Generate and write the answers of the embedded model (greedy) to the first ``count`` questions."""
    import torch

    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model

    model_ref = resolve_model(None)
    tokenizer = load_tokenizer(model_ref.path)
    tokenizer.padding_side = "left"
    model = load_causal_lm(model_ref.path).eval()
    rows: list[dict[str, Any]] = [
        {
            "recorded_by": "SmolLM2-135M-Instruct (embedded GGUF, converted), fp32, greedy",
            "max_new_tokens": MAX_NEW_TOKENS,
            "torch": torch.__version__,
        }
    ]
    todo = problems()[:count]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        questions = [question(p) for p in batch]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        for problem, asked, ids in zip(batch, questions, out):
            answer = tokenizer.decode(ids[encoded.input_ids.shape[1] :], skip_special_tokens=True).strip()
            rows.append({"prompt": asked, "answer": problem["answer"], "model_answer": answer})
        print(f"{min(start + batch_size, len(todo))}/{len(todo)}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    record()
