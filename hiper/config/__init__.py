"""The run config: the schema (:mod:`hiper.config.schema`, every setting declared once), loading
(:mod:`hiper.config.loader`: presets, YAML files, overrides, dicts) and cross-field checks
(:mod:`hiper.config.validate`)."""

from __future__ import annotations

from hiper.config.loader import (
    DEFAULT_PRESET,
    PRESET_DIR,
    apply_overrides,
    config_to_yaml,
    from_dict,
    list_presets,
    load_config,
    parse_override,
    parse_yaml,
    resolve_config_path,
    save_resolved,
)
from hiper.config.schema import (
    ActorConfig,
    AlgorithmConfig,
    ConfigError,
    CriticConfig,
    EnvConfig,
    HiperConfig,
    LoraConfig,
    ModelConfig,
    RolloutConfig,
    SFTConfig,
    TrainerSection,
    critic_heads,
    estimator_config,
)
from hiper.config.validate import looks_local, validate_config

__all__ = [
    "DEFAULT_PRESET",
    "PRESET_DIR",
    "ActorConfig",
    "AlgorithmConfig",
    "ConfigError",
    "CriticConfig",
    "EnvConfig",
    "HiperConfig",
    "LoraConfig",
    "ModelConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainerSection",
    "apply_overrides",
    "config_to_yaml",
    "critic_heads",
    "estimator_config",
    "from_dict",
    "list_presets",
    "load_config",
    "looks_local",
    "parse_override",
    "parse_yaml",
    "resolve_config_path",
    "save_resolved",
    "validate_config",
]
