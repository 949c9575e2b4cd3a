"""Hook specifications: the four extension points of EasyRLHF (methods, datasets, rewards, environments).

A plugin is a module (or object) with functions marked ``@hookimpl``. Each hook hands the plugin a
``register`` callback; call it once per class you provide::

    from easyrlhf_core import hookimpl

    @hookimpl
    def register_methods(register):
        register(MyMethod)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from easyrlhf_core.kit.bases import Dataset, Method, RewardFunction
    from easyrlhf_core.kit.environments import Environment

__all__ = ["hookimpl", "BUILTIN_DISTRIBUTION"]

hookspec = pluggy.HookspecMarker("easyrlhf")
#: Marks a plugin's hook implementations: ``@hookimpl def register_methods(register): ...``.
hookimpl = pluggy.HookimplMarker("easyrlhf")


@hookspec
def register_methods(register: Callable[[type[Method]], None]) -> None:
    """Register alignment methods (objective + trainer): ``register(MethodSubclass)``."""


@hookspec
def register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register data loaders that yield one or more data shapes: ``register(DatasetSubclass)``."""


@hookspec
def register_rewards(register: Callable[[type[RewardFunction]], None]) -> None:
    """Register reward functions that score (prompt, completion) batches: ``register(RewardSubclass)``."""


@hookspec
def register_environments(register: Callable[[type[Environment]], None]) -> None:
    """Register environments for multi-turn episodes (tools, games): ``register(EnvironmentSubclass)``."""


#: The distribution whose plugins (the built-ins) always load, and win a tie between equivalent plugins.
BUILTIN_DISTRIBUTION = "easyrlhf"
