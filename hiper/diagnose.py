"""``hiper diagnose variance``: how noisy is each estimator's credit, on the same rollouts of one frozen policy?

HiPER claims HAE lowers the variance of the policy gradient relative to flat GAE (Thm 4.3). This measures it:

1. one policy (a run's checkpoint with ``--policy RUN``, else the config's start after its SFT warm start) is frozen;
2. ``--fit-batches`` rollout batches train each critic-based estimator's own critic (critic updates only);
3. on ``--batches`` further rollout batches (the same batches for every estimator: a paired comparison), each
   estimator gives its advantages and its policy-gradient estimate ``g = grad of sum(A_tok * log pi(tok)) / n_tok``
   (PPO's gradient at ratio 1);
4. per estimator: the variance of the raw per-token advantages (mean over batches, 95 % t-interval), and the
   variance of the gradient estimate across batches, ``tr Cov(g) / dim`` with a 95 % bootstrap interval over batches,
   next to ``|mean g|^2 / dim`` and their ratio (the noise-to-signal of one batch's gradient).

Rollouts use ``--group-size`` episodes per task for every estimator, so the group baselines have their groups and
all estimators see the same data. ::

    hiper diagnose variance --estimators hae,gae,grpo --batches 8 --fit-batches 4 env.n_envs=16
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from hiper.advantage import available
from hiper.advantage import get as get_estimator
from hiper.batch import TurnBatch
from hiper.config import ConfigError, HiperConfig, critic_heads, from_dict, load_config
from hiper.models.critic import build_critic
from hiper.models.policy import response_logprobs
from hiper.protocol.prompts import PROMPT_PROTOCOL
from hiper.rollout.engine import derive_seed
from hiper.trainer import algorithm
from hiper.trainer.algorithm import Learner, Scores, Targets
from hiper.trainer.trainer import Trainer

DIAGNOSE_STREAM = 9


def estimator_config_for(cfg: HiperConfig, name: str, group_size: int) -> HiperConfig:
    """``cfg`` with estimator ``name`` and the shared rollout shape (``group_size`` episodes per task)."""
    d = cfg.to_dict()
    d["algorithm"]["adv_estimator"] = name
    d["env"]["group_size"] = group_size
    d["critic"]["enabled"] = get_estimator(name).needs_critic
    return from_dict(d)


def gradient(policy: torch.nn.Module, batch: TurnBatch, targets: Targets, cfg: HiperConfig,
             device: torch.device) -> torch.Tensor:
    """The flattened policy gradient of ``sum(A_tok * log pi(tok)) / n_tok`` over the batch (ratio 1, no clip)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.zero_grad(set_to_none=True)
    n_tok = max(int(targets.loss_mask.sum()), 1)
    for rows, mb in batch.micro_batches(torch.arange(len(batch)), cfg.actor.micro_batch_size):
        ids, mask, start = mb.packed_inputs()
        logp, _ = response_logprobs(policy, ids.to(device), mask.to(device), start,
                                    mb.response_ids.to(device), temperature=cfg.rollout.temperature)
        width = mb.response_width
        adv = targets.advantages[rows][:, :width].to(device)
        lm = targets.loss_mask[rows][:, :width].to(device)
        (torch.where(lm, adv * logp, torch.zeros_like(logp)).sum() / n_tok).backward()
    g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().float() for p in params])
    policy.zero_grad(set_to_none=True)
    return g.cpu()


#: Student's t 0.975 quantiles for 1-29 degrees of freedom (two-sided 95 %), from scipy.stats.t.ppf; a table
#: because scipy is not a dependency.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045)


def t975(n: int) -> float:
    """The two-sided 95 % quantile for a mean of ``n`` >= 2 samples: Student's t with n - 1 degrees of freedom up
    to 30 samples, the normal 1.96 beyond."""
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 samples, got {n}")
    return T975[n - 2] if n <= len(T975) + 1 else 1.96


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and a 95 % t-interval (normal quantile beyond 30 samples)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = t975(len(xs)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def gradient_variance(gs: list[torch.Tensor], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """``tr Cov(g) / dim`` across batches with a 95 % bootstrap interval, ``|mean g|^2 / dim`` and their ratio."""
    G = torch.stack(gs).double()
    dim = G.shape[1]

    def var(idx: list[int]) -> float:
        x = G[idx]
        return float(((x - x.mean(0)) ** 2).sum() / (len(idx) - 1) / dim) if len(idx) > 1 else math.nan

    k = len(gs)
    rng = random.Random(seed)
    boots = sorted(var([rng.randrange(k) for _ in range(k)]) for _ in range(n_boot))
    v = var(list(range(k)))
    signal = float((G.mean(0) ** 2).sum() / dim)
    return {"grad_var": v, "grad_var_ci95": [boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]],
            "grad_signal": signal, "noise_to_signal": v / signal if signal > 0 else math.inf}


def raw_token_variance(cfg: HiperConfig, batch: TurnBatch, scores: Scores) -> float:
    """Variance of the per-token advantages before whitening (the estimator with ``norm_adv`` off)."""
    d = cfg.to_dict()
    name = cfg.algorithm.adv_estimator
    if "norm_adv" in d["algorithm"].get(name, {}):
        d["algorithm"][name]["norm_adv"] = False
    targets, _ = algorithm.advantages(from_dict(d), batch, scores)
    x = targets.advantages[targets.loss_mask].double()
    return float(x.var(unbiased=False)) if x.numel() else math.nan


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = load_config(args.config, list(args.overrides))
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = [e for e in names if e not in available()]
    if unknown or args.batches < 2 or args.fit_batches < 0 or args.group_size < 2:
        raise ConfigError(f"estimators {unknown} unknown, or --batches < 2, --fit-batches < 0, --group-size < 2")
    configs = {e: estimator_config_for(base, e, args.group_size) for e in names}
    trainer = Trainer(configs[names[0]])
    if args.policy:
        trainer.load_checkpoint(args.policy)
    elif base.sft.enabled:
        trainer.sft()
    policy, device = trainer.policy, trainer.device
    learners: dict[str, Learner] = {}
    for e, cfg in configs.items():
        heads = critic_heads(cfg)
        critic = build_critic(cfg.critic, policy, heads).to(device) if heads else None
        opt = torch.optim.AdamW(critic.trainable_parameters(), lr=cfg.critic.lr,
                                weight_decay=cfg.critic.weight_decay) if critic is not None else None
        learners[e] = Learner(policy=policy, actor_opt=trainer.actor_opt, critic=critic, critic_opt=opt,
                              reference=None, tokenizer=trainer.tokenizer, table=trainer.table,
                              engine=trainer.engine, device=device)

    def batch_of(k: int) -> tuple[list[Any], TurnBatch]:
        cfg0 = configs[names[0]]
        trajs, _ = algorithm.rollout(cfg0, learners[names[0]], trainer.manager("train"), trainer.tasks_for_iteration(k),
                                     args.group_size, cfg0.rollout.temperature, seed=derive_seed(base.seed, DIAGNOSE_STREAM, k))
        return trajs, TurnBatch.from_trajectories(trajs, trainer.table, trainer.pad_id,
                                                  max_prompt_length=cfg0.rollout.max_prompt_length,
                                                  protocol=PROMPT_PROTOCOL[cfg0.env.prompt])

    for k in range(args.fit_batches):  # fit each critic on the frozen policy's rollouts (no actor update)
        trajs, batch = batch_of(k)
        for e, cfg in configs.items():
            learner = learners[e]
            if learner.critic is None:
                continue
            b, scores = algorithm.score(cfg, learner, batch, trajs)
            targets, _ = algorithm.advantages(cfg, b, scores)
            gen = torch.Generator().manual_seed(derive_seed(base.seed, DIAGNOSE_STREAM, 1000 + k))
            algorithm.update_critic(cfg, learner, b, scores, targets, algorithm.critic_minibatches(cfg, len(b), 1, gen))
    per: dict[str, dict[str, list[Any]]] = {e: {"token_var": [], "grads": [], "ev": []} for e in names}
    for k in range(args.fit_batches, args.fit_batches + args.batches):
        trajs, batch = batch_of(k)
        for e, cfg in configs.items():
            b, scores = algorithm.score(cfg, learners[e], batch, trajs)
            targets, metrics = algorithm.advantages(cfg, b, scores)
            per[e]["token_var"].append(raw_token_variance(cfg, b, scores))
            per[e]["grads"].append(gradient(policy, b, targets, cfg, device))
            ev = [v for key, v in metrics.items() if key.startswith("critic/explained_var_")]
            per[e]["ev"].append(statistics.fmean(ev) if ev else math.nan)
    rows = []
    for e in names:
        m, lo, hi = t_interval(per[e]["token_var"])
        rows.append({"estimator": e, "token_adv_var": m, "token_adv_var_ci95": [lo, hi],
                     **gradient_variance(per[e]["grads"], seed=base.seed),
                     "critic_explained_var": statistics.fmean(per[e]["ev"])})
    return {"benchmark": "diagnose-variance", "config": args.config or "cpu_demo", "overrides": list(args.overrides),
            "policy": args.policy or ("after SFT" if base.sft.enabled
                                      else f"model.path={base.model.path}" if base.model.path else "initial"),
            "batches": args.batches,
            "fit_batches": args.fit_batches, "group_size": args.group_size,
            "episodes_per_batch": base.env.n_envs, "estimators": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| estimator | raw token-advantage variance [95 % CI] | policy-gradient variance tr Cov / dim [95 % CI] | "
             "signal mean-g^2 / dim | noise / signal | critic explained var |", "|---|---|---|---|---|---|"]
    for r in result["estimators"]:
        lines.append(f"| {r['estimator']} | {r['token_adv_var']:.4g} [{r['token_adv_var_ci95'][0]:.4g}, "
                     f"{r['token_adv_var_ci95'][1]:.4g}] | {r['grad_var']:.4g} [{r['grad_var_ci95'][0]:.4g}, "
                     f"{r['grad_var_ci95'][1]:.4g}] | {r['grad_signal']:.4g} | {r['noise_to_signal']:.3g} | "
                     f"{r['critic_explained_var']:.3f} |")
    silent = [r["estimator"] for r in result["estimators"] if r["grad_signal"] == 0 and r["grad_var"] == 0]
    if silent:  # e.g. group baselines when every group's episodes tie: not low variance, no signal at all
        lines.append(f"\nno gradient at all from {', '.join(silent)}: every advantage was zero on these batches")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="DIAGNOSTIC")
    parser = sub.add_parser("variance", help="advantage and policy-gradient variance per estimator")
    parser.add_argument("--config", "-c", default=None, help="preset or YAML (default cpu_demo)")
    parser.add_argument("--policy", default=None, help="a run or checkpoint folder to freeze (default: the config's "
                        "start, after its SFT warm start)")
    parser.add_argument("--estimators", default="hae,gae,grpo")
    parser.add_argument("--batches", type=int, default=8, help="rollout batches the variances are taken over")
    parser.add_argument("--fit-batches", type=int, default=4, help="rollout batches that fit each critic first")
    parser.add_argument("--group-size", type=int, default=4, help="episodes per task in every batch")
    parser.add_argument("--out", default=None, help="write the JSON here (and a .md table beside it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def main(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except ConfigError as exc:
        print(f"hiper diagnose: error: {exc}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(json.dumps(result, default=float))
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=float))
        out.with_suffix(".md").write_text(table)
    return 0


__all__ = ["T975", "add_arguments", "gradient", "gradient_variance", "main", "run", "t975", "t_interval"]
