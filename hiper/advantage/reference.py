"""SLOW reference implementations, for tests and benchmarks only -- never use them in training.

Each function is a plain per-trajectory, per-turn Python loop written straight from the spec formulas (§3.3-§3.7
for HAE, §4.3 for the baselines), with explicit segment lists and direct sums instead of recursions where the spec
states a sum. They share no code with the vectorised fast path (``hiper.advantage.hae`` / ``baselines``), so
agreement between the two is evidence that both follow the spec. Inputs are the same padded tensors as the fast
path; outputs are float64 tensors in the same layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hiper.advantage.config import GAEConfig, GiGPOConfig, GRPOConfig, HAEConfig, ShapingConfig

Tensor = torch.Tensor


def _rows(turn_mask: Tensor, *tensors: Tensor | None) -> list[tuple[int, list[Any]]]:
    """Per trajectory: (T_i, [python list of the first T_i entries of each tensor])."""
    out = []
    for i in range(turn_mask.shape[0]):
        n = int(turn_mask[i].sum())
        out.append((n, [None if x is None else x[i, :n].tolist() for x in tensors]))
    return out


def reference_hae(
    rewards: Tensor,
    dones: Tensor,
    switch: Tensor,
    v_low: Tensor,
    v_high: Tensor,
    v_term: Tensor | None,
    turn_mask: Tensor,
    config: HAEConfig,
    *,
    beta: Tensor | None = None,
    v_low_keep: Tensor | None = None,
) -> dict[str, Tensor]:
    """HAE by the book (spec §3.3-§3.7), one trajectory and one turn at a time.

    Returns a dict with the ``HAEResult`` field names (float64 / bool tensors, 0 on padding).
    """
    g, lam, lam_seg, bt = config.gamma, config.lam, config.lam_seg, config.bootstrap_truncated
    n_traj, t_max = turn_mask.shape
    names = ("adv_low", "adv_high", "adv_term", "ret_low", "ret_high", "ret_term")
    out = {k: torch.zeros(n_traj, t_max, dtype=torch.float64) for k in names}
    boundary_out = torch.zeros(n_traj, t_max, dtype=torch.bool)
    seg_out = torch.full((n_traj, t_max), -1, dtype=torch.long)
    rows = _rows(turn_mask, rewards, dones, switch, v_low, v_high, v_term, beta, v_low_keep)
    for i, (T, (r, d, q, VL, VH, VT, BETA, VLK)) in enumerate(rows):
        if T == 0:
            continue
        # §3.1 boundaries and segments
        B = [0] + [t for t in range(1, T) if q[t]]
        K = len(B)
        b = B + [T]
        e = [b[k + 1] - 1 for k in range(K)]
        for k in range(K):
            boundary_out[i, b[k]] = True
            for t in range(b[k], e[k] + 1):
                seg_out[i, t] = k

        # §3.3 segment bootstrap N_k
        N = []
        for k in range(K):
            if d[e[k]]:
                N.append(0.0)
            elif k + 1 < K:
                N.append(VH[b[k + 1]])
            else:
                N.append(VH[b[k]] if bt else 0.0)

        # §3.5 low level, recursion reset at each segment
        AL = [0.0] * T
        for k in range(K):
            a_next = 0.0
            for t in range(e[k], b[k] - 1, -1):
                if t < e[k]:
                    nxt = VL[t + 1]
                elif d[t]:
                    nxt = 0.0
                elif k + 1 < K:
                    nxt = VH[b[k + 1]]
                else:
                    nxt = VL[t] if bt else 0.0
                nd = 0.0 if d[t] else 1.0
                delta = r[t] + g * nd * nxt - VL[t]
                AL[t] = delta + g * lam * nd * a_next
                a_next = AL[t]
        for t in range(T):
            out["adv_low"][i, t] = AL[t]
            out["ret_low"][i, t] = AL[t] + VL[t]

        # §3.6 high level (SMDP GAE over segments)
        ah_next = 0.0
        for k in range(K - 1, -1, -1):
            n_k = e[k] - b[k] + 1
            R_k = sum(g**j * r[b[k] + j] for j in range(n_k))
            delta = R_k + g**n_k * N[k] - VH[b[k]]
            nd_end = 0.0 if d[e[k]] else 1.0
            ah = delta + g**n_k * lam_seg * nd_end * ah_next
            out["adv_high"][i, b[k]] = ah
            out["ret_high"][i, b[k]] = ah + VH[b[k]]
            ah_next = ah

        # §3.7 term returns as the direct sum GT_t = sum_j g^(j-t) r_j + g^(e-t+1) N_k
        for k in range(K):
            for t in range(b[k], e[k] + 1):
                gt = sum(g ** (j - t) * r[j] for j in range(t, e[k] + 1)) + g ** (e[k] - t + 1) * N[k]
                out["ret_term"][i, t] = gt
                if config.switch_mode == "paper":
                    qt = 1.0 if q[t] else 0.0
                    out["adv_term"][i, t] = (qt - BETA[t]) * (VH[t] - VLK[t])
                else:
                    out["adv_term"][i, t] = gt - VT[t]
    out["boundary"] = boundary_out
    out["segment_id"] = seg_out
    return out


def reference_turn_gae(
    rewards: Tensor, dones: Tensor, v_turn: Tensor, turn_mask: Tensor, config: GAEConfig
) -> dict[str, Tensor]:
    """Flat turn-level GAE (one value per turn), raw advantages and returns (float64)."""
    g, lam = config.gamma, config.lam
    n_traj, t_max = turn_mask.shape
    adv = torch.zeros(n_traj, t_max, dtype=torch.float64)
    ret = torch.zeros(n_traj, t_max, dtype=torch.float64)
    for i, (T, (r, d, V)) in enumerate(_rows(turn_mask, rewards, dones, v_turn)):
        a_next = 0.0
        for t in range(T - 1, -1, -1):
            if d[t]:
                nxt = 0.0
            elif t + 1 < T:
                nxt = V[t + 1]
            else:
                nxt = V[t] if config.bootstrap_truncated else 0.0
            nd = 0.0 if d[t] else 1.0
            a = r[t] + g * nd * nxt - V[t] + g * lam * nd * a_next
            adv[i, t], ret[i, t] = a, a + V[t]
            a_next = a
    return {"adv": adv, "ret": ret}


def reference_shape_rewards(
    rewards: Tensor,
    switch: Tensor,
    valid: Tensor | None,
    keep_inconsistent: Tensor | None,
    turn_mask: Tensor,
    config: ShapingConfig,
) -> dict[str, Tensor]:
    """Reward shaping (spec §3.2) as the official per-trajectory loops; returns ``total`` and each term."""
    n_traj, t_max = turn_mask.shape
    terms = {
        k: torch.zeros(n_traj, t_max, dtype=torch.float64)
        for k in ("keep", "invalid", "keep_consistency", "switch_rate_floor")
    }
    total = torch.zeros(n_traj, t_max, dtype=torch.float64)
    for i, (T, (r, q, ok, inc)) in enumerate(_rows(turn_mask, rewards, switch, valid, keep_inconsistent)):
        kappa = config.keep_penalty
        start = 1 if config.keep_penalty_skip_first else 0
        if kappa != 0.0:
            if config.keep_penalty_mode == "fixed":
                for t in range(start, T):
                    if not q[t]:
                        terms["keep"][i, t] += kappa
            elif T > 1:
                m = sum(1 for t in range(start, T) if not q[t])
                if m > 0:
                    ratio = m / (T - start)
                    if config.keep_penalty_mode == "last_step":
                        terms["keep"][i, T - 1] += kappa * ratio
                    else:
                        for t in range(start, T):
                            if not q[t]:
                                terms["keep"][i, t] += kappa * ratio / m
        if config.invalid_penalty != 0.0:
            for t in range(T):
                if not ok[t]:
                    terms["invalid"][i, t] -= config.invalid_penalty
        if config.keep_consistency_penalty != 0.0:
            for t in range(1, T):
                if not q[t] and inc[t]:
                    terms["keep_consistency"][i, t] += config.keep_consistency_penalty
        if config.switch_rate_floor > 0.0 and config.switch_rate_floor_coef > 0.0 and T > 1:
            rate = sum(1 for t in range(T) if q[t]) / (T - 1)
            if rate < config.switch_rate_floor:
                terms["switch_rate_floor"][i, T - 1] -= config.switch_rate_floor_coef * (
                    config.switch_rate_floor - rate
                )
        for t in range(T):
            total[i, t] = r[t] + sum(float(v[i, t]) for v in terms.values())
    return {"total": total, **terms}


def _group_stats(values: list[float], weights: list[int]) -> tuple[float, float, int]:
    """Mean and unbiased std of ``values`` each repeated ``weights`` times; also the total count."""
    expanded = [v for v, w in zip(values, weights) for _ in range(w)]
    n = len(expanded)
    if n == 1:
        return 0.0, 1.0, n  # verl's singleton rule: no baseline, no scaling
    mean = sum(expanded) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in expanded) / (n - 1))
    return mean, std, n


def reference_grpo(rewards: Tensor, turn_mask: Tensor, group: Tensor, config: GRPOConfig) -> Tensor:
    """GRPO episode advantage per trajectory ``[N]`` (float64)."""
    R = [sum(rw) for _, (rw,) in _rows(turn_mask, rewards)]
    lengths = [int(turn_mask[i].sum()) for i in range(turn_mask.shape[0])]
    groups: dict[int, list[int]] = {}
    for i, gid in enumerate(group.tolist()):
        if lengths[i] > 0:
            groups.setdefault(gid, []).append(i)
    adv = torch.zeros(turn_mask.shape[0], dtype=torch.float64)
    for members in groups.values():
        weights = [lengths[i] if config.group_stats == "turn" else 1 for i in members]
        mean, std, _ = _group_stats([R[i] for i in members], weights)
        for i in members:
            adv[i] = (R[i] - mean) / (std + config.eps) if config.norm_by_std else R[i] - mean
    return adv


def reference_rloo(rewards: Tensor, turn_mask: Tensor, group: Tensor) -> Tensor:
    """RLOO: R_i minus the mean return of the other members of its group (``[N]``, float64)."""
    R = [sum(rw) for _, (rw,) in _rows(turn_mask, rewards)]
    groups: dict[int, list[int]] = {}
    for i, gid in enumerate(group.tolist()):
        if turn_mask[i].any():
            groups.setdefault(gid, []).append(i)
    adv = torch.zeros(turn_mask.shape[0], dtype=torch.float64)
    for members in groups.values():
        for i in members:
            others = [R[j] for j in members if j != i]
            adv[i] = R[i] - sum(others) / len(others) if others else R[i]
    return adv


def reference_gigpo(
    rewards: Tensor, turn_mask: Tensor, group: Tensor, state_id: Tensor, config: GiGPOConfig
) -> Tensor:
    """GiGPO per-turn advantage ``[N, T]`` (float64): episode-level group advantage + w x step-level advantage."""
    norm = config.mode == "mean_std_norm"
    grpo_cfg = GRPOConfig(norm_by_std=norm, eps=config.eps, group_stats=config.group_stats)
    episode = reference_grpo(rewards, turn_mask, group, grpo_cfg)
    n_traj, t_max = turn_mask.shape
    step_return = torch.zeros(n_traj, t_max, dtype=torch.float64)
    step_groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (T, (r, s)) in enumerate(_rows(turn_mask, rewards, state_id)):
        for t in range(T):
            step_return[i, t] = sum(config.gamma ** (j - t) * r[j] for j in range(t, T))
            step_groups.setdefault((int(group[i]), s[t]), []).append((i, t))
    adv = torch.zeros(n_traj, t_max, dtype=torch.float64)
    for members in step_groups.values():
        values = [float(step_return[i, t]) for i, t in members]
        if len(values) == 1:
            mean, std = values[0], 1.0  # a singleton step group has no relative signal
        else:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for (i, t), v in zip(members, values):
            step = (v - mean) / (std + config.eps) if norm else v - mean
            adv[i, t] = episode[i] + config.step_advantage_w * step
    return adv
