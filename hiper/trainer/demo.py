"""The CPU demo: SFT warm start + HiPER RL (HAE) on the embedded household world, no downloads.

Everything is built in code: a byte-level BPE tokenizer trained on household-world text and the
protocol tags (:func:`household_tokenizer`), a tiny Qwen2 from a config, and a compact prompt
(:func:`compact_renderer`) that keeps CPU sequences short. :func:`run_demo` runs

1. SFT on 500 expert episodes, 2 epochs (short, so the SFT policy is well below the ceiling: ~20-27 %),
2. held-out evaluation of the SFT-only policy,
3. HiPER RL iterations with periodic held-out evaluation,
4. the final held-out evaluation, a before/after table and a learning-curve PNG.

``python -m hiper.trainer.demo --seed 0`` runs it directly; ``hiper train`` with no config runs it
through the CLI with the identical ``cpu_demo`` preset. ~8.5 minutes on 2 quiet CPU cores; measured
results in ``docs/results_cpu_demo.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

#: env settings of the demo: the "tiny" household preset (4-5 receptacles, short observations).
DEMO_ENV_KWARGS: dict[str, Any] = {"difficulty": "tiny"}

#: the demo's run config, every key spelled out (same names as ``hiper.trainer.config``; the preset
#: ``cpu_demo`` is identical and a test keeps them equal, so ``hiper train`` runs exactly this).
#: Algorithm: HAE Mode A semantics (3-head separate critic, AT = GT - VT, per-role whitening, KEEP and
#: KEEP-consistency shaping); sizes and rates are scaled for a 0.74M-parameter model trained from scratch:
#: gamma 0.9 (wasted "Nothing happens" steps cost return), invalid-format penalty 1.0 (a tiny model's
#: format drifts under RL without it), no value clip (spec 7.1 Mode C #3).
DEMO_CONFIG: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/cpu_demo",
    "env": {
        "name": "household", "kwargs": dict(DEMO_ENV_KWARGS), "train_split": "train", "eval_split": "valid_seen",
        "max_steps": 15, "history_length": 2, "n_envs": 24, "group_size": 1,
        "eval_episodes": 192, "eval_seed": 0, "train_pool_size": 4096, "n_workers": 0, "prompt": "compact",
    },
    "model": {
        "path": None,
        "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3,
                 "num_attention_heads": 4, "num_key_value_heads": 2},
        "tokenizer": "builtin", "dtype": "float32", "gradient_checkpointing": False,
        "lora": {"enabled": False, "r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    },
    "critic": {
        "enabled": True, "mode": "separate", "path": None, "n_heads": 3, "lr": 1e-3, "weight_decay": 0.0,
        "cliprange_value": None, "high_value_coef": 1.0, "term_value_coef": 1.0, "grad_clip": 1.0,
        "dtype": None, "mini_batch_size": None, "micro_batch_size": 64,
    },
    "actor": {
        "lr": 1e-4, "weight_decay": 0.0, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
        "kl_coef": 0.05, "entropy_coeff": 0.001, "grad_clip": 1.0, "ppo_epochs": 1, "mini_batch_size": 128,
        "micro_batch_size": 64, "invalid_action_penalty_coef": 1.0, "use_rollout_logprobs": True,
    },
    "rollout": {"engine": "hf", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40,
                "eval_temperature": 0.4, "max_prompt_length": 512},
    "algorithm": {
        "adv_estimator": "hae", "gamma": 0.9, "lam": 1.0, "reward_scale": 1.0,
        "hae": {"lam_seg": 0.95, "keep_penalty": -0.3, "keep_penalty_mode": "normalized",
                "keep_penalty_skip_first": False, "keep_consistency_penalty": -0.3, "bootstrap_truncated": True,
                "switch_mode": "code", "norm_adv": True},
        "grpo": {"norm_by_std": True},
        "gigpo": {"gamma": 0.95, "step_advantage_w": 1.0, "mode": "mean_norm"},
    },
    "sft": {"enabled": True, "episodes": 500, "epochs": 2, "lr": 2e-3, "batch_size": 16, "max_steps": None,
            "split": None, "max_examples": None, "micro_batch_size": None, "prompt_loss_weight": 1.0},
    "trainer": {"total_iterations": 40, "eval_every": 10, "save_every": 0, "keep_checkpoints": 3,
                "logger": ["console", "jsonl"], "project_name": "hiper", "experiment_name": "cpu_demo",
                "resume": None, "device": "cpu", "num_threads": 1},
}

# ----------------------------------------------------------------------------------------------
# prompt
# ----------------------------------------------------------------------------------------------

_WELCOME = "-= Welcome to TextWorld, ALFRED! =-"


def _clean_observation(observation: str) -> str:
    """Drop the TextWorld banner and the task sentence (the task has its own line) and blank lines."""
    text = observation.replace(_WELCOME, " ")
    cut = text.find("Your task is to:")
    if cut >= 0:
        text = text[:cut]
    return " ".join(text.split())


def compact_renderer(
    family: str,
    *,
    task: str,
    observation: str,
    admissible: Sequence[str],
    current_subgoal: str | None,
    history: Sequence[tuple[str, str]] = (),
    step: int = 0,
    **_: Any,
) -> str:
    """A short user prompt with the same slots as the standard one (spec 2.3), for CPU-sized models.

    Slots: task, the last actions taken (the history's actions), the current observation, the current
    subgoal ("None" at the start) and the admissible actions (``help`` dropped). About 60-120 tokens
    with the demo tokenizer instead of ~450 for :func:`hiper.protocol.render_prompt`.
    """
    del family
    subgoal = current_subgoal if current_subgoal and current_subgoal.strip() else "None"
    lines = [f"task: {task}"]
    if history:
        lines.append("last: " + " ; ".join(a for _, a in history))
    lines.append(f"obs: {_clean_observation(observation)}")
    lines.append(f"subgoal: {subgoal}")
    lines.append("actions: " + " | ".join(a for a in admissible if a.strip().lower() != "help"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------


def household_corpus(env_name: str = "household", env_kwargs: Mapping[str, Any] | None = None,
                     n_episodes: int = 200) -> list[str]:
    """Text for the tokenizer: expert episodes' prompts (compact and standard) and responses, + tags.

    Deterministic (fixed tasks of the train split); covers the world's vocabulary and the protocol.
    """
    from hiper.envs import task_panel
    from hiper.envs.manager import EnvManager, make_batch, run_episodes
    from hiper.rollout.policies import ExpertPolicy

    kwargs = dict(env_kwargs or {})
    texts: list[str] = []
    # compact prompts for every episode, the standard prompt for a few (so its words are covered too)
    for renderer, n in ((compact_renderer, n_episodes), (None, max(1, n_episodes // 10))):
        manager = EnvManager(make_batch(env_name, **kwargs), history_length=2, renderer=renderer,
                             family="household")
        tasks = task_panel(env_name, "train", n=n, seed=12345)
        for traj in run_episodes(manager, ExpertPolicy(manager), tasks):
            for turn in traj.turns:
                texts.append(turn.prompt)
                texts.append(turn.response)
        manager.close()
    texts += ["<switch>KEEP</switch>", "<switch>SWITCH</switch>", "<subgoal></subgoal>", "<action></action>"]
    return texts


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(env_name: str, kwargs_json: str, vocab_size: int) -> Any:
    from hiper.trainer.models import build_demo_tokenizer

    return build_demo_tokenizer(household_corpus(env_name, json.loads(kwargs_json)), vocab_size=vocab_size,
                                entity_tokens=True)


def household_tokenizer(env_name: str = "household", env_kwargs: Mapping[str, Any] | None = None,
                        vocab_size: int = 2048) -> Any:
    """The code-built byte-level BPE tokenizer of the demo (trained in ~2 s, cached per process).

    Object / receptacle instances ("fridge 1") become single tokens (``entity_tokens=True``).
    """
    kwargs = dict(env_kwargs or DEMO_ENV_KWARGS)
    return copy.deepcopy(_cached_tokenizer(env_name, json.dumps(kwargs, sort_keys=True), vocab_size))


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def demo_config(seed: int = 0, **section_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of :data:`DEMO_CONFIG` with ``seed`` and per-section key overrides applied."""
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["seed"] = int(seed)
    for section, values in section_overrides.items():
        if isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


class _ConsoleLogger:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.quiet:
            return
        keys = ("train/success", "train/episode_length", "train/invalid_rate", "train/inadmissible_rate",
                "train/switch_rate", "eval/success", "critic/explained_var_low", "actor/entropy", "time/iteration",
                "sft/nll_after", "time/sft")
        shown = {k: metrics[k] for k in keys if k in metrics}
        if shown:
            print(f"[{step:3d}] " + "  ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in shown.items()), flush=True)


def plot_learning_curve(history: Sequence[Mapping[str, Any]], path: str, title: str = "HiPER CPU demo") -> str:
    """Write a PNG of training success (per iteration) and held-out success (per evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history if "train/success" in h]
    tr = [h["train/success"] for h in history if "train/success" in h]
    ev_it = [h["iteration"] for h in history if "eval/success" in h]
    ev = [h["eval/success"] for h in history if "eval/success" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(it, tr, color="tab:blue", alpha=0.6, label="train rollouts (T=1)")
    ax.plot(ev_it, ev, "o-", color="tab:red", label="held-out eval")
    ax.set_xlabel("RL iteration (0 = after SFT)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(before: Mapping[str, Any], after: Mapping[str, Any], after_label: str = "SFT + HiPER RL") -> str:
    """Before/after held-out table: overall success, per task type, episode length, invalid rate."""
    rows = [("success (all)", "eval/success")]
    types = sorted({k.split("/", 2)[2] for k in list(before) + list(after) if k.startswith("eval/success/")})
    rows += [(f"  {t}", f"eval/success/{t}") for t in types]
    rows += [("episode length", "eval/episode_length"), ("invalid-format rate", "eval/invalid_rate"),
             ("switch rate", "eval/switch_rate"), ("inadmissible rate", "eval/inadmissible_rate")]
    lines = [f"{'held-out (valid_seen)':<26}{'SFT only':>10}{after_label:>16}", "-" * 52]
    for name, key in rows:
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        lines.append(f"{name:<26}{b:>10.3f}{a:>16.3f}")
    return "\n".join(lines)


def run_demo(config: Mapping[str, Any] | None = None, seed: int | None = None, output_dir: str | None = None,
             quiet: bool = False, plot: bool = True, logger: Any = None) -> dict[str, Any]:
    """Run the whole demo; returns ``{"before", "after", "history", "wall_s", "table", "png"}``.

    ``config`` defaults to :data:`DEMO_CONFIG` (a typed ``HiperConfig`` works too); ``seed`` and
    ``output_dir`` override it. Writes ``demo_result.json`` and ``learning_curve.png`` to the output dir.
    """
    from hiper.trainer.models import cfg_get
    from hiper.trainer.trainer import Trainer

    t0 = time.perf_counter()
    if config is None:
        config = demo_config(seed if seed is not None else 0)
    elif seed is not None and isinstance(config, dict):
        config = {**config, "seed": int(seed)}
    out_dir = output_dir or cfg_get(config, "output_dir", "runs/cpu_demo")
    if isinstance(config, dict):
        config = {**config, "output_dir": out_dir}
    os.makedirs(out_dir, exist_ok=True)
    trainer = Trainer(config, logger=logger or _ConsoleLogger(quiet))
    if not quiet:
        model_cfg = cfg_get(config, "model", None)
        source = cfg_get(model_cfg, "path", None) or "tiny Qwen2 from a config"
        n_params = sum(p.numel() for p in trainer.policy.parameters())
        n_train = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
        trainable = "" if n_train == n_params else f" ({n_train / 1e6:.3f}M trainable)"
        print(
            f"policy: {source}, {n_params / 1e6:.2f}M parameters{trainable}, vocab {len(trainer.tokenizer)}",
            flush=True,
        )
    history = trainer.train()
    evals = [h for h in history if "eval/success" in h]
    if not evals:
        raise ValueError("run_demo needs held-out evaluations for its before/after table: set trainer.eval_every > 0")
    before, after = evals[0], evals[-1]
    wall = time.perf_counter() - t0
    estimator = str(cfg_get(cfg_get(config, "algorithm", None), "adv_estimator", "hae"))
    table = format_table(before, after, "SFT + HiPER RL" if estimator == "hae" else f"SFT + {estimator.upper()} RL")
    png = None
    if plot:
        png = plot_learning_curve(history, os.path.join(out_dir, "learning_curve.png"))
    result = {"before": before, "after": after, "history": history, "wall_s": wall, "table": table, "png": png,
              "seed": int(cfg_get(config, "seed", 0))}
    with open(os.path.join(out_dir, "demo_result.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "table"}, f, indent=1, default=float)
    if not quiet:
        print()
        print(table)
        print(f"\nwall time {wall:.0f} s; learning curve: {png}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hiper.trainer.demo", description="HiPER CPU demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/cpu_demo")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    cfg = demo_config(args.seed)
    if args.iterations is not None:
        cfg["trainer"]["total_iterations"] = args.iterations
    run_demo(cfg, output_dir=args.output_dir, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
