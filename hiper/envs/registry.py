"""Env registry: ``make_env(name, **kwargs)`` and ``task_panel(name, split, ...)``.

Factories are imported lazily so that ``hiper.envs`` does not import alfworld/textworld or the
WebShop data unless those envs are asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from hiper.envs.base import TaskSpec, TextEnv

#: env name -> ("module:EnvClass", prompt family). Each class has ``tasks(split, n=None, seed=0)``
#: (a classmethod or staticmethod listing its TaskSpecs) and the TextEnv methods.
ENV_REGISTRY: dict[str, tuple[str, str]] = {
    "household": ("hiper.envs.household:HouseholdEnv", "household"),
    "alfworld": ("hiper.envs.alfworld:AlfWorldEnv", "household"),
    "webshop": ("hiper.envs.webshop:WebShopEnv", "webshop"),
}

ENV_FAMILIES = {name: family for name, (_, family) in ENV_REGISTRY.items()}


def env_class(name: str) -> type:
    """Return the env class registered as ``name`` (ValueError listing the known names otherwise)."""
    if name not in ENV_REGISTRY:
        raise ValueError(f"unknown env {name!r}; known envs: {sorted(ENV_REGISTRY)}")
    module_name, _, cls_name = ENV_REGISTRY[name][0].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def make_env(name: str, **kwargs: Any) -> TextEnv:
    """Build one env instance of the registered ``name`` with its constructor ``kwargs``."""
    return env_class(name)(**kwargs)


def task_panel(name: str, split: str, n: int | None = None, seed: int = 0, **kwargs: Any) -> list[TaskSpec]:
    """The fixed, reproducible list of tasks of ``split`` (first ``n`` if given) for env ``name``."""
    cls: Any = env_class(name)  # every registered class has a ``tasks`` class/static method
    return list(cls.tasks(split, n=n, seed=seed, **kwargs))
