"""The HiPER trainer: models, multi-head critic, turn batches, PPO, SFT warm start and the training loop.

Public API (imported lazily so ``import hiper.trainer`` stays light):

* :class:`~hiper.trainer.trainer.Trainer` -- ``Trainer(config).train()``, ``iteration()``, ``evaluate()``,
  ``sft()``, ``state_dict()`` / ``load_state_dict()``;
* :class:`~hiper.trainer.turn_batch.TurnBatch`, :class:`~hiper.trainer.critic.ValueModel`;
* :mod:`hiper.trainer.ppo` (losses), :mod:`hiper.trainer.sft` (behaviour cloning),
  :mod:`hiper.trainer.models` (loading, tokenizer), :mod:`hiper.trainer.demo` (the CPU demo).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Trainer": "hiper.trainer.trainer",
    "TurnBatch": "hiper.trainer.turn_batch",
    "ValueModel": "hiper.trainer.critic",
    "build_critic": "hiper.trainer.critic",
    "build_policy": "hiper.trainer.models",
    "build_demo_tokenizer": "hiper.trainer.models",
    "run_demo": "hiper.trainer.demo",
    "demo_config": "hiper.trainer.demo",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hiper.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = sorted(_LAZY)
