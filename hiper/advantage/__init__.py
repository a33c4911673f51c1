"""Advantage estimation: HAE, reward shaping, flat baselines, token broadcast and whitening.

Everything works on the padded trajectory layout ``[n_traj, T_max]`` with a left-aligned bool ``turn_mask``
(see ``docs/advantage.md``). Entry points:

* ``hae(...) -> HAEResult``: Hierarchical Advantage Estimation (spec §3.3-§3.7), raw per-turn advantages/targets;
* ``shape_rewards(...) -> ShapedRewards``: KEEP / invalid / KEEP-consistency shaping as logged terms (§3.2);
* ``get(name)(AdvantageInputs, config) -> AdvantageOutput``: the trainer's uniform interface
  (``"hae"``, ``"gae"``, ``"token_gae"``, ``"grpo"``, ``"rloo"``, ``"gigpo"``); ``register(name, ...)`` adds one;
* ``to_token_level(...)`` / ``whiten(...)``: per-turn -> per-token advantages and loss mask (§3.8, §3.9);
* ``pad_turns`` / ``unpad`` / ``turn_mask_from_index``: flat turn samples <-> padded layout.

The slow per-turn reference loops used by tests and benchmarks live in ``hiper.advantage.reference``.
"""

from hiper.advantage.baselines import (
    episode_group_advantage,
    gigpo,
    grpo,
    returns_to_go,
    rloo,
    token_gae,
    turn_gae,
)
from hiper.advantage.config import (
    GAEConfig,
    GiGPOConfig,
    GRPOConfig,
    HAEConfig,
    RLOOConfig,
    ShapingConfig,
    TokenGAEConfig,
)
from hiper.advantage.hae import HAEResult, hae
from hiper.advantage.layout import pad_turns, turn_mask_from_index, unpad
from hiper.advantage.registry import (
    HEAD_INPUTS,
    AdvantageInputs,
    AdvantageOutput,
    Estimator,
    available,
    get,
    register,
)
from hiper.advantage.shaping import SHAPING_TERMS, ShapedRewards, shape_rewards
from hiper.advantage.token import to_token_level, whiten

__all__ = [
    "HEAD_INPUTS",
    "SHAPING_TERMS",
    "AdvantageInputs",
    "AdvantageOutput",
    "Estimator",
    "GAEConfig",
    "GRPOConfig",
    "GiGPOConfig",
    "HAEConfig",
    "HAEResult",
    "RLOOConfig",
    "ShapedRewards",
    "ShapingConfig",
    "TokenGAEConfig",
    "available",
    "episode_group_advantage",
    "get",
    "gigpo",
    "grpo",
    "hae",
    "pad_turns",
    "register",
    "returns_to_go",
    "rloo",
    "shape_rewards",
    "to_token_level",
    "token_gae",
    "turn_gae",
    "turn_mask_from_index",
    "unpad",
    "whiten",
]
