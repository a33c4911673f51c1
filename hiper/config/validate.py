"""Cross-field checks of a run config: value ranges, choices from the registries, and combinations.

Each problem raises :class:`~hiper.config.schema.ConfigError` with one line that names the key and the fix. Which
estimator needs a critic or groups is asked of the :mod:`hiper.advantage` registry, never listed here.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from typing import Any

from hiper.advantage import available
from hiper.advantage import get as get_estimator
from hiper.config.schema import (
    CRITIC_MODES,
    DTYPES,
    ENGINES,
    LOGGERS,
    ConfigError,
    HiperConfig,
    estimator_config,
)
from hiper.envs.registry import ENV_FAMILIES, ENV_REGISTRY, import_plugins
from hiper.losses import policy_losses
from hiper.protocol.prompts import FAMILIES, PROMPT_PROTOCOL, RENDERERS


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
    _check_env(cfg)
    _check_model(cfg)
    _check_critic(cfg)
    _check_actor(cfg)
    _check_rollout(cfg)
    _check_algorithm(cfg)
    _check_sft(cfg)
    _check_trainer(cfg)


def _check_env(cfg: HiperConfig) -> None:
    """The env section."""
    env = cfg.env
    try:
        import_plugins(env.plugins)
    except ImportError as exc:
        raise ConfigError(f"env.plugins: {exc}; fix the module name or install it") from None
    _choice(env.name, "env.name", tuple(sorted(ENV_REGISTRY)))
    _check(ENV_FAMILIES[env.name] in FAMILIES, f"env.name={env.name!r} uses prompt family "
           f"{ENV_FAMILIES[env.name]!r}, which no module registered: add it with hiper.protocol.register_family")
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

    _choice(env.prompt, "env.prompt", tuple(RENDERERS))
    _check(env.max_consecutive_faults >= 1, f"env.max_consecutive_faults={env.max_consecutive_faults} must be >= 1")


def _check_model(cfg: HiperConfig) -> None:
    """The model section (and a local model path must exist)."""
    model = cfg.model
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


def _check_critic(cfg: HiperConfig) -> None:
    """The critic section."""
    critic = cfg.critic
    _choice(critic.mode, "critic.mode", CRITIC_MODES)
    _positive(critic.lr, "critic.lr")
    _nonneg(critic.weight_decay, "critic.weight_decay")
    _check(
        critic.cliprange_value is None or critic.cliprange_value > 0,
        f"critic.cliprange_value={critic.cliprange_value} must be > 0 (or null for no value clipping)",
    )
    _nonneg(critic.high_value_coef, "critic.high_value_coef")
    _nonneg(critic.term_value_coef, "critic.term_value_coef")
    _positive(critic.grad_clip, "critic.grad_clip")
    _positive(critic.loss_scale, "critic.loss_scale")
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


def _check_actor(cfg: HiperConfig) -> None:
    """The actor section (and critic micro-batches)."""
    critic = cfg.critic
    actor = cfg.actor
    _choice(actor.policy_loss, "actor.policy_loss", tuple(policy_losses()))
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


def _check_rollout(cfg: HiperConfig) -> None:
    """The rollout section."""
    rollout = cfg.rollout
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
    _check(rollout.batch_size >= 1, f"rollout.batch_size={rollout.batch_size} must be >= 1")
    _check(
        rollout.max_prompt_length >= 1, f"rollout.max_prompt_length={rollout.max_prompt_length} must be >= 1"
    )


def _check_algorithm(cfg: HiperConfig) -> None:
    """The algorithm section with what the estimator needs (each estimator section checks its own values)."""
    env = cfg.env
    critic = cfg.critic
    alg = cfg.algorithm
    _choice(alg.adv_estimator, "algorithm.adv_estimator", tuple(available()))
    for key, val in (("algorithm.gamma", alg.gamma), ("algorithm.lam", alg.lam)):
        _check(0.0 <= val <= 1.0, f"{key}={val} must be in [0, 1]")
    _positive(alg.reward_scale, "algorithm.reward_scale")
    est = get_estimator(alg.adv_estimator)
    estimator_config(cfg)  # the set_by fields must be valid values of the estimator's config too
    if est.needs_critic:
        others = ", ".join(n for n in available() if not get_estimator(n).needs_critic)
        _check(critic.enabled, f"algorithm.adv_estimator={alg.adv_estimator} needs a critic: set "
               f"critic.enabled=true or choose algorithm.adv_estimator={others.replace(', ', '|')}")
    if est.needs_switch and env.prompt in PROMPT_PROTOCOL:
        _check(PROMPT_PROTOCOL[env.prompt] == "plan_execute", f"algorithm.adv_estimator={alg.adv_estimator} needs "
               f"the Plan-Execute answer (switch and subgoal); env.prompt={env.prompt} asks for a flat one: use "
               "env.prompt=default|compact, or a flat estimator (gae, token_gae, grpo, rloo, gigpo)")
    if est.needs_group:
        _check(env.group_size >= 2, f"algorithm.adv_estimator={alg.adv_estimator} compares rollouts of the same "
               "task: set env.group_size=8 (any value >= 2) or choose algorithm.adv_estimator=hae|gae")
        _check(env.n_envs >= env.group_size, f"env.n_envs={env.n_envs} must be >= env.group_size={env.group_size} "
               "(n_envs trajectories = n_envs // group_size tasks x group_size)")


def _check_sft(cfg: HiperConfig) -> None:
    """The sft section (and trainer.num_threads)."""
    sft = cfg.sft
    tr = cfg.trainer
    for key, val in (
        ("sft.episodes", sft.episodes),
        ("sft.epochs", sft.epochs),
        ("sft.batch_size", sft.batch_size),
    ):
        _check(val >= 1, f"{key}={val} must be >= 1")
    _positive(sft.lr, "sft.lr")
    _nonneg(sft.prompt_loss_weight, "sft.prompt_loss_weight")
    _check(0.0 <= sft.noise < 1.0, f"sft.noise={sft.noise} must be in [0, 1) (the probability of a perturbed turn)")
    _check(sft.nll_examples >= 0, f"sft.nll_examples={sft.nll_examples} must be >= 0 (0 = all examples)")
    for key, val in (("sft.max_steps", sft.max_steps), ("sft.max_examples", sft.max_examples),
                     ("sft.micro_batch_size", sft.micro_batch_size), ("trainer.num_threads", tr.num_threads)):
        _check(val is None or val >= 1, f"{key}={val} must be >= 1 or null")


def _check_trainer(cfg: HiperConfig) -> None:
    """The trainer section."""
    tr = cfg.trainer
    _check(tr.max_bad_updates >= 1, f"trainer.max_bad_updates={tr.max_bad_updates} must be >= 1")
    _check(tr.sample_trajectories >= 0, f"trainer.sample_trajectories={tr.sample_trajectories} must be >= 0")
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
            "trainer.logger lists wandb but it is not installed: pip install 'hiper[wandb]' or "
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


__all__ = ["looks_local", "validate_config"]
