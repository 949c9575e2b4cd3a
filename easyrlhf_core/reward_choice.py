"""The reward of an online method, chosen once: ``--reward-model PATH`` (the ``reward-model`` reward
plugin) or ``--reward NAME`` (any registered reward function), with ``reward_options``.

PPO, RRHF (``candidates: generate``) and ``easyrlhf eval`` build their reward here, the same way at
validation (before any model loads: bad options and directories that are not reward models fail in
seconds) and at training time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .api import RewardFunction
    from .registry import Registry

#: The reward plugin that scores with a sequence-classification model directory (option ``path``).
REWARD_MODEL_REWARD = "reward-model"
#: Where a reward's option errors point when raised (``where=``); the caller knows better (a file line, a flag).
OPTIONS_WHERE = "reward_options"


def make_reward(registry: Registry, reward_model: str | None, reward: str | None,
                options: dict[str, Any] | None = None, where: str = OPTIONS_WHERE) -> RewardFunction:
    """The reward function for ``reward_model`` (a directory) or ``reward`` (a registered name).

    Reward functions check their options in ``__init__`` and load models lazily, so this is cheap; an
    option the function does not accept is one line naming ``where`` (the flag the options came from, e.g.
    ``--reward-option``; a run config points at the file line or ``--set`` instead: :func:`locate_options_error`).
    """
    options = dict(options or {})
    if reward_model is not None and reward is not None:
        raise ConfigError("give one reward: --reward-model PATH or --reward NAME, not both", where="--reward")
    if reward_model is None and reward is None:
        raise ConfigError("a reward is needed: pass --reward-model PATH (a sequence-classifier directory, e.g. "
                          "from --method rm) or --reward NAME (see `easyrlhf list-plugins`)", where="--reward-model")
    name = REWARD_MODEL_REWARD if reward_model is not None else str(reward)
    if reward_model is not None:
        options["path"] = reward_model
    cls = registry.get("rewards", name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"reward '{name}' does not accept these options: {exc}", where=where) from None
    except ConfigError as exc:
        if where != OPTIONS_WHERE and is_options_error(exc):
            raise _moved(exc, ConfigError(exc.message, where=where)) from None
        raise


def is_options_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a reward's complaint about its options (not yet pointed at a file or flag)."""
    return isinstance(exc, ConfigError) and exc.file is None and exc.where == OPTIONS_WHERE


def locate_options_error(exc: ConfigError, config: Any, prefix: str, within: str | None = None) -> ConfigError:
    """``exc``, raised by :func:`make_reward` for the options a run ``config`` holds under the dotted ``prefix``
    (``reward_options``, ``rewards[0].options``), at the file line or ``--set`` that set the option at fault
    (or, set as part of a bigger value, the one that set ``within``: ``reward_options={...}``, ``rewards``);
    other errors, and options no layer set, are returned as they are."""
    from .config import located_error

    if not is_options_error(exc):
        return exc
    key = getattr(exc, "key", None)
    located = located_error(config, exc.message, f"{prefix}.{key}" if key else prefix, within)
    return _moved(exc, located) if located is not None else exc


def _moved(old: ConfigError, new: ConfigError) -> ConfigError:
    new.key = getattr(old, "key", None)  # type: ignore[attr-defined]
    return new


def describe_reward(reward_model: str | None, reward: str | None, options: dict[str, Any] | None = None) -> str:
    """A phrase for the run log: ``reward model runs/rm/model`` or ``reward function 'length' (target=40)``."""
    if reward_model is not None:
        return f"reward model {reward_model}"
    shown = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return f"reward function '{reward}'" + (f" ({shown})" if shown else "")
