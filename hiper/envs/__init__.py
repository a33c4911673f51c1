"""Text environments: the env interface (:mod:`hiper.envs.base`), the registry (:mod:`hiper.envs.registry`) and
batch envs (:mod:`hiper.envs.pool`: in-process batch and a fault-tolerant worker pool).

``make_env(name, **kwargs)``, ``task_panel(name, split, ...)`` and ``make_batch(name, n_workers, **kwargs)``.
"""

from __future__ import annotations

from hiper.envs.base import INFO_KEYS, ExpertEnv, ExpertStep, StepResult, TaskSpec, TextEnv, check_info
from hiper.envs.pool import BatchEnv, EnvPool, InProcessBatch, LocalEnvBatch, make_batch
from hiper.envs.registry import (
    ENV_FAMILIES,
    ENV_REGISTRY,
    env_class,
    import_plugins,
    make_env,
    register_env,
    task_panel,
)

__all__ = [
    "ENV_FAMILIES",
    "ENV_REGISTRY",
    "INFO_KEYS",
    "BatchEnv",
    "EnvPool",
    "ExpertEnv",
    "ExpertStep",
    "InProcessBatch",
    "LocalEnvBatch",
    "StepResult",
    "TaskSpec",
    "TextEnv",
    "check_info",
    "env_class",
    "import_plugins",
    "make_batch",
    "make_env",
    "register_env",
    "task_panel",
]
