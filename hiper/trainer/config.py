"""Typed trainer configuration: nested dataclasses loaded from a YAML preset/file plus dotted overrides.

Usage::

    cfg = load_config("alfworld_qwen2.5_1.5b", ["algorithm.hae.keep_penalty=-0.5", "env.n_envs=64"])
    cfg.algorithm.hae.keep_penalty        # -0.5
    save_resolved(cfg, "runs/x/config.yaml")

Key names follow verl / verl-agent where one exists (``actor.clip_ratio_low``, ``critic.cliprange_value``,
``algorithm.adv_estimator``...). The default config is the preset ``cpu_demo`` (= ``hiper.trainer.demo.DEMO_CONFIG``,
a test keeps them equal); the dataclass defaults are generic values that fill keys a preset or user file leaves
out (the GPU presets rely on them for e.g. ``env.prompt`` and ``trainer.num_threads``). The paper's values
(spec §4.1, Mode A of §7.1) are noted in each docstring and live in the ``*_qwen2.5_*`` presets.

Every problem found while loading raises :class:`ConfigError` with a one-line message that names the key
and the fix. Overrides are ``dotted.key=value`` with the value parsed as a YAML scalar/flow value
(``null``, ``true``, ``[console,jsonl]``, ``1e-6``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "cpu_demo"

ADV_ESTIMATORS = ("hae", "gae", "grpo", "rloo", "gigpo")
CRITIC_ESTIMATORS = ("hae", "gae")
GROUP_ESTIMATORS = ("grpo", "rloo", "gigpo")
KEEP_PENALTY_MODES = ("normalized", "fixed", "last_step")
SWITCH_MODES = ("code", "paper")
GIGPO_MODES = ("mean_norm", "mean_std_norm")
DTYPES = ("float32", "bfloat16")
CRITIC_MODES = ("separate", "shared")
ENGINES = ("hf", "vllm")
LOGGERS = ("console", "jsonl", "tensorboard", "wandb")
PROMPTS = ("default", "compact")


class ConfigError(ValueError):
    """A bad configuration. ``str(err)`` is one line naming the offending key and the fix."""


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class EnvConfig:
    """Environment and batch shape.

    Attributes:
        name: registered env (``household``, ``alfworld``, ``webshop``; see ``hiper.envs.ENV_REGISTRY``).
        kwargs: constructor keyword arguments of the env class.
        train_split / eval_split: task splits (household/ALFWorld: ``train`` / ``valid_seen``;
            WebShop: ``train`` / ``test``).
        max_steps: episode horizon in turns (paper: ALFWorld 50, WebShop 15).
        history_length: past (observation, action) pairs rendered in the prompt (paper: 2).
        n_envs: distinct tasks per iteration (verl ``data.train_batch_size``; paper 128).
        group_size: rollouts per task (verl ``env.rollout.n``; paper HiPER 1, GRPO/GiGPO 8). Trajectories
            per iteration = ``n_envs * group_size``.
        eval_episodes: episodes per evaluation (paper: 128).
        eval_seed: seed of the fixed evaluation task panel.
        train_pool_size: size of the training task pool that iterations sample from.
        n_workers: env worker processes (0 = step the envs in the trainer's process).
        prompt: prompt template, ``default`` (the official one, spec §2.3) or ``compact`` (shorter, for tiny
            models).
    """

    name: str = "household"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "valid_seen"
    max_steps: int = 15
    history_length: int = 2
    n_envs: int = 16
    group_size: int = 1
    eval_episodes: int = 32
    eval_seed: int = 0
    train_pool_size: int = 4096
    n_workers: int = 0
    prompt: str = "default"


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (needs the ``lora`` extra, i.e. peft). Off in every preset."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """The policy.

    Attributes:
        path: hub id (``Qwen/Qwen2.5-1.5B-Instruct``), local HF folder, or a ``.gguf`` file; ignored
            (must be null) when ``tiny`` is set.
        tiny: ``Qwen2Config`` fields for a randomly initialised, config-built model (CPU demo, tests).
        tokenizer: ``builtin`` (the code-trained demo tokenizer; only with ``tiny``), a path/hub id, or
            null (= ``path``).
        dtype: parameter dtype (paper: bfloat16).
        gradient_checkpointing: trade compute for activation memory.
    """

    path: str | None = None
    tiny: dict[str, Any] | None = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        }
    )
    tokenizer: str | None = "builtin"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class CriticConfig:
    """The value model (spec §3.11, §3.12).

    Attributes:
        enabled: needed by ``hae`` and ``gae``.
        mode: ``separate`` (own backbone, the official setup) or ``shared`` (heads on the policy's detached
            backbone).
        path: backbone of a separate critic; null = same as ``model`` (``tiny`` or ``path``).
        n_heads: 3 = low/high/term (official, needed by ``switch_mode=code``), 2 = low/high, 1 = turn value.
        lr: AdamW learning rate (paper: 1e-5). weight_decay: paper 0.01.
        cliprange_value: PPO value clip around the old values (paper: 0.5); null = unclipped.
        high_value_coef / term_value_coef: weights of the high/term head losses (paper: 1.0).
        grad_clip: max grad norm (paper: 1.0).
        dtype: parameter dtype of a critic loaded from ``critic.path`` (null = float32).
        mini_batch_size: turn samples per critic optimizer step (null = ``actor.mini_batch_size``).
        micro_batch_size: turn samples per critic forward/backward (gradient accumulation).
    """

    enabled: bool = True
    mode: str = "separate"
    path: str | None = None
    n_heads: int = 3
    lr: float = 1e-4
    weight_decay: float = 0.01
    cliprange_value: float | None = None
    high_value_coef: float = 1.0
    term_value_coef: float = 1.0
    grad_clip: float = 1.0
    dtype: str | None = None
    mini_batch_size: int | None = None
    micro_batch_size: int = 16


@dataclass
class ActorConfig:
    """PPO policy update (spec §3.12).

    Attributes:
        lr: AdamW learning rate, constant (paper: 1e-6). weight_decay: paper 0.01.
        clip_ratio_low / clip_ratio_high: PPO clip epsilons (paper: 0.2 / 0.2).
        clip_ratio_c: dual-clip constant, > 1 (paper: 3.0).
        kl_coef: weight of the k3 KL to the reference policy in the loss (paper: 0.01; 0 = no reference model).
        entropy_coeff: entropy bonus (paper: 0.001).
        grad_clip: max grad norm (paper: 1.0).
        ppo_epochs: passes over each batch (paper: 1).
        mini_batch_size: turn samples per optimizer step (paper: 256).
        micro_batch_size: turn samples per forward/backward (gradient accumulation; paper: 16 per GPU).
        invalid_action_penalty_coef: c_inv subtracted from invalid-format turns' rewards (paper: 0.1).
        use_rollout_logprobs: use the rollout engine's log-probs as the PPO old log-probs when the training
            temperature is 1 (same weights, so equal up to float noise; saves one forward pass). False
            recomputes them with the actor (the paper's setup).
    """

    lr: float = 5e-5
    weight_decay: float = 0.01
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    kl_coef: float = 0.01
    entropy_coeff: float = 0.001
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    mini_batch_size: int = 64
    micro_batch_size: int = 16
    invalid_action_penalty_coef: float = 0.1
    use_rollout_logprobs: bool = False


@dataclass
class RolloutConfig:
    """Generation.

    Attributes:
        engine: ``hf`` (transformers ``generate``) or ``vllm`` (needs the ``vllm`` extra).
        temperature / top_p: training sampling (paper: 1.0 / 1.0).
        max_new_tokens: response budget per turn (paper: 512).
        eval_temperature: evaluation sampling temperature (paper: 0.4; 0 = greedy).
        max_prompt_length: prompt budget in tokens (paper: 2048).
    """

    engine: str = "hf"
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    eval_temperature: float = 0.4
    max_prompt_length: int = 1024


@dataclass
class HAESection:
    """HAE and its reward shaping (spec §3.2 - §3.9; paper values: ALFWorld / WebShop).

    Attributes:
        lam_seg: lambda of the segment-level GAE (0.95).
        keep_penalty: kappa added to KEEP turns, <= 0 (-0.3 / -3.5).
        keep_penalty_mode: ``normalized`` (HEAD, kappa/T per KEEP turn), ``fixed`` (kappa per KEEP turn),
            ``last_step`` (CODE-INIT: kappa*m/T on the final turn).
        keep_penalty_skip_first: exclude turn 0 from the KEEP count (CODE-INIT option; False).
        keep_consistency_penalty: kappa_c added to KEEP turns whose subgoal changed, <= 0 (-0.3 / -0.1).
        bootstrap_truncated: bootstrap truncated episodes from the critic (True / False).
        switch_mode: ``code`` (AT = GT - VT, three heads) or ``paper`` ((q - beta)(VH - VL_keep)).
        norm_adv: whiten each advantage type over the batch (True).
    """

    lam_seg: float = 0.95
    keep_penalty: float = -0.3
    keep_penalty_mode: str = "normalized"
    keep_penalty_skip_first: bool = False
    keep_consistency_penalty: float = -0.3
    bootstrap_truncated: bool = True
    switch_mode: str = "code"
    norm_adv: bool = True


@dataclass
class GRPOSection:
    """GRPO options: ``norm_by_std`` divides by the group std (verl default True)."""

    norm_by_std: bool = True


@dataclass
class GiGPOSection:
    """GiGPO options (spec §4.3): discount 0.95, step weight 1, ``mean_norm`` or ``mean_std_norm``."""

    gamma: float = 0.95
    step_advantage_w: float = 1.0
    mode: str = "mean_norm"


@dataclass
class AlgorithmConfig:
    """Advantage estimation.

    Attributes:
        adv_estimator: ``hae`` (HiPER), ``gae`` (turn-level PPO), ``grpo``, ``rloo``, ``gigpo``.
        gamma: per-turn discount (paper: 1.0). lam: within-segment / turn GAE lambda (paper: 1.0).
        reward_scale: multiplies the env reward (paper: 1.0; spec §7.1 Mode C suggests 0.1).
    """

    adv_estimator: str = "hae"
    gamma: float = 1.0
    lam: float = 1.0
    reward_scale: float = 1.0
    hae: HAESection = field(default_factory=HAESection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    gigpo: GiGPOSection = field(default_factory=GiGPOSection)


@dataclass
class SFTConfig:
    """Behaviour cloning on expert trajectories rendered in the protocol (warm start before RL).

    Attributes:
        enabled: run SFT before RL in ``hiper train`` (``hiper sft`` runs it regardless).
        episodes: expert episodes collected. epochs: passes over them.
        lr: AdamW learning rate. batch_size: turn samples per optimizer step.
        max_steps: cap on optimizer steps (null = ``epochs`` decide).
        split: task split of the expert episodes (null = ``env.train_split``).
        max_examples: keep at most this many turn examples (a seeded random subset; null = all).
        micro_batch_size: examples per forward/backward (null = ``batch_size``).
        prompt_loss_weight: weight of the next-token loss on prompt tokens relative to the response loss
            (0 = response-only SFT, the usual choice for pretrained models; a from-scratch tiny model
            learns the world's language faster with 1.0).
    """

    enabled: bool = True
    episodes: int = 64
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 16
    max_steps: int | None = None
    split: str | None = None
    max_examples: int | None = None
    micro_batch_size: int | None = None
    prompt_loss_weight: float = 0.0


@dataclass
class TrainerSection:
    """Loop, logging and checkpoints.

    Attributes:
        total_iterations: PPO iterations, one batch each (paper: 150).
        eval_every: evaluate every N iterations (paper: 5; 0 = only at the end).
        save_every: checkpoint every N iterations (0 = only at the end).
        keep_checkpoints: keep the last K checkpoints (0 = keep all).
        logger: backends among ``console``, ``jsonl``, ``tensorboard``, ``wandb``.
        project_name / experiment_name: names for the run (wandb project, run name).
        resume: null (fresh run), ``auto`` (latest checkpoint in ``output_dir`` if any) or a checkpoint dir.
        device: torch device for the models: ``cpu``, ``cuda``, ``cuda:N`` (presets for 1.5B/7B: ``cuda``).
        num_threads: torch CPU threads (null = torch's default).
    """

    total_iterations: int = 20
    eval_every: int = 5
    save_every: int = 10
    keep_checkpoints: int = 3
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    project_name: str = "hiper"
    experiment_name: str = "cpu_demo"
    resume: str | None = None
    device: str = "cpu"
    num_threads: int | None = None


@dataclass
class HiperConfig:
    """The whole run. ``output_dir`` receives ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/``."""

    seed: int = 0
    output_dir: str = "runs/cpu_demo"
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerSection = field(default_factory=TrainerSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], validate: bool = True) -> HiperConfig:
        """Build (and by default validate) a config from a nested dict; see :func:`from_dict`."""
        return from_dict(d, validate=validate)


# ----------------------------------------------------------------------------------------------
# YAML parsing (YAML 1.2 floats: ``1e-6`` is a float, not the string PyYAML's 1.1 rules make it)
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx)
        for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, [])
        if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT_RE))


def parse_yaml(text: str) -> Any:
    """Parse YAML with YAML-1.2 float rules (``1e-6`` -> 1e-06)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# ----------------------------------------------------------------------------------------------
# dict -> dataclasses, with one-line errors
# ----------------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true/false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _did_you_mean(key: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    where = f"{prefix}." if prefix else ""
    if close:
        return f"; did you mean {where + close[0]!r}?"
    return f"; known keys{' of ' + prefix if prefix else ''}: {', '.join(known)}"


def _example(default: Any) -> str:
    """A default value written as an override value (for the fix hint of a type error)."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None or isinstance(default, (dict, list)):
        return yaml.safe_dump(default, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return str(default)


def _coerce(value: Any, tp: Any, key: str, default: Any = dataclasses.MISSING) -> Any:
    """Check ``value`` against the type hint ``tp`` (int accepted for float); return the converted value.

    ``default`` (the field's default) only feeds the ``e.g. key=<default>`` fix hint of error messages.
    """
    hint = "" if default is dataclasses.MISSING else f"; e.g. {key}={_example(default)}"
    got = f"got {value!r} ({type(value).__name__}){hint}"
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} is a section: give sub-keys such as {key}.<name>=..., got {value!r}")
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, {got}")
        return dict(value)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # ``trainer.logger=console`` means ``[console]``
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    bad = ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, {got}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # e.g. ``experiment_name=7``
            raise bad
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key!r}")  # a bug in this module


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    defaults = cls()
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            raise ConfigError(f"unknown config key {full!r}{_did_you_mean(str(key), names, prefix)}")
        kwargs[key] = _coerce(value, hints[key], full, getattr(defaults, key))
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(d: dict[str, Any], validate: bool = True) -> HiperConfig:
    """Build a :class:`HiperConfig` from a (possibly partial) nested dict; missing keys take the defaults.

    Raises :class:`ConfigError` for unknown keys, wrong types and (with ``validate``) bad values.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    cfg = _build(HiperConfig, d, "")
    if validate:
        validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Validation of values and of combinations
# ----------------------------------------------------------------------------------------------


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{key}={value!r} is not allowed{extra}; use one of: {', '.join(choices)}")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_local(path: str) -> bool:
    """True when ``path`` must be a local file/folder rather than a Hugging Face hub id (``owner/name``).

    Local: absolute or ``./``/``../``/``~`` paths, ``.gguf`` files, paths with 2+ slashes or under a
    ``models/`` folder, anything that exists, and any name that is not of the hub-id form.
    """
    p = os.path.expanduser(path)
    if os.path.exists(p) or path.startswith(("/", ".", "~")) or path.endswith(".gguf"):
        return True
    if not _HUB_ID.match(path):
        return True
    first = path.split("/", 1)[0]
    return first == "models" or os.path.isdir(first)


def _check_model_path(path: str, key: str) -> None:
    if looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        hint = " (build it with `make smollm2`)" if "smollm2" in path else ""
        raise ConfigError(
            f"{key}={path!r} does not exist{hint}; give an existing folder/.gguf file or a hub id"
        )
    if path.endswith(".gguf") and not _has_module("gguf"):
        raise ConfigError(f"{key}={path!r} is a GGUF file; install the gguf extra: pip install 'hiper[gguf]'")


def validate_config(cfg: HiperConfig) -> None:
    """Check value ranges and combinations; raise :class:`ConfigError` (one line, names the fix)."""
    from hiper.envs import ENV_REGISTRY  # light: the env modules are imported lazily

    env, model, critic, actor = cfg.env, cfg.model, cfg.critic, cfg.actor
    rollout, alg, sft, tr = cfg.rollout, cfg.algorithm, cfg.sft, cfg.trainer

    # --- env
    _choice(env.name, "env.name", tuple(sorted(ENV_REGISTRY)))
    for key, val, low in (
        ("env.max_steps", env.max_steps, 1),
        ("env.history_length", env.history_length, 0),
        ("env.n_envs", env.n_envs, 1),
        ("env.group_size", env.group_size, 1),
        ("env.eval_episodes", env.eval_episodes, 0),
        ("env.eval_seed", env.eval_seed, 0),
        ("env.train_pool_size", env.train_pool_size, 1),
        ("env.n_workers", env.n_workers, 0),
        ("seed", cfg.seed, 0),
    ):
        _check(val >= low, f"{key}={val} must be >= {low}")

    _choice(env.prompt, "env.prompt", PROMPTS)

    # --- model
    _choice(model.dtype, "model.dtype", DTYPES)
    if model.tiny is not None:
        _check(
            model.path is None,
            "set either model.tiny (config-built model) or model.path, not both: "
            "add model.tiny=null to load model.path",
        )
    else:
        _check(
            model.path is not None,
            "model.path is null and model.tiny is null: set model.path=<hub id, folder "
            "or .gguf file> or give model.tiny",
        )
        _check_model_path(model.path, "model.path")
    if model.tokenizer == "builtin":
        _check(
            model.tiny is not None,
            "model.tokenizer=builtin only goes with a model.tiny model: set "
            "model.tokenizer=null to use model.path's tokenizer",
        )
    elif model.tokenizer is not None:
        _check_model_path(model.tokenizer, "model.tokenizer")
    lora = model.lora
    if lora.enabled:
        _check(
            _has_module("peft"),
            "model.lora.enabled=true needs peft: pip install 'hiper[lora]' or set model.lora.enabled=false",
        )
        _check(
            lora.r >= 1 and lora.alpha >= 1,
            f"model.lora.r={lora.r} and model.lora.alpha={lora.alpha} must be >= 1",
        )
        _check(0.0 <= lora.dropout < 1.0, f"model.lora.dropout={lora.dropout} must be in [0, 1)")
        _check(
            bool(lora.target_modules),
            "model.lora.target_modules is empty: list module names such as [q_proj,v_proj]",
        )

    # --- critic
    _choice(critic.mode, "critic.mode", CRITIC_MODES)
    _check(1 <= critic.n_heads <= 3, f"critic.n_heads={critic.n_heads} must be 1, 2 or 3")
    _positive(critic.lr, "critic.lr")
    _nonneg(critic.weight_decay, "critic.weight_decay")
    _check(
        critic.cliprange_value is None or critic.cliprange_value > 0,
        f"critic.cliprange_value={critic.cliprange_value} must be > 0 (or null for no value clipping)",
    )
    _nonneg(critic.high_value_coef, "critic.high_value_coef")
    _nonneg(critic.term_value_coef, "critic.term_value_coef")
    _positive(critic.grad_clip, "critic.grad_clip")
    if critic.dtype is not None:
        _choice(critic.dtype, "critic.dtype", DTYPES)
    _check(critic.mini_batch_size is None or critic.mini_batch_size >= 1,
           f"critic.mini_batch_size={critic.mini_batch_size} must be >= 1 or null")
    if critic.path is not None:
        _check(
            critic.mode == "separate",
            "critic.path only applies to critic.mode=separate: set critic.path=null or critic.mode=separate",
        )
        _check_model_path(critic.path, "critic.path")

    # --- actor
    _positive(actor.lr, "actor.lr")
    _nonneg(actor.weight_decay, "actor.weight_decay")
    _positive(actor.clip_ratio_low, "actor.clip_ratio_low")
    _positive(actor.clip_ratio_high, "actor.clip_ratio_high")
    _check(
        actor.clip_ratio_c > 1.0,
        f"actor.clip_ratio_c={actor.clip_ratio_c} must be > 1 (dual-clip; paper: 3.0)",
    )
    _nonneg(actor.kl_coef, "actor.kl_coef")
    _nonneg(actor.entropy_coeff, "actor.entropy_coeff")
    _positive(actor.grad_clip, "actor.grad_clip")
    _nonneg(actor.invalid_action_penalty_coef, "actor.invalid_action_penalty_coef")
    for key, val in (
        ("actor.ppo_epochs", actor.ppo_epochs),
        ("actor.mini_batch_size", actor.mini_batch_size),
        ("actor.micro_batch_size", actor.micro_batch_size),
        ("critic.micro_batch_size", critic.micro_batch_size),
    ):
        _check(val >= 1, f"{key}={val} must be >= 1")
    _check(
        actor.micro_batch_size <= actor.mini_batch_size,
        f"actor.micro_batch_size={actor.micro_batch_size} must be <= actor.mini_batch_size={actor.mini_batch_size}",
    )

    # --- rollout
    _choice(rollout.engine, "rollout.engine", ENGINES)
    if rollout.engine == "vllm":
        _check(
            _has_module("vllm"),
            "rollout.engine=vllm needs vLLM: pip install 'hiper[vllm]' or set rollout.engine=hf",
        )
    _positive(rollout.temperature, "rollout.temperature")
    _check(0.0 < rollout.top_p <= 1.0, f"rollout.top_p={rollout.top_p} must be in (0, 1]")
    _nonneg(rollout.eval_temperature, "rollout.eval_temperature")
    _check(rollout.max_new_tokens >= 1, f"rollout.max_new_tokens={rollout.max_new_tokens} must be >= 1")
    _check(
        rollout.max_prompt_length >= 1, f"rollout.max_prompt_length={rollout.max_prompt_length} must be >= 1"
    )

    # --- algorithm
    _choice(alg.adv_estimator, "algorithm.adv_estimator", ADV_ESTIMATORS)
    for key, val in (
        ("algorithm.gamma", alg.gamma),
        ("algorithm.lam", alg.lam),
        ("algorithm.hae.lam_seg", alg.hae.lam_seg),
        ("algorithm.gigpo.gamma", alg.gigpo.gamma),
    ):
        _check(0.0 <= val <= 1.0, f"{key}={val} must be in [0, 1]")
    _positive(alg.reward_scale, "algorithm.reward_scale")
    hae = alg.hae
    _choice(hae.keep_penalty_mode, "algorithm.hae.keep_penalty_mode", KEEP_PENALTY_MODES)
    _choice(hae.switch_mode, "algorithm.hae.switch_mode", SWITCH_MODES)
    _check(
        hae.keep_penalty <= 0.0,
        f"algorithm.hae.keep_penalty={hae.keep_penalty} is added to KEEP turns' "
        "rewards, so it must be <= 0 (paper: -0.3)",
    )
    _check(
        hae.keep_consistency_penalty <= 0.0,
        f"algorithm.hae.keep_consistency_penalty="
        f"{hae.keep_consistency_penalty} is added to rewards, so it must be <= 0 (paper: -0.3)",
    )
    _choice(alg.gigpo.mode, "algorithm.gigpo.mode", GIGPO_MODES)
    _nonneg(alg.gigpo.step_advantage_w, "algorithm.gigpo.step_advantage_w")

    est = alg.adv_estimator
    if est in CRITIC_ESTIMATORS:
        _check(
            critic.enabled,
            f"algorithm.adv_estimator={est} needs a critic: set critic.enabled=true or choose "
            "algorithm.adv_estimator=grpo|rloo|gigpo",
        )
    if est == "gae" and critic.enabled:
        _check(critic.n_heads == 1, f"algorithm.adv_estimator=gae uses one value per turn: set critic.n_heads=1 "
               f"(got {critic.n_heads})")
    if est in GROUP_ESTIMATORS:
        _check(
            env.group_size >= 2,
            f"algorithm.adv_estimator={est} compares rollouts of the same task: set "
            "env.group_size=8 (any value >= 2) or choose algorithm.adv_estimator=hae|gae",
        )
    if est == "hae" and critic.enabled:
        if hae.switch_mode == "code":
            _check(
                critic.n_heads == 3,
                f"algorithm.hae.switch_mode=code needs the term head: set critic.n_heads=3 "
                f"(got {critic.n_heads}) or algorithm.hae.switch_mode=paper",
            )
        else:
            _check(
                critic.n_heads >= 2,
                f"algorithm.hae.switch_mode=paper needs low and high heads: set "
                f"critic.n_heads=2 (got {critic.n_heads})",
            )

    # --- sft
    for key, val in (
        ("sft.episodes", sft.episodes),
        ("sft.epochs", sft.epochs),
        ("sft.batch_size", sft.batch_size),
    ):
        _check(val >= 1, f"{key}={val} must be >= 1")
    _positive(sft.lr, "sft.lr")
    _nonneg(sft.prompt_loss_weight, "sft.prompt_loss_weight")
    for key, val in (("sft.max_steps", sft.max_steps), ("sft.max_examples", sft.max_examples),
                     ("sft.micro_batch_size", sft.micro_batch_size), ("trainer.num_threads", tr.num_threads)):
        _check(val is None or val >= 1, f"{key}={val} must be >= 1 or null")

    # --- trainer
    for key, val in (
        ("trainer.total_iterations", tr.total_iterations),
        ("trainer.eval_every", tr.eval_every),
        ("trainer.save_every", tr.save_every),
        ("trainer.keep_checkpoints", tr.keep_checkpoints),
    ):
        _check(val >= 0, f"{key}={val} must be >= 0")
    for name in tr.logger:
        _choice(name, "trainer.logger", LOGGERS)
    if "wandb" in tr.logger:
        _check(
            _has_module("wandb"),
            "trainer.logger lists wandb but it is not installed: pip install wandb or "
            "drop it, e.g. trainer.logger=[console,jsonl]",
        )
    if "tensorboard" in tr.logger:
        _check(
            _has_module("tensorboard"),
            "trainer.logger lists tensorboard but it is not installed: pip install "
            "'hiper[logging]' or drop it, e.g. trainer.logger=[console,jsonl]",
        )
    _check(re.fullmatch(r"cpu|cuda(:\d+)?|mps", tr.device) is not None,
           f"trainer.device={tr.device!r} is not a device: use cpu, cuda, cuda:N or mps")
    if tr.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), f"trainer.device={tr.device} but CUDA is not available here: "
               "set trainer.device=cpu")
    if tr.resume not in (None, "auto"):
        _check(
            os.path.isdir(tr.resume),
            f"trainer.resume={tr.resume!r} is not a checkpoint folder: give an existing "
            "checkpoint dir, 'auto' (latest in output_dir) or null",
        )


def _positive(val: float, key: str) -> None:
    _check(val > 0.0, f"{key}={val} must be > 0")


def _nonneg(val: float, key: str) -> None:
    _check(val >= 0.0, f"{key}={val} must be >= 0")


# ----------------------------------------------------------------------------------------------
# Loading: presets, files, overrides
# ----------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the shipped presets (``hiper/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(path_or_preset: str) -> Path:
    """A preset name (``cpu_demo``) or a YAML path -> the file; :class:`ConfigError` if neither exists."""
    candidate = Path(os.path.expanduser(path_or_preset))
    if candidate.is_file():
        return candidate
    preset = PRESET_DIR / f"{path_or_preset}.yaml"
    if preset.is_file():
        return preset
    names = list_presets()
    close = difflib.get_close_matches(path_or_preset, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"--config {path_or_preset!r} is neither a YAML file nor a preset; {hint}presets: {', '.join(names)}"
    )


def _read_yaml_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a top-level ``base: <preset or path>`` key inherits from that config first."""
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML ({first}); fix the file") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        base_path = (
            resolve_config_path(str(base)) if not (path.parent / str(base)).is_file() else path.parent / base
        )
        if base_path.resolve() in seen:
            raise ConfigError(f"{path}: 'base: {base}' makes a cycle; remove it")
        data = _deep_merge(_read_yaml_file(base_path, (*seen, path.resolve())), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> ``(["a", "b", "c"], parsed value)``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value, e.g. actor.lr=1e-6")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML; quote it, e.g. {key}='{raw}'"
        ) from exc
    return key.split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in order); returns a new dict."""
    out = _deep_merge({}, d)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override {item!r}: {where!r} is a value, not a section; use {where}=<value>"
                )
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path_or_preset: str | None = None, overrides: list[str] | None = None, validate: bool = True
) -> HiperConfig:
    """Load a preset name or YAML path (``None`` = ``cpu_demo``), apply dotted ``overrides``, validate.

    Missing keys take the dataclass defaults. Raises :class:`ConfigError`.
    """
    path = resolve_config_path(path_or_preset or DEFAULT_PRESET)
    data = _read_yaml_file(path)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(data, validate=validate)


def config_to_yaml(cfg: HiperConfig) -> str:
    """The resolved config as YAML (section order as declared)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def save_resolved(cfg: HiperConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config to ``path`` (YAML, atomically); loading it back gives an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(
        "# resolved hiper config (all keys); reload with: hiper train --config <this file>\n"
        + config_to_yaml(cfg)
    )
    os.replace(tmp, path)
    return path


__all__ = [
    "ADV_ESTIMATORS",
    "ActorConfig",
    "AlgorithmConfig",
    "ConfigError",
    "CriticConfig",
    "EnvConfig",
    "GRPOSection",
    "GiGPOSection",
    "HAESection",
    "HiperConfig",
    "LoraConfig",
    "ModelConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainerSection",
    "apply_overrides",
    "config_to_yaml",
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
