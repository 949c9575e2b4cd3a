"""What the README's first run changes in the answers themselves: greedy answers of a model to held-out arithmetic
questions (asked bare, as in the dataset's preference pairs; problems 1000-1031, which no quick start trains on),
counted three ways: answers that start with the equation, answers with the right equation, mean answer tokens.

    python benchmarks/first_run_answers.py [MODEL_DIR ...]     # no argument: the embedded start model

Run it on the start model and on ``runs/quickstart/model`` to compare (one model per line of output)."""

from __future__ import annotations

import argparse
import json


def answers(model_dir: str | None, first: int = 1000, count: int = 32, max_new_tokens: int = 48) -> dict[str, float]:
    import torch
    from easyrlhf_plugins.data.arithmetic import problems, question, worked_answer

    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer, resolve_model

    path = model_dir or resolve_model(None).path
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    model = load_causal_lm(path).eval()
    chosen = problems()[first : first + count]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question(p)}], tokenize=False, add_generation_prompt=True
        )
        for p in chosen
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    generated = out[:, encoded.input_ids.shape[1] :]
    lengths = (generated != tokenizer.pad_token_id).sum(dim=1).tolist()
    replies = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in generated]
    equation_first = sum(r.startswith(worked_answer(p).split(" =")[0]) for r, p in zip(replies, chosen))
    right = sum(worked_answer(p) in r for r, p in zip(replies, chosen))
    return {
        "model": path,
        "questions": count,
        "equation_first": equation_first,
        "right_equation": right,
        "mean_answer_tokens": sum(lengths) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="Model directories (default: the embedded start model).")
    for model_dir in parser.parse_args().models or [None]:
        print(json.dumps(answers(model_dir)), flush=True)


if __name__ == "__main__":
    main()
