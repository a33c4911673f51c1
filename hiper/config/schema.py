"""The run config schema: every setting of a hiper run, declared once (type, default, help, source).

Sections are dataclasses whose fields are declared with :func:`hiper.settings.setting`. Two sections are the
lower stages' own config classes, so their settings have one home: ``actor`` extends the PPO loss config of
:mod:`hiper.losses`, and ``algorithm.<estimator>`` is the estimator's config class from :mod:`hiper.advantage`
(``algorithm.hae`` is ``HAEConfig`` ...). A field that another key fills (``set_by``, e.g. every estimator's
``invalid_penalty`` comes from ``actor.invalid_action_penalty_coef``) is not a key of its own section.

:func:`estimator_config` is THE mapping from a run config to the estimator's config; the built-in trainer and the
verl plugin both use it. Loading (YAML, presets, overrides, dict coercion) is :mod:`hiper.config.loader`;
cross-field checks are :mod:`hiper.config.validate`; ``docs/config_reference.md`` lists every effective default.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

from hiper.advantage import (
    GAEConfig,
    GiGPOConfig,
    GRPOConfig,
    HAEConfig,
    RLOOConfig,
    ShapingConfig,
    TokenGAEConfig,
)
from hiper.advantage import get as get_estimator
from hiper.losses import PPOLossConfig
from hiper.settings import set_by, setting

#: choices checked by :mod:`hiper.config.validate` (estimators, policy losses, prompts and envs come from their
#: registries)
DTYPES = ("float32", "bfloat16")
CRITIC_MODES = ("separate", "shared")
ENGINES = ("hf", "vllm")
LOGGERS = ("console", "jsonl", "tensorboard", "wandb")


class ConfigError(ValueError):
    """A bad configuration. ``str(err)`` is one line naming the offending key and the fix."""


@dataclass
class EnvConfig:
    """Environment and batch shape."""

    name: str = setting("household", "registered env (household, alfworld, webshop; hiper.envs.ENV_REGISTRY)")
    kwargs: dict[str, Any] = setting(help="constructor keyword arguments of the env class", factory=dict)
    train_split: str = setting("train", "task split trained on (household/ALFWorld train; WebShop train)")
    eval_split: str = setting("valid_seen", "held-out split evaluated on (WebShop: test)")
    max_steps: int = setting(15, "episode horizon in turns", "paper: ALFWorld 50, WebShop 15 (spec §4.1)")
    history_length: int = setting(2, "past (observation, action) pairs shown in the prompt", "paper 2 (spec §4.1)")
    n_envs: int = setting(16, "trajectories per iteration: n_envs // group_size tasks x group_size rollouts",
                          "verl data.train_batch_size x rollout.n; paper 128")
    group_size: int = setting(1, "rollouts per task (GRPO/RLOO/GiGPO compare them)",
                              "verl env.rollout.n; paper HiPER 1, GRPO/GiGPO 8")
    eval_episodes: int = setting(32, "episodes per held-out evaluation", "paper 128")
    eval_seed: int = setting(0, "seed of the fixed evaluation task panel")
    train_pool_size: int = setting(4096, "size of the training task pool iterations sample from")
    n_workers: int = setting(0, "env worker processes (0 = step the envs in the trainer's process)")
    prompt: str = setting("default", "prompt renderer: default (the official Plan-Execute prompt), compact (short, "
                          "CPU models), flat / compact_flat (ReAct-style think-then-act, no switch or subgoal: the "
                          "paper's prompt ablation)", "spec §2.3, §6.3")
    switch_hint: bool = setting(True, "the default prompt adds 'answer SWITCH' before the first subgoal (hiper's "
                                "addition; off in the paper presets)", "spec §2.3: the official prompt has no hint")
    max_consecutive_faults: int = setting(16, "stop the run after this many episodes in a row cut by env faults "
                                          "(crashed or hung workers, exceptions in step)")
    plugins: list[str] = setting(help="modules imported first: they register your own envs and prompt families "
                                 "(docs/own_env.md)", factory=list)


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (needs the ``lora`` extra, i.e. peft). Off in every preset."""

    enabled: bool = setting(False, "wrap the policy with peft LoRA adapters")
    r: int = setting(8, "LoRA rank")
    alpha: int = setting(16, "LoRA alpha (scaling = alpha / r)")
    dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] = setting(help="module names that get adapters",
                                        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """The policy."""

    path: str | None = setting(None, "hub id, local HF folder or .gguf file of the policy (null with tiny)",
                               "paper: Qwen2.5-1.5B/7B-Instruct")
    tiny: dict[str, Any] | None = setting(
        help="Qwen2Config fields of a randomly initialised, config-built model (CPU demo, tests)",
        factory=lambda: {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2},
    )
    tokenizer: str | None = setting("builtin", "builtin (code-trained demo BPE; with tiny), a path, or null = path")
    dtype: str = setting("float32", "parameter dtype (float32 or bfloat16; bfloat16 trains with float32 master "
                         "weights in the optimizer, hiper.trainer.optim)", "paper bf16 compute, float32 master weights")
    gradient_checkpointing: bool = setting(False, "trade compute for activation memory")
    lora: LoraConfig = setting(help="LoRA adapters", factory=LoraConfig)


@dataclass
class CriticConfig:
    """The value model (spec §3.11, §3.12). Its heads follow from the estimator (``hiper.advantage`` registry)."""

    enabled: bool = setting(True, "build a critic (needed by hae and gae)")
    mode: str = setting("separate", "separate (own backbone, the official setup) or shared (heads on the policy's "
                        "detached backbone)", "spec §3.11")
    path: str | None = setting(None, "backbone of a separate critic; null = the policy's (tiny or path)")
    lr: float = setting(1e-4, "AdamW learning rate", "paper 1e-5")
    weight_decay: float = setting(0.01, "AdamW weight decay", "paper 0.01")
    cliprange_value: float | None = setting(None, "PPO value clip around the old values (null = unclipped)",
                                            "paper 0.5")
    loss_scale: float = setting(1.0, "factor on each head's squared value error (verl's convention is 0.5)",
                                "official HiPER fork core_algos.py:842-846: 1.0")
    high_value_coef: float = setting(1.0, "weight of the high head's loss", "paper 1.0")
    term_value_coef: float = setting(1.0, "weight of the term head's loss", "paper 1.0")
    grad_clip: float = setting(1.0, "max grad norm", "paper 1.0")
    dtype: str | None = setting(None, "dtype of a critic loaded from critic.path (null = float32)")
    mini_batch_size: int | None = setting(None, "turn samples per critic optimizer step (null = actor's)")
    micro_batch_size: int = setting(16, "turn samples per critic forward/backward (gradient accumulation)")


@dataclass
class ActorConfig(PPOLossConfig):
    """PPO policy update (spec §3.12): the loss settings of :class:`hiper.losses.PPOLossConfig` plus these."""

    lr: float = setting(5e-5, "AdamW learning rate, constant", "paper 1e-6")
    weight_decay: float = setting(0.01, "AdamW weight decay", "paper 0.01")
    grad_clip: float = setting(1.0, "max grad norm", "paper 1.0")
    ppo_epochs: int = setting(1, "passes over each batch", "paper 1")
    mini_batch_size: int = setting(64, "turn samples per optimizer step", "paper 256")
    micro_batch_size: int = setting(16, "turn samples per forward/backward (gradient accumulation)",
                                    "paper 16 per GPU")
    invalid_action_penalty_coef: float = setting(0.1, "c_inv subtracted from invalid-format turns' rewards, for "
                                                 "every estimator", "paper 0.1 (verl-agent name)")
    use_rollout_logprobs: bool = setting(False, "use the engine's log-probs as PPO old log-probs at temperature 1 "
                                         "(saves a forward; False = recompute, the paper's setup)")


@dataclass
class RolloutConfig:
    """Generation."""

    engine: str = setting("hf", "hf (the training model) or vllm (needs the vllm extra)")
    temperature: float = setting(1.0, "training sampling temperature", "paper 1.0")
    top_p: float = setting(1.0, "training nucleus sampling", "paper 1.0")
    max_new_tokens: int = setting(64, "response budget per turn (tokens)", "paper 512")
    eval_temperature: float = setting(0.4, "evaluation sampling temperature (0 = greedy)", "paper 0.4 (spec §4.1)")
    max_prompt_length: int = setting(1024, "prompt budget in tokens; a longer prompt drops its oldest history "
                                     "pairs until it fits (an error only if it still does not)", "paper 2048")
    batch_size: int = setting(32, "prompts per generation forward batch of the hf engine (bigger is faster on a GPU, "
                              "changes which rows share a batch and so the sampled tokens)")
    lean_decode: bool = setting(True, "hf engine: decode a plain Qwen2 model with hiper's lean forward (transformers' "
                                "equations, about half the CPU time per step; logits equal to float rounding); false "
                                "or any other model: transformers' forward", "docs/scale_out.md")


@dataclass
class AlgorithmConfig:
    """Advantage estimation: the estimator and its config section (``algorithm.<name>``)."""

    adv_estimator: str = setting("hae", "advantage estimator from the hiper.advantage registry "
                                 "(hae, gae, token_gae, grpo, rloo, gigpo)", "spec §3, §4.3")
    gamma: float = setting(1.0, "per-turn discount of hae and gae", "paper 1.0 (spec §4.1)")
    lam: float = setting(1.0, "lambda of the within-segment (hae) / turn (gae) GAE", "paper 1.0 (spec §4.1)")
    reward_scale: float = setting(1.0, "multiplies the env reward", "paper 1.0; spec §7.1 Mode C suggests 0.1")
    hae: HAEConfig = setting(help="HAE and its reward shaping", source="spec §3", factory=HAEConfig)
    gae: GAEConfig = setting(help="flat turn-level GAE (PPO, official turn_gae)", source="spec §4.3", factory=GAEConfig)
    token_gae: TokenGAEConfig = setting(help="token-level GAE inside each turn (the paper's PPO, verl-agent gae)",
                                        source="spec §4.3", factory=TokenGAEConfig)
    grpo: GRPOConfig = setting(help="GRPO", source="spec §4.3", factory=GRPOConfig)
    rloo: RLOOConfig = setting(help="RLOO", source="spec §4.3", factory=RLOOConfig)
    gigpo: GiGPOConfig = setting(help="GiGPO", source="spec §4.3", factory=GiGPOConfig)


@dataclass
class SFTConfig:
    """Behaviour cloning on expert trajectories rendered in the protocol (warm start before RL)."""

    enabled: bool = setting(True, "run SFT before RL in hiper train (hiper sft runs it regardless)")
    episodes: int = setting(64, "expert episodes collected")
    epochs: int = setting(3, "passes over the examples")
    lr: float = setting(1e-3, "AdamW learning rate")
    batch_size: int = setting(16, "turn examples per optimizer step")
    max_steps: int | None = setting(None, "cap on optimizer steps (null = epochs decide)")
    split: str | None = setting(None, "task split of the expert episodes (null = env.train_split)")
    max_examples: int | None = setting(None, "keep at most this many turn examples (seeded subset; null = all)")
    micro_batch_size: int | None = setting(None, "examples per forward/backward (null = batch_size)")
    prompt_loss_weight: float = setting(0.0, "weight of the next-token loss on prompt tokens (0 = response only)")
    noise: float = setting(0.0, "DART-style expert noise: probability that an expert turn's action is replaced by "
                           "its previous action or a random admissible one; such turns are executed, not trained on",
                           "Laskey et al. 2017 (DART); hiper")
    nll_examples: int = setting(512, "the before/after response NLL (sft/nll_before, sft/nll_after) is measured on at "
                                "most this many evenly spaced examples (0 = all; a full pass took 15 s in the demo)")


@dataclass
class TrainerSection:
    """Loop, logging and checkpoints."""

    total_iterations: int = setting(20, "PPO iterations, one batch each", "paper 150")
    eval_every: int = setting(5, "evaluate every N iterations (0 = only before and after)", "paper 5")
    save_every: int = setting(10, "checkpoint every N iterations (0 = none on the way); hiper train always saves the "
                              "final one")
    keep_checkpoints: int = setting(3, "keep the last K checkpoints (0 = all)")
    logger: list[str] = setting(help="backends among console, jsonl, tensorboard, wandb",
                                factory=lambda: ["console", "jsonl"])
    project_name: str = setting("hiper", "project name (wandb)")
    experiment_name: str = setting("cpu_demo", "run name (wandb, TensorBoard); hiper train -o DIR names the run DIR")
    resume: str | None = setting(None, "null (fresh run), auto (latest checkpoint in output_dir) or a checkpoint dir")
    device: str = setting("cpu", "torch device of the models: cpu, cuda, cuda:N")
    num_threads: int | None = setting(None, "torch CPU threads (null = torch's default)")
    progress: bool = setting(True, "rich progress bars for SFT steps and RL iterations (only on a terminal)")
    sample_trajectories: int = setting(4, "episodes per iteration hiper train writes to trajectories.jsonl with their "
                                       "credit, for hiper view (0 = none)")
    max_bad_updates: int = setting(3, "stop the run after this many consecutive rolled-back optimizer steps "
                                   "(non-finite loss, gradients or weights; RL counts iterations whose steps all failed)")
    parallel_phases: bool = setting(True, "run independent work on two threads: reference log-probs with critic "
                                    "values and the critic update with the actor update (bit-identical results), "
                                    "the two halves of each SFT micro-batch (the same gradient up to float rounding)")


@dataclass
class HiperConfig:
    """The whole run. ``output_dir`` receives ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/``."""

    seed: int = setting(0, "seed of every random choice of the run")
    output_dir: str = setting("runs/cpu_demo", "run folder")
    env: EnvConfig = setting(help="environment and batch shape", factory=EnvConfig)
    model: ModelConfig = setting(help="the policy", factory=ModelConfig)
    critic: CriticConfig = setting(help="the value model", factory=CriticConfig)
    actor: ActorConfig = setting(help="PPO policy update", factory=ActorConfig)
    rollout: RolloutConfig = setting(help="generation", factory=RolloutConfig)
    algorithm: AlgorithmConfig = setting(help="advantage estimation", factory=AlgorithmConfig)
    sft: SFTConfig = setting(help="behaviour-cloning warm start", factory=SFTConfig)
    trainer: TrainerSection = setting(help="loop, logging, checkpoints", factory=TrainerSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) of every key (fields filled by another key are left out)."""
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    """A config dataclass as a plain nested dict of its own keys (``set_by`` fields left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if set_by(f) is None}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def lookup(cfg: HiperConfig, dotted: str) -> Any:
    """The value of a dotted key (``actor.invalid_action_penalty_coef``) of ``cfg``."""
    return operator.attrgetter(dotted)(cfg)


def estimator_config(cfg: HiperConfig, name: str | None = None) -> ShapingConfig:
    """THE mapping from a run config to an estimator's config (default: ``algorithm.adv_estimator``).

    The estimator's own section ``algorithm.<name>`` as written, with its ``set_by`` fields filled from the keys
    that own them (``invalid_penalty`` <- ``actor.invalid_action_penalty_coef``; hae and gae ``gamma``/``lam`` <-
    ``algorithm.gamma``/``algorithm.lam``). Nothing else leaks in: a baseline gets KEEP shaping only when its own
    section sets it. An estimator registered without a section here uses its config class's defaults.
    """
    name = name or cfg.algorithm.adv_estimator
    section = getattr(cfg.algorithm, name, None)
    if section is None:
        section = get_estimator(name).config_cls()
    filled = {f.name: lookup(cfg, key) for f in dataclasses.fields(section) if (key := set_by(f)) is not None}
    try:
        return dataclasses.replace(section, **filled)
    except ValueError as exc:
        raise ConfigError(f"algorithm.{name}: {exc}") from None


def critic_heads(cfg: HiperConfig) -> tuple[str, ...]:
    """The value heads the run's estimator reads (asked of the registry; empty for critic-free estimators)."""
    est = get_estimator(cfg.algorithm.adv_estimator)
    return est.heads_for(estimator_config(cfg)) if est.needs_critic else ()


__all__ = [
    "CRITIC_MODES",
    "DTYPES",
    "ENGINES",
    "LOGGERS",
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
    "critic_heads",
    "estimator_config",
    "lookup",
    "to_dict",
]
