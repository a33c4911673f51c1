"""Hierarchical Advantage Estimation (HAE), vectorised over the padded layout ``[N, T]`` (spec §3.3-§3.7).

Notation (spec §3.1): turn t of one trajectory, shaped reward r_t, done flag d_t, switch flag q_t; boundaries
B = {0} U {t >= 1 : q_t}; segment k covers b_k .. e_k (n_k turns); values VL (low head), VH (high head, used at
boundaries), VT (term head). The segment bootstrap N_k (§3.3) is 0 if d_{e_k}; VH_{b_{k+1}} if a next segment
exists; else (truncated last segment) VH_{b_k} if ``bootstrap_truncated`` else 0. The low level instead bootstraps a
truncated last turn from VL_{e_k} (code quirk, §3.3 / §3.5).

All three recursions are first-order linear recurrences X_t = D_t + C_t * X_{t+1} over turns, so they are stacked
into one ``[3, N]`` state and solved with a single reverse loop over T (T <= 50): per step one fused multiply-add,
nothing per trajectory or per turn in Python.

* low  (§3.5): D = r_t + g (1-d_t) next_t - VL_t,   C = g lam (1-d_t) [t not a segment end];   X = AL
* term (§3.7): D = r_t + g [t = e_k] N_k,            C = g [t not a segment end];                X = GT
* high (§3.6): D = r_t + g [t = e_k] (N_k - lam_seg (1-d_t) VH_{t+1} [next segment exists]),
               C = g lam_seg (1-d_t) [next segment exists] at segment ends, else g;            X_{b_k} = GH_k

The high recursion unrolls to X_{b_k} = R_k + g^{n_k} N_k + g^{n_k} lam_seg (1-d_{e_k}) AH_{k+1}, i.e.
AH_k = X_{b_k} - VH_{b_k} is exactly the SMDP GAE of §3.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hiper.advantage.config import HAEConfig
from hiper.advantage.layout import check_dones, check_turn_tensors

Tensor = torch.Tensor


@dataclass
class HAEResult:
    """Per-turn HAE outputs, all ``[N, T]`` and 0 on padding (raw: not whitened).

    Attributes:
        adv_low, ret_low: AL_t and GL_t = AL_t + VL_t, every valid turn (§3.5).
        adv_high, ret_high: AH_k and GH_k = AH_k + VH_{b_k}, stored on boundary turns b_k only (§3.6).
        adv_term: code mode GT_t - VT_t; paper mode (q_t - beta_t)(VH_t - VLkeep_t); every valid turn (§3.7).
        ret_term: GT_t (MC return to the segment end + gamma^(e-t+1) N_k), every valid turn; the term head's
            target in code mode (computed in paper mode too, where no head uses it).
        boundary: bool, segment starts (turn 0 of every non-empty trajectory, and switch turns).
        segment_id: long, index k of the segment containing the turn, -1 on padding.
    """

    adv_low: Tensor
    adv_high: Tensor
    adv_term: Tensor
    ret_low: Tensor
    ret_high: Tensor
    ret_term: Tensor
    boundary: Tensor
    segment_id: Tensor


def _shift_left(x: Tensor, fill: float | bool = 0) -> Tensor:
    """``out[:, t] = x[:, t + 1]``, ``out[:, -1] = fill``."""
    out = torch.empty_like(x)
    out[:, :-1] = x[:, 1:]
    out[:, -1] = fill
    return out


def linear_recurrence_reverse(d: Tensor, c: Tensor) -> Tensor:
    """Solve X_t = D_t + C_t * X_{t+1} backwards with X_T = 0.

    Args:
        d, c: ``[..., T]`` (same shape).

    Returns:
        ``[..., T]`` X. One reverse loop over T of fused multiply-adds on contiguous ``[...]`` slices.
    """
    d_t = d.movedim(-1, 0).contiguous()
    c_t = c.movedim(-1, 0).contiguous()
    out = torch.empty_like(d_t)
    acc = torch.zeros_like(d_t[0])
    for t in range(d_t.shape[0] - 1, -1, -1):
        acc = torch.addcmul(d_t[t], c_t[t], acc)
        out[t] = acc
    return out.movedim(0, -1)


def hae(
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
) -> HAEResult:
    """Hierarchical Advantage Estimation on the padded layout (spec §3.3-§3.7).

    Args:
        rewards: ``[N, T]`` float, already-shaped per-turn rewards r~_t (see ``shape_rewards``).
        dones: ``[N, T]`` bool; True only at a trajectory's last valid turn when the episode ended. A last turn
            with ``dones=False`` is a truncated episode.
        switch: ``[N, T]`` bool trainer-side switch flag q_t; turn 0 is a boundary whatever its flag.
        v_low: ``[N, T]`` float VL_t (low head, read after ``</subgoal>``), every turn.
        v_high: ``[N, T]`` float VH_t (high head, read at response position 0). Code mode reads it only on
            boundary turns. Paper mode reads it on every turn: there it is the pre-decision value
            V(prompt) = V^high(s_t, o_{t-1}) at position 0 of each turn, so the critic must fill it everywhere.
        v_term: ``[N, T]`` float VT_t (term head, position 0), every turn; required in code mode, ignored (may be
            None) in paper mode.
        turn_mask: ``[N, T]`` bool, left-aligned.
        config: ``HAEConfig`` (gamma, lam, lam_seg, bootstrap_truncated, switch_mode). Shaping fields and
            ``norm_adv`` are not used here (the registry estimator applies them).
        beta: ``[N, T]`` float in [0, 1], P(SWITCH | s_t, o_{t-1}) from the actor; paper mode only.
        v_low_keep: ``[N, T]`` float V^low(s_t, o_{t-1}) (critic pass on the KEEP continuation); paper mode only.

    Returns:
        ``HAEResult`` (raw advantages and critic targets, 0 on padding).

    Raises:
        ValueError: shapes/dtypes differ, non-finite values on valid turns, a non-left-aligned mask, ``dones``
            before the last valid turn, or a missing input for the chosen ``switch_mode``.
    """
    if not isinstance(config, HAEConfig):
        raise TypeError(f"config must be an HAEConfig, got {type(config).__name__}")
    paper = config.switch_mode == "paper"
    if paper and (beta is None or v_low_keep is None):
        missing = [n for n, x in (("beta", beta), ("v_low_keep", v_low_keep)) if x is None]
        raise ValueError(
            f"switch_mode='paper' needs beta (actor P(SWITCH)) and v_low_keep (critic V^low(s_t, o_{{t-1}})); "
            f"missing: {missing}"
        )
    if not paper and v_term is None:
        raise ValueError(
            "switch_mode='code' needs v_term (the term head); use switch_mode='paper' for two heads"
        )
    check_turn_tensors(
        turn_mask, rewards=rewards, dones=dones, switch=switch, v_low=v_low, v_high=v_high,
        v_term=v_term if not paper else None, beta=beta if paper else None,
        v_low_keep=v_low_keep if paper else None,
    )  # fmt: skip
    check_dones(dones, turn_mask)
    if paper:
        assert beta is not None
        if bool((turn_mask & ((beta < 0.0) | (beta > 1.0))).any()):
            raise ValueError("beta is a probability P(SWITCH) and must lie in [0, 1] on valid turns")

    gamma, lam, lam_seg = config.gamma, config.lam, config.lam_seg
    valid = turn_mask
    zeros = torch.zeros_like(rewards)
    r = torch.where(valid, rewards, zeros)
    vl = torch.where(valid, v_low, zeros)
    vh = torch.where(valid, v_high, zeros)
    n_traj, t_max = valid.shape
    position = torch.arange(t_max, device=valid.device).expand(n_traj, t_max)

    # segmentation (§3.1, §3.3)
    boundary = valid & (switch | (position == 0))
    segment_id = torch.where(valid, boundary.long().cumsum(dim=1) - 1, torch.full_like(position, -1))
    next_valid = _shift_left(valid, False)
    seg_end = valid & (~next_valid | _shift_left(boundary, False))
    done = dones & valid
    not_done = (~done).to(r.dtype)
    vh_next = _shift_left(vh, 0.0)  # VH_{t+1}: the next segment's start value at segment ends
    start_pos = torch.cummax(torch.where(boundary, position, torch.zeros_like(position)), dim=1).values
    vh_start = torch.gather(vh, 1, start_pos)  # VH_{b_k} on every turn of segment k

    # segment bootstraps at segment ends (only read where seg_end)
    truncated_high = vh_start if config.bootstrap_truncated else zeros
    truncated_low = vl if config.bootstrap_truncated else zeros
    boot_high = torch.where(done, zeros, torch.where(next_valid, vh_next, truncated_high))  # N_k
    boot_low = torch.where(done, zeros, torch.where(next_valid, vh_next, truncated_low))  # N'_k (low quirk)
    end_f = seg_end.to(r.dtype)
    inner_f = (valid & ~seg_end).to(r.dtype)
    next_seg_f = (seg_end & next_valid).to(r.dtype) * not_done

    next_low = torch.where(seg_end, boot_low, _shift_left(vl, 0.0))
    d_low = r + gamma * not_done * next_low - vl
    c_low = (gamma * lam) * not_done * inner_f
    d_term = r + gamma * end_f * boot_high
    c_term = gamma * inner_f
    d_high = r + gamma * end_f * (boot_high - lam_seg * next_seg_f * vh_next)
    c_high = gamma * inner_f + (gamma * lam_seg) * next_seg_f

    d = torch.stack((d_low, d_term, d_high)) * valid
    c = torch.stack((c_low, c_term, c_high))
    x = linear_recurrence_reverse(d, c)
    adv_low = torch.where(valid, x[0], zeros)
    ret_term = torch.where(valid, x[1], zeros)
    ret_high = torch.where(boundary, x[2], zeros)
    adv_high = torch.where(boundary, x[2] - vh, zeros)
    if paper:
        assert beta is not None and v_low_keep is not None
        gain = vh - torch.where(valid, v_low_keep, zeros)
        adv_term = torch.where(valid, (switch.to(r.dtype) - beta) * gain, zeros)
    else:
        assert v_term is not None
        adv_term = torch.where(valid, x[1] - v_term, zeros)
    return HAEResult(
        adv_low=adv_low,
        adv_high=adv_high,
        adv_term=adv_term,
        ret_low=torch.where(valid, adv_low + vl, zeros),
        ret_high=ret_high,
        ret_term=ret_term,
        boundary=boundary,
        segment_id=segment_id,
    )
