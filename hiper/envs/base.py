"""The text-environment interface shared by every environment family.

An environment is text-first and gymnasium-like::

    obs, info = env.reset(task)
    obs, reward, done, info = env.step(action)

``info`` always carries the keys of :data:`INFO_KEYS`. Tasks are addressed by :class:`TaskSpec`
(env name + split + index + seed) so evaluation panels are fixed and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: keys every ``info`` dict returned by ``reset``/``step`` contains.
INFO_KEYS = (
    "admissible",  # list[str]: admissible actions in the new state
    "task",  # str: the task text ("put a clean apple in the fridge")
    "task_type",  # str: task family, e.g. "pick_clean" (ALFWorld) or "webshop"
    "won",  # bool: the task is solved
    "score",  # float in [0, 1]: 1.0 when won for binary tasks, WebShop's raw reward otherwise
    "truncated",  # bool: the episode was cut (step limit, crashed worker) rather than finished
    "truncation_reason",  # str | None: why it was truncated ("max_steps", "worker crashed: ...")
    "step",  # int: number of env steps taken so far in the episode
)


#: the six ALFWorld task types, short names, in the order papers report them (Pick, Look, Clean, Heat,
#: Cool, Pick2). Both household-family envs (embedded world and real ALFWorld) use these names.
TASK_TYPES = (
    "pick_and_place",
    "look_at_obj_in_light",
    "pick_clean_then_place",
    "pick_heat_then_place",
    "pick_cool_then_place",
    "pick_two_obj",
)

#: ALFWorld game-folder prefix -> short task-type name.
ALFWORLD_TASK_PREFIXES = {
    "pick_and_place_simple": "pick_and_place",
    "look_at_obj_in_light": "look_at_obj_in_light",
    "pick_clean_then_place_in_recep": "pick_clean_then_place",
    "pick_heat_then_place_in_recep": "pick_heat_then_place",
    "pick_cool_then_place_in_recep": "pick_cool_then_place",
    "pick_two_obj_and_place": "pick_two_obj",
}

@dataclass(frozen=True, order=True)
class TaskSpec:
    """Address of one task: ``env`` name, ``split``, ``index`` within the split, and ``seed``.

    ``seed`` only matters for procedurally generated worlds and stochastic envs; for file-based
    tasks (ALFWorld game files, WebShop goals) the index alone picks the task.
    """

    env: str
    split: str
    index: int
    seed: int = 0

    def __str__(self) -> str:
        return f"{self.env}/{self.split}/{self.index}@{self.seed}"


@dataclass
class StepResult:
    """One env transition as returned by batched envs and pools."""

    obs: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpertStep:
    """What an expert/oracle does in the current state: a canonical subgoal and the action."""

    subgoal: str
    action: str


@runtime_checkable
class TextEnv(Protocol):
    """A single text environment (one episode at a time)."""

    #: prompt family used by :mod:`hiper.protocol` to render prompts ("household" or "webshop").
    family: str

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


@runtime_checkable
class ExpertEnv(Protocol):
    """An environment that can say what its expert/oracle would do now (for eval and SFT data)."""

    def expert(self) -> ExpertStep: ...


#: what the step limit of an episode means: ``"terminal"`` (the episode's last, failed transition, as TextWorld and
#: the official ALFWorld rollout deliver it: the estimators bootstrap nothing after it) or ``"truncated"`` (a time
#: limit: the estimators may bootstrap from the critic, ``algorithm.hae.bootstrap_truncated``)
STEP_LIMITS = ("terminal", "truncated")


def step_limit_flags(step_limit: str, reached: bool) -> tuple[bool, str | None]:
    """``(truncated, truncation_reason)`` of a step that ends an episode at its step limit (``reached``)."""
    if step_limit not in STEP_LIMITS:
        raise ValueError(f"step_limit must be one of {STEP_LIMITS}, got {step_limit!r}")
    if reached and step_limit == "truncated":
        return True, "max_steps"
    return False, None


def check_info(info: dict[str, Any]) -> dict[str, Any]:
    """Raise ``KeyError`` naming the missing keys if ``info`` lacks any of :data:`INFO_KEYS`."""
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise KeyError(f"env info is missing required keys {missing}; every env must fill {list(INFO_KEYS)}")
    return info
