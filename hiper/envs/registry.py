"""Env registry: ``register_env(name, cls, family)``, ``make_env(name, **kwargs)`` and ``task_panel(name, split)``.

The built-in envs are registered as ``"module:Class"`` strings and imported on first use, so ``hiper.envs`` does not
import alfworld/textworld or the WebShop data unless those envs are asked for. Your own env registers itself when its
module is imported; name that module in the config (``env.plugins: [mypkg.myenv]``) so every process that builds
envs, worker processes included, imports it first (docs/own_env.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from hiper.envs.base import TaskSpec, TextEnv

#: env name -> (class or "module:Class", prompt family). Each class has ``tasks(split, n=None, seed=0)``
#: (a classmethod or staticmethod listing its TaskSpecs) and the TextEnv methods.
ENV_REGISTRY: dict[str, tuple[str | type, str]] = {
    "household": ("hiper.envs.household:HouseholdEnv", "household"),
    "alfworld": ("hiper.envs.alfworld:AlfWorldEnv", "household"),
    "webshop": ("hiper.envs.webshop:WebShopEnv", "webshop"),
}

#: env name -> prompt family (kept in step with :data:`ENV_REGISTRY` by :func:`register_env`)
ENV_FAMILIES: dict[str, str] = {name: family for name, (_, family) in ENV_REGISTRY.items()}


def register_env(name: str, target: str | type, family: str, *, replace: bool = False) -> None:
    """Register an env class (or ``"module:Class"``) under ``name`` with its prompt family.

    The class needs ``reset(task) -> (obs, info)``, ``step(action) -> (obs, reward, done, info)`` with every key
    of :data:`hiper.envs.base.INFO_KEYS` in ``info``, ``close()``, a ``tasks(split, n=None, seed=0)``
    class/static method, and optionally ``expert() -> ExpertStep`` (SFT data, the expert policy). The family must
    be one the prompt renderers know (``hiper.protocol.register_family`` adds one). Registering a taken name
    raises ``ValueError`` unless ``replace`` (or it is the same registration again).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"an env name must be a non-empty string, got {name!r}")
    if name in ENV_REGISTRY and not replace and ENV_REGISTRY[name] != (target, family):
        raise ValueError(f"env {name!r} is already registered ({ENV_REGISTRY[name][0]}); pass replace=True")
    ENV_REGISTRY[name] = (target, family)
    ENV_FAMILIES[name] = family


def import_plugins(modules: Iterable[str]) -> None:
    """Import the modules that register envs (``env.plugins``); ``ImportError`` names the module."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"env plugin {module!r} cannot be imported: {exc}") from exc


def env_class(name: str) -> type:
    """Return the env class registered as ``name`` (ValueError listing the known names otherwise)."""
    if name not in ENV_REGISTRY:
        raise ValueError(f"unknown env {name!r}; known envs: {sorted(ENV_REGISTRY)} (register your own with "
                         "hiper.envs.register_env and list its module in env.plugins)")
    target = ENV_REGISTRY[name][0]
    if isinstance(target, type):
        return target
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def make_env(name: str, plugins: Iterable[str] = (), **kwargs: Any) -> TextEnv:
    """Build one env instance of the registered ``name`` with its constructor ``kwargs`` (after importing
    ``plugins``, so that a worker process knows envs registered by them)."""
    import_plugins(plugins)
    return env_class(name)(**kwargs)


def task_panel(name: str, split: str, n: int | None = None, seed: int = 0, **kwargs: Any) -> list[TaskSpec]:
    """The fixed, reproducible list of tasks of ``split`` (first ``n`` if given) for env ``name``."""
    cls: Any = env_class(name)  # every registered class has a ``tasks`` class/static method
    return list(cls.tasks(split, n=n, seed=seed, **kwargs))


__all__ = ["ENV_FAMILIES", "ENV_REGISTRY", "env_class", "import_plugins", "make_env", "register_env", "task_panel"]
