"""One HiPER iteration, top to bottom (spec §3.13): rollout -> turn batch -> values -> advantages -> critic update
-> actor update.

Read :func:`iteration` first; it is the algorithm box of the paper. Lines marked ``# ALGO`` are the method; the rest
is plumbing (timing, devices, micro-batching). The stages it calls are the library's:

* rollout: :func:`hiper.rollout.loop.run_episodes` with an :class:`~hiper.rollout.policies.EnginePolicy`;
* turn batch: :class:`hiper.batch.TurnBatch` (token role masks and value read positions from the one parser);
* no-grad passes: :mod:`hiper.trainer.forward` (old / reference log-probs, critic values, beta in paper mode);
* advantages: ``hiper.advantage.get(name)`` with :func:`hiper.config.estimator_config` (HAE or a flat baseline);
* losses: :mod:`hiper.losses` (a policy-loss registry, the clipped value loss, the guarded optimizer step).

Determinism: iteration ``k`` draws every random choice from generators seeded by ``derive_seed(seed, stage, k)``
(rollout sampling, mini-batch shuffling), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hiper import advantage, losses
from hiper.advantage.from_batch import advantage_inputs, to_rows, token_advantages
from hiper.batch import TurnBatch, take
from hiper.config.schema import HiperConfig, estimator_config
from hiper.envs.base import TaskSpec
from hiper.models.critic import ValueModel
from hiper.models.policy import response_logprobs
from hiper.protocol.prompts import PROMPT_PROTOCOL
from hiper.protocol.spans import TokenByteTable
from hiper.rollout.engine import GenerationEngine, derive_seed
from hiper.rollout.loop import LoopStats, run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import EnginePolicy
from hiper.rollout.records import Trajectory
from hiper.trainer import forward, guards, metrics
from hiper.trainer.forward import Scores
from hiper.trainer.phases import both, parallel_ok

#: seed streams of iteration ``k``: ``derive_seed(seed, stream, k)``
ROLLOUT_STREAM, MINIBATCH_STREAM, EVAL_STREAM = 1, 2, 3


@dataclass
class Learner:
    """What an iteration trains and reads: the models, their optimizers, the tokenizer and the engine."""

    policy: nn.Module
    actor_opt: torch.optim.Optimizer
    critic: ValueModel | None
    critic_opt: torch.optim.Optimizer | None
    reference: nn.Module | None
    tokenizer: Any
    table: TokenByteTable
    engine: GenerationEngine
    device: torch.device
    switch_continuations: tuple[Tensor, Tensor] | None = None  # paper switch mode: SWITCH / KEEP token ids
    faults: guards.FaultCounter | None = None  # consecutive env faults of the run


@dataclass(frozen=True)
class Targets:
    """Per-row results of the advantage stage: ``advantages``/``loss_mask`` ``[N, L]`` (token level),
    ``returns``/``value_mask`` ``{head: [N]}`` (critic targets; ``[N, L]`` for the per-token head), ``turn_advantages`` ``{role: [N]}`` (raw, before
    whitening; HAE only), ``shaping`` ``{"total" | term: [N]}`` (the shaped reward and each shaping term)."""

    advantages: Tensor
    loss_mask: Tensor
    returns: dict[str, Tensor]
    value_mask: dict[str, Tensor]
    turn_advantages: dict[str, Tensor]
    shaping: dict[str, Tensor]


@dataclass
class IterationResult:
    """An iteration's data, for tests and diagnostics: the trajectories, the batch, the holders, the metrics."""

    trajectories: list[Trajectory]
    batch: TurnBatch
    scores: Scores
    targets: Targets
    metrics: dict[str, Any]


def rollout(cfg: HiperConfig, learner: Learner, manager: EnvManager, tasks: Sequence[TaskSpec], group_size: int,
            temperature: float, seed: int) -> tuple[list[Trajectory], LoopStats]:
    """Run the policy on ``tasks`` until every episode ends (batched over active envs; call ``j`` of the engine
    samples with ``derive_seed(seed, j)``). Returns the trajectories and the loop's phase timings."""
    policy = EnginePolicy(learner.engine, learner.tokenizer, temperature=temperature, top_p=cfg.rollout.top_p,
                          max_new_tokens=cfg.rollout.max_new_tokens, seed=seed)
    learner.policy.eval()
    stats = LoopStats()
    trajectories = run_episodes(manager, policy, tasks, group_size=group_size, stats=stats)
    return trajectories, stats


def iteration(cfg: HiperConfig, learner: Learner, manager: EnvManager, tasks: Sequence[TaskSpec],
              k: int) -> IterationResult:
    """One RL iteration on ``tasks`` (iteration index ``k``); returns its data and metrics."""
    times: dict[str, float] = {}
    t_start = time.perf_counter()

    # ALGO 1. rollout: every active env answers each turn in one batched generation; finished envs are not prompted
    trajs, loop = rollout(cfg, learner, manager, tasks, cfg.env.group_size, cfg.rollout.temperature,
                          seed=derive_seed(cfg.seed, ROLLOUT_STREAM, k))
    times["generate"], times["env"] = loop.policy_s, loop.env_s + loop.reset_s
    if learner.faults is not None:
        learner.faults.update(trajs)  # K env faults in a row stop the run
    trajs, n_faults = guards.drop_fault_turns(trajs, cfg.env.name)  # a turn cut by a crashed worker is not trained on
    trajs, n_quarantined = guards.quarantine(trajs, cfg.env.name)  # a NaN / inf reward never reaches the estimator

    # ALGO 2. turn batch: one row per (trajectory, turn); role masks and read positions from the one parser
    t0 = time.perf_counter()
    batch = TurnBatch.from_trajectories(trajs, learner.table, int(learner.tokenizer.pad_token_id),
                                        max_prompt_length=cfg.rollout.max_prompt_length,
                                        protocol=PROMPT_PROTOCOL[cfg.env.prompt])
    times["batch"] = time.perf_counter() - t0

    # ALGO 3-4. behaviour / reference log-probs, critic values (and beta in paper switch mode), no grad
    batch, scores = score(cfg, learner, batch, trajs, times, parallel=parallel_ok(cfg, learner.critic))

    # ALGO 5. advantages: HAE (or a flat baseline) on the padded [n_traj, T_max] layout, broadcast to token spans
    t0 = time.perf_counter()
    targets, m = advantages(cfg, batch, scores)
    times["advantage"] = time.perf_counter() - t0

    # ALGO 6-7. critic update and actor update on shuffled mini-batches (one generator: the critic's draws first).
    # They are independent given the targets, so they may run on two threads (bit-identical results).
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, MINIBATCH_STREAM, k))
    critic_mbs = [] if learner.critic is None else critic_minibatches(cfg, len(batch), cfg.actor.ppo_epochs, gen)
    actor_mbs = minibatches(len(batch), cfg.actor.mini_batch_size, cfg.actor.ppo_epochs, gen)
    critic_m, actor_m = both(
        (lambda: update_critic(cfg, learner, batch, scores, targets, critic_mbs)) if critic_mbs else dict,
        lambda: update_actor(cfg, learner, batch, scores, targets, actor_mbs),
        parallel=parallel_ok(cfg, learner.critic), times=times, names=("critic_update", "actor_update"),
    )
    m.update(critic_m)
    m.update(actor_m)
    learner.engine.sync()  # the engine generates with the updated weights next iteration
    times["update"] = time.perf_counter() - t0
    times["iteration"] = time.perf_counter() - t_start

    m.update(metrics.rollout_metrics(trajs, batch, prefix="train/"))
    m["train/quarantined"] = float(n_quarantined)
    m["train/env_faults"] = float(n_faults)  # episodes cut by a crashed / hung worker (not step limits)
    # turns whose prompt left out its oldest history pairs to fit rollout.max_prompt_length
    m["train/history_shortened_turns"] = float(sum(t.history_dropped > 0 for tr in trajs for t in tr.turns))
    restarts = getattr(getattr(manager, "envs", None), "restarts", None)  # an EnvPool's worker restarts so far
    if restarts is not None:
        m["env/worker_restarts"] = float(restarts)
    m.update(metrics.timing_metrics(times, loop.generated_tokens, float(batch.n_tokens().sum()),
                                    cfg.actor.ppo_epochs, len(batch)))
    return IterationResult(trajectories=trajs, batch=batch, scores=scores, targets=targets, metrics=m)


def paper_mode(cfg: HiperConfig) -> bool:
    """HAE with ``switch_mode=paper``: the switch advantage needs beta and V^low(s_t, o_{t-1})."""
    return getattr(estimator_config(cfg), "switch_mode", "code") == "paper"


def score(cfg: HiperConfig, learner: Learner, batch: TurnBatch, trajs: Sequence[Trajectory],
          times: dict[str, float] | None = None, parallel: bool = False) -> tuple[TurnBatch, Scores]:
    """The no-grad passes over ``batch``: old and reference log-probs, critic values; in paper switch mode also
    beta and V^low on each row's KEEP continuation (the returned batch then carries the continuations). With
    ``parallel`` the actor-side passes and the critic pass run on two threads."""
    times = {} if times is None else times
    temperature, micro_actor = cfg.rollout.temperature, cfg.actor.micro_batch_size
    use_rollout = cfg.actor.use_rollout_logprobs and temperature == 1.0 and batch.rollout_logprobs is not None
    beta = None
    if paper_mode(cfg):  # the KEEP continuations are inputs of the critic pass
        batch = batch.with_keep_continuations(learner.tokenizer, learner.table, trajs)

    def actor_side() -> tuple[Tensor, Tensor | None, Tensor | None]:
        if use_rollout:
            old = batch.rollout_logprobs  # the engine's raw log-probs of the same weights: one pass saved
            assert old is not None
        else:
            old = forward.logprobs(batch, learner.policy, micro_actor, temperature, learner.device)
        ref = None
        if learner.reference is not None:
            ref = forward.logprobs(batch, learner.reference, micro_actor, temperature, learner.device)
        b = None
        if paper_mode(cfg):  # ALGO beta_t = P(SWITCH | s_t, o_{t-1})
            assert learner.switch_continuations is not None
            t0 = time.perf_counter()
            b = forward.switch_prob(batch, learner.policy, learner.switch_continuations, micro_actor, temperature,
                                    learner.device)
            times["switch_prob"] = time.perf_counter() - t0
        return old, ref, b

    def critic_side() -> dict[str, Tensor]:
        # ALGO critic values at the heads' read positions (V_low after </subgoal>, V_high and V_term before
        # <switch>; paper mode: V^low on the KEEP continuation too)
        if learner.critic is None:
            return {}
        return forward.values(batch, learner.critic, cfg.critic.micro_batch_size, learner.device)

    (old_logprobs, ref_logprobs, beta), values = both(actor_side, critic_side, parallel=parallel, times=times,
                                                      names=("logprob", "critic"))
    guards.check_finite(cfg, values, old_logprobs)
    return batch, Scores(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, values=values, beta=beta)


def advantages(cfg: HiperConfig, batch: TurnBatch, scores: Scores) -> tuple[Targets, dict[str, Any]]:
    """The estimator of ``algorithm.adv_estimator`` on the batch (config from THE mapping
    :func:`~hiper.config.estimator_config`), broadcast to tokens; returns the targets and their metrics."""
    est_cfg = estimator_config(cfg)
    inputs = advantage_inputs(batch, scores.values or None, cfg.algorithm.reward_scale, beta=scores.beta)
    out = advantage.get(cfg.algorithm.adv_estimator)(inputs, est_cfg)
    token_adv, loss_mask, per_row = token_advantages(batch, out)
    raw = {"action": "adv_low_raw", "subgoal": "adv_high_raw", "switch": "adv_term_raw"}
    targets = Targets(
        advantages=token_adv, loss_mask=loss_mask,
        returns={h: to_rows(batch, r).float() for h, r in out.returns.items()},
        value_mask={h: to_rows(batch, m).bool() for h, m in out.value_mask.items()},
        turn_advantages={role: to_rows(batch, out.extras[key]).float() for role, key in raw.items()
                         if key in out.extras},
        shaping={"total": to_rows(batch, out.shaped_rewards.total).float(),
                 **{k: to_rows(batch, v).float() for k, v in out.shaped_rewards.terms.items()}},
    )  # fmt: skip
    m = metrics.advantage_metrics(batch, out, per_row, targets.returns, targets.value_mask, scores.values)
    if paper_mode(cfg):
        m.update(metrics.switch_metrics(batch, scores.beta, scores.values, targets.turn_advantages.get("switch")))
    return targets, m


def minibatches(n: int, size: int, epochs: int, gen: torch.Generator) -> list[list[Tensor]]:
    """Row indices of each mini-batch, per PPO epoch: a fresh permutation of ``n`` rows per epoch, cut in ``size``."""
    out = []
    size = max(1, min(size, n))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        out.append([perm[s : s + size] for s in range(0, n, size)])
    return out


def critic_minibatches(cfg: HiperConfig, n: int, epochs: int, gen: torch.Generator) -> list[list[Tensor]]:
    """The critic's mini-batches: ``critic.mini_batch_size`` rows each, or the actor's size when that is unset."""
    return minibatches(n, cfg.critic.mini_batch_size or cfg.actor.mini_batch_size, epochs, gen)


def update_critic(cfg: HiperConfig, learner: Learner, batch: TurnBatch, scores: Scores, targets: Targets,
                  epochs: list[list[Tensor]]) -> dict[str, float]:
    """Clipped value loss per head at its read positions; one pass per PPO epoch over mini-batches (one value per
    row and head, or per response token for the ``token`` head), each head's loss averaged over its trained rows
    (tokens) of the mini-batch."""
    critic, opt, device = learner.critic, learner.critic_opt, learner.device
    assert critic is not None and opt is not None
    ccfg = cfg.critic
    coefs = {"low": 1.0, "turn": 1.0, "token": 1.0, "high": ccfg.high_value_coef, "term": ccfg.term_value_coef}
    params = critic.trainable_parameters()
    heads = [h for h in critic.heads if h in targets.returns and h in targets.value_mask]
    sums = {h: 0.0 for h in heads}
    counts = {h: 0 for h in heads}
    steps = skipped = 0
    norms = []
    critic.train()
    for epoch in epochs:
        for mb_rows in epoch:
            n_head = {h: int(targets.value_mask[h][mb_rows].sum()) for h in heads}
            finite = True
            for rows, mb in batch.micro_batches(mb_rows, ccfg.micro_batch_size):
                ids, mask, start = mb.packed_inputs()
                vals = critic.read_values(ids.to(device), mask.to(device), start, mb.v_low_pos.to(device),
                                          response_width=mb.response_width)
                loss = torch.zeros((), device=device)
                width = mb.response_width  # a per-token head's targets are [N, L]: cut to the micro-batch's width
                for h in heads:
                    if n_head[h] == 0:
                        continue
                    v_mask = take(targets.value_mask[h], rows, width).to(device)
                    # ALGO clipped value loss of head h (spec §3.12)
                    vl, _ = losses.value_loss_terms(vals[h].float(), take(scores.values[h], rows, width).to(device),
                                                    take(targets.returns[h], rows, width).to(device), v_mask,
                                                    ccfg.cliprange_value, scale=ccfg.loss_scale)
                    loss = loss + coefs[h] * vl / n_head[h]
                    sums[h] += float(vl.detach())
                    counts[h] += int(v_mask.sum())
                if not torch.isfinite(loss):
                    finite = False
                    break
                if loss.requires_grad:
                    loss.backward()
            stepped, norm = losses.safe_step(opt, params, ccfg.grad_clip, loss_finite=finite)
            steps += 1
            skipped += not stepped
            norms.append(norm)
    critic.eval()
    out = {f"critic/value_loss_{h}": sums[h] / max(counts[h], 1) for h in heads}
    out["critic/loss"] = sum(out.values())
    out.update({"critic/steps": float(steps), "critic/skipped_steps": float(skipped),
                "critic/grad_norm": metrics.mean_finite(norms)})
    return out


def update_actor(cfg: HiperConfig, learner: Learner, batch: TurnBatch, scores: Scores, targets: Targets,
                 epochs: list[list[Tensor]]) -> dict[str, float]:
    """PPO policy loss of ``actor.policy_loss`` + entropy bonus + k3 KL, token-mean over the loss mask of each
    mini-batch (token sums per micro-batch divided by the mini-batch's loss-token count)."""
    policy, device, acfg = learner.policy, learner.device, cfg.actor
    params = [p for p in policy.parameters() if p.requires_grad]
    totals: dict[str, float] = {}
    n_total = steps = skipped = 0
    norms = []
    policy.train()
    for epoch in epochs:
        for mb_rows in epoch:
            n_tok = int(targets.loss_mask[mb_rows].sum())
            if n_tok == 0:
                continue
            finite = True
            for rows, mb in batch.micro_batches(mb_rows, acfg.micro_batch_size):
                width = mb.response_width
                ids, mask, start = mb.packed_inputs()
                logp, entropy = response_logprobs(policy, ids.to(device), mask.to(device), start,
                                                  mb.response_ids.to(device), temperature=cfg.rollout.temperature,
                                                  with_entropy=True)
                ref = take(scores.ref_logprobs, rows, width)
                loss_mask = take(targets.loss_mask, rows, width).to(device)
                # ALGO PPO loss on the role-wise token advantages (spec §3.8, §3.12)
                loss, stats = losses.actor_loss_sum(
                    logp, take(scores.old_logprobs, rows, width).to(device),
                    take(targets.advantages, rows, width).to(device), loss_mask, acfg, entropy=entropy,
                    ref_logp=None if ref is None else ref.to(device),
                )
                loss = loss / n_tok
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                for key, v in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(v)
                n_total += int(loss_mask.sum())
            stepped, norm = losses.safe_step(learner.actor_opt, params, acfg.grad_clip, loss_finite=finite)
            steps += 1
            skipped += not stepped
            norms.append(norm)
    policy.eval()
    out = {f"actor/{key}": v / max(n_total, 1) for key, v in totals.items()}
    out.update({"actor/steps": float(steps), "actor/skipped_steps": float(skipped),
                "actor/grad_norm": metrics.mean_finite(norms), "actor/loss_tokens": float(n_total)})
    return out


__all__ = ["IterationResult", "Learner", "Targets", "advantages", "critic_minibatches", "iteration", "minibatches", "paper_mode", "rollout",
           "score", "update_actor", "update_critic"]
