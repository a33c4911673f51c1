"""LockBox: a small text puzzle with subgoals, written the way you would write your own env for hiper.

The chest is locked; its key lies in one of 3-5 drawers. The subgoals are *find the key* (open drawers), *take the
key*, *unlock the chest*, *open the chest*; an expert knows them. Importing this module registers the env
``lockbox`` and the prompt family ``puzzle``, so a run only has to name the module::

    hiper train env.name=lockbox env.plugins=[hiper.examples.lockbox] env.prompt=default

The recipe, step by step, is ``docs/own_env.md``.
"""

from __future__ import annotations

import random
from typing import Any

from hiper.envs import ExpertStep, TaskSpec, register_env
from hiper.protocol import PromptFamily, quoted_actions, register_family

#: tasks per split; every task is a seeded layout (number of drawers, which one holds the key)
SPLITS = {"train": 2000, "valid_seen": 200, "test": 200}
_SPLIT_SEED = {"train": 0, "valid_seen": 1, "test": 2}


class LockBoxEnv:
    """Find the key in a drawer, take it, unlock the chest, open it. Reward ``reward_scale`` on opening the chest."""

    family = "puzzle"

    def __init__(self, max_steps: int = 12, reward_scale: float = 10.0) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps, self.reward_scale = max_steps, reward_scale
        self.n_drawers = self.key_drawer = self.steps = 0
        self.opened: set[int] = set()
        self.has_key = self.unlocked = self.done = False

    @staticmethod
    def tasks(split: str, n: int | None = None, seed: int = 0) -> list[TaskSpec]:
        if split not in SPLITS:
            raise ValueError(f"unknown lockbox split {split!r}; known: {sorted(SPLITS)}")
        size = SPLITS[split]
        if n is not None and n > size:
            raise ValueError(f"lockbox split {split!r} has {size} tasks, asked for {n}")
        return [TaskSpec("lockbox", split, i, seed) for i in range(size if n is None else n)]

    # -- episode ---------------------------------------------------------------------------------------------

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        rng = random.Random(f"lockbox-{_SPLIT_SEED.get(task.split, 9)}-{task.seed}-{task.index}")
        self.n_drawers = rng.randint(3, 5)
        self.key_drawer = rng.randint(1, self.n_drawers)
        self.opened, self.has_key, self.unlocked, self.done, self.steps = set(), False, False, False, 0
        obs = f"You are in a small room with {self.n_drawers} closed drawers and a locked chest."
        return obs, self._info(won=False)

    def admissible(self) -> list[str]:
        acts = [f"open drawer {i}" for i in range(1, self.n_drawers + 1) if i not in self.opened]
        if self.key_drawer in self.opened and not self.has_key:
            acts.append("take key")
        if self.has_key and not self.unlocked:
            acts.append("unlock chest with key")
        if self.unlocked:
            acts.append("open chest")
        return [*acts, "look"]

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.done:
            raise RuntimeError("step after the episode ended: reset first")
        self.steps += 1
        action = action.strip().lower()
        won, obs = False, "Nothing happens."
        if action.startswith("open drawer ") and action[12:].isdigit() and 1 <= int(action[12:]) <= self.n_drawers:
            i = int(action[12:])
            self.opened.add(i)
            obs = f"You open drawer {i}. " + ("You see a key." if i == self.key_drawer and not self.has_key
                                               else "It is empty.")
        elif action == "take key" and self.key_drawer in self.opened and not self.has_key:
            self.has_key, obs = True, "You take the key."
        elif action == "unlock chest with key" and self.has_key and not self.unlocked:
            self.unlocked, obs = True, "You unlock the chest."
        elif action == "open chest" and self.unlocked:
            won, obs = True, "You open the chest. You win!"
        elif action == "look":
            obs = (f"Open drawers: {sorted(self.opened) or 'none'}. "
                   f"{'You hold the key. ' if self.has_key else ''}The chest is {'un' if self.unlocked else ''}locked.")
        truncated = not won and self.steps >= self.max_steps
        self.done = won or truncated
        return obs, self.reward_scale * won, self.done, self._info(won=won, truncated=truncated)

    def expert(self) -> ExpertStep:
        """The canonical subgoal and action of the current state."""
        if self.unlocked:
            return ExpertStep("open the chest", "open chest")
        if self.has_key:
            return ExpertStep("unlock the chest", "unlock chest with key")
        if self.key_drawer in self.opened:
            return ExpertStep("take the key", "take key")
        closed = [i for i in range(1, self.n_drawers + 1) if i not in self.opened]
        return ExpertStep("find the key", f"open drawer {closed[0]}")

    def close(self) -> None:
        pass

    def _info(self, *, won: bool, truncated: bool = False) -> dict[str, Any]:
        return {"admissible": self.admissible(), "task": "open the chest", "task_type": f"lockbox_{self.n_drawers}",
                "won": won, "score": float(won), "truncated": truncated,
                "truncation_reason": "max_steps" if truncated else None, "step": self.steps}


register_family("puzzle", PromptFamily(
    role="You solve a small text puzzle. You can only act through the commands listed below.",
    render_actions=quoted_actions,
))
register_env("lockbox", LockBoxEnv, family="puzzle")

__all__ = ["SPLITS", "LockBoxEnv"]
