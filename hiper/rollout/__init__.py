"""Rollout: generation engines and policies that answer the env manager's turn requests.

``GenerationEngine`` / ``GenerationOutput`` (``hiper.rollout.engine``) are the engine interface;
``HFEngine`` (``hiper.rollout.hf``) implements it with a transformers model; ``hiper.rollout.policies``
has the expert, random and engine-backed policies. Names are imported lazily so that
``import hiper.rollout`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
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
