"""Rollout: the turn records, the env manager, THE rollout loop, generation engines and policies.

* ``hiper.rollout.records``: ``TurnRecord``, ``Trajectory``, ``TurnRequest`` (the pipeline's data contract);
* ``hiper.rollout.manager``: ``EnvManager``, the protocol state machine over a batch env;
* ``hiper.rollout.loop``: ``episodes`` / ``run_episodes``, the one rollout loop;
* ``hiper.rollout.engine`` (interface), ``hf`` (``HFEngine``), ``vllm_engine`` (``VLLMEngine``), ``weights``;
* ``hiper.rollout.policies``: expert, random and engine-backed policies.

Names are imported lazily so that ``import hiper.rollout`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EnvManager": "hiper.rollout.manager",
    "LoopStats": "hiper.rollout.loop",
    "Trajectory": "hiper.rollout.records",
    "TurnRecord": "hiper.rollout.records",
    "TurnRequest": "hiper.rollout.records",
    "episode_stats": "hiper.rollout.records",
    "episodes": "hiper.rollout.loop",
    "run_episodes": "hiper.rollout.loop",
    "GenerationEngine": "hiper.rollout.engine",
    "GenerationOutput": "hiper.rollout.engine",
    "HFEngine": "hiper.rollout.hf",
    "BasePolicy": "hiper.rollout.policies",
    "EnginePolicy": "hiper.rollout.policies",
    "ExpertPolicy": "hiper.rollout.policies",
    "Policy": "hiper.rollout.policies",
    "RandomPolicy": "hiper.rollout.policies",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hiper.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = sorted(_LAZY)
