"""``easyrlhf chat``: talk to a causal LM through its chat template, the answer streamed as it is generated.

Multi-turn (each model keeps its own history; ``/reset`` clears it, ``/quit`` or Ctrl-D leaves), ``--prompt``
for one answer on stdout, ``--compare`` for a second model answering the same messages (side by side in a
terminal, labelled blocks otherwise). Models are found and loaded as ``easyrlhf eval`` does
(:mod:`easyrlhf_core.kit.model_dirs`); prompts are rendered by :mod:`easyrlhf_core.kit.chat_template`, generation is
configured by :mod:`easyrlhf_core.kit.causal_lm`. Answers are sampled with the model's own recommended settings
(:mod:`easyrlhf_core.commands.chat_settings` says which, and prints why), greedy with ``--greedy`` and by default
with ``--compare``.

Importing this module is cheap: torch and transformers load when a function runs.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from easyrlhf_core.commands.chat_settings import GREEDY, Decoding
from easyrlhf_core.kit import chat_template as chat
from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError
from easyrlhf_core.kit.model_loading import model_label
from easyrlhf_core.kit.shapes import Message

if TYPE_CHECKING:
    from easyrlhf_core.kit.model_dirs import ModelRef

TextSink = Callable[[str], None]
LineReader = Callable[[], "str | None"]

COMMANDS_HELP = "/reset clears the history, /quit (or Ctrl-D) leaves"
#: Narrower terminals show compared answers one below the other.
SIDE_BY_SIDE_WIDTH = 80


def stderr_log(message: str) -> None:
    print(f"[easyrlhf chat] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass
class ChatSettings:
    """The options of ``easyrlhf chat``. ``sample``: True (``--sample``), False (``--greedy``), None (neither:
    sample, unless ``--compare``); the sampling settings left None come from the model
    (:mod:`easyrlhf_core.commands.chat_settings`)."""

    system: str | None = None
    max_new_tokens: int = 128
    max_length: int = 1024
    sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 42
    trust_remote_code: bool = False
    max_turns: int = 4  # --env: assistant turns per episode
    max_episode_tokens: int = 512  # --env: tokens after the prompt per episode

    def check(self) -> None:
        """Numbers in range; no sampling flag with ``--greedy``. Raises :class:`ConfigError` naming the flag."""
        from easyrlhf_core.commands.chat_settings import check_flags

        for flag, value, minimum in (
            ("--max-new-tokens", self.max_new_tokens, 1),
            ("--max-length", self.max_length, 2),
        ):
            if value < minimum:
                raise ConfigError(f"must be >= {minimum}, got {value}", where=flag)
        if self.max_new_tokens >= self.max_length:
            raise ConfigError(
                f"--max-new-tokens ({self.max_new_tokens}) leaves no room for the prompt in "
                f"--max-length ({self.max_length}); raise --max-length",
                where="--max-new-tokens",
            )
        check_flags(self.sample, self.flags())

    def flags(self) -> dict[str, float | None]:
        """The sampling flags, None where not given."""
        from easyrlhf_core.commands.chat_settings import SETTINGS

        return {name: getattr(self, name) for name in SETTINGS}

    def decoding(self, ref: ModelRef, compare: bool = False) -> Decoding:
        """How the model ``ref`` names decodes: its files' recommended settings under these options."""
        from easyrlhf_core.commands.chat_settings import decide, recommended

        return decide(recommended(ref), self.sample, self.flags(), compare)


# --------------------------------------------------------------------------------------------------
# Models


@dataclass
class ChatModel:
    """A loaded causal LM, its tokenizer, its end-of-turn ids, the label its answers carry, and how it decodes."""

    label: str
    model: Any
    tokenizer: Any
    stops: list[int]
    pad: int
    decoding: Decoding = GREEDY


def inspect_chat_model(name: str, flag: str, trust_remote_code: bool = False) -> ModelRef:
    """Resolve ``name`` (directory, Hub id, .gguf file) and require a causal LM; nothing loads yet."""
    from easyrlhf_core.kit.model_dirs import inspect_model, require_kind

    ref = inspect_model(name, flag, trust_remote_code)
    require_kind(ref, "causal_lm", "a causal LM (a policy, e.g. the model/ directory of a run)")
    return ref


def load_chat_model(ref: ModelRef, label: str, trust_remote_code: bool = False) -> ChatModel:
    """Load ``ref`` for inference, with a left-padding tokenizer and the stop ids ``easyrlhf eval`` uses."""
    from easyrlhf_core.kit.causal_lm import stop_token_ids
    from easyrlhf_core.kit.model_dirs import load_ref_policy, load_ref_tokenizer

    tokenizer = load_ref_tokenizer(ref, trust_remote_code, padding_side="left")
    model = load_ref_policy(ref, trust_remote_code)
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return ChatModel(label=label, model=model, tokenizer=tokenizer, stops=stops, pad=pad)


def model_labels(names: list[str]) -> list[str]:
    """:func:`model_label` of each name; the names as given where two labels collide, numbered if still equal."""
    labels = [model_label(n) for n in names]
    if len(set(labels)) < len(labels):
        labels = list(names)
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({i})" for i, label in enumerate(labels, start=1)]
    return labels


# --------------------------------------------------------------------------------------------------
# Conversations and answers


@dataclass
class Conversation:
    """One model's history: the optional system message, then user / assistant turns."""

    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self, user: str) -> list[Message]:
        """The history and the new ``user`` message, as the chat template takes them."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns + [{"role": "user", "content": user}]

    def add(self, user: str, answer: str) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    def reset(self) -> None:
        self.turns.clear()


def fit_prompt(tokenizer: Any, conversation: Conversation, user: str, room: int) -> list[int]:
    """Prompt ids of the conversation and ``user``'s new message in at most ``room`` tokens: the oldest
    exchanges are dropped from ``conversation`` until it fits, then a message still too long keeps its
    last tokens (as :func:`easyrlhf_core.kit.chat_template.keep_last` does in eval)."""
    while True:
        try:
            ids = chat.prompt_ids(tokenizer, conversation.messages(user))
        except Exception as exc:
            if not type(exc).__module__.startswith("jinja2"):
                raise
            raise EasyRLHFError(
                f"the model's chat template does not render this conversation ({exc})",
                where="--system" if conversation.system else None,
            ) from None
        if len(ids) <= room or not conversation.turns:
            return chat.keep_last(ids, room)
        del conversation.turns[:2]


def decode_answer(tokenizer: Any, new_ids: list[int], stops: list[int]) -> str:
    """The text of generated ids up to (without) the first end-of-turn id."""
    end = next((k for k, t in enumerate(new_ids) if t in stops), len(new_ids))
    return tokenizer.decode(new_ids[:end], skip_special_tokens=True)


def text_streamer(tokenizer: Any, on_text: TextSink) -> Any:
    """A transformers ``TextStreamer`` that hands each finished piece of the answer to ``on_text``."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def reply(
    bot: ChatModel, conversation: Conversation, user: str, settings: ChatSettings, on_text: TextSink | None = None
) -> str:
    """``bot``'s answer to ``user`` after ``conversation`` (streamed to ``on_text`` when given); the exchange
    is then added to ``conversation``."""
    import torch

    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    ids = fit_prompt(bot.tokenizer, conversation, user, settings.max_length - settings.max_new_tokens)
    sampling = Sampling(settings.max_new_tokens, bot.stops, bot.pad, **bot.decoding.sampling_fields())
    streamer = text_streamer(bot.tokenizer, on_text) if on_text is not None else None
    with torch.inference_mode():
        output = TransformersEngine(bot.model, bot.tokenizer).generate([ids], sampling, streamer=streamer)
    answer = decode_answer(bot.tokenizer, output.response_ids[0].tolist(), bot.stops)
    conversation.add(user, answer)
    return answer


# --------------------------------------------------------------------------------------------------
# Showing answers


@dataclass
class Screen:
    """Where answers go. ``live``: a terminal, so answers stream (and compared ones sit side by side)."""

    file: TextIO
    live: bool
    width: int = SIDE_BY_SIDE_WIDTH

    @classmethod
    def stdout(cls) -> Screen:
        return cls(sys.stdout, sys.stdout.isatty(), shutil.get_terminal_size().columns)

    def write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()


def block_header(label: str) -> str:
    """The line above a model's answer when several models answer."""
    return f"=== {label} ==="


def show_answers(
    bots: list[ChatModel], conversations: list[Conversation], user: str, settings: ChatSettings, screen: Screen
) -> list[str]:
    """Every model's answer to ``user``: streamed on a live screen (side by side when there are several and
    it is wide enough), else printed whole; labelled blocks when several models answer."""
    if len(bots) > 1 and screen.live and screen.width >= SIDE_BY_SIDE_WIDTH:
        return show_side_by_side(bots, conversations, user, settings, screen)
    answers = []
    for i, (bot, conversation) in enumerate(zip(bots, conversations)):
        if len(bots) > 1:
            screen.write(("\n" if i else "") + block_header(bot.label) + "\n")
        if screen.live:
            answers.append(reply(bot, conversation, user, settings, on_text=screen.write))
            screen.write("\n")
        else:
            answers.append(reply(bot, conversation, user, settings))
            screen.write(answers[-1] + "\n")
    return answers


def show_side_by_side(
    bots: list[ChatModel], conversations: list[Conversation], user: str, settings: ChatSettings, screen: Screen
) -> list[str]:
    """One panel per model, titled with its label, filled as the answers stream (one model after the other)."""
    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    texts = ["" for _ in bots]

    def view() -> Table:
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in bots:
            grid.add_column(ratio=1)
        grid.add_row(*(Panel(Text(text), title=bot.label, title_align="left") for bot, text in zip(bots, texts)))
        return grid

    console = Console(file=screen.file, force_terminal=screen.live, width=screen.width, highlight=False)
    answers = []
    with Live(view(), console=console, auto_refresh=False, vertical_overflow="visible") as live:
        for i, (bot, conversation) in enumerate(zip(bots, conversations)):

            def grow(piece: str, i: int = i) -> None:
                texts[i] += piece
                live.update(view(), refresh=True)

            answers.append(reply(bot, conversation, user, settings, on_text=grow))
            texts[i] = answers[-1]
            live.update(view(), refresh=True)
    return answers


# --------------------------------------------------------------------------------------------------
# The session


def terminal_reader(prompt: str = "> ") -> LineReader:
    """Lines from stdin (None at end of input); a prompt and line editing when stdin is a terminal."""
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def read() -> str | None:
        try:
            return input(prompt if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return None

    return read


def chat_loop(
    bots: list[ChatModel],
    settings: ChatSettings,
    read: LineReader,
    screen: Screen,
    notice: Callable[[str], None] = stderr_log,
) -> None:
    """Answer each line until ``/quit`` or end of input; ``/reset`` clears every model's history. Ctrl-C
    during an answer stops that answer only."""
    conversations = [Conversation(settings.system) for _ in bots]
    while True:
        line = read()
        if line is None:
            return
        text = line.strip()
        if text in ("/quit", "/exit"):
            return
        if not text:
            continue
        if text == "/reset":
            for conversation in conversations:
                conversation.reset()
            notice("history cleared")
            continue
        if re.fullmatch(r"/[A-Za-z]+", text):
            notice(f"unknown command {text}: {COMMANDS_HELP}")
            continue
        try:
            show_answers(bots, conversations, text, settings, screen)
        except KeyboardInterrupt:
            screen.write("\n")
            notice("answer stopped")
        screen.write("\n")


def sampling_lines(bots: list[ChatModel]) -> list[str]:
    """The lines saying how the models decode and why: one when they decode alike, else one per model."""
    described = [bot.decoding.describe() for bot in bots]
    if len(set(described)) == 1:
        return [f"sampling: {described[0]}"]
    return [f"sampling for {bot.label}: {text}" for bot, text in zip(bots, described)]


def start_decoding(
    bots: list[ChatModel], refs: list[ModelRef], settings: ChatSettings, log: Callable[[str], None]
) -> None:
    """Give each loaded model its decoding (:meth:`ChatSettings.decoding`), say it, and seed torch once when
    any model samples."""
    for bot, ref in zip(bots, refs):
        bot.decoding = settings.decoding(ref, compare=len(bots) > 1)
    for line in sampling_lines(bots):
        log(line)
    if not all(bot.decoding.greedy for bot in bots):
        import torch

        torch.manual_seed(settings.seed)


def run_chat(
    model: str, compare: str | None, prompt: str | None, settings: ChatSettings, log: Callable[[str], None] = stderr_log
) -> None:
    """``easyrlhf chat``: check the options and both models before loading, then one answer (``prompt``)
    or the interactive loop."""
    from easyrlhf_core.kit.model_dirs import quiet_transformers

    settings.check()
    names = [model] + ([compare] if compare else [])
    refs = [
        inspect_chat_model(name, flag, settings.trust_remote_code)
        for name, flag in zip(names, ("MODEL_DIR", "--compare"))
    ]
    with quiet_transformers():
        bots = []
        for ref, label in zip(refs, model_labels(names)):
            log(f"loading {ref.name}")
            bots.append(load_chat_model(ref, label, settings.trust_remote_code))
        start_decoding(bots, refs, settings, log)
        screen = Screen.stdout()
        if prompt is not None:
            show_answers(bots, [Conversation(settings.system) for _ in bots], prompt, settings, screen)
            return
        log(
            f"chatting with {' and '.join(b.label for b in bots)}: up to {settings.max_new_tokens} new tokens; "
            f"{COMMANDS_HELP}"
        )
        chat_loop(bots, settings, terminal_reader(), screen)
