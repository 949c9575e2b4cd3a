"""The multi-turn rollout: episodes against environments (:mod:`easyrlhf_core.kit.environments`), on the rollout
layer (:mod:`easyrlhf_core.kit.rollout`, either engine), for ppo, grpo, rloo, eval and chat.

Each turn, every episode still running gets one assistant message from the engine (one batched call). A tool
environment's calls in it are run (a tool that raises gives the model its error text, counted as a failure)
and their results appended; a turn environment's :meth:`step` answers it. An episode ends when the model
answers without a tool call (tools) or the environment says done (turns), after ``max_turns`` assistant
messages, or when its completion reaches ``max_episode_tokens``. A message cut at ``max_new_tokens`` is still
answered; the stop token that closes it is then the environment's (masked), not the model's.

The tokens the environment wrote (tool results, observations, and the template's markup around them) are in
the context but never trained on: :attr:`Episode.env_mask` is 0 there, 1 on the model's own tokens.

Tool calls are read in one stated format, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
Hermes/Qwen convention). A chat template that renders tools (it uses ``tools``) gets the schemas as
``tools=``; one that does not (SmolLM2's ChatML) gets them in the system message with the format spelled out
(:func:`tool_system_prompt`): the fallback docs/environments.md describes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from easyrlhf_core.kit.causal_lm import decode_response
from easyrlhf_core.kit.environments import StepResult, tool_methods, tool_schemas
from easyrlhf_core.kit.errors import PluginError

if TYPE_CHECKING:
    from easyrlhf_core.kit.rollout import RolloutEngine, Sampling

__all__ = [
    "Episode",
    "EpisodeSettings",
    "EnvironmentFailed",
    "run_episodes",
    "parse_tool_calls",
    "template_renders_tools",
    "tool_system_prompt",
    "episode_text",
]

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class EnvironmentFailed(PluginError):
    """An environment raised inside ``reset``, ``step``, ``finish`` or ``get_reward``: one line naming the
    environment, the call and the data row (the run's newest checkpoint is kept, as for any failure)."""

    def __init__(self, env_name: str, call: str, row_index: int, error: BaseException) -> None:
        self.env_name, self.call, self.row_index, self.error = env_name, call, row_index, error
        super().__init__(
            f"environment '{env_name}' raised in {call}() on data row {row_index}: {type(error).__name__}: {error}; "
            f"fix the environment plugin (or the row), then continue with --resume",
            where="--env",
        )


@dataclass
class EpisodeSettings:
    """How long an episode may run."""

    max_turns: int = 4
    max_episode_tokens: int = 256


@dataclass
class Episode:
    """One finished episode. ``completion_ids`` holds every token after the prompt, the model's and the
    environment's; ``env_mask`` is 1 on the model's, 0 on the environment's; ``logprobs`` are the engine's for the
    model's tokens (0 elsewhere), when asked."""

    prompt_ids: list[int]
    messages: list[dict[str, Any]]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_reward: float | None = None
    turns: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    done: bool = False  # ended by the model or the environment (not by max_turns or the token budget)
    prompt_length: int = 0  # messages[:prompt_length] are the prompt

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """The messages after the prompt: assistant turns, tool results, observations."""
        return self.messages[self.prompt_length :]


def template_renders_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template uses a ``tools`` variable (it renders tool schemas itself)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template


def tool_system_prompt(schemas: list[dict[str, Any]]) -> str:
    """The system text that tells a model without a tool-rendering template which tools it has and how to call
    them."""
    listed = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in schemas)
    return (
        "You can call tools. To call one, answer with exactly\n"
        '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
        "and wait for its result. When you have the final answer, reply with it and no tool call.\n"
        f"Tools:\n{listed}"
    )


def parse_tool_calls(text: str) -> list[tuple[str, dict[str, Any]] | str]:
    """The tool calls in an assistant message: ``(name, arguments)`` each, or the error text for a call that
    does not parse (the model is told, and it counts as a failure)."""
    calls: list[tuple[str, dict[str, Any]] | str] = []
    for body in TOOL_CALL.findall(text):
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(f"Error: the tool call is not valid JSON ({exc.msg})")
            continue
        if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
            calls.append('Error: a tool call needs {"name": ..., "arguments": {...}}')
            continue
        arguments = parsed.get("arguments") or {}
        if not isinstance(arguments, dict):
            calls.append("Error: the tool call's arguments must be a JSON object")
            continue
        calls.append((parsed["name"], arguments))
    return calls


def _run_tool(tools: dict[str, Any], call: tuple[str, dict[str, Any]] | str) -> tuple[str, bool]:
    """``(result text, failed)`` of one call."""
    if isinstance(call, str):
        return call, True
    name, arguments = call
    tool = tools.get(name)
    if tool is None:
        return f"Error: no tool named '{name}'; tools: {', '.join(sorted(tools)) or 'none'}", True
    try:
        return str(tool(**arguments)), False
    except Exception as exc:  # the model sees what went wrong, as a person calling the tool would
        return f"Error: {type(exc).__name__}: {exc}", True


class _Renderer:
    """Chat-template rendering for one environment: tool schemas in the template or in the system message."""

    def __init__(self, tokenizer: Any, schemas: list[dict[str, Any]]) -> None:
        self.tokenizer = tokenizer
        self.schemas = schemas
        self.native = bool(schemas) and template_renders_tools(tokenizer)

    def prepare(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The prompt messages, with the tool list in the system message when the template cannot render it."""
        if not self.schemas or self.native:
            return list(messages)
        note = tool_system_prompt(self.schemas)
        if messages and messages[0].get("role") == "system":
            return [{"role": "system", "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
        return [{"role": "system", "content": note}, *messages]

    def text(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        kwargs: dict[str, Any] = {"tools": self.schemas} if self.native else {}
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
            )
        )

    def ids(self, messages: list[dict[str, Any]]) -> list[int]:
        return list(self.tokenizer.encode(self.text(messages, True), add_special_tokens=False))

    def environment_tokens(self, messages: list[dict[str, Any]], added: int, stop_text: str) -> list[int]:
        """The tokens between the model's stop token and the next assistant message: the template's markup after
        the assistant turn, the ``added`` messages (tool results, an observation), the generation prompt."""
        before = self.text(messages[:-added], False)
        after = self.text(messages, True)
        if not after.startswith(before):
            raise ValueError("the chat template renders a conversation differently once it grows")
        end = before.rfind(stop_text) if stop_text else -1
        tail = before[end + len(stop_text) :] if end >= 0 else ""
        return list(self.tokenizer.encode(tail + after[len(before) :], add_special_tokens=False))


def _reset(env: Any, row: dict[str, Any], index: int) -> str | None:
    try:
        observation = env.reset(**row)
    except Exception as exc:
        raise EnvironmentFailed(type(env).name or type(env).__name__, "reset", index, exc) from exc
    return observation if isinstance(observation, str) else None


def run_episodes(
    engine: RolloutEngine,
    tokenizer: Any,
    envs: list[Any],
    prompts: list[list[dict[str, Any]]],
    rows: list[dict[str, Any]],
    sampling: Sampling,
    settings: EpisodeSettings,
    logprobs: bool = False,
    row_indices: list[int] | None = None,
    on_message: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[Episode]:
    """One episode per (environment instance, prompt, data row), turn by turn, every running episode's turn in
    one engine call. ``sampling.max_new_tokens`` caps each assistant message; ``settings`` the episode;
    ``on_message(episode index, message)`` sees each message as it is added (``easyrlhf chat --env``)."""
    import copy

    indices = row_indices or list(range(len(rows)))
    stop_text = tokenizer.eos_token or ""
    renderers = [_Renderer(tokenizer, tool_schemas(env) if getattr(env, "kind", "") == "tools" else []) for env in envs]
    episodes: list[Episode] = []
    for env, prompt, data_row, renderer, index in zip(envs, prompts, rows, renderers, indices):
        messages = renderer.prepare(copy.deepcopy(prompt))
        observation = _reset(env, data_row, index)
        if observation:
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}{observation}"}
        episodes.append(Episode(renderer.ids(messages), messages, prompt_length=len(messages)))
    running = list(range(len(episodes)))
    for _ in range(settings.max_turns):
        if not running:
            break
        room = [settings.max_episode_tokens - len(episodes[i].completion_ids) for i in running]
        turn = copy.copy(sampling)
        turn.max_new_tokens = max(1, min(sampling.max_new_tokens, max(room)))
        out = engine.generate(
            [episodes[i].prompt_ids + episodes[i].completion_ids for i in running], turn, logprobs=logprobs
        )
        lengths = out.response_mask.sum(dim=1).tolist()
        still: list[int] = []
        for row, i in enumerate(running):
            episode, env, renderer = episodes[i], envs[i], renderers[i]
            ids = out.response_ids[row, : min(lengths[row], room[row])].tolist()
            episode.completion_ids += ids
            episode.env_mask += [1] * len(ids)
            if logprobs and out.logprobs is not None:
                episode.logprobs += out.logprobs[row, : len(ids)].tolist()
            episode.turns += 1
            stopped = bool(ids) and ids[-1] in sampling.stop_ids
            text = decode_response(tokenizer, ids)
            episode.messages.append({"role": "assistant", "content": text})
            added = _answer(env, episode, text, indices[i])
            if on_message is not None:
                for message in [episode.messages[-1 - len(added)], *added]:
                    on_message(i, message)
            if not added or len(episode.completion_ids) >= settings.max_episode_tokens:
                continue
            env_ids = renderer.environment_tokens(episode.messages, len(added), stop_text)
            if not stopped:  # a message cut at max_new_tokens: the turn is closed for it (not the model's token)
                env_ids = [sampling.stop_ids[0], *env_ids]
            budget = settings.max_episode_tokens - len(episode.completion_ids)
            env_ids = env_ids[:budget]
            episode.completion_ids += env_ids
            episode.env_mask += [0] * len(env_ids)
            if logprobs:
                episode.logprobs += [0.0] * len(env_ids)
            if len(episode.completion_ids) < settings.max_episode_tokens:
                still.append(i)
        running = still
    for episode, env, index in zip(episodes, envs, indices):
        if hasattr(env, "finish"):
            try:
                env.finish(episode.messages)
            except Exception as exc:
                raise EnvironmentFailed(type(env).name or type(env).__name__, "finish", index, exc) from exc
        if getattr(env, "kind", "") == "tools" and hasattr(env, "get_reward"):
            try:
                reward = env.get_reward()
            except Exception as exc:
                raise EnvironmentFailed(type(env).name or type(env).__name__, "get_reward", index, exc) from exc
            episode.env_reward = None if reward is None else float(reward)
    return episodes


def _answer(env: Any, episode: Episode, text: str, index: int) -> list[dict[str, Any]]:
    """The environment's answer to the assistant's ``text``, appended to the episode's messages; the new messages
    (none: the episode is over)."""
    if getattr(env, "kind", "") == "tools":
        calls = parse_tool_calls(text)
        if not calls:
            episode.done = True
            return []
        tools = tool_methods(env)
        added = []
        for call in calls:
            result, failed = _run_tool(tools, call)
            episode.tool_calls += 1
            episode.tool_failures += int(failed)
            added.append({"role": "tool", "content": result})
        episode.messages += added
        return added
    try:
        answer: Any = env.step(text)
    except Exception as exc:
        raise EnvironmentFailed(type(env).name or type(env).__name__, "step", index, exc) from exc
    if not isinstance(answer, StepResult):  # a plain (observation, done, reward) tuple, or the text alone
        answer = StepResult(*answer) if isinstance(answer, tuple) else StepResult(str(answer))
    if answer.reward is not None:
        episode.env_reward = (episode.env_reward or 0.0) + float(answer.reward)
    if answer.done or answer.observation is None:
        episode.done = bool(answer.done)
        return []
    added = [{"role": "user", "content": answer.observation}]
    episode.messages += added
    return added


def episode_text(episode: Episode) -> str:
    """The episode after the prompt as plain text, the way a reward plugin reads it: each message on its own
    lines, tool results and observations marked."""
    parts = []
    for message in episode.transcript:
        role = message["role"]
        parts.append(message["content"] if role == "assistant" else f"[{role}] {message['content']}")
    return "\n".join(parts).strip()
