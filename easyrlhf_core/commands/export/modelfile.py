"""An Ollama ``Modelfile`` for an exported GGUF: ``FROM`` the file, a ``TEMPLATE`` (Go template) derived from the
model's chat template, and ``PARAMETER stop`` for its end-of-turn tokens.

The Jinja chat template is not translated; it is rendered with marker contents, the text it puts before and
after each role's message read off, and the result checked against the template on several conversations.
Templates that are not "the same text around every message of a role" (one that rewrites contents, say)
fail that check: a ChatML model then gets the ChatML template, any other model no TEMPLATE (Ollama falls back
to the GGUF's own chat template, ``tokenizer.chat_template``, when it recognises it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

Message = dict[str, str]
#: Renders messages with the model's chat template; the flag is ``add_generation_prompt``.
Render = Callable[[list[Message], bool], str]

ROLES = ("system", "user", "assistant")
_MARK = {"system": "SYSTEMxMARKERxONE", "user": "USERxMARKERxONE", "assistant": "ASSISTANTxMARKERxONE"}
_MARK2 = "USERxMARKERxTWO"


@dataclass(frozen=True)
class Turns:
    """A chat template as text around messages: ``prefix[role] + content + suffix[role]`` per message,
    ``default_system`` first when the first message is not a system one, ``generation`` after the last user
    message (the assistant's turn opening); a last assistant message (a prefill) is left open."""

    default_system: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str

    def render(self, messages: list[Message]) -> str:
        """What :meth:`go_template` renders for ``messages`` (Ollama's ``.Messages``)."""
        out = self.default_system if not messages or messages[0]["role"] != "system" else ""
        for i, message in enumerate(messages):
            role, last = message["role"], i == len(messages) - 1
            out += self.prefix[role] + message["content"]
            if role == "user":
                out += self.suffix[role] + (self.generation if last else "")
            elif role == "system" or not last:
                out += self.suffix[role]
        return out

    def go_template(self) -> str:
        """An Ollama TEMPLATE: every literal is a Go string in an action, so whitespace trimming cannot eat it."""

        def text(value: str) -> str:
            return "{{ " + json.dumps(value, ensure_ascii=False) + " }}" if value else ""

        p, s = self.prefix, self.suffix
        lines = []
        if self.default_system:
            first_not_system = 'or (not .Messages) (ne (index .Messages 0).Role "system")'
            lines.append(f"{{{{- if {first_not_system} }}}}{text(self.default_system)}{{{{ end }}}}")
        lines += [
            "{{- range $i, $_ := .Messages }}",
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
            f'{{{{- if eq .Role "system" }}}}{text(p["system"])}{{{{ .Content }}}}{text(s["system"])}',
            f'{{{{- else if eq .Role "user" }}}}{text(p["user"])}{{{{ .Content }}}}{text(s["user"])}'
            f"{{{{ if $last }}}}{text(self.generation)}{{{{ end }}}}",
            f'{{{{- else if eq .Role "assistant" }}}}{text(p["assistant"])}{{{{ .Content }}}}'
            f"{{{{ if not $last }}}}{text(s['assistant'])}{{{{ end }}}}",
            "{{- end }}",
            "{{- end }}",
        ]
        return "\n".join(lines)


#: ChatML (SmolLM2, Qwen, easyrlhf's default template), for ChatML models whose template does not derive.
CHATML = Turns(
    default_system="",
    prefix={role: f"<|im_start|>{role}\n" for role in ROLES},
    suffix={role: "<|im_end|>\n" for role in ROLES},
    generation="<|im_start|>assistant\n",
)


def derive_turns(render: Render) -> Turns | None:
    """The :class:`Turns` that reproduce ``render`` on a set of conversations, or None."""
    try:
        turns = _read_turns(render)
    except Exception:  # a template that refuses a role or an order: not one of text around messages
        return None
    return turns if turns is not None and reproduces(turns, render) else None


def _read_turns(render: Render) -> Turns | None:
    sys_, user, assistant = (_MARK[r] for r in ROLES)

    def pieces(messages: list[tuple[str, str]], generation: bool) -> list[str]:
        text = render([{"role": r, "content": c} for r, c in messages], generation)
        out = []
        for _, content in messages:
            before, found, text = text.partition(content)
            if not found:
                raise ValueError("a message's content is not in the rendering")
            out.append(before)
        return out + [text]

    before_user, user_suffix = pieces([("user", user)], False)
    _, user_then_assistant, assistant_suffix = pieces([("user", user), ("assistant", assistant)], False)
    _, _, assistant_then_user, _ = pieces([("user", user), ("assistant", assistant), ("user", _MARK2)], False)
    system_prefix, system_then_user, _ = pieces([("system", sys_), ("user", user)], False)
    _, user_then_generation = pieces([("user", user)], True)
    cuts = (
        (user_then_assistant, user_suffix),
        (assistant_then_user, assistant_suffix),
        (user_then_generation, user_suffix),
    )
    if not all(whole.startswith(part) for whole, part in cuts):
        return None
    assistant_prefix = user_then_assistant[len(user_suffix) :]
    user_prefix = assistant_then_user[len(assistant_suffix) :]
    if not (before_user.endswith(user_prefix) and system_then_user.endswith(user_prefix)):
        return None
    cut = len(before_user) - len(user_prefix)
    return Turns(
        default_system=before_user[:cut],
        prefix={"system": system_prefix, "user": user_prefix, "assistant": assistant_prefix},
        suffix={
            "system": system_then_user[: len(system_then_user) - len(user_prefix)],
            "user": user_suffix,
            "assistant": assistant_suffix,
        },
        generation=user_then_generation[len(user_suffix) :],
    )


def reproduces(turns: Turns, render: Render) -> bool:
    """``turns`` renders as ``render`` does (generation prompt on) on conversations with and without a system
    message, one and two user turns, with contents of several words and lines."""
    system = {"role": "system", "content": "Be brief.\nAnswer in English."}
    first = [{"role": "user", "content": "What is 2 + 2?"}]
    more = first + [{"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3 + 3?\nThanks"}]
    for messages in (first, [system, *first], more, [system, *more]):
        if turns.render(messages) != render(messages, True):
            return False
    return True


def stop_tokens(turns: Turns | None, special_tokens: list[str], eos_tokens: list[str]) -> list[str]:
    """The end-of-sequence tokens, and the special tokens that close an assistant turn or open a user one."""
    found = list(dict.fromkeys(t for t in eos_tokens if t))
    if turns is not None:
        around = turns.suffix["assistant"] + turns.prefix["user"]
        found += [t for t in special_tokens if t and t in around and t not in found]
    return found


def is_chatml(special_tokens: list[str]) -> bool:
    return "<|im_start|>" in special_tokens and "<|im_end|>" in special_tokens


def modelfile(gguf_name: str, render: Render, special_tokens: list[str], eos_tokens: list[str]) -> tuple[str, str]:
    """The Modelfile text for ``./gguf_name``, and how its TEMPLATE came about (for the log)."""
    turns = derive_turns(render)
    how = "derived from the chat template"
    if turns is None and is_chatml(special_tokens):
        turns, how = CHATML, "ChatML (the chat template did not derive to text around messages)"
    lines = [f"FROM ./{gguf_name}", ""]
    if turns is None:
        how = "none: the chat template did not derive; Ollama falls back to the GGUF's chat template"
        lines += [
            "# No TEMPLATE: Ollama takes the GGUF's chat template (tokenizer.chat_template) when it knows it.",
            "",
        ]
    else:
        lines += [f'TEMPLATE """{turns.go_template()}"""', ""]
    stops = stop_tokens(turns, special_tokens, eos_tokens)
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stops]
    return "\n".join(lines) + "\n", how
