"""Adapters from other env APIs to hiper's :class:`~hiper.envs.base.TextEnv`.

:func:`register_gym_env` registers any gymnasium-style text env (``reset(seed=...) -> (obs, info)``,
``step(action) -> (obs, reward, terminated, truncated, info)`` with string observations and actions) under a hiper
env name; gymnasium itself is not needed, only its API::

    register_gym_env("guess", make=lambda: GuessNumberEnv(), family="puzzle", task="guess the secret number")

Tasks of a wrapped env are ``TaskSpec(name, split, index, seed)``; ``reset`` passes ``seed = seed * 1_000_003 +
index + split offset`` to the env, so every task is a fixed, reproducible episode. ``info`` is completed with every
key of :data:`~hiper.envs.base.INFO_KEYS`: ``admissible`` from ``info["admissible"]`` (or
``info["valid_actions"]``), ``won`` from ``info["won"]`` (default: terminated with a positive reward), ``score``
``float(won)`` unless given, ``truncated`` from the env's flag or hiper's own ``max_steps`` cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hiper.envs.base import TaskSpec
from hiper.envs.registry import register_env

#: seed offset per split, so splits never share an episode
SPLIT_OFFSETS = {"train": 0, "valid_seen": 500_000, "valid_unseen": 600_000, "test": 700_000}


class GymTextEnv:
    """A gymnasium-style text env behind the :class:`~hiper.envs.base.TextEnv` API (see the module docstring).

    Subclasses made by :func:`register_gym_env` set ``make``, ``family``, ``task``, ``task_type``, ``split_sizes``.
    """

    make: Callable[[], Any]
    family: str = "household"
    task: str | Callable[[dict[str, Any]], str] = ""
    task_type: str = "gym"
    split_sizes: dict[str, int] = {"train": 10_000, "valid_seen": 200, "valid_unseen": 200, "test": 500}
    reward_scale: float = 1.0

    def __init__(self, max_steps: int = 30) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.env = type(self).make()
        self.max_steps = max_steps
        self.steps = 0
        self.task_text = ""

    @classmethod
    def tasks(cls, split: str, n: int | None = None, seed: int = 0) -> list[TaskSpec]:
        if split not in cls.split_sizes:
            raise ValueError(f"unknown split {split!r}; known: {sorted(cls.split_sizes)}")
        size = cls.split_sizes[split]
        if n is not None and n > size:
            raise ValueError(f"split {split!r} has {size} tasks, asked for {n}")
        return [TaskSpec(cls.__name__, split, i, seed) for i in range(size if n is None else n)]

    def _info(self, info: dict[str, Any], *, won: bool, truncated: bool, reason: str | None) -> dict[str, Any]:
        out = dict(info)
        out["admissible"] = list(info.get("admissible", info.get("valid_actions", [])))
        out["task"] = self.task_text
        out["task_type"] = str(info.get("task_type", self.task_type))
        out["won"] = won
        out["score"] = float(info.get("score", float(won)))
        out["truncated"] = truncated
        out["truncation_reason"] = reason if truncated else None
        out["step"] = self.steps
        return out

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        offset = SPLIT_OFFSETS.get(task.split, 900_000)
        obs, info = self.env.reset(seed=task.seed * 1_000_003 + offset + task.index)
        self.steps = 0
        text = type(self).task
        self.task_text = text(dict(info)) if callable(text) else str(text or info.get("task", ""))
        return str(obs), self._info(dict(info), won=False, truncated=False, reason=None)

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        info = dict(info)
        won = bool(info.get("won", terminated and reward > 0))
        cut = bool(truncated) and not terminated
        reason = "env" if cut else None
        if not terminated and not cut and self.steps >= self.max_steps:
            cut, reason = True, "max_steps"
        return str(obs), float(reward) * self.reward_scale, bool(terminated) or cut, self._info(
            info, won=won, truncated=cut, reason=reason)

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


def register_gym_env(
    name: str,
    make: Callable[[], Any],
    family: str,
    task: str | Callable[[dict[str, Any]], str] = "",
    *,
    task_type: str = "gym",
    split_sizes: dict[str, int] | None = None,
    reward_scale: float = 1.0,
    replace: bool = False,
) -> type[GymTextEnv]:
    """Register the gymnasium-style env built by ``make()`` as hiper env ``name`` (see the module docstring);
    ``task`` is the task text, or a function of the reset ``info``. Returns the adapter class."""
    attrs: dict[str, Any] = {"make": staticmethod(make), "family": family, "task_type": task_type,
                             "task": staticmethod(task) if callable(task) else task,
                             "reward_scale": reward_scale, "__module__": __name__}
    if split_sizes is not None:
        attrs["split_sizes"] = dict(split_sizes)
    cls: type[GymTextEnv] = type(name, (GymTextEnv,), attrs)
    register_env(name, cls, family, replace=replace)
    return cls


__all__ = ["SPLIT_OFFSETS", "GymTextEnv", "register_gym_env"]
