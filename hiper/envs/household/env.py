"""``HouseholdEnv``: the embedded ALFWorld-style text world behind the :mod:`hiper.envs.base` contract."""

from __future__ import annotations

import math
import re
from typing import Any

from hiper.envs.base import ExpertStep, TaskSpec, step_limit_flags
from hiper.envs.household.config import HouseholdConfig, resolve_config
from hiper.envs.household.expert import expert_step
from hiper.envs.household.world import NOTHING_HAPPENS, World, generate

#: split -> number of tasks. Every split draws worlds from its own random stream (the split name
#: is part of the generator seed), and ``valid_unseen`` only uses (task, object, receptacle)
#: combinations that ``train`` and ``valid_seen`` never generate.
SPLITS = {"train": 100_000, "valid_seen": 200, "valid_unseen": 200}
SPLIT_ALIASES = {
    "valid": "valid_seen",
    "eval_in_distribution": "valid_seen",
    "test": "valid_unseen",
    "eval_out_of_distribution": "valid_unseen",
}

_PUT_ALIAS = re.compile(r"^(?:put (.+?) (?:in|on|into|onto)|move (.+?) to) (.+)$")


def canonical_split(split: str) -> str:
    """``"valid"`` -> ``"valid_seen"``, ``"test"`` -> ``"valid_unseen"``; ValueError for unknown names."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(
            f"unknown household split {split!r}; known: {sorted(SPLITS)} and aliases {sorted(SPLIT_ALIASES)}"
        )
    return name


def normalize_action(action: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding quotes and a trailing period."""
    return " ".join(action.lower().split()).strip("'\"` ").rstrip(".").strip()


class HouseholdEnv:
    """Procedurally generated ALFWorld-style household (pure Python, microseconds per step).

    Args:
        max_steps: episode horizon; ``None`` uses the preset's (``default``: 50, ``tiny``: 20,
            ``hard``: 60, ``chain``: 60). The step that reaches it returns ``done=True`` (a failure unless won).
        step_limit: ``"terminal"`` (default, as ALFWorld/TextWorld: the failed last step is terminal) or
            ``"truncated"`` (``info["truncated"] = True``, ``truncation_reason = "max_steps"``: a time limit the
            estimators may bootstrap across); see :data:`hiper.envs.base.STEP_LIMITS`.
        reward_scale: reward on the winning step (``reward_scale * won``), 0 otherwise.
        inadmissible_penalty: subtracted from the reward of a step whose action is unknown or inadmissible (default
            0: ALFWorld gives none). A dense signal for a model trained from scratch, whose main failure is naming
            an action that is not there (tried on the CPU demo, where it did not help beyond noise:
            docs/results_cpu_demo.md).
        difficulty: preset name (``"tiny" | "default" | "hard" | "chain"``), a
            :class:`HouseholdConfig`, or a dict ``{"preset": ..., <field>: value}``.
        **overrides: :class:`HouseholdConfig` fields overriding the preset (``n_receptacles=(6, 8)``).

    Unknown or inadmissible actions are a no-op answered with ``"Nothing happens."`` (they still
    count as a step), as in ALFWorld. ``put X in Y`` / ``put X on Y`` / ``move X to Y`` are accepted
    as aliases of the admissible ``put X in/on Y``.
    """

    family = "household"
    env_name = "household"

    def __init__(
        self,
        max_steps: int | None = None,
        reward_scale: float = 10.0,
        difficulty: str | HouseholdConfig | dict[str, Any] | None = "default",
        step_limit: str = "terminal",
        inadmissible_penalty: float = 0.0,
        **overrides: Any,
    ) -> None:
        step_limit_flags(step_limit, False)  # validates the value
        if not math.isfinite(inadmissible_penalty) or inadmissible_penalty < 0:
            raise ValueError(f"inadmissible_penalty must be a finite number >= 0, got {inadmissible_penalty}")
        self.inadmissible_penalty = float(inadmissible_penalty)
        self.step_limit = step_limit
        self.config = resolve_config(difficulty, **overrides)
        self.max_steps = self.config.max_steps if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.reward_scale = float(reward_scale)
        self.world: World | None = None
        self.task: TaskSpec | None = None
        self._step = 0
        self._done = False
        self._won = False

    # ------------------------------------------------------------------ task panels
    @classmethod
    def tasks(
        cls,
        split: str,
        n: int | None = None,
        seed: int = 0,
        task_type: str | None = None,
        difficulty: str | HouseholdConfig | dict[str, Any] | None = "default",
        **overrides: Any,
    ) -> list[TaskSpec]:
        """The fixed task list of ``split`` (first ``n``), optionally only ``task_type`` under ``difficulty``.

        Task ``index`` has type ``config.task_types[index % len(config.task_types)]``, so panels
        are balanced over task types and filtering by type needs the difficulty's type list.
        """
        name = canonical_split(split)
        size = SPLITS[name]
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if task_type is None:
            indices = range(size if n is None else n)
            if n is not None and n > size:
                raise ValueError(f"split {name!r} has {size} tasks, asked for {n}")
        else:
            types = resolve_config(difficulty, **overrides).task_types
            if task_type not in types:
                raise ValueError(
                    f"task_type {task_type!r} is not generated by this difficulty; its types: {types}"
                )
            k = types.index(task_type)
            indices = range(k, size, len(types))
            if n is not None:
                if n > len(indices):
                    raise ValueError(
                        f"split {name!r} has {len(indices)} tasks of type {task_type!r}, asked for {n}"
                    )
                indices = indices[:n]
        return [TaskSpec(cls.env_name, name, i, seed) for i in indices]

    # ------------------------------------------------------------------ episode
    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        """Start the episode of ``task``; return the intro observation (with "Your task is to: ...")."""
        if not isinstance(task, TaskSpec):
            raise TypeError(f"reset expects a TaskSpec, got {type(task).__name__}")
        if task.env != self.env_name:
            raise ValueError(f"HouseholdEnv got a task of env {task.env!r}: {task}")
        split = canonical_split(task.split)
        if not 0 <= task.index < SPLITS[split]:
            raise ValueError(
                f"task index {task.index} out of range for split {split!r} (size {SPLITS[split]})"
            )
        self.task = task
        self.world = generate(self.config, split, task.index, task.seed)
        self._step = 0
        self._done = False
        self._won = False
        return self.world.intro(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Execute ``action`` (text); return ``(obs, reward, done, info)``."""
        w = self.world
        if w is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError(
                f"episode {self.task} is over (won={self._won}, step={self._step}); call reset(task)"
            )
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        ops = w.actions()
        op = ops.get(action)
        if op is None:
            key = normalize_action(action)
            op = ops.get(key)
            if op is None:
                m = _PUT_ALIAS.match(key)
                if m:
                    op = ops.get(f"put {m.group(1) or m.group(2)} in/on {m.group(3)}")
        obs = NOTHING_HAPPENS if op is None else w.apply(op)
        self._step += 1
        won = op is not None and w.won()
        self._won = won
        limit = not won and self._step >= self.max_steps
        self._done = won or limit
        reward = (self.reward_scale if won else 0.0) - (self.inadmissible_penalty if op is None else 0.0)
        return obs, reward, self._done, self._info(*step_limit_flags(self.step_limit, limit))

    def _info(self, truncated: bool = False, reason: str | None = None) -> dict[str, Any]:
        w = self.world
        assert w is not None
        return {
            "admissible": sorted(w.actions()),
            "task": w.goal.text,
            "task_type": w.goal.task_type,
            "won": self._won,
            "score": 1.0 if self._won else 0.0,
            "truncated": truncated,
            "truncation_reason": reason,
            "step": self._step,
        }

    def expert(self) -> ExpertStep:
        """The handcoded expert's canonical subgoal and action for the current state (see ``expert.py``)."""
        if self.world is None:
            raise RuntimeError("call reset(task) before expert()")
        return expert_step(self.world)

    @property
    def done(self) -> bool:
        return self._done

    def close(self) -> None:
        self.world = None
