"""hh-rlhf: transcript parsing, divergent-turn splits, drop counts on the embedded sample, all four shapes,
deterministic splits, local files and the Anthropic directory layout."""

from __future__ import annotations

import pytest
from easyrlhf_plugins.data.hh_rlhf import HHRLHFDataset, embedded_files
from easyrlhf_plugins.data.transcripts import parse_transcript

from easyrlhf_core.kit.data_loading import load_dataset
from easyrlhf_core.kit.errors import ConfigError, DataError
from easyrlhf_core.kit.rows import RowProblem
from easyrlhf_core.kit.shapes import DataOptions, Shape
from tests.data_helpers import check_record, hh_row, write_jsonl

EMBEDDED_PAIRS = 6240
EMBEDDED_KEPT = 6240 - 37


def load(shape: Shape, **kwargs) -> object:
    kwargs.setdefault("max_eval_samples", None)
    return load_dataset(HHRLHFDataset, DataOptions(shape=shape, **kwargs))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# -- transcript parsing -------------------------------------------------------------------------------


def test_multi_turn_transcript_becomes_alternating_messages():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!  \n\nHuman: How do I bake bread?\n\nAssistant: Knead, rise, bake."
    parsed = parse_transcript(text, "chosen")
    assert parsed.messages == [
        user("Hi there"),
        assistant("Hello!"),
        user("How do I bake bread?"),
        assistant("Knead, rise, bake."),
    ]
    assert (parsed.merged_turns, parsed.removed_final_human_turns) == (0, 0)


def test_same_speaker_turns_merge_and_unanswered_final_human_turn_is_removed():
    text = "\n\nHuman: List two fruits\n\nAssistant: Apple.\n\nAssistant: Pear.\n\nHuman: Thanks!"
    parsed = parse_transcript(text, "rejected")
    assert parsed.messages == [user("List two fruits"), assistant("Apple.\n\nPear.")]
    assert (parsed.merged_turns, parsed.removed_final_human_turns) == (1, 1)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("\n\nHuman: anyone there?", "'chosen' has no '\\n\\nAssistant: ' turn"),
        ("Hello\n\nAssistant: hi", "'chosen' is not an hh-rlhf transcript: it must start with '\\n\\nHuman: '"),
        ("", "'chosen' is not an hh-rlhf transcript"),
    ],
)
def test_bad_transcripts_are_row_problems(text, problem):
    with pytest.raises(RowProblem) as info:
        parse_transcript(text, "chosen")
    assert str(info.value).startswith(problem)


# -- divergent pairs ---------------------------------------------------------------------------------


def divergent_files(tmp_path):
    chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    at_assistant = {"chosen": chosen, "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: y\n\nAssistant: z"}
    at_user = {"chosen": chosen, "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: e\n\nAssistant: f"}
    normal = hh_row("q", "good answer")
    identical = {"chosen": chosen, "rejected": chosen}
    return [write_jsonl(tmp_path / "pairs.jsonl", [at_assistant, at_user, normal, identical])]


def test_divergent_pairs_split_at_the_longest_common_prefix_of_whole_turns(tmp_path):
    files = [str(p) for p in divergent_files(tmp_path)]
    splits = load(Shape.PREFERENCE, data_files=files, eval_fraction=0.0)
    records = {r["rejected"][-1]["content"]: r for r in splits.train}
    assert len(splits.train) == 3  # the identical pair is dropped
    assert records["z"] == {
        "prompt": [user("a")],
        "chosen": [assistant("b"), user("c"), assistant("d")],
        "rejected": [assistant("x"), user("y"), assistant("z")],
    }
    # diverging at a user turn: the prompt backs up to the last user turn, so it ends with the user
    assert records["f"] == {
        "prompt": [user("a")],
        "chosen": [assistant("b"), user("c"), assistant("d")],
        "rejected": [assistant("b"), user("e"), assistant("f")],
    }
    assert records["a worse reply"] == {
        "prompt": [user("q")],
        "chosen": [assistant("good answer")],
        "rejected": [assistant("a worse reply")],
    }
    for record in splits.train:
        check_record(Shape.PREFERENCE, record)
    assert "dropped 1 identical pairs; 2 split at a divergent turn" in splits.notes[0]


def test_divergent_pairs_in_the_other_shapes(tmp_path):
    files = [str(p) for p in divergent_files(tmp_path)]
    ranked = load(Shape.RANKED, data_files=files, eval_fraction=0.0)
    assert ranked.train == [
        {"prompt": [user("q")], "responses": ["good answer", "a worse reply"], "scores": [1.0, 0.0]}
    ]
    assert any("left out 2 divergent pairs" in note for note in ranked.notes)
    conversations = load(Shape.CONVERSATION, data_files=files, eval_fraction=0.0)
    chosen_side = [user("a"), assistant("b"), user("c"), assistant("d")]
    assert sorted(map(str, (r["messages"] for r in conversations.train))) == sorted(
        map(str, [chosen_side, chosen_side, [user("q"), assistant("good answer")]])
    )
    prompts = load(Shape.PROMPT, data_files=files, eval_fraction=0.0)
    assert sorted(r["prompt"][0]["content"] for r in prompts.train) == ["a", "a", "q"]


# -- the embedded sample -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    return {shape: load(shape) for shape in Shape}


def test_embedded_sample_is_shipped_with_its_license():
    files = embedded_files()
    assert [p.parent.name for p in files] == ["helpful-base", "helpful-online", "helpful-rejection-sampled"]
    assert all(p.is_file() and p.name == "test.jsonl.gz" for p in files)
    assert "MIT License" in (files[0].parent.parent / "LICENSE").read_text()


def test_embedded_sample_drop_and_split_counts(embedded):
    notes = embedded[Shape.PREFERENCE].notes
    assert notes[0] == (
        "hh-rlhf: read 6240 pairs from the embedded sample (helpful-base, helpful-online, "
        "helpful-rejection-sampled test splits); dropped 36 identical pairs; "
        "12 split at a divergent turn"
    )
    assert notes[1] == ("hh-rlhf: merged 31 consecutive same-speaker turns; removed 2 unanswered final human turns")
    assert notes[2] == (
        "hh-rlhf: dropped 1 more pairs that were identical once unanswered final human turns were removed"
    )


@pytest.mark.parametrize("shape", list(Shape))
def test_embedded_sample_gives_every_shape(embedded, shape):
    splits = embedded[shape]
    assert splits.shape is shape
    assert len(splits.train) + len(splits.eval) == EMBEDDED_KEPT
    assert len(splits.eval) == round(EMBEDDED_KEPT * 0.05)
    for record in splits.train + splits.eval:
        check_record(shape, record)


def test_shapes_agree_with_each_other(embedded):
    pairs, ranked = embedded[Shape.PREFERENCE].train, embedded[Shape.RANKED].train
    conversations, prompts = embedded[Shape.CONVERSATION].train, embedded[Shape.PROMPT].train
    multi_turn = 0
    for pair, rank, conv, prompt in zip(pairs, ranked, conversations, prompts):
        assert rank == {
            "prompt": pair["prompt"],
            "scores": [1.0, 0.0],
            "responses": [pair["chosen"][0]["content"], pair["rejected"][0]["content"]],
        }
        assert conv["messages"] == pair["prompt"] + pair["chosen"]  # conversations are the chosen side
        assert prompt["prompt"] == pair["prompt"]
        assert pair["chosen"] != pair["rejected"]
        multi_turn += len(pair["prompt"]) > 1
    assert multi_turn > 1000  # multi-turn conversations are kept whole in the prompt


def test_split_is_deterministic_disjoint_and_seeded(embedded):
    first = embedded[Shape.PREFERENCE]
    again = load(Shape.PREFERENCE)
    assert again.train == first.train and again.eval == first.eval
    key = repr
    assert not {key(r) for r in first.eval} & {key(r) for r in first.train}
    other_seed = load(Shape.PREFERENCE, seed=7)
    assert {key(r) for r in other_seed.eval} != {key(r) for r in first.eval}
    tenth = load(Shape.PREFERENCE, eval_fraction=0.1)
    assert len(tenth.eval) == round(EMBEDDED_KEPT * 0.1)


def test_sample_limits(embedded):
    limited = load(Shape.PREFERENCE, max_train_samples=25, max_eval_samples=5)
    assert (len(limited.train), len(limited.eval)) == (25, 5)
    assert limited.train == embedded[Shape.PREFERENCE].train[:25]


# -- other sources -----------------------------------------------------------------------------------


def test_anthropic_layout_directory_uses_train_and_test_files(tmp_path):
    for subset in ("harmless-base", "helpful-base"):
        write_jsonl(
            tmp_path / "hh" / subset / "train.jsonl.gz",
            [hh_row(f"{subset} train {i}", "ok") for i in range(4)],
            gz=True,
        )
        write_jsonl(
            tmp_path / "hh" / subset / "test.jsonl.gz", [hh_row(f"{subset} test {i}", "ok") for i in range(2)], gz=True
        )
    splits = load(Shape.PROMPT, data_files=[str(tmp_path / "hh")])
    assert sorted(r["prompt"][0]["content"] for r in splits.eval) == [
        "harmless-base test 0",
        "harmless-base test 1",
        "helpful-base test 0",
        "helpful-base test 1",
    ]
    assert len(splits.train) == 8 and all("train" in r["prompt"][0]["content"] for r in splits.train)


def test_local_files_with_column_mapping(tmp_path):
    rows = [{"good": r["chosen"], "bad": r["rejected"]} for r in (hh_row(f"question {i}", "yes") for i in range(10))]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    splits = load(
        Shape.PREFERENCE, data_files=[str(path)], columns={"chosen": "good", "rejected": "bad"}, eval_fraction=0.2
    )
    assert (len(splits.train), len(splits.eval)) == (8, 2)
    with pytest.raises(
        ConfigError, match="dataset 'hh-rlhf' has no field 'choosen' to map; it reads: chosen, rejected"
    ):
        load(Shape.PREFERENCE, data_files=[str(path)], columns={"choosen": "good"})


def test_no_assistant_turn_is_an_error_or_a_counted_skip(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [hh_row("q", "a"), {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hello"}, hh_row("r", "b")],
    )
    with pytest.raises(DataError) as info:
        load(Shape.PREFERENCE, data_files=[str(path)])
    assert str(info.value) == (
        f"{path}:2: 'chosen' has no '\\n\\nAssistant: ' turn; each transcript must end with the assistant's reply"
    )
    splits = load(Shape.PREFERENCE, data_files=[str(path)], skip_bad_rows=True, eval_fraction=0.0)
    assert len(splits.train) == 2
    assert splits.notes[-1] == (
        f"skipped 1 bad row (skip_bad_rows); first: {path}:2: 'chosen' has no "
        "'\\n\\nAssistant: ' turn; each transcript must end with the assistant's reply"
    )


def test_hub_id_without_network_is_a_one_line_error():
    # The Hub path itself cannot run here (no network); its failure must still be a clean DataError.
    with pytest.raises(DataError) as info:
        load(Shape.PREFERENCE, data_files=["Anthropic/hh-rlhf"])
    assert info.value.location == "Anthropic/hh-rlhf"
    assert "could not load the Hub dataset" in info.value.message and "--data-files" in info.value.message
