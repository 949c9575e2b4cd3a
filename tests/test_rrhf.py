"""The rrhf method: loss math, masking, batching, learning a toy ranking, generated candidates + cache,
resume, LoRA, and config errors. Tiny models on CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from easyrlhf_plugins.methods.rrhf.encoding import (
    RankedCollator,
    encode_dataset,
    encode_record,
)
from easyrlhf_plugins.methods.rrhf.loss import rrhf_terms

from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import Dataset, RewardFunction
from easyrlhf_core.kit.causal_lm import response_log_probs
from easyrlhf_core.kit.data_loading import load_dataset
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Shape
from easyrlhf_core.runtime import registry

# --------------------------------------------------------------------------------------------------
# Toy plugins: a learnable ranking (answers drawn from three word pools, better pools score higher)
# and a reward that counts a letter.

POOLS = [
    ["cat", "dog", "road", "chicken"],
    ["bread", "flour", "water", "salt"],
    ["Paris", "France", "capital", "city"],
]  # pool index = reward


def toy_record(rng: random.Random, question: str) -> dict:
    order = list(range(len(POOLS)))
    rng.shuffle(order)
    responses = [" ".join(rng.choice(POOLS[p]) for _ in range(3)) for p in order]
    return {
        "prompt": [{"role": "user", "content": question}],
        "responses": responses,
        "scores": [float(p) for p in order],
    }


def toy_records(seed: int, count: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    return [toy_record(rng, f"{prefix} {i}: which one?") for i in range(count)]


class ToyRanked(Dataset):
    """48 train + 8 eval toy queries, k=3."""

    name = "rrhf-toy-ranked"
    description = "toy ranked candidates (rrhf tests)"
    shapes = frozenset({Shape.RANKED})

    def load(self, options):
        train = toy_records(0, 48, "Question")
        if options.max_train_samples:
            train = train[: options.max_train_samples]
        return DataSplits(options.shape, train, toy_records(1, 8, "Eval question"))


class CountA(RewardFunction):
    """Counts the letter 'a' in the completion; counts its calls."""

    name = "rrhf-toy-count-a"
    description = "number of 'a' letters (rrhf tests)"
    calls = 0

    def score(self, prompts, completions):
        type(self).calls += 1
        return [float(text.count("a")) for text in completions]


class ToyPlugin:
    """rrhf test plugin: toy ranked data and a letter-counting reward."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register(ToyRanked)

    @staticmethod
    @hookimpl
    def register_rewards(register):
        register(CountA)


@pytest.fixture(autouse=True)
def toy_plugin():
    registry.register_plugin("rrhf-toy", ToyPlugin)
    CountA.calls = 0
    yield
    registry.unregister_plugin("rrhf-toy")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from easyrlhf_core.kit.model_loading import load_tokenizer

    return load_tokenizer(str(tiny_tokenizer_dir))


def _rrhf(cli_run, model_dir, out, *extra):
    return cli_run(
        "run",
        "--method",
        "rrhf",
        "--model",
        str(model_dir),
        "--dataset",
        "rrhf-toy-ranked",
        "--output-dir",
        str(out),
        "--set",
        "max_length=96",
        "--set",
        "save_steps=0",
        *extra,
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# Loss math


def _fixed_batch():
    """Two queries interleaved: A (k=3, a reward tie) and B (k=2). Rows: A0, B0, A1, B1, A2."""
    logp_sum = torch.tensor([-2.0, -4.0, -6.0, -1.0, -3.0])
    num_tokens = torch.tensor([2, 4, 3, 2, 1])
    rewards = torch.tensor([1.0, 0.5, 3.0, -0.5, 1.0])
    query_index = torch.tensor([0, 1, 0, 1, 0])
    return logp_sum, num_tokens, rewards, query_index


def test_loss_matches_hand_computed_values_with_ties_and_k3():
    # A: p = [-1, -2, -3], r = [1, 3, 1]: pairs (A0<A1): max(0, -1+2) = 1; (A2<A1): max(0, -3+2) = 0;
    #    the tie A0/A2 counts nothing. Best A1: ft = 6/3 = 2.
    # B: p = [-1, -0.5], r = [0.5, -0.5]: pair (B1<B0): max(0, -0.5+1) = 0.5. Best B0: ft = 4/4 = 1.
    terms = rrhf_terms(*_fixed_batch(), num_queries=2, rank_weight=1.0)
    assert torch.allclose(terms.p, torch.tensor([-1.0, -1.0, -2.0, -0.5, -3.0]))
    assert torch.allclose(terms.rank_loss, torch.tensor([1.0, 0.5]))
    assert torch.allclose(terms.ft_loss, torch.tensor([2.0, 1.0]))
    assert terms.loss.item() == pytest.approx(((1 + 2) + (0.5 + 1)) / 2)
    # ordered pairs: A0<A1 wrong (p -1 > -2), A2<A1 right, B1<B0 wrong
    assert (terms.correct_pairs.item(), terms.total_pairs.item()) == (1, 3)
    assert torch.allclose(terms.p_best, torch.tensor([-2.0, -1.0]))  # A1, B0
    assert torch.allclose(terms.p_worst, torch.tensor([-1.0, -0.5]))  # first of the tied worst (A0), B1

    weighted = rrhf_terms(*_fixed_batch(), num_queries=2, rank_weight=2.0)
    assert weighted.loss.item() == pytest.approx(((2 + 2) + (1 + 1)) / 2)


def test_length_penalty_zero_ranks_summed_log_probs():
    # p = sums: A (A0<A1) 4 + (A2<A1) 3 = 7, B (B1<B0) 3; ft stays per-token: 2 and 1.
    terms = rrhf_terms(*_fixed_batch(), num_queries=2, length_penalty=0.0)
    assert torch.allclose(terms.rank_loss, torch.tensor([7.0, 3.0]))
    assert terms.loss.item() == pytest.approx(((7 + 2) + (3 + 1)) / 2)


def test_all_ties_give_no_rank_loss_and_ft_on_the_first():
    terms = rrhf_terms(
        torch.tensor([-1.0, -8.0]), torch.tensor([1, 2]), torch.tensor([0.3, 0.3]), torch.tensor([0, 0]), num_queries=1
    )
    assert terms.rank_loss.item() == 0.0 and terms.total_pairs.item() == 0
    assert terms.ft_loss.item() == pytest.approx(1.0)


def test_rank_loss_gradient_pushes_the_better_candidate_up():
    logp_sum = torch.tensor([-1.0, -3.0], requires_grad=True)  # worse candidate (r=0) has the higher p
    terms = rrhf_terms(logp_sum, torch.tensor([1, 1]), torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), 1)
    terms.loss.backward()
    assert logp_sum.grad[0] > 0 and logp_sum.grad[1] < 0  # descent lowers the worse, raises the better


# --------------------------------------------------------------------------------------------------
# Masking and batching


def test_only_positions_predicting_response_tokens_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    input_ids = torch.randint(0, 11, (2, 6))
    response_mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])  # row 0: 2 pad tokens at the end
    sums, counts = response_log_probs(logits, input_ids, response_mask)
    expected = torch.log_softmax(logits, -1)
    assert counts.tolist() == [2, 3]
    assert sums[0].item() == pytest.approx(expected[0, 1, input_ids[0, 2]] + expected[0, 2, input_ids[0, 3]])

    changed = logits.clone()
    changed[0, [0, 3, 4, 5]] += 5 * torch.randn(4, 11)  # prompt positions, and the last token + padding
    changed[1, [0, 1, 5]] += 5 * torch.randn(3, 11)
    assert torch.allclose(response_log_probs(changed, input_ids, response_mask)[0], sums)
    changed[0, 1] += 5 * torch.randn(11)  # this position predicts the first response token
    assert not torch.allclose(response_log_probs(changed, input_ids, response_mask)[0], sums)


def test_encoding_matches_the_assistant_turn(tokenizer):
    record = {"prompt": [{"role": "user", "content": "Hi there"}], "responses": ["Paris.", "No"], "scores": [1, 0]}
    query = encode_record(tokenizer, record, max_length=512)
    assert tokenizer.decode(query.prompt_ids) == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert [tokenizer.decode(r) for r in query.response_ids] == ["Paris.<|im_end|>", "No<|im_end|>"]
    assert query.response_ids[0][-1] == tokenizer.eos_token_id and not query.truncated

    short = encode_record(tokenizer, {**record, "responses": ["word " * 60, "x"]}, max_length=40)
    assert short.truncated
    assert all(len(short.prompt_ids) + len(r) <= 40 for r in short.response_ids)
    assert short.prompt_ids[-3:] == query.prompt_ids[-3:]  # the prompt loses its start, not its end


def test_variable_k_batch_in_one_forward_pass_equals_each_candidate_alone(tokenizer, tiny_model_dir):
    """p of every candidate is the same whether it is batched with padding (any k, any pad id) or alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = [
        {
            "prompt": [{"role": "user", "content": "Tell me a joke."}],
            "responses": ["Why did the chicken cross the road?", "No.", "Bread"],
            "scores": [2, 0, 1],
        },
        {
            "prompt": [{"role": "user", "content": "What is the capital of France, please?"}],
            "responses": ["Paris", "The capital of France is Paris, a city."],
            "scores": [0, 1],
        },
    ]
    data, _ = encode_dataset(tokenizer, records, max_length=128)

    def p_of(batch):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return response_log_probs(logits, batch["input_ids"], batch["response_mask"])[0]

    batch = RankedCollator(tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 5 and batch["query_index"].tolist() == [0, 0, 0, 1, 1]
    assert batch["response_mask"].sum(1).tolist() == [len(r) for q in data.queries for r in q.response_ids]
    batched = p_of(batch)
    other_pad = p_of(RankedCollator(pad_token_id=7)([data[0], data[1]]))
    alone = torch.cat(
        [
            p_of(
                RankedCollator(tokenizer.pad_token_id)(
                    [{"prompt_ids": q.prompt_ids, "response_ids": [r], "scores": [0.0]}]
                )
            )
            for q in data.queries
            for r in q.response_ids
        ]
    )
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(batched, other_pad, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Training end to end


def _held_out_accuracy(model_dir, tokenizer) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    data, _ = encode_dataset(tokenizer, toy_records(7, 24, "Held-out query"), max_length=96)
    batch = RankedCollator(tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = response_log_probs(logits, batch["input_ids"], batch["response_mask"])
    terms = rrhf_terms(sums, counts, batch["rewards"], batch["query_index"], len(data))
    return terms.correct_pairs.item() / terms.total_pairs.item()


def test_training_learns_the_toy_ranking_on_held_out_queries(cli_run, tiny_model_dir, tokenizer, tmp_path):
    out = tmp_path / "rrhf"
    result = _rrhf(
        cli_run,
        tiny_model_dir,
        out,
        "--max-steps",
        "36",
        "--set",
        "learning_rate=3e-3",
        "--set",
        "lr_scheduler_type=constant",
        "--set",
        "logging_steps=6",
    )
    assert result.exit_code == 0, result.stderr
    before = _held_out_accuracy(tiny_model_dir, tokenizer)
    after = _held_out_accuracy(out / "model", tokenizer)  # model/ reloads with plain transformers
    assert after >= 0.9 and after > before + 0.2, (before, after)

    rows = _metrics(out)
    train_rows = [r for r in rows if "rank_loss" in r]
    for key in ("loss", "rank_loss", "ft_loss", "ranking_accuracy", "p_best", "p_worst", "p_margin"):
        assert key in train_rows[-1], key
    assert train_rows[-1]["ranking_accuracy"] > train_rows[0]["ranking_accuracy"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    eval_row = next(r for r in rows if "eval_rank_loss" in r)
    assert eval_row["eval_ranking_accuracy"] >= 0.9 and "eval_loss" in eval_row
    assert "rrhf: 48 train queries, 3-3 candidates each" in result.stderr


def test_generate_scores_candidates_once_and_resume_reuses_the_cache(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "gen"
    common = (
        "--set",
        "candidates=generate",
        "--reward",
        "rrhf-toy-count-a",
        "--set",
        "num_generations=2",
        "--set",
        "max_new_tokens=6",
        "--set",
        "max_train_samples=6",
        "--set",
        "save_steps=2",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "learning_rate=1e-3",
    )
    result = _rrhf(cli_run, tiny_model_dir, out, "--max-steps", "2", *common)
    assert result.exit_code == 0, result.stderr
    assert CountA.calls > 0
    cache = out / "candidates.jsonl"
    lines = cache.read_text().splitlines()
    header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert (header["train"], header["eval"]) == (6, 8)
    data = load_dataset(ToyRanked, DataOptions(shape=Shape.RANKED, max_train_samples=6))  # as the run loads it
    for row, source in zip(rows, data.train):
        assert row["split"] == "train" and row["generated"] == 2 and len(row["responses"]) == 5
        assert row["responses"][2:] == source["responses"]  # dataset responses kept, re-scored
        assert row["scores"] == [float(r.count("a")) for r in row["responses"]]
    assert any(r["responses"][:2] != ["", ""] for r in rows)  # something was sampled
    assert "rrhf: 6 train queries, 5-5 candidates each" in result.stderr

    CountA.calls = 0
    before = cache.read_bytes()
    resumed = _rrhf(cli_run, tiny_model_dir, out, "--max-steps", "4", "--resume", *common)
    assert resumed.exit_code == 0, resumed.stderr
    assert CountA.calls == 0 and cache.read_bytes() == before
    assert "candidates: reusing 14 scored queries" in resumed.stderr
    assert "--resume: continuing from" in resumed.stderr
    assert max(r["step"] for r in _metrics(out)) == 4


def test_lora_on_hh_rlhf_trains_and_saves_a_merged_model(cli_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    result = cli_run(
        "run",
        "--method",
        "rrhf",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "hh-rlhf",
        "--output-dir",
        str(out),
        "--lora",
        "--max-steps",
        "3",
        "--set",
        "lora.r=4",
        "--set",
        "learning_rate=1e-2",
        "--set",
        "max_train_samples=12",
        "--set",
        "max_eval_samples=4",
        "--set",
        "max_length=128",
        "--set",
        "save_steps=0",
    )
    assert result.exit_code == 0, result.stderr
    assert "rrhf: 12 train queries, 2-2 candidates each" in result.stderr and "trainable of" in result.stderr
    assert not (out / "model" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert base.keys() == merged.keys()
    assert any(not torch.equal(base[k], merged[k]) for k in base)
    assert any("rank_loss" in row for row in _metrics(out))


def test_generate_with_a_reward_model_directory(cli_run, tiny_model_dir, tmp_path):
    """--reward-model PATH scores the candidates through the built-in 'reward-model' reward function."""
    from easyrlhf_core.kit.model_loading import load_sequence_classifier, load_tokenizer

    reward_dir = tmp_path / "rm"
    tokenizer = load_tokenizer(str(tiny_model_dir))
    load_sequence_classifier(str(tiny_model_dir), pad_token_id=tokenizer.pad_token_id).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    out = tmp_path / "gen-rm"
    result = _rrhf(
        cli_run,
        tiny_model_dir,
        out,
        "--max-steps",
        "1",
        "--set",
        "candidates=generate",
        "--reward-model",
        str(reward_dir),
        "--set",
        "num_generations=1",
        "--set",
        "max_new_tokens=4",
        "--set",
        "max_train_samples=4",
        "--set",
        "max_eval_samples=2",
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 4 + 2 and all(len(r["scores"]) == 4 for r in rows)  # max_eval_samples applies too
    assert len({s for r in rows for s in r["scores"]}) > 1  # real model scores, not a constant
    assert "scoring with 'reward-model'" in result.stderr


@pytest.mark.parametrize(
    "args, where, words",
    [
        (("--set", "candidates=generate"), "--set candidates", "--reward-model PATH or --reward NAME"),
        (("--reward", "rrhf-toy-count-a"), "--reward", "candidates=generate"),
        (("--set", "candidates=generate", "--reward", "x", "--reward-model", "y"), "--reward", "both set"),
        (("--set", "rank_weight=-1"), "--set rank_weight", ">= 0"),
        (("--set", "candidates=generate", "--reward", "length", "--set", "top_k=-1"), "--set top_k", ">= 0"),
        (("--set", "candidates=sample"), "--set candidates", "one of 'dataset', 'generate'"),
    ],
)
def test_bad_options_are_one_line_errors(cli_run, tiny_model_dir, tmp_path, args, where, words):
    out = tmp_path / "bad"
    result = _rrhf(cli_run, tiny_model_dir, out, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {where}: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_sampling_settings_are_pinned_not_taken_from_the_model(tiny_model_dir, tokenizer, monkeypatch):
    """The model's own generation defaults (transformers' top_k=50) never apply: our top_k/top_p/temperature do."""
    from easyrlhf_plugins.methods.rrhf import candidates
    from easyrlhf_plugins.methods.rrhf.config import RRHFConfig
    from transformers import AutoModelForCausalLM

    from easyrlhf_core.kit import causal_lm as lm

    seen = []
    real_generate = lm.generate
    monkeypatch.setattr(lm, "generate", lambda *args: seen.append(args[3]) or real_generate(*args))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = RRHFConfig(
        candidates="generate", reward="length", num_generations=2, max_new_tokens=4, temperature=0.7, top_p=0.9
    )
    out = candidates.sample_responses(model, tokenizer, [[{"role": "user", "content": "Hi there"}]], config)
    assert len(out) == 1 and len(out[0]) == 2
    assert (seen[0].top_k, seen[0].top_p, seen[0].temperature, seen[0].do_sample) == (0, 0.9, 0.7, True)


def test_ft_normalization_sum_is_the_papers_summed_log_likelihood():
    # the best candidates A1 (3 tokens, log-prob sum -6) and B0 (4 tokens, -4): mean gives 2 and 1, sum 6 and 4
    mean = rrhf_terms(*_fixed_batch(), num_queries=2)
    summed = rrhf_terms(*_fixed_batch(), num_queries=2, ft_normalization="sum")
    assert torch.allclose(mean.ft_loss, torch.tensor([2.0, 1.0]))
    assert torch.allclose(summed.ft_loss, torch.tensor([6.0, 4.0]))
    assert torch.allclose(summed.rank_loss, mean.rank_loss)
    assert summed.loss.item() == pytest.approx(((1 + 6) + (0.5 + 4)) / 2)


def test_ft_normalization_reaches_the_trainer(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "ft-sum"
    result = _rrhf(cli_run, tiny_model_dir, out, "--max-steps", "1", "--set", "ft_normalization=sum")
    assert result.exit_code == 0, result.stderr
    assert "ft_normalization=sum" in result.stderr
    mean = _rrhf(cli_run, tiny_model_dir, tmp_path / "ft-mean", "--max-steps", "1")
    assert mean.exit_code == 0, mean.stderr
    summed_ft, mean_ft = (
        next(r["ft_loss"] for r in _metrics(d) if "ft_loss" in r) for d in (out, tmp_path / "ft-mean")
    )
    assert summed_ft > 2 * mean_ft  # the same first batch, summed over its multi-token best answers
    bad = _rrhf(cli_run, tiny_model_dir, tmp_path / "bad", "--set", "ft_normalization=median")
    assert bad.exit_code == 2 and "one of 'mean', 'sum'" in bad.stderr
