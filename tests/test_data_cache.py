"""The tokenization cache: records stored once by content, and ``Dataset.map`` results (ours and a TRL
trainer's internal tokenization) read back instead of recomputed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from easyrlhf_plugins.data.hh_rlhf import HHRLHFDataset

from benchmarks.data_load import tokenize_cached
from easyrlhf_core.kit.data_loading import load_dataset
from easyrlhf_core.kit.dataset_cache import as_hf_dataset, datasets_cache_dir, records_digest
from easyrlhf_core.kit.shapes import DataOptions, Shape


def records(shape: Shape, n: int, seed: int = 0) -> list[dict]:
    return load_dataset(HHRLHFDataset, DataOptions(shape=shape, max_train_samples=n, seed=seed)).train


def test_records_are_stored_once_by_content_and_round_trip():
    pairs = records(Shape.PREFERENCE, 30)
    first = as_hf_dataset(pairs)
    path = datasets_cache_dir() / records_digest(pairs)
    assert Path(first.cache_files[0]["filename"]).parent == path
    assert first.to_list() == pairs
    stamp = (path / "state.json").stat().st_mtime_ns
    second = as_hf_dataset([dict(r) for r in pairs])
    assert second.cache_files == first.cache_files and second._fingerprint == first._fingerprint
    assert (path / "state.json").stat().st_mtime_ns == stamp  # not rewritten
    other = as_hf_dataset(pairs[:-1])
    assert other.cache_files[0]["filename"] != first.cache_files[0]["filename"]
    ranked = records(Shape.RANKED, 5)
    assert as_hf_dataset(ranked).to_list() == ranked


def count_and_length(batch):
    """A batched map function that leaves a mark for every call (through a file named in the environment,
    so the function's fingerprint does not change)."""
    with open(os.environ["EASYRLHF_TEST_CALLS"], "a", encoding="utf-8") as fh:
        fh.write("call\n")
    return {"n_messages": [len(m) for m in batch["messages"]]}


def test_tokenize_cached_runs_once_per_content(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("EASYRLHF_TEST_CALLS", str(calls))
    conversations = records(Shape.CONVERSATION, 20, seed=3)
    first = tokenize_cached(conversations, count_and_length)
    assert calls.read_text().count("call") == 1
    again = tokenize_cached(conversations, count_and_length)
    assert calls.read_text().count("call") == 1  # read back from the cache file
    assert again["n_messages"] == first["n_messages"] == [len(r["messages"]) for r in conversations]
    keyed = tokenize_cached(as_hf_dataset(conversations), lambda b: count_and_length(b), cache_key="v1")
    keyed_again = tokenize_cached(as_hf_dataset(conversations), lambda b: count_and_length(b), cache_key="v1")
    assert calls.read_text().count("call") == 2 and keyed_again.cache_files == keyed.cache_files
    tokenize_cached(as_hf_dataset(conversations), lambda b: count_and_length(b), cache_key="v2")
    assert calls.read_text().count("call") == 3


@pytest.mark.filterwarnings("ignore")
def test_a_dpo_trainer_does_not_tokenize_again_on_the_second_run(tiny_tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tests.helpers import build_tiny_causal_lm

    pairs = records(Shape.PREFERENCE, 24, seed=11)

    def build_trainer() -> tuple[int, object]:
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)  # as a new run would load it
        calls = []
        original = type(tokenizer).apply_chat_template

        def counting(self, *args, **kwargs):
            calls.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), "apply_chat_template", counting)
        args = DPOConfig(
            output_dir=tempfile.mkdtemp(),
            report_to=[],
            max_steps=1,
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=2,
            max_length=64,
        )
        trainer = DPOTrainer(
            model=build_tiny_causal_lm(tokenizer),
            ref_model=build_tiny_causal_lm(tokenizer),
            args=args,
            train_dataset=as_hf_dataset(pairs),
            processing_class=tokenizer,
        )
        monkeypatch.setattr(type(tokenizer), "apply_chat_template", original)
        return len(calls), trainer

    first_calls, first = build_trainer()
    assert first_calls >= 3 * len(pairs)  # prompt, prompt+chosen, prompt+rejected per pair
    second_calls, second = build_trainer()
    assert second_calls == 0
    assert second.train_dataset["chosen_ids"] == first.train_dataset["chosen_ids"]
