"""Difficulty knobs of the household world and the named presets.

``HouseholdConfig`` is a plain frozen dataclass; ``resolve_config`` turns ``"tiny"``,
``"default"``, ``"hard"``, ``"chain"``, a dict of overrides or a config into a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hiper.envs.base import ALFWORLD_TASK_PREFIXES
from hiper.envs.base import TASK_TYPES as TASK_TYPES_ALFWORLD

#: the six ALFWorld task types (short names, shared with the real ALFWorld env).
BASE_TASK_TYPES = TASK_TYPES_ALFWORLD
#: composite long-horizon type: ``chain_length`` pick/clean/heat/cool-and-place parts in one task.
CHAIN = "chain"
TASK_TYPES = BASE_TASK_TYPES + (CHAIN,)
#: short name -> ALFWorld game-folder prefix (``pick_and_place_simple-Apple-None-Fridge-1``...).
ALFWORLD_TASK_TYPES = {short: prefix for prefix, short in ALFWORLD_TASK_PREFIXES.items()}


@dataclass(frozen=True)
class HouseholdConfig:
    """World-generation knobs. Ranges are inclusive ``(low, high)`` and sampled per task.

    - ``n_receptacles``: receptacles in the room (the ones the task needs are always included).
    - ``n_distractors``: objects not needed by the task.
    - ``openable_fraction``: probability that a sampled (non-required) receptacle is of an
      openable type (cabinet, drawer, fridge, microwave, safe); openables start closed.
    - ``max_objects_per_receptacle``: cap that keeps observations short.
    - ``task_types``: the task types of this preset; task ``index`` gets ``task_types[index % len]``.
    - ``chain_length``: number of parts of a ``"chain"`` task (each part: pick / clean / heat /
      cool an object type and place it in a receptacle type; success = all parts hold at once).
    - ``max_steps``: default episode horizon for this preset (``HouseholdEnv(max_steps=None)``).
    - ``extra_goal_object_prob``: chance of one more instance of each goal object type.
    - ``heldout_every``: every k-th (task, object, target) combination is kept out of ``train``
      and ``valid_seen`` and used by ``valid_unseen`` (0 disables the hold-out).
    """

    name: str = "default"
    n_receptacles: tuple[int, int] = (10, 18)
    n_distractors: tuple[int, int] = (8, 16)
    openable_fraction: float = 0.45
    max_objects_per_receptacle: int = 5
    task_types: tuple[str, ...] = BASE_TASK_TYPES
    chain_length: int = 3
    max_steps: int = 50
    extra_goal_object_prob: float = 0.3
    heldout_every: int = 5

    def __post_init__(self) -> None:
        for knob in ("n_receptacles", "n_distractors"):
            lo, hi = getattr(self, knob)
            if not 0 <= lo <= hi:
                raise ValueError(
                    f"{knob} must be an inclusive range (low, high) with 0 <= low <= high, got {(lo, hi)}"
                )
        if not 0.0 <= self.openable_fraction <= 1.0:
            raise ValueError(f"openable_fraction must be in [0, 1], got {self.openable_fraction}")
        if not self.task_types or any(t not in TASK_TYPES for t in self.task_types):
            raise ValueError(f"task_types must be a non-empty subset of {TASK_TYPES}, got {self.task_types}")
        if not 1 <= self.chain_length <= 6:
            raise ValueError(f"chain_length must be in [1, 6], got {self.chain_length}")
        if self.max_steps < 1 or self.max_objects_per_receptacle < 2:
            raise ValueError("max_steps must be >= 1 and max_objects_per_receptacle >= 2")


PRESETS: dict[str, HouseholdConfig] = {
    # CPU demo: ~5 receptacles, short observations (<= ~60 words) and admissible lists (<= ~15).
    "tiny": HouseholdConfig(
        name="tiny",
        n_receptacles=(4, 5),
        n_distractors=(1, 3),
        openable_fraction=0.3,
        max_objects_per_receptacle=3,
        max_steps=20,
        extra_goal_object_prob=0.0,
    ),
    # ALFWorld-like rooms: 10-18 receptacles, a dozen distractors, about half of them openable.
    "default": HouseholdConfig(name="default"),
    "hard": HouseholdConfig(
        name="hard",
        n_receptacles=(18, 26),
        n_distractors=(20, 32),
        openable_fraction=0.65,
        max_objects_per_receptacle=6,
        max_steps=60,
        extra_goal_object_prob=0.15,
    ),
    # long-horizon composite tasks in default-sized kitchens.
    "chain": HouseholdConfig(name="chain", task_types=(CHAIN,), chain_length=3, max_steps=60),
}


def resolve_config(
    difficulty: str | HouseholdConfig | dict[str, Any] | None = None, **overrides: Any
) -> HouseholdConfig:
    """Config from a preset name, a config, or a dict with ``"preset"`` plus field overrides."""
    if difficulty is None:
        difficulty = "default"
    if isinstance(difficulty, dict):
        spec = dict(difficulty)
        base = resolve_config(spec.pop("preset", "default"))
        overrides = {**spec, **overrides}
    elif isinstance(difficulty, str):
        if difficulty not in PRESETS:
            raise ValueError(f"unknown household difficulty {difficulty!r}; presets: {sorted(PRESETS)}")
        base = PRESETS[difficulty]
    elif isinstance(difficulty, HouseholdConfig):
        base = difficulty
    else:
        raise TypeError(
            f"difficulty must be a preset name, dict or HouseholdConfig, got {type(difficulty).__name__}"
        )
    if not overrides:
        return base
    names = {f.name for f in dataclasses.fields(HouseholdConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown HouseholdConfig fields {unknown}; known: {sorted(names)}")
    fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **fixed)
