"""Generic local files (jsonl plugin) in every shape with column mapping, SlimOrca-Dedup files (jsonl and
parquet), and the reader's file formats."""

from __future__ import annotations

import pytest
from easyrlhf_plugins.data.jsonl import JsonlDataset
from easyrlhf_plugins.data.reader import iter_rows
from easyrlhf_plugins.data.slimorca import SlimOrcaDataset

from easyrlhf_core.kit.data_loading import load_dataset
from easyrlhf_core.kit.errors import ConfigError, DataError
from easyrlhf_core.kit.rows import BadRows
from easyrlhf_core.kit.shapes import DataOptions, Shape
from tests.data_helpers import check_record, write_jsonl

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def load(dataset, shape, files, **kwargs):
    kwargs.setdefault("eval_fraction", 0.0)
    return load_dataset(dataset, DataOptions(shape=shape, data_files=[str(f) for f in files], **kwargs))


# -- jsonl: every shape ------------------------------------------------------------------------------

PAIR_ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": [S("Be brief."), U("Capital of France?")], "chosen": [A("Paris")], "rejected": [A("Lyon")]},
    {"prompt": "Say hi", "chosen": "hi", "rejected": "hi"},  # identical: dropped and counted
]


@pytest.mark.parametrize(
    "shape, expected",
    [
        (
            Shape.PREFERENCE,
            [
                {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
                {"prompt": [S("Be brief."), U("Capital of France?")], "chosen": [A("Paris")], "rejected": [A("Lyon")]},
            ],
        ),
        (
            Shape.RANKED,
            [
                {"prompt": [U("What is 2+2?")], "responses": ["4", "5"], "scores": [1.0, 0.0]},
                {
                    "prompt": [S("Be brief."), U("Capital of France?")],
                    "responses": ["Paris", "Lyon"],
                    "scores": [1.0, 0.0],
                },
            ],
        ),
        (
            Shape.CONVERSATION,
            [
                {"messages": [U("What is 2+2?"), A("4")]},
                {"messages": [S("Be brief."), U("Capital of France?"), A("Paris")]},
            ],
        ),
        (
            Shape.PROMPT,
            [
                {"prompt": [U("What is 2+2?")]},
                {"prompt": [S("Be brief."), U("Capital of France?")]},
                {"prompt": [U("Say hi")]},
            ],
        ),
    ],
)
def test_pair_files_give_every_shape(tmp_path, shape, expected):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIR_ROWS)
    splits = load(JsonlDataset, shape, [path])
    assert sorted(map(repr, splits.train)) == sorted(map(repr, expected))
    for record in splits.train:
        check_record(shape, record)
    if shape is not Shape.PROMPT:
        assert "jsonl: dropped 1 identical pairs; 0 split at a divergent turn" in splits.notes


def test_each_shape_from_its_own_fields_with_column_mapping(tmp_path):
    ranked = write_jsonl(
        tmp_path / "ranked.jsonl",
        [
            {"q": "Pick a colour", "cands": ["red", "blue", "green"], "r": [0.5, 2, -1]},
            {"q": "Tie", "cands": ["a", "b"], "r": [1, 1]},
        ],
    )
    columns = {"prompt": "q", "responses": "cands", "scores": "r"}
    got = load(JsonlDataset, Shape.RANKED, [ranked], columns=columns).train
    assert sorted(map(repr, got)) == sorted(
        map(
            repr,
            [
                {"prompt": [U("Pick a colour")], "responses": ["red", "blue", "green"], "scores": [0.5, 2.0, -1.0]},
                {"prompt": [U("Tie")], "responses": ["a", "b"], "scores": [1.0, 1.0]},
            ],
        )
    )
    pairs = load(JsonlDataset, Shape.PREFERENCE, [ranked], columns=columns)
    assert pairs.train == [{"prompt": [U("Pick a colour")], "chosen": [A("blue")], "rejected": [A("green")]}]
    assert "jsonl: dropped 1 ranked rows whose scores all tie (no preference)" in pairs.notes

    chats = write_jsonl(tmp_path / "chats.jsonl", [{"dialog": [S("sys"), U("hi"), A("hello"), U("bye"), A("ciao")]}])
    conv = load(JsonlDataset, Shape.CONVERSATION, [chats], columns={"messages": "dialog"}).train
    assert conv == [{"messages": [S("sys"), U("hi"), A("hello"), U("bye"), A("ciao")]}]
    prompts = load(JsonlDataset, Shape.PROMPT, [chats], columns={"messages": "dialog"}).train
    assert prompts == [{"prompt": [S("sys"), U("hi"), A("hello"), U("bye")]}]

    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Add 1+1", "output": "2"}])
    conv = load(JsonlDataset, Shape.CONVERSATION, [sft], columns={"prompt": "instruction", "completion": "output"})
    assert conv.train == [{"messages": [U("Add 1+1"), A("2")]}]

    only_prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"text": "Write a haiku"}])
    got = load(JsonlDataset, Shape.PROMPT, [only_prompts], columns={"prompt": "text"}).train
    assert got == [{"prompt": [U("Write a haiku")]}]


def test_implicit_prompt_pairs_split_at_the_common_prefix(tmp_path):
    path = write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [U("hi"), A("hello"), U("joke?"), A("a good one")],
                "rejected": [U("hi"), A("hello"), U("joke?"), A("no")],
            }
        ],
    )
    assert load(JsonlDataset, Shape.PREFERENCE, [path]).train == [
        {"prompt": [U("hi"), A("hello"), U("joke?")], "chosen": [A("a good one")], "rejected": [A("no")]}
    ]


def test_train_and_test_files_are_the_splits(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"t{i}"} for i in range(5)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"e{i}"} for i in range(2)])
    splits = load(JsonlDataset, Shape.PROMPT, [train, test], eval_fraction=0.5)
    assert sorted(r["prompt"][0]["content"] for r in splits.eval) == ["e0", "e1"]
    assert len(splits.train) == 5


def test_jsonl_needs_files_and_known_columns(tmp_path):
    with pytest.raises(ConfigError, match="dataset 'jsonl' reads local files; pass them with --data-files"):
        JsonlDataset().load(DataOptions(shape=Shape.PROMPT))
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(ConfigError, match="dataset 'jsonl' has no field 'promt' to map"):
        load(JsonlDataset, Shape.PROMPT, [path], columns={"promt": "text"})


@pytest.mark.parametrize(
    "row, shape, problem",
    [
        (
            {"question": "q", "chosen": "a", "rejected": "b"},
            Shape.PREFERENCE,
            "missing field 'prompt'; the row has: chosen, question, rejected; map another column with "
            "--set columns.prompt=<column>",
        ),
        (
            {"prompt": "q", "chosen": 3, "rejected": "b"},
            Shape.PREFERENCE,
            "field 'chosen' must be a string or a list of messages, got a number",
        ),
        (
            {"prompt": "q", "responses": ["a", "b"], "scores": [1, "high"]},
            Shape.RANKED,
            "field 'scores' must be a list of numbers, got a list",
        ),
        (
            {"prompt": "q", "responses": ["a", "b"], "scores": [1.0]},
            Shape.RANKED,
            "'responses' has 2 items but 'scores' has 1; give one score per response",
        ),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            Shape.CONVERSATION,
            "'messages'[0] has role 'bot'; use one of: system, user, assistant, tool",
        ),
        (
            {"messages": [U("hi")]},
            Shape.CONVERSATION,
            "'messages' must end with an assistant message, but ends with user",
        ),
        (
            {"text": "hi"},
            Shape.PROMPT,
            "missing field 'prompt'; the row has: text; map another column with --set columns.prompt=<column>",
        ),
    ],
)
def test_wrong_or_missing_fields_name_file_and_line(tmp_path, row, shape, problem):
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DataError) as info:
        load(JsonlDataset, shape, [path])
    assert str(info.value) == f"{path}:1: {problem}"


# -- slimorca ---------------------------------------------------------------------------------------

ORCA_ROWS = [
    {
        "conversations": [
            {"from": "system", "value": "You are an AI assistant. Think step by step.", "weight": None},
            {"from": "human", "value": "Translate 'hello' to French.", "weight": 0.0},
            {"from": "gpt", "value": "Bonjour.", "weight": 1.0},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "", "weight": None},
            {"from": "human", "value": "What is 3*3?", "weight": 0.0},
            {"from": "gpt", "value": "9", "weight": 1.0},
        ]
    },
]


def write_orca_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_slimorca_conversations_and_prompts(tmp_path, fmt):
    path = (
        write_jsonl(tmp_path / "orca.jsonl", ORCA_ROWS)
        if fmt == "jsonl"
        else write_orca_parquet(tmp_path / "orca.parquet", ORCA_ROWS)
    )
    conv = load(SlimOrcaDataset, Shape.CONVERSATION, [path])
    assert sorted(map(repr, conv.train)) == sorted(
        map(
            repr,
            [
                {
                    "messages": [
                        S("You are an AI assistant. Think step by step."),
                        U("Translate 'hello' to French."),
                        A("Bonjour."),
                    ]
                },
                {"messages": [U("What is 3*3?"), A("9")]},
            ],
        )
    )  # an empty system prompt is left out
    assert conv.notes == ["slimorca: read 2 conversations (1 with a system prompt)"]
    prompts = load(SlimOrcaDataset, Shape.PROMPT, [path])
    assert sorted(map(repr, prompts.train)) == sorted(
        map(
            repr,
            [
                {"prompt": [S("You are an AI assistant. Think step by step."), U("Translate 'hello' to French.")]},
                {"prompt": [U("What is 3*3?")]},
            ],
        )
    )
    for record in prompts.train:
        check_record(Shape.PROMPT, record)


def test_slimorca_bad_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "orca.jsonl",
        [
            ORCA_ROWS[0],
            {"conversations": [{"from": "human", "value": "x"}]},
            {"conversations": [{"from": "robot", "value": "x"}]},
        ],
    )
    with pytest.raises(DataError) as info:
        load(SlimOrcaDataset, Shape.CONVERSATION, [path])
    assert str(info.value) == (
        f"{path}:2: 'conversations' has no 'gpt' turn; each conversation needs the assistant's reply"
    )
    splits = load(SlimOrcaDataset, Shape.CONVERSATION, [path], skip_bad_rows=True)
    assert len(splits.train) == 1 and splits.notes[-1].startswith(
        f"skipped 2 bad rows (skip_bad_rows); first: {path}:2: "
    )


def test_slimorca_without_files_goes_to_the_hub_and_fails_cleanly_offline():
    with pytest.raises(DataError) as info:
        SlimOrcaDataset().load(DataOptions(shape=Shape.CONVERSATION))
    assert info.value.location == "Open-Orca/SlimOrca-Dedup" and "--data-files" in info.value.message


# -- reader -----------------------------------------------------------------------------------------


def test_json_array_files_report_each_objects_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt":\n     "b"},\n  3\n]\n', encoding="utf-8")
    rows = iter_rows(path, BadRows())
    assert next(rows) == (2, {"prompt": "a"})
    assert next(rows) == (3, {"prompt": "b"})
    with pytest.raises(DataError) as info:
        next(rows)
    assert str(info.value) == f"{path}:5: expected an array of JSON objects, got a number"


def test_json_lines_in_a_json_file_and_blank_lines(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('\ufeff{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")  # with a BOM
    assert list(iter_rows(path, BadRows())) == [(1, {"prompt": "a"}), (3, {"prompt": "b"})]
    not_objects = tmp_path / "lists.jsonl"
    not_objects.write_text('{"prompt": "a"}\n["prompt", "b"]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(iter_rows(not_objects, BadRows()))
    assert str(info.value) == f"{not_objects}:2: expected a JSON object per line, got a list"


def test_prompt_rows_keep_their_extra_fields_with_one_type_each(tmp_path):
    from easyrlhf_plugins.data.jsonl import JsonlDataset

    good = write_jsonl(
        tmp_path / "good.jsonl", [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": "6", "source": None}]
    )
    records = load(JsonlDataset, Shape.PROMPT, [good]).train
    assert sorted(r["answer"] for r in records) == ["4", "6"]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": 6}])
    with pytest.raises(DataError, match=r"mixed.jsonl:2: field 'answer' is a number here but a string in earlier"):
        load(JsonlDataset, Shape.PROMPT, [mixed])
