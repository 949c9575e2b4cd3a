"""Rewards, in one place: choosing them (the config mixins), building them once per run, weighting and labelling
them, the one "exactly one reward" rule, and scoring with the dataset's columns.

Every path that scores (PPO, RRHF with ``candidates: generate``, GRPO and RLOO, ``easyrlhf eval``, a plugin's
own method) builds its reward plugins here:

- :class:`OneRewardOptions` (mix into a method config): ``--reward-model PATH`` or ``--reward NAME`` with
  ``reward_options``; :class:`WeightedRewardsOptions` adds ``rewards:``, several summed with weights.
- ``config.build_rewards(registry)`` (or ``build_reward`` for the one reward): built the first time (options
  checked; reward models load when they first score) and kept on the config, so the check at validation and
  the trainer share the same objects.
- ``--reward-model PATH`` is the registered reward whose class declares ``model_option`` (the option that
  takes the directory); the core names no plugin.
- A reward's metrics label (``rewards/<label>/mean``) is its name, or for a reward model its directory's own
  name (a run's ``model/`` directory: the run's name).

Light at import time: no torch, transformers or TRL.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from easyrlhf_core.kit.config import option
from easyrlhf_core.kit.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from easyrlhf_core.kit.bases import RewardFunction
    from easyrlhf_core.kit.model_dirs import ModelRef
    from easyrlhf_core.kit.shapes import Message
    from easyrlhf_core.kit.context import PluginLookup

__all__ = [
    "OneRewardOptions",
    "WeightedRewardsOptions",
    "WeightedReward",
    "one_reward_error",
    "make_reward",
    "reward_model_reward",
    "reward_label",
    "describe_reward",
    "locate_options_error",
    "is_options_error",
    "score_with_columns",
    "record_columns",
    "Judge",
    "reward_model_judge",
    "named_judge",
]

#: Where a reward's option errors point when raised (``where=``); the caller knows better (a file line, a flag).
OPTIONS_WHERE = "reward_options"
_SPEC_KEYS = {"reward", "reward_model", "weight", "options"}
_FLAGS = ("--reward-model PATH", "--reward NAME")
_LIST_KEYS = ("reward_model: PATH", "reward: NAME")


# --------------------------------------------------------------------------------------------------
# The one rule: exactly one reward


def one_reward_error(
    count: int,
    who: str = "the run",
    *,
    purpose: str = "",
    given: str = "",
    where: str | None = None,
    key: str | None = None,
    several: bool = False,
    forms: tuple[str, str] = _FLAGS,
) -> ConfigError:
    """The error of the one rule "exactly one reward" (``count`` rewards given: 0, or more than 1): one
    wording everywhere. ``who`` needs the reward (``PPO``, ``rewards[0]``); ``purpose`` says what for
    (`` to score its samples``); ``given`` says what was given twice (default: both ``reward`` and
    ``reward_model``); ``several``: the caller also takes a ``rewards:`` list (GRPO's); ``forms``: the two
    ways to give one (flags; or a ``rewards:`` item's keys). ``where``/``key``: the flag, or the config key the
    loader points at (a check in ``__post_init__``)."""
    first, second = forms
    if count == 0:
        text = (
            f"a reward is needed: {who} needs a reward model or a reward function{purpose}; give {first} or "
            f"{second} (see `easyrlhf list-plugins`)"
        )
        if several:
            text += "; several: repeat --reward, or a rewards: list in the config"
    else:
        text = (
            f"{who} takes one reward, but {given or 'reward and reward_model are both set'}; give only one: "
            f"{first} or {second}"
        )
    return ConfigError(text, where=where, key=key)


def _who(config: Any) -> str:
    """The method a config (or config class) belongs to, as its messages name it (its ``method_name``)."""
    name = getattr(config if isinstance(config, type) else type(config), "method_name", None)
    return str(name).upper() if name else "this method"


# --------------------------------------------------------------------------------------------------
# Building one reward


def reward_model_reward(registry: PluginLookup) -> type[RewardFunction]:
    """The registered reward that ``--reward-model PATH`` builds: the one whose class declares
    ``model_option`` (the option that takes a model directory). Several: the built-in distribution's wins;
    none installed, or still several, is a :class:`~easyrlhf_core.kit.errors.PluginError`."""
    from easyrlhf_core.kit.hooks import BUILTIN_DISTRIBUTION

    entries = [e for e in registry.rewards.values() if getattr(e.obj, "model_option", None)]
    if len(entries) > 1:
        entries = [e for e in entries if e.plugin.package == BUILTIN_DISTRIBUTION] or entries
    if len(entries) == 1:
        return cast("type[RewardFunction]", entries[0].obj)
    if not entries:
        raise PluginError(
            "no installed reward reads a reward-model directory (a reward class with model_option); "
            "reinstall easyrlhf, or give --reward NAME",
            where="--reward-model",
        )
    names = ", ".join(sorted(e.name for e in entries))
    raise PluginError(
        f"several rewards read a reward-model directory ({names}); give one with --reward NAME and "
        f"its directory in reward_options",
        where="--reward-model",
    )


def make_reward(
    registry: PluginLookup,
    reward_model: str | None,
    reward: str | None,
    options: dict[str, Any] | None = None,
    where: str = OPTIONS_WHERE,
) -> RewardFunction:
    """The reward function for ``reward_model`` (a directory: :func:`reward_model_reward`) or ``reward`` (a
    registered name): exactly one of them (:func:`one_reward_error`).

    Reward functions check their options in ``__init__`` and load models lazily, so this is cheap; an
    option the function does not accept is one line naming ``where`` (the flag the options came from, e.g.
    ``--reward-option``; a run config points at the file line or ``--set`` instead: :func:`locate_options_error`).
    """
    options = dict(options or {})
    given = (reward_model is not None) + (reward is not None)
    if given != 1:
        raise one_reward_error(given, where="--reward" if given else "--reward-model")
    if reward_model is not None:
        cls = reward_model_reward(registry)
        options[str(cls.model_option)] = reward_model
    else:
        cls = registry.get("rewards", str(reward))
    name = cls.name
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
    from easyrlhf_core.kit.config import located_error

    if not is_options_error(exc):
        return exc
    key = exc.key
    located = located_error(config, exc.message, f"{prefix}.{key}" if key else prefix, within)
    return _moved(exc, located) if located is not None else exc


def _moved(old: ConfigError, new: ConfigError) -> ConfigError:
    new.key = old.key
    return new


# --------------------------------------------------------------------------------------------------
# Labels and descriptions


def reward_model_label(path: str | os.PathLike[str]) -> str:
    """A reward model's metrics label, one path component: a directory's own name, a run's ``model/`` named
    after its run (``runs/judges/rm-v2`` -> ``rm-v2``; ``runs/rm/model`` -> ``rm``), of a Hub id
    (``org/name``, never a run's ``model/``) its name."""
    from easyrlhf_core.kit.model_loading import model_label

    given = Path(os.path.expanduser(str(path)))
    if given.exists():
        return model_label(str(given))
    parts = [p for p in given.parts if p not in ("", ".")]
    if len(parts) > 2 and parts[-1] == "model":
        return parts[-2]
    return parts[-1] if parts else "reward-model"


def reward_label(spec: dict[str, Any]) -> str:
    """The label of a reward spec (``{reward: NAME}`` or ``{reward_model: PATH}``): the name its metrics carry
    (``rewards/<label>/mean``) and its key in ``samples.jsonl``."""
    if spec.get("reward") is not None:
        return str(spec["reward"])
    return reward_model_label(str(spec["reward_model"]))


def describe_reward(reward_model: str | None, reward: str | None, options: dict[str, Any] | None = None) -> str:
    """A phrase for the run log: ``reward model runs/rm/model`` or ``reward function 'length' (target=40)``."""
    if reward_model is not None:
        return f"reward model {reward_model}"
    shown = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return f"reward function '{reward}'" + (f" ({shown})" if shown else "")


# --------------------------------------------------------------------------------------------------
# Choosing: the config mixins


@dataclass
class WeightedReward:
    """One of a run's rewards: the function, its weight in the sum, and the name its metrics carry."""

    reward: RewardFunction
    weight: float
    label: str


@dataclass
class OneRewardOptions:
    """The reward of a method that scores with one: ``--reward-model PATH`` or ``--reward NAME``, with
    ``reward_options``. Mix it into a method config (``class MyConfig(OneRewardOptions, TrainerConfig)``);
    set the class attribute ``method_name`` to be named in its messages. Check in ``validate_for_run`` with
    :meth:`require_reward` then :meth:`build_reward` (it is kept: the trainer gets the same object)."""

    reward_model: str | None = option(
        None, "Reward model directory (a sequence classifier, e.g. from --method rm); give this or `reward`."
    )
    reward: str | None = option(
        None, "Registered reward function (see `easyrlhf list-plugins`); give this or `reward_model`."
    )
    reward_options: dict[str, Any] = option(
        {}, "Options of the reward function, e.g. {target: 50} (`--set reward_options.target=50`)."
    )

    #: Whether the config also takes a ``rewards:`` list (said in the rule's message).
    takes_several_rewards: ClassVar[bool] = False

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.reward_model is not None and self.reward is not None:
            raise one_reward_error(2, _who(self), key="reward")

    def require_reward(self, purpose: str = "", where: str | None = "--reward-model", key: str | None = None) -> None:
        """The one rule's other half: a reward is given (``purpose``, e.g. `` to score its samples``, goes
        into the message; ``where``/``key`` say where it points)."""
        if not self.reward_specs():
            raise one_reward_error(
                0,
                _who(self),
                purpose=purpose,
                where=None if key else where,
                key=key,
                several=self.takes_several_rewards,
            )

    def reward_specs(self) -> list[dict[str, Any]]:
        """Every reward as ``{reward | reward_model, weight, options}``: here the one given, or none."""
        if self.reward_model is None and self.reward is None:
            return []
        return [
            {
                "reward_model": self.reward_model,
                "reward": self.reward,
                "weight": 1.0,
                "options": dict(self.reward_options),
            }
        ]

    def _listed(self) -> int:
        """How many of :meth:`reward_specs` come from a ``rewards:`` list (the last ones)."""
        return 0

    def build_rewards(self, registry: PluginLookup | None = None) -> list[WeightedReward]:
        """The run's rewards, weighted and labelled, options checked (cheap: reward models load when they first
        score), a bad one reported at the file line or flag that set it. Built once and kept on the config:
        validation and the trainer get the same objects."""
        from easyrlhf_core.kit.context import installed_plugins

        registry = registry or installed_plugins()
        kept = self.__dict__.get("_built_rewards")
        if kept is not None and kept[0] is registry:
            return list(kept[1])
        specs = self.reward_specs()
        if not specs:
            raise one_reward_error(
                0,
                _who(self),
                where="--reward" if self.takes_several_rewards else "--reward-model",
                several=self.takes_several_rewards,
            )
        first_listed = len(specs) - self._listed()  # specs[i] is rewards[i - first_listed] from here on
        out: list[WeightedReward] = []
        for i, spec in enumerate(specs):
            try:
                reward = make_reward(registry, spec.get("reward_model"), spec.get("reward"), spec.get("options", {}))
            except ConfigError as exc:
                if i < first_listed:
                    raise locate_options_error(exc, self, "reward_options", "reward_options") from None
                raise locate_options_error(exc, self, f"rewards[{i - first_listed}].options", "rewards") from None
            label = reward_label(spec)
            if label in {r.label for r in out}:
                label = f"{label}-{len(out) + 1}"
            out.append(WeightedReward(reward, float(spec.get("weight", 1.0)), label))
        object.__setattr__(self, "_built_rewards", (registry, out))
        return list(out)

    def build_reward(self, registry: PluginLookup | None = None) -> RewardFunction:
        """The one reward function (:meth:`build_rewards`, built once)."""
        return self.build_rewards(registry)[0].reward

    def describe_reward(self) -> str:
        """The reward for the run log (:func:`describe_reward`)."""
        return describe_reward(self.reward_model, self.reward, self.reward_options)

    @classmethod
    def several_rewards_error(cls, count: int, summing: list[str]) -> ConfigError:
        """``--reward`` given ``count`` times to a method of this config (one reward); ``summing``: the
        methods that take several."""
        hint = f" ({', '.join(summing)} sum several)" if summing else ""
        return one_reward_error(
            count,
            _who(cls),
            given=f"--reward is given {count} times",
            where="--reward",
            forms=(_FLAGS[0], _FLAGS[1] + hint),
        )


@dataclass
class WeightedRewardsOptions(OneRewardOptions):
    """:class:`OneRewardOptions` plus several rewards at once, each with a weight: ``--reward length --reward
    keyword`` or, in YAML, ``rewards: [{reward: length, weight: 0.5, options: {target: 20}}, {reward_model:
    runs/rm/model}]``. The score is the weighted sum."""

    rewards: list[dict[str, Any]] = option(
        [],
        "Several rewards, summed with weights: a list of {reward: NAME or "
        "reward_model: PATH, weight: 1.0, options: {...}}; with "
        "reward/reward_model too, that one comes first with weight 1.",
    )

    takes_several_rewards: ClassVar[bool] = True

    def __post_init__(self) -> None:
        from easyrlhf_core.kit.config import invalid

        super().__post_init__()
        if self.reward_options and self.reward is None and self.reward_model is None and self.rewards:
            raise invalid(
                "reward_options",
                "belong to --reward / --reward-model; with several rewards give each "
                "its own: rewards: [{reward: NAME, options: {...}}]",
            )
        for i, spec in enumerate(self.rewards):
            where = f"rewards[{i}]"
            if not isinstance(spec, dict):
                raise invalid("rewards", f"{where} must be a mapping such as {{reward: length, weight: 1.0}}")
            unknown = sorted(set(spec) - _SPEC_KEYS)
            if unknown:
                raise invalid(
                    "rewards",
                    f"{where} has unknown key(s) {', '.join(unknown)}; use reward or reward_model, weight, options",
                )
            given = ("reward" in spec) + ("reward_model" in spec)
            if given != 1:
                raise one_reward_error(given, where, key="rewards", forms=_LIST_KEYS)
            weight = spec.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise invalid("rewards", f"{where}: weight must be a number, got {weight!r}")
            if not isinstance(spec.get("options", {}), dict):
                raise invalid("rewards", f"{where}: options must be a mapping")

    def reward_specs(self) -> list[dict[str, Any]]:
        """Every reward as ``{reward | reward_model, weight, options}``, the single one first."""
        return super().reward_specs() + list(self.rewards)

    def _listed(self) -> int:
        return len(self.rewards)


# --------------------------------------------------------------------------------------------------
# Scoring with columns


def score_with_columns(
    reward: RewardFunction, prompts: list[list[Message]], completions: list[str], columns: dict[str, list[Any]]
) -> list[float]:
    """``reward.score``, handing over the dataset's extra columns (one list per column, a value per
    completion) when its ``score`` takes a ``columns`` argument; one float per completion, checked."""
    parameters = inspect.signature(reward.score).parameters
    takes_columns = "columns" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    try:
        scores = list(
            reward.score(prompts, completions, columns=columns)  # type: ignore[call-arg]
            if takes_columns
            else reward.score(prompts, completions)
        )
    except Exception as exc:
        from easyrlhf_core.kit.errors import EasyRLHFError, one_line
        from easyrlhf_core.kit.faults import RewardFailed, is_disk_full, is_out_of_memory

        if isinstance(exc, EasyRLHFError) or is_out_of_memory(exc) or is_disk_full(exc):
            raise
        text = one_line(str(exc))
        raise RewardFailed(
            f"reward '{reward.name}' ({type(reward).__module__}.{type(reward).__name__}) raised "
            f"{type(exc).__name__}{': ' + text if text else ''} while scoring {len(completions)} "
            f"completions; fix the reward plugin or its options",
            where="--reward",
        ) from exc
    if len(scores) != len(completions):
        raise PluginError(
            f"reward '{reward.name}' returned {len(scores)} scores for {len(completions)} completions; "
            f"it must return one per completion",
            where="--reward",
        )
    try:
        return [float(s) for s in scores]
    except (TypeError, ValueError):
        raise PluginError(f"reward '{reward.name}' returned a score that is not a number", where="--reward") from None


def record_columns(records: list[dict[str, Any]], skip: tuple[str, ...] = ("prompt",)) -> dict[str, list[Any]]:
    """The extra fields of prompt records (``answer``, ...) as columns, one value per record, for
    :func:`score_with_columns` (PPO and RRHF hand them to the rewards as GRPO and RLOO do)."""
    keys = sorted({k for r in records for k in r if k not in skip})
    return {k: [r.get(k) for r in records] for k in keys}


# --------------------------------------------------------------------------------------------------
# Judges: a reward scoring whole conversations (easyrlhf eval)


@dataclass
class Judge:
    """A reward function and a phrase naming it for the report (``easyrlhf eval``)."""

    reward: RewardFunction
    description: str

    def score(
        self,
        prompts: list[list[Message]],
        completions: list[list[Message]],
        columns: dict[str, list[Any]] | None = None,
    ) -> list[float]:
        """One score per (prompt, completion messages).

        Reward functions score one answer text; a completion of several turns is scored as its last
        assistant message after a prompt that holds the turns before it (the same rendered conversation).
        """
        if not prompts:
            return []
        contexts = [list(p) + list(c[:-1]) for p, c in zip(prompts, completions)]
        texts = [c[-1]["content"] for c in completions]
        return score_with_columns(self.reward, contexts, texts, columns or {})


def reward_model_judge(
    registry: PluginLookup, model: ModelRef, batch_size: int, max_length: int, trust_remote_code: bool = False
) -> Judge:
    """A judge that scores with the reward model at ``model.path``."""
    reward = make_reward(
        registry,
        model.path,
        None,
        {"batch_size": batch_size, "max_length": max_length, "trust_remote_code": trust_remote_code},
    )
    return Judge(reward=reward, description=describe_reward(model.name, None))


def named_judge(registry: PluginLookup, name: str, options: dict[str, Any], where: str = "--reward-option") -> Judge:
    """A judge from the reward function registered as ``name`` (options as keyword arguments; a bad one is
    reported at ``where``, the flag they came from)."""
    return Judge(
        reward=make_reward(registry, None, name, options, where=where), description=describe_reward(None, name, options)
    )
