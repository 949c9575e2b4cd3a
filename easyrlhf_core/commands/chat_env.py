"""``easyrlhf chat --env NAME``: each message you type starts an episode of the environment, played by the model
with the tools live: every assistant message, tool call result and observation is printed as it happens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from easyrlhf_core.commands.chat import ChatModel, ChatSettings, LineReader

ROLE_LABELS = {"assistant": "assistant", "tool": "tool result", "user": "environment"}


def play(bot: ChatModel, env_class: Any, options: Any, message: str, settings: ChatSettings, out: Any) -> float:
    """One episode from ``message``; its messages printed to ``out`` as they come; the episode's reward."""
    from easyrlhf_core.kit.episodes import EpisodeSettings, run_episodes
    from easyrlhf_core.kit.rollout import Sampling, TransformersEngine

    prompt = ([{"role": "system", "content": settings.system}] if settings.system else []) + [
        {"role": "user", "content": message}
    ]
    sampling = Sampling(settings.max_new_tokens, bot.stops, bot.pad, **bot.decoding.sampling_fields())

    def show(_index: int, entry: dict[str, Any]) -> None:
        out(f"[{ROLE_LABELS.get(entry['role'], entry['role'])}] {entry['content']}")

    (episode,) = run_episodes(
        TransformersEngine(bot.model, bot.tokenizer),
        bot.tokenizer,
        [env_class(options)],
        [prompt],
        [{}],
        sampling,
        EpisodeSettings(settings.max_turns, settings.max_episode_tokens),
        on_message=show,
    )
    reward = episode.env_reward or 0.0
    out(
        f"[episode] {episode.turns} turns, {episode.tool_calls} tool calls ({episode.tool_failures} failed), "
        f"reward {reward:g}{'' if episode.done else ' (stopped at a limit)'}"
    )
    return reward


def run_env_chat(
    model: str,
    env: str,
    env_options: dict[str, Any],
    prompt: str | None,
    settings: ChatSettings,
    log: Callable[[str], None],
    reader: LineReader | None = None,
    out: Callable[[str], None] = print,
) -> None:
    """Check the environment and its options, load the model, then one episode (``prompt``) or one per line."""
    from easyrlhf_core.commands.chat import inspect_chat_model, load_chat_model, start_decoding, terminal_reader
    from easyrlhf_core.kit.environments import build_env_options
    from easyrlhf_core.kit.model_dirs import quiet_transformers
    from easyrlhf_core.runtime.registry import get_registry

    env_class = get_registry().get("environments", env)
    options = build_env_options(env_class, env_options, where="--env-option")
    ref = inspect_chat_model(model, "MODEL_DIR", settings.trust_remote_code)
    with quiet_transformers():
        log(f"loading {ref.name}")
        bot = load_chat_model(ref, ref.name, settings.trust_remote_code)
        start_decoding([bot], [ref], settings, log)
        if prompt is not None:
            play(bot, env_class, options, prompt, settings, out)
            return
        log(f"playing '{env}' with {ref.name}: each message starts an episode; /quit or Ctrl-D leaves")
        read = reader or terminal_reader()
        while True:
            line = read()
            if line is None or line.strip() == "/quit":
                return
            if line.strip():
                play(bot, env_class, options, line.strip(), settings, out)
