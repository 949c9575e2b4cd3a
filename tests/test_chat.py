"""``easyrlhf chat``: one answer (``--prompt``), two models (``--compare``), the interactive session in a
pseudo-terminal, history and ``/reset``, and errors in one line.

The tiny models are trained for a few seconds to give short readable answers, one of which depends on the
conversation so far (``Why?`` after the joke, or on its own).
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from easyrlhf_core.commands.chat import ChatSettings, Conversation, Screen, block_header, fit_prompt, show_answers
from easyrlhf_core.kit import chat_template as chat
from tests.helpers import build_tiny_causal_lm, build_tiny_tokenizer
from tests.subprocess_runs import easyrlhf_command, subprocess_env

JOKE, WHY = "Tell me a joke.", "Why?"
MAX_NEW = "24"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def train_chat_model(out: Path, answers: dict[str, str], seed: int) -> Path:
    """A tiny Llama that answers JOKE with ``answers["joke"]``, WHY after it with ``answers["punchline"]`` and
    WHY alone with ``answers["why"]`` (overfitted with Adam on the chat-templated conversations)."""
    import torch

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_causal_lm(tokenizer, seed=seed)
    conversations = [
        ([user(JOKE)], answers["joke"]),
        ([user(JOKE), assistant(answers["joke"]), user(WHY)], answers["punchline"]),
        ([user(WHY)], answers["why"]),
    ]
    examples = [chat.split_completion(tokenizer, prompt, chat.as_completion(a)) for prompt, a in conversations]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        total = 0.0
        for prompt, completion in examples:
            loss = model(
                input_ids=torch.tensor([prompt + completion]), labels=torch.tensor([[-100] * len(prompt) + completion])
            ).loss
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad()
        if total < 1e-3 * len(examples):
            break
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def joker(tmp_path_factory, one_torch_thread) -> Path:
    return train_chat_model(
        tmp_path_factory.mktemp("models") / "joker",
        {"joke": "Why did the chicken cross the road?", "punchline": "To get to the other side!", "why": "Because."},
        seed=0,
    )


@pytest.fixture(scope="module")
def baker(tmp_path_factory, one_torch_thread) -> Path:
    return train_chat_model(
        tmp_path_factory.mktemp("models") / "baker",
        {"joke": "Mix flour, water, yeast and salt.", "punchline": "Then bake it.", "why": "Sure."},
        seed=1,
    )


def greedy(model_dir: Path, messages: list[dict[str, str]], max_new_tokens: int = int(MAX_NEW)) -> str:
    """What greedy ``generate`` answers to the templated ``messages`` (eval's generation, decoded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from easyrlhf_core.commands.eval.generation import generate_answers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return generate_answers(model, tokenizer, [chat.prompt_ids(tokenizer, messages)], max_new_tokens)[0].text


def test_the_models_answer_from_their_history(joker):
    """The fixtures' premise: the answer to WHY depends on the turns before it."""
    assert greedy(joker, [user(JOKE)]) == "Why did the chicken cross the road?"
    assert (
        greedy(joker, [user(JOKE), assistant("Why did the chicken cross the road?"), user(WHY)])
        == "To get to the other side!"
    )
    assert greedy(joker, [user(WHY)]) == "Because."


def test_prompt_prints_the_greedy_answer(cli_run, joker):
    result = cli_run("chat", str(joker), "--prompt", JOKE, "--max-new-tokens", MAX_NEW, "--greedy")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == greedy(joker, [user(JOKE)]) + "\n"
    assert "[easyrlhf chat] sampling: greedy (--greedy)\n" in result.stderr


def test_system_message_goes_through_the_template(cli_run, joker):
    system = "You are a helpful assistant."
    result = cli_run("chat", str(joker), "--prompt", WHY, "--system", system, "--max-new-tokens", "6", "--greedy")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == greedy(joker, [{"role": "system", "content": system}, user(WHY)], 6) + "\n"


def test_compare_prints_both_labelled_answers(cli_run, joker, baker):
    """Greedy answers: --compare decodes greedily unless asked to sample."""
    result = cli_run("chat", str(joker), "--compare", str(baker), "--prompt", JOKE, "--max-new-tokens", MAX_NEW)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"{block_header('joker')}\nWhy did the chicken cross the road?\n\n"
        f"{block_header('baker')}\nMix flour, water, yeast and salt.\n"
    )


def test_piped_session_keeps_history_until_reset(cli_run, joker):
    from click.testing import CliRunner

    from easyrlhf_core.commands.cli import cli

    lines = f"{JOKE}\n{WHY}\n/reset\n{WHY}\n/quit\nnever read\n"
    result = CliRunner().invoke(cli, ["chat", str(joker), "--max-new-tokens", MAX_NEW, "--greedy"], input=lines)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Why did the chicken cross the road?\n\nTo get to the other side!\n\nBecause.\n\n"
    assert "history cleared" in result.stderr


def test_side_by_side_on_a_wide_terminal(joker, baker):
    from easyrlhf_core.commands.chat import inspect_chat_model, load_chat_model

    bots = [load_chat_model(inspect_chat_model(str(d), "MODEL_DIR"), d.name) for d in (joker, baker)]
    screen = Screen(io.StringIO(), live=True, width=120)
    conversations = [Conversation(), Conversation()]
    answers = show_answers(bots, conversations, JOKE, ChatSettings(max_new_tokens=int(MAX_NEW)), screen)
    assert answers == ["Why did the chicken cross the road?", "Mix flour, water, yeast and salt."]
    shown = screen.file.getvalue()
    assert "\x1b[" in shown  # drawn live, with cursor moves
    for label, answer in zip(("joker", "baker"), answers):
        assert label in shown and answer in shown
    assert conversations[0].turns == [user(JOKE), assistant(answers[0])]


def test_fit_prompt_drops_the_oldest_exchanges(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    conversation = Conversation(system="Be brief.", turns=[user("one"), assistant("1"), user("two"), assistant("2")])
    full = chat.prompt_ids(tokenizer, conversation.messages("three"))
    assert fit_prompt(tokenizer, conversation, "three", len(full)) == full
    assert len(conversation.turns) == 4
    shorter = chat.prompt_ids(
        tokenizer, [{"role": "system", "content": "Be brief."}, user("two"), assistant("2"), user("three")]
    )
    assert fit_prompt(tokenizer, conversation, "three", len(full) - 1) == shorter
    assert conversation.turns == [user("two"), assistant("2")]
    assert fit_prompt(tokenizer, conversation, "three", 5) == shorter[-5:]  # one message too long: its tail
    assert conversation.turns == []


def test_missing_model_dir_is_one_error_line(cli_run, tmp_path):
    missing = tmp_path / "no-such-model"
    result = cli_run("chat", str(missing), "--prompt", "hi")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {missing}: model path not found; give a Hub id, a model directory or a .gguf file\n"
    )


def test_compare_is_checked_before_any_model_loads(cli_run, tiny_model_dir, tmp_path):
    result = cli_run("chat", str(tiny_model_dir), "--compare", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path}: not a transformers model directory (no config.json)\n"


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--greedy", "--temperature", "0.7"], "--temperature"),
        (["--sample", "--top-p", "0"], "--top-p"),
        (["--max-new-tokens", "64", "--max-length", "64"], "--max-new-tokens"),
    ],
)
def test_bad_generation_options_are_one_line(cli_run, tiny_model_dir, args, flag):
    result = cli_run("chat", str(tiny_model_dir), "--prompt", "hi", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {flag}: ") and result.stderr.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# The interactive session in a pseudo-terminal


class Terminal:
    """A subprocess on a pseudo-terminal: type lines, read what it shows (CRLF as LF)."""

    def __init__(self, args: list[str]) -> None:
        main, child = os.openpty()
        self.fd, self.seen = main, ""
        env = {**subprocess_env(), "TERM": "dumb", "COLUMNS": "100", "LINES": "40"}
        self.process = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
        os.close(child)

    def read_until(self, text: str, start: int = 0, timeout: float = 180.0) -> str:
        """Read until ``text`` shows after position ``start`` of everything seen; returns everything seen."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[start:]:
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} did not show; the terminal shows:\n{self.seen}")
        return self.seen

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # the process closed the terminal
            return False
        self.seen += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return bool(data)

    def type(self, line: str) -> int:
        """Type ``line`` and Enter; returns the position from which its answer shows."""
        start = len(self.seen)
        os.write(self.fd, line.encode() + b"\n")
        return start

    def close(self, timeout: float = 60.0) -> int:
        """Wait for the process to end (killed if it does not) and read what it showed last."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        while self._read(0.2):
            pass
        os.close(self.fd)
        return code


def test_interactive_chat_in_a_terminal(joker):
    terminal = Terminal(easyrlhf_command("chat", str(joker), "--max-new-tokens", MAX_NEW, "--greedy"))
    try:
        terminal.read_until("sampling: greedy (--greedy)")
        terminal.read_until("/quit (or Ctrl-D) leaves")
        terminal.read_until("> ")
        start = terminal.type(JOKE)
        terminal.read_until("Why did the chicken cross the road?\n", start, timeout=60)
        terminal.read_until("> ", start + len(JOKE), timeout=60)
        start = terminal.type(WHY)
        terminal.read_until("To get to the other side!\n", start, timeout=60)
        terminal.read_until("> ", start + len(WHY), timeout=60)
        terminal.type("/quit")
    except BaseException:
        terminal.close(timeout=0)
        raise
    code = terminal.close()
    assert code == 0, terminal.seen
    assert "Traceback" not in terminal.seen
