"""Flat baselines on the padded layout ``[N, T]`` (spec §4.3): turn-level GAE, GRPO, RLOO, GiGPO, and token-level GAE
(``[N, T, L]``: one value per response token).

All take already-shaped rewards (``shape_rewards``) and are vectorised: group statistics are ``index_add_``
scatters over ``torch.unique`` group ids, returns-to-go are one reverse linear recurrence over T.
"""

from __future__ import annotations

import torch

from hiper.advantage.config import GAEConfig, GiGPOConfig, GRPOConfig, TokenGAEConfig
from hiper.advantage.hae import linear_recurrence_reverse
from hiper.advantage.layout import check_dones, check_turn_tensors, last_turn_mask

Tensor = torch.Tensor


def turn_gae(
    rewards: Tensor, dones: Tensor, v_turn: Tensor, turn_mask: Tensor, config: GAEConfig
) -> tuple[Tensor, Tensor]:
    """Flat turn-level GAE (official ``turn_gae``; one value per turn read at response position 0).

    delta_t = r_t + g (1-d_t) V_{t+1} - V_t,  A_t = delta_t + g lam (1-d_t) A_{t+1}; a truncated last turn
    bootstraps from its own V_t if ``bootstrap_truncated`` else 0.

    Args:
        rewards, v_turn: ``[N, T]`` float; dones, turn_mask: ``[N, T]`` bool.

    Returns:
        ``(adv, ret)`` raw advantages and critic targets ``A + V``, ``[N, T]``, 0 on padding.
    """
    check_turn_tensors(turn_mask, rewards=rewards, dones=dones, v_turn=v_turn)
    check_dones(dones, turn_mask)
    zeros = torch.zeros_like(rewards)
    valid = turn_mask
    v = torch.where(valid, v_turn, zeros)
    last = last_turn_mask(valid)
    not_done = (~(dones & valid)).to(rewards.dtype)
    v_next = torch.empty_like(v)
    v_next[:, :-1] = v[:, 1:]
    v_next[:, -1] = 0.0
    truncated = v if config.bootstrap_truncated else zeros
    v_next = torch.where(last, truncated, v_next)
    delta = torch.where(valid, rewards + config.gamma * not_done * v_next - v, zeros)
    chain = (config.gamma * config.lam) * not_done * (valid & ~last).to(rewards.dtype)
    adv = linear_recurrence_reverse(delta, chain)
    return adv, torch.where(valid, adv + v, zeros)


def token_gae(
    scores: Tensor, v_token: Tensor, token_mask: Tensor, config: TokenGAEConfig
) -> tuple[Tensor, Tensor]:
    """Token-level GAE inside each turn (verl's ``compute_gae_advantage_return`` on verl-agent's turn samples).

    Each turn ``(n, t)`` is its own sequence of response tokens ``j``: the reward is ``scores[n, t]`` on the last
    valid token and 0 elsewhere; ``delta_j = r_j + g V_{j+1} - V_j`` with ``V`` after the last token = 0;
    ``A_j = delta_j + g lam A_{j+1}``. No credit crosses turns: that is what the score (the episode's return on
    every turn) is for.

    Args:
        scores: ``[N, T]`` float per-turn scores (``turn_credit_scores``).
        v_token: ``[N, T, L]`` float critic value before each response token.
        token_mask: ``[N, T, L]`` bool response tokens, right-padded (a turn's tokens are a prefix of ``L``);
            all False on padded turns.

    Returns:
        ``(adv, ret)`` raw advantages and critic targets ``A + V``, ``[N, T, L]``, 0 off the mask.
    """
    if v_token.dim() != 3 or v_token.shape[:2] != scores.shape or token_mask.shape != v_token.shape:
        raise ValueError(f"token_gae needs scores [N, T] and v_token / token_mask [N, T, L] alike; got "
                         f"{tuple(scores.shape)}, {tuple(v_token.shape)}, {tuple(token_mask.shape)}")
    if token_mask.dtype != torch.bool:
        raise ValueError("token_mask must be bool")
    zeros = torch.zeros_like(v_token)
    v = torch.where(token_mask, v_token, zeros)
    next_valid = torch.zeros_like(token_mask)
    next_valid[..., :-1] = token_mask[..., 1:]
    last = token_mask & ~next_valid  # the last response token of each turn
    r = torch.where(last, scores.unsqueeze(-1).expand_as(v), zeros)
    v_next = torch.zeros_like(v)
    v_next[..., :-1] = v[..., 1:]
    v_next = torch.where(next_valid, v_next, zeros)
    delta = torch.where(token_mask, r + config.gamma * v_next - v, zeros)
    chain = (config.gamma * config.lam) * next_valid.to(v.dtype)
    adv = linear_recurrence_reverse(delta, chain)
    return adv, torch.where(token_mask, adv + v, zeros)


def returns_to_go(rewards: Tensor, turn_mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{j >= t} gamma^(j-t) r_j within each trajectory, ``[N, T]`` (0 on padding), no bootstrap."""
    valid = turn_mask
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    chain = gamma * (valid & ~last_turn_mask(valid)).to(rewards.dtype)
    return linear_recurrence_reverse(r, chain)


def group_mean_std(values: Tensor, keys: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted group statistics broadcast back to the items.

    Args:
        values: ``[M]`` float.
        keys: ``[M]`` long group ids, or ``[M, k]`` long composite keys (rows compared whole).
        weights: ``[M]`` float multiplicity of each item (0 excludes it).

    Returns:
        ``(mean, std, count)`` each ``[M]``: the group's weighted mean, unbiased std
        (sqrt(sum w (x - mean)^2 / (n - 1)), 0 when n <= 1) and total weight n.
    """
    _, inverse = torch.unique(keys, dim=0 if keys.dim() == 2 else None, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    w = weights.to(values.dtype)
    count = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, w)
    total = torch.zeros_like(count).index_add_(0, inverse, w * values)
    mean = total / count.clamp_min(1e-12)
    dev = values - mean[inverse]
    sq = torch.zeros_like(count).index_add_(0, inverse, w * dev * dev)
    std = torch.sqrt(sq / (count - 1).clamp_min(1.0)) * (count > 1)
    return mean[inverse], std[inverse], count[inverse]


def episode_group_advantage(
    rewards: Tensor,
    turn_mask: Tensor,
    group: Tensor,
    *,
    norm_by_std: bool,
    eps: float,
    group_stats: str = "trajectory",
) -> Tensor:
    """GRPO's group-normalised episode return (spec §4.3), one value per trajectory ``[N]``.

    A_i = (R_i - mean_g) / (std_g + eps) (or R_i - mean_g without ``norm_by_std``), R_i = sum_t r_t, mean / unbiased
    std over the group (each trajectory weighted 1, or by its number of turns with ``group_stats="turn"``). A group
    with a single member (total weight 1) gets mean 0 and std 1, i.e. A_i = R_i (verl's rule). Empty trajectories
    get 0.
    """
    if group.shape != turn_mask.shape[:1] or group.dtype.is_floating_point or group.dtype == torch.bool:
        raise ValueError(f"group must be a [N] integer tensor, got {group.dtype} {tuple(group.shape)}")
    valid = turn_mask
    episode_return = torch.where(valid, rewards, torch.zeros_like(rewards)).sum(dim=1)
    n_turns = valid.sum(dim=1).to(rewards.dtype)
    nonempty = (n_turns > 0).to(rewards.dtype)
    weights = n_turns if group_stats == "turn" else nonempty
    mean, std, count = group_mean_std(episode_return, group.long(), weights)
    singleton = count <= 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    adv = (episode_return - mean) / (std + eps) if norm_by_std else episode_return - mean
    return adv * nonempty


def turn_credit_scores(env_rewards: Tensor, shaped: Tensor, turn_mask: Tensor) -> Tensor:
    """verl-agent's per-turn scores ``[N, T]``: every turn of a trajectory carries the trajectory's env return, plus
    its own shaping terms only (``shaped - env_rewards`` on that turn: the invalid-format and KEEP penalties it
    earned), so a penalty is charged to the turn that earned it (official ``ray_trainer.py:204-224``). 0 on padding.

    Args:
        env_rewards: ``[N, T]`` float env rewards before shaping; shaped: ``[N, T]`` float shaped rewards;
        turn_mask: ``[N, T]`` bool.
    """
    zeros = torch.zeros_like(shaped)
    env = torch.where(turn_mask, env_rewards, zeros)
    return torch.where(turn_mask, env.sum(dim=1, keepdim=True) + (shaped - env), zeros)


def turn_group_advantage(
    scores: Tensor, turn_mask: Tensor, group: Tensor, *, norm_by_std: bool, eps: float, leave_one_out: bool = False
) -> Tensor:
    """Group advantage over turn samples ``[N, T]`` (verl-agent with ``compute_mean_std_cross_steps=True``): every
    valid turn is one sample of its trajectory's group; A = (s - mean_g) / (std_g + eps) (or s - mean_g without
    ``norm_by_std``; with ``leave_one_out``, RLOO's n / (n - 1) (s - mean_g)). A group with one turn sample gets
    mean 0 and std 1 (verl's rule). 0 on padding.

    Args:
        scores: ``[N, T]`` float (``turn_credit_scores``); turn_mask: ``[N, T]`` bool; group: ``[N]`` integer.
    """
    if group.shape != turn_mask.shape[:1] or group.dtype.is_floating_point or group.dtype == torch.bool:
        raise ValueError(f"group must be a [N] integer tensor, got {group.dtype} {tuple(group.shape)}")
    adv = torch.zeros_like(scores)
    values = scores[turn_mask]
    if not values.numel():
        return adv
    keys = group.long().unsqueeze(1).expand_as(turn_mask)[turn_mask]
    mean, std, count = group_mean_std(values, keys, torch.ones_like(values))
    singleton = count <= 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    if leave_one_out:
        out = torch.where(singleton, values, count / (count - 1).clamp_min(1.0) * (values - mean))
    elif norm_by_std:
        out = (values - mean) / (torch.where(singleton, torch.ones_like(std), std) + eps)
    else:
        out = values - mean
    adv[turn_mask] = out
    return adv


def grpo(rewards: Tensor, turn_mask: Tensor, group: Tensor, config: GRPOConfig) -> Tensor:
    """GRPO advantage per trajectory ``[N]`` (see ``episode_group_advantage``)."""
    return episode_group_advantage(
        rewards,
        turn_mask,
        group,
        norm_by_std=config.norm_by_std,
        eps=config.eps,
        group_stats=config.group_stats,
    )


def rloo(rewards: Tensor, turn_mask: Tensor, group: Tensor) -> Tensor:
    """RLOO advantage per trajectory ``[N]``: A_i = R_i - mean_{j != i in group} R_j = n/(n-1) (R_i - mean_g).

    A single-member group has no baseline: A_i = R_i. Empty trajectories get 0.
    """
    if group.shape != turn_mask.shape[:1] or group.dtype.is_floating_point or group.dtype == torch.bool:
        raise ValueError(f"group must be a [N] integer tensor, got {group.dtype} {tuple(group.shape)}")
    episode_return = torch.where(turn_mask, rewards, torch.zeros_like(rewards)).sum(dim=1)
    nonempty = turn_mask.any(dim=1).to(rewards.dtype)
    mean, _, count = group_mean_std(episode_return, group.long(), nonempty)
    scale = torch.where(count > 1, count / (count - 1).clamp_min(1.0), torch.ones_like(count))
    baseline = torch.where(count > 1, mean, torch.zeros_like(mean))
    return scale * (episode_return - baseline) * nonempty


def gigpo(
    rewards: Tensor,
    turn_mask: Tensor,
    group: Tensor,
    state_id: Tensor,
    config: GiGPOConfig,
    env_rewards: Tensor | None = None,
) -> Tensor:
    """GiGPO per-turn advantage ``[N, T]`` (GiGPO paper Eq. 3-8; spec §4.3).

    A_{i,t} = A^E_i + w * A^S_{i,t}. A^E is the episode-level group advantage (``episode_group_advantage``; std
    division only in ``mean_std_norm``). A^S: turns of the same group with the same ``state_id`` (anchor state, e.g.
    the hashed exact observation text) form a step group; G_{i,t} is the discounted return-to-go with
    ``config.gamma``; A^S = G - mean_sg (divided by the unbiased std_sg + eps in ``mean_std_norm``). A singleton step
    group gets A^S = 0.

    With ``config.penalty_credit == "turn"`` the episode level is per turn sample (``turn_group_advantage`` of
    ``turn_credit_scores(env_rewards, rewards)``), as verl-agent computes it.

    Args:
        rewards: ``[N, T]`` float shaped rewards; turn_mask ``[N, T]`` bool; group ``[N]`` long;
        state_id: ``[N, T]`` long anchor-state id per turn (compared only within a group);
        env_rewards: ``[N, T]`` float rewards before shaping (needed with ``penalty_credit="turn"``).
    """
    if state_id.shape != turn_mask.shape or state_id.dtype.is_floating_point or state_id.dtype == torch.bool:
        raise ValueError(f"state_id must be an integer tensor of shape {tuple(turn_mask.shape)}")
    norm = config.mode == "mean_std_norm"
    if config.penalty_credit == "turn":
        if env_rewards is None:
            raise ValueError("gigpo with penalty_credit='turn' needs env_rewards (the rewards before shaping)")
        scores = turn_credit_scores(env_rewards, rewards, turn_mask)
        episode = turn_group_advantage(scores, turn_mask, group, norm_by_std=norm, eps=config.eps)
    else:
        episode = episode_group_advantage(
            rewards, turn_mask, group, norm_by_std=norm, eps=config.eps, group_stats=config.group_stats
        ).unsqueeze(1)
    step_return = returns_to_go(rewards, turn_mask, config.gamma)
    traj_of_turn = group.long().unsqueeze(1).expand_as(state_id)
    keys = torch.stack((traj_of_turn[turn_mask], state_id.long()[turn_mask]), dim=1)  # [M, 2]
    values = step_return[turn_mask]
    adv = torch.zeros_like(rewards)
    if values.numel():
        mean, std, count = group_mean_std(values, keys, torch.ones_like(values))
        singleton = count <= 1
        step = values - mean
        if norm:
            step = step / (torch.where(singleton, torch.ones_like(std), std) + config.eps)
        step = torch.where(singleton, torch.zeros_like(step), step)
        adv[turn_mask] = step * config.step_advantage_w
    return torch.where(turn_mask, adv + episode, torch.zeros_like(adv))
