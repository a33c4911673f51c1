"""Reward shaping as a separate, logged stage (spec §3.2, §4.3, §7 #6-#7, §7.1 Mode C item 5).

Every shaping term is returned as its own ``[N, T]`` tensor so the trainer can log (and ablate) it; the shaped
reward is ``rewards + sum(terms)``. Shaping is pure: the KEEP-consistency signal arrives as a bool tensor computed
upstream by the protocol (subgoal text, equivalent to comparing tags-included token ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hiper.advantage.config import ShapingConfig
from hiper.advantage.layout import check_turn_tensors, last_turn_mask

Tensor = torch.Tensor

#: names of the shaping terms, always present in ``ShapedRewards.terms`` (zeros when disabled)
SHAPING_TERMS = ("keep", "invalid", "keep_consistency", "switch_rate_floor")


@dataclass
class ShapedRewards:
    """Shaped per-turn rewards.

    Attributes:
        total: ``[N, T]`` float, ``rewards + sum(terms.values())`` on valid turns, 0 on padding.
        terms: name -> ``[N, T]`` float additive term (0 on padding), keys ``SHAPING_TERMS``.
    """

    total: Tensor
    terms: dict[str, Tensor]

    def metrics(self, turn_mask: Tensor) -> dict[str, float]:
        """Per-trajectory mean of each term and of the total (``shaping/<term>``), for logging."""
        n_traj = max(int(turn_mask.any(dim=1).sum()), 1)
        sums = torch.stack([v.sum() for v in (*self.terms.values(), self.total)]).tolist()  # one host sync
        names = [f"shaping/{k}" for k in self.terms] + ["shaping/total_return"]
        return {name: value / n_traj for name, value in zip(names, sums)}


def shape_rewards(
    rewards: Tensor,
    switch: Tensor,
    valid: Tensor | None,
    keep_inconsistent: Tensor | None,
    turn_mask: Tensor,
    config: ShapingConfig,
) -> ShapedRewards:
    """Apply the KEEP, invalid-format, KEEP-consistency and switch-rate-floor terms (spec §3.2).

    Args:
        rewards: ``[N, T]`` float env rewards r_t.
        switch: ``[N, T]`` bool trainer-side switch flag q_t (KEEP = ``~switch``; turn 0 counts as KEEP when its
            flag is False, as in the official fixed mode).
        valid: ``[N, T]`` bool format validity (None = all valid; required when ``invalid_penalty != 0``).
        keep_inconsistent: ``[N, T]`` bool, KEEP turn whose subgoal differs from the previous turn's (None = none;
            required when ``keep_consistency_penalty != 0``). Only honoured on KEEP turns at position >= 1.
        turn_mask: ``[N, T]`` bool, left-aligned.
        config: any ``ShapingConfig`` (every estimator config is one).

    Returns:
        ``ShapedRewards`` with terms (all per turn, 0 on padding):

        * ``keep``: ``"fixed"``: kappa on each counted KEEP turn. ``"normalized"``: kappa / T_c on each counted KEEP
          turn of trajectories with T >= 2 (total kappa * m / T_c). ``"last_step"``: kappa * m / T_c once on the
          final turn (T >= 2). Counted turns are all valid turns, or turns >= 1 with ``keep_penalty_skip_first``;
          T_c is their number and m the number of KEEP turns among them.
        * ``invalid``: ``-invalid_penalty`` on invalid turns.
        * ``keep_consistency``: ``keep_consistency_penalty`` on flagged KEEP turns at position >= 1.
        * ``switch_rate_floor``: ``-coef * (floor - rate)`` on the final turn when ``rate < floor``, with
          rate = (#turns with switch flag, turn 0 included) / (T - 1), T >= 2 (CODE-INIT semantics).
    """
    if not isinstance(config, ShapingConfig):
        raise TypeError(
            f"config must be a ShapingConfig (or an estimator config), got {type(config).__name__}"
        )
    if config.invalid_penalty != 0.0 and valid is None:
        raise ValueError("invalid_penalty != 0 needs the per-turn `valid` flags")
    if config.keep_consistency_penalty != 0.0 and keep_inconsistent is None:
        raise ValueError("keep_consistency_penalty != 0 needs the per-turn `keep_inconsistent` flags")
    check_turn_tensors(
        turn_mask, rewards=rewards, switch=switch, valid=valid, keep_inconsistent=keep_inconsistent
    )

    dtype = rewards.dtype
    n_traj, t_max = turn_mask.shape
    zeros = torch.zeros_like(rewards)
    terms = {name: zeros for name in SHAPING_TERMS}
    position = torch.arange(t_max, device=rewards.device).expand(n_traj, t_max)
    n_turns = turn_mask.sum(dim=1)  # [N]
    keep = ~switch & turn_mask
    last = last_turn_mask(turn_mask)

    kappa = config.keep_penalty
    if kappa != 0.0:
        counted = turn_mask & (position >= 1) if config.keep_penalty_skip_first else turn_mask
        counted_keep = keep & counted
        if config.keep_penalty_mode == "fixed":
            terms["keep"] = counted_keep.to(dtype) * kappa
        else:
            n_counted = counted.sum(dim=1).clamp_min(1).to(dtype)  # [N]
            n_keep = counted_keep.sum(dim=1).to(dtype)
            eligible = (n_turns >= 2).unsqueeze(1)
            if config.keep_penalty_mode == "normalized":
                per_keep = (kappa / n_counted).unsqueeze(1)
                terms["keep"] = torch.where(counted_keep & eligible, per_keep, zeros)
            else:  # last_step
                total = (kappa * n_keep / n_counted).unsqueeze(1)
                terms["keep"] = torch.where(last & eligible, total, zeros)

    if config.invalid_penalty != 0.0:
        assert valid is not None
        terms["invalid"] = (~valid & turn_mask).to(dtype) * -config.invalid_penalty

    if config.keep_consistency_penalty != 0.0:
        assert keep_inconsistent is not None
        flagged = keep_inconsistent & keep & (position >= 1)
        terms["keep_consistency"] = flagged.to(dtype) * config.keep_consistency_penalty

    if config.switch_rate_floor > 0.0 and config.switch_rate_floor_coef > 0.0:
        rate = (switch & turn_mask).sum(dim=1).to(dtype) / (n_turns - 1).clamp_min(1).to(dtype)
        shortfall = (config.switch_rate_floor - rate).clamp_min(0.0)
        penalty = torch.where(
            n_turns >= 2, -config.switch_rate_floor_coef * shortfall, torch.zeros_like(rate)
        )
        terms["switch_rate_floor"] = torch.where(last, penalty.unsqueeze(1), zeros)

    total = rewards + sum(terms.values())
    total = torch.where(turn_mask, total, zeros)
    return ShapedRewards(total=total, terms=terms)
