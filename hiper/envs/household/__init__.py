"""Embedded household world: a procedurally generated, ALFWorld-style text environment in pure Python.

``HouseholdEnv`` (family ``"household"``) implements the :mod:`hiper.envs.base` contract and an
expert (``env.expert() -> ExpertStep(subgoal, action)``). Worlds are deterministic functions of
``TaskSpec(env="household", split, index, seed)`` and a difficulty preset (``HouseholdConfig``).
See ``docs/envs_household.md``.
"""

from hiper.envs.household.config import (
    ALFWORLD_TASK_TYPES,
    BASE_TASK_TYPES,
    CHAIN,
    PRESETS,
    TASK_TYPES,
    HouseholdConfig,
    resolve_config,
)
from hiper.envs.household.env import SPLIT_ALIASES, SPLITS, HouseholdEnv, canonical_split, normalize_action
from hiper.envs.household.expert import expert_step
from hiper.envs.household.world import Goal, GoalPart, World, generate

__all__ = [
    "ALFWORLD_TASK_TYPES",
    "BASE_TASK_TYPES",
    "CHAIN",
    "PRESETS",
    "SPLITS",
    "SPLIT_ALIASES",
    "TASK_TYPES",
    "Goal",
    "GoalPart",
    "HouseholdConfig",
    "HouseholdEnv",
    "World",
    "canonical_split",
    "expert_step",
    "generate",
    "normalize_action",
    "resolve_config",
]
