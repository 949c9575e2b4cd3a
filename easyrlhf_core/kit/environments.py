"""Environments, the fourth plugin kind: what a multi-turn episode talks to. One instance per episode.

Two kinds:

- **tool environments** (:class:`ToolEnvironment`), TRL's ``environment_factory`` contract: ``reset(**row)``
  returns None or text appended to the prompt's last message; every public method with type hints and a
  Google-style docstring is a tool the model may call; ``get_reward()`` scores the finished episode. A class
  written for TRL becomes one with :func:`from_trl` (one line in ``register_environments``).
- **turn environments** (:class:`TurnEnvironment`): ``reset(**row)`` as above, then ``step(message)`` answers
  each assistant message with a :class:`StepResult` (the next observation, whether the episode is done, an
  optional reward): a game, a grader giving feedback, a simulated user.

Options: a class declares ``options_class`` (a dataclass, as rewards do); ``env_options`` are checked against it
before any model loads and the instance gets them as ``self.options``. The multi-turn rollout that drives both
kinds is :mod:`easyrlhf_core.kit.episodes`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from easyrlhf_core.kit.config import invalid, option

__all__ = [
    "Environment",
    "ToolEnvironment",
    "TurnEnvironment",
    "StepResult",
    "from_trl",
    "tool_methods",
    "tool_schemas",
    "build_env_options",
    "EnvironmentOptions",
]

#: Methods of a tool environment that are never tools.
NOT_TOOLS = frozenset({"reset", "get_reward", "step", "finish"})


@dataclass
class StepResult:
    """What a turn environment answers to one assistant message."""

    observation: str | None = None
    done: bool = False
    reward: float | None = None


class Environment:
    """Base class of an environment plugin (register the subclass in ``register_environments``).

    Set ``name`` (the ``--env`` value) and ``description``; optionally ``options_class``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: A dataclass of the environment's options (``env_options``); None: it takes none.
    options_class: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def reset(self, **row: Any) -> str | None:
        """Start an episode on a data row (its columns as keyword arguments); text to append to the prompt's last
        message, or None."""
        return None

    def finish(self, messages: list[dict[str, Any]]) -> None:
        """Called once the episode has ended, with its whole conversation (the prompt first), before
        ``get_reward``: an environment that scores the final answer reads it here."""


class ToolEnvironment(Environment):
    """An environment whose public methods are tools; ``get_reward`` scores the finished episode."""

    kind = "tools"

    def get_reward(self) -> float | None:
        """The finished episode's reward (None: the environment gives none; reward plugins still score)."""
        return None


class TurnEnvironment(Environment):
    """An environment that answers each assistant message (:meth:`step`)."""

    kind = "turns"

    def step(self, message: str) -> StepResult:
        """The environment's answer to the assistant's ``message``."""
        raise NotImplementedError


def tool_methods(env: Any) -> dict[str, Callable[..., Any]]:
    """The tools of a tool environment instance: its public methods (defined on its class, not the base classes)
    other than ``reset``/``get_reward``."""
    found: dict[str, Callable[..., Any]] = {}
    for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction):
        if name.startswith("_") or name in NOT_TOOLS or hasattr(ToolEnvironment, name):
            continue
        found[name] = getattr(env, name)
    return found


def tool_schemas(env: Any) -> list[dict[str, Any]]:
    """The JSON schemas of ``env``'s tools, from their type hints and Google-style docstrings (as transformers'
    chat templates take them)."""
    from transformers.utils import get_json_schema  # type: ignore[attr-defined]

    return [get_json_schema(fn) for fn in tool_methods(env).values()]


def from_trl(cls: type, name: str, description: str = "") -> type[ToolEnvironment]:
    """An environment plugin class from a class written for TRL's ``environment_factory`` (``reset(**row)``,
    public tool methods, optional ``get_reward()``): ``register(from_trl(MyEnv, "my-env"))``."""

    class Adapted(cls, ToolEnvironment):  # type: ignore[misc]
        def __init__(self, options: Any = None) -> None:
            cls.__init__(self)  # type: ignore[misc]
            self.options = options

    Adapted.name = name
    Adapted.description = description or (inspect.getdoc(cls) or "").split("\n")[0]
    Adapted.__name__ = Adapted.__qualname__ = cls.__name__
    return Adapted


def build_env_options(env_class: type[Environment], options: dict[str, Any], where: str = "env_options") -> Any:
    """``options`` checked against ``env_class.options_class`` (unknown names with a did-you-mean, wrong types,
    ``__post_init__`` checks: one ConfigError naming the environment); None for a class without options."""
    from easyrlhf_core.kit.config import build_options
    from easyrlhf_core.kit.errors import ConfigError

    if env_class.options_class is None:
        if options:
            raise ConfigError(f"environment '{env_class.name}' takes no options, got {', '.join(options)}", where=where)
        return None
    return build_options(env_class.options_class, options, f"environment '{env_class.name}'", where)


@dataclass
class EnvironmentOptions:
    """Mix into an online method's config: ``env`` names an environment plugin, and the method then samples
    episodes of several turns (:mod:`easyrlhf_core.kit.episodes`) instead of one completion per prompt."""

    env: str | None = option(
        None,
        "Environment plugin (--env): episodes of several turns (tool calls, a game) instead of one completion; "
        "`easyrlhf list-plugins` lists them.",
    )
    env_options: dict[str, Any] = option({}, "The environment's options (its options_class), e.g. {low: 1}.")
    max_turns: int = option(4, "With env: assistant messages per episode at most.")
    max_episode_tokens: int = option(
        256, "With env: tokens after the prompt per episode at most (the model's and the environment's)."
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.max_turns <= 0:
            raise invalid("max_turns", "must be a positive integer")
        if self.max_episode_tokens <= 0:
            raise invalid("max_episode_tokens", "must be a positive integer")

    def validate_for_run(self) -> None:
        """The environment exists and takes its options, before data or models load; a run on an environment with
        a ``default_dataset`` and no dataset of the user's plays on that one."""
        parent = getattr(super(), "validate_for_run", None)
        if parent is not None:
            parent()
        if self.env is None:
            if self.env_options:
                raise invalid("env_options", "needs an environment: give --env NAME")
            return
        env_class = self.environment_class()
        self.build_env_options(env_class)
        from easyrlhf_core.kit.config import explicit_keys

        default = getattr(env_class, "default_dataset", None)
        if default and "dataset" not in explicit_keys(self) and hasattr(self, "dataset"):
            object.__setattr__(self, "dataset", default)

    def environment_class(self, registry: Any = None) -> type[Environment]:
        """The registered class ``env`` names (a did-you-mean error otherwise)."""
        from easyrlhf_core.kit.context import installed_plugins

        if self.env is None:
            raise ValueError("no environment: env is empty")
        return (registry or installed_plugins()).get("environments", self.env)  # type: ignore[no-any-return]

    def build_env_options(self, env_class: type[Environment]) -> Any:
        """``env_options`` as the environment's options object, an error pointing at the line or flag that set them."""
        from easyrlhf_core.kit.config import located_error
        from easyrlhf_core.kit.errors import ConfigError

        try:
            return build_env_options(env_class, dict(self.env_options))
        except ConfigError as exc:
            key = f"env_options.{exc.key}" if exc.key else "env_options"
            raise located_error(self, exc.message, key, "env_options") or exc from None

    def new_environment(self, registry: Any = None) -> Environment:
        """A fresh environment instance (one per episode)."""
        env_class = self.environment_class(registry)
        return env_class(self.build_env_options(env_class))
