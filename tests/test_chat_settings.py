"""Issue 31 item 5: ``easyrlhf chat`` samples with the model's own recommended settings (generation_config.json,
a GGUF's ``general.sampling.*`` metadata; llama.cpp's defaults when the files give none), says which on its
first line, lets flags override them one by one, and decodes greedily with ``--greedy`` and by default with
``--compare``.

The model is the tiny random Llama: greedy decoding and sampling give different answers there, so a test whose
answer depends on the settings fails when they do not reach ``generate``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from easyrlhf_core.commands.chat_settings import (
    LLAMA_CPP_DEFAULTS,
    OFF,
    Recommended,
    decide,
    generation_config_file,
    read_generation_config,
    read_gguf_sampling,
    recommended,
)
from easyrlhf_core.kit.model_dirs import ModelRef

PROMPT = ["--prompt", "Tell me about rivers.", "--max-new-tokens", "12"]
DEFAULTS_LINE = (
    "sampling: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05 (llama.cpp's defaults: the model's files give none)"
)
NO_FLAGS = dict.fromkeys(OFF)


def with_generation_config(model_dir: Path, out: Path, **fields: object) -> Path:
    """A copy of ``model_dir`` whose generation_config.json also sets ``fields``."""
    shutil.copytree(model_dir, out)
    path = out / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return out


def write_gguf(path: Path, **fields: tuple[str, object]) -> Path:
    """A GGUF holding metadata only: ``fields`` maps a key to ``(type, value)``, type ``f32`` or ``i32``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, value) in fields.items():
        (writer.add_float32 if kind == "f32" else writer.add_int32)(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sampling_lines(stderr: str) -> list[str]:
    return [line.removeprefix("[easyrlhf chat] ") for line in stderr.splitlines() if "sampling" in line]


# --------------------------------------------------------------------------------------------------
# What the files say


def test_generation_config_gives_only_the_fields_it_sets(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": 2}))
    found = read_generation_config(path)
    assert found == Recommended(str(path), {"temperature": 0.6, "top_p": 0.9})
    decoding = decide(found, None, NO_FLAGS, compare=False)
    assert decoding.values == {**LLAMA_CPP_DEFAULTS, "temperature": 0.6, "top_p": 0.9}
    assert decoding.describe() == (
        f"temperature 0.6, top_k 40, top_p 0.9, min_p 0.05 (temperature, top_p from {path}; "
        "the rest llama.cpp's defaults)"
    )


def test_generation_config_that_asks_for_greedy(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"do_sample": False, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3}))
    found = read_generation_config(path)
    assert found.greedy_because == "do_sample false" and found.unapplied == ("no_repeat_ngram_size",)
    decoding = decide(found, None, NO_FLAGS, compare=False)
    assert decoding.greedy and decoding.values["repetition_penalty"] == 1.2
    assert decoding.describe() == (
        f"greedy, repetition_penalty 1.2 (from {path}: do_sample false; not applied: no_repeat_ngram_size)"
    )
    sampled = decide(found, True, NO_FLAGS, compare=False)  # --sample: the files' values on llama.cpp's defaults
    assert not sampled.greedy and sampled.values == {**LLAMA_CPP_DEFAULTS, "repetition_penalty": 1.2}


def test_gguf_metadata_gives_its_sampling_keys(tmp_path):
    path = write_gguf(
        tmp_path / "model.gguf",
        **{
            "general.sampling.temp": ("f32", 0.7),
            "general.sampling.top_k": ("i32", 20),
            "general.sampling.min_p": ("f32", 0.1),
            "general.sampling.penalty_repeat": ("f32", 1.05),
            "general.sampling.mirostat": ("i32", 2),
        },
    )
    found = read_gguf_sampling(path)
    assert found.values == {"temperature": 0.7, "top_k": 20, "min_p": 0.1, "repetition_penalty": 1.05}
    assert found.unapplied == ("mirostat",)
    assert decide(found, None, NO_FLAGS, compare=False).describe() == (
        f"temperature 0.7, top_k 20, top_p 0.95, min_p 0.1, repetition_penalty 1.05 (temperature, top_k, min_p, "
        f"repetition_penalty from {path} metadata; the rest llama.cpp's defaults; not applied: mirostat)"
    )


def test_a_gguf_is_read_for_its_metadata_not_its_converted_directory(tmp_path):
    """chat FILE.gguf: the model loads from the converted copy, the settings come from the file given."""
    gguf = write_gguf(tmp_path / "model.gguf", **{"general.sampling.temp": ("f32", 0.0)})
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "generation_config.json").write_text(json.dumps({"temperature": 0.3}))
    found = recommended(ModelRef(name=str(gguf), path=str(converted), kind="causal_lm", flag="MODEL_DIR"))
    assert found.greedy_because == "temperature 0"  # llama.cpp: temperature 0 is greedy
    assert decide(found, None, NO_FLAGS, compare=False).describe() == f"greedy (from {gguf} metadata: temperature 0)"


def test_an_adapter_directory_takes_its_base_models_settings(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "generation_config.json").write_text(json.dumps({"top_k": 7}))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert generation_config_file(str(adapter)) == base / "generation_config.json"
    assert recommended(ModelRef(str(adapter), str(adapter), "causal_lm", "MODEL_DIR")).values == {"top_k": 7}


def test_no_settings_in_the_files_means_llama_cpp_defaults(tmp_path):
    assert generation_config_file(str(tmp_path)) is None
    decoding = decide(recommended(ModelRef(str(tmp_path), str(tmp_path), "causal_lm", "X")), None, NO_FLAGS, False)
    assert decoding.values == LLAMA_CPP_DEFAULTS and not decoding.greedy
    assert "sampling: " + decoding.describe() == DEFAULTS_LINE


def test_flags_override_setting_by_setting():
    found = Recommended("F", {"temperature": 0.6, "top_p": 0.9})
    flags = {**NO_FLAGS, "temperature": 0.3, "min_p": 0.0}
    decoding = decide(found, None, flags, compare=False)
    assert decoding.values == {**LLAMA_CPP_DEFAULTS, "temperature": 0.3, "top_p": 0.9, "min_p": 0.0}
    assert decoding.describe() == (
        "temperature 0.3, top_k 40, top_p 0.9, min_p 0 (temperature, min_p from their flags; top_p from F; "
        "the rest llama.cpp's defaults)"
    )
    assert decide(found, False, NO_FLAGS, compare=False).describe() == "greedy (--greedy)"
    assert decide(found, None, NO_FLAGS, compare=True).greedy  # --compare: greedy unless asked to sample
    assert not decide(found, None, {**NO_FLAGS, "top_k": 5}, compare=True).greedy


# --------------------------------------------------------------------------------------------------
# easyrlhf chat


def test_chat_samples_by_default_and_says_so(cli_run, tiny_model_dir):
    default = cli_run("chat", str(tiny_model_dir), *PROMPT)
    greedy = cli_run("chat", str(tiny_model_dir), *PROMPT, "--greedy")
    assert default.exit_code == 0 and greedy.exit_code == 0, default.stderr + greedy.stderr
    assert sampling_lines(default.stderr) == [DEFAULTS_LINE]
    assert sampling_lines(greedy.stderr) == ["sampling: greedy (--greedy)"]
    assert default.stdout != greedy.stdout  # sampled, not greedy
    assert cli_run("chat", str(tiny_model_dir), *PROMPT).stdout == default.stdout  # the seed repeats it
    assert cli_run("chat", str(tiny_model_dir), *PROMPT, "--seed", "7").stdout != default.stdout


def test_greedy_gives_the_same_answer_every_time(cli_run, tiny_model_dir):
    """Whatever the seed; the random model's greedy answer is a loop (one token 12 times, as the issue's
    ``Boil an egg:`` x 12), which the default sampling breaks (:func:`test_chat_samples_by_default_and_says_so`)."""
    runs = [cli_run("chat", str(tiny_model_dir), *PROMPT, "--greedy", "--seed", seed) for seed in ("1", "2")]
    assert runs[0].exit_code == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout == "\n" * 12 + "\n"


def test_the_models_file_settings_reach_generate(cli_run, tiny_model_dir, tmp_path):
    """top_k 1 in the file: sampling then picks the likeliest token, so the default answer is the greedy one;
    --top-k overrides the file."""
    model = with_generation_config(tiny_model_dir, tmp_path / "top1", do_sample=True, top_k=1)
    greedy = cli_run("chat", str(tiny_model_dir), *PROMPT, "--greedy").stdout
    default = cli_run("chat", str(model), *PROMPT)
    assert default.exit_code == 0, default.stderr
    assert default.stdout == greedy
    assert sampling_lines(default.stderr) == [
        "sampling: temperature 0.8, top_k 1, top_p 0.95, min_p 0.05 "
        f"(top_k from {model / 'generation_config.json'}; the rest llama.cpp's defaults)"
    ]
    assert cli_run("chat", str(model), *PROMPT, "--top-k", "40").stdout != greedy


def test_a_file_asking_for_greedy_with_a_repetition_penalty(cli_run, tiny_model_dir, tmp_path):
    model = with_generation_config(tiny_model_dir, tmp_path / "penalised", do_sample=False, repetition_penalty=50.0)
    result = cli_run("chat", str(model), *PROMPT)
    assert result.exit_code == 0, result.stderr
    assert sampling_lines(result.stderr) == [
        f"sampling: greedy, repetition_penalty 50 (from {model / 'generation_config.json'}: do_sample false)"
    ]
    assert cli_run("chat", str(model), *PROMPT).stdout == result.stdout  # greedy: deterministic
    assert result.stdout != cli_run("chat", str(model), *PROMPT, "--greedy").stdout  # the penalty applied


def test_compare_is_greedy_unless_asked_to_sample(cli_run, tiny_model_dir, tmp_path):
    other = with_generation_config(tiny_model_dir, tmp_path / "other", temperature=0.5)
    runs = [cli_run("chat", str(tiny_model_dir), "--compare", str(other), *PROMPT) for _ in range(2)]
    assert runs[0].exit_code == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert sampling_lines(runs[0].stderr) == [
        "sampling: greedy (--compare: the same answers every time; --sample samples each model with its own settings)"
    ]
    sampled = cli_run("chat", str(tiny_model_dir), "--compare", str(other), *PROMPT, "--sample")
    assert sampling_lines(sampled.stderr) == [
        f"sampling for {tiny_model_dir.name}: {DEFAULTS_LINE.removeprefix('sampling: ')}",
        "sampling for other: temperature 0.5, top_k 40, top_p 0.95, min_p 0.05 "
        f"(temperature from {other / 'generation_config.json'}; the rest llama.cpp's defaults)",
    ]
    assert sampled.stdout != runs[0].stdout


@pytest.mark.parametrize(
    "args, error",
    [
        (["--greedy", "--temperature", "0.7"], "Error: --temperature: applies when sampling; leave out --greedy\n"),
        (["--top-p", "0"], "Error: --top-p: must be in (0, 1], got 0\n"),
        (["--min-p", "2"], "Error: --min-p: must be in [0, 1] (0: off), got 2\n"),
        (["--repetition-penalty", "0"], "Error: --repetition-penalty: must be > 0 (1.0: off), got 0\n"),
    ],
)
def test_bad_sampling_flags_are_one_line(cli_run, tiny_model_dir, args, error):
    result = cli_run("chat", str(tiny_model_dir), *PROMPT, *args)
    assert result.exit_code == 2 and result.stderr == error
