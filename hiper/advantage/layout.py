"""The padded trajectory layout ``[n_traj, T_max]`` and conversions from / to flat turn samples.

A batch of turn samples (one row per (trajectory, turn), in any order) maps to a padded tensor ``x[i, t]`` =
value of turn ``t`` of trajectory ``i``; ``turn_mask[i, t]`` says which entries are real. The mask is
left-aligned: trajectory ``i`` has turns ``0 .. T_i - 1``. All conversions are single scatter / gather ops.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_index(traj_index: Tensor, turn_index: Tensor, n_traj: int, t_max: int) -> Tensor:
    """Validate flat indices and return the flat key ``traj * t_max + turn`` ([M] long)."""
    if traj_index.dim() != 1 or turn_index.shape != traj_index.shape:
        raise ValueError(
            f"traj_index and turn_index must be 1-D of equal length, got {tuple(traj_index.shape)} "
            f"and {tuple(turn_index.shape)}"
        )
    if traj_index.dtype.is_floating_point or turn_index.dtype.is_floating_point:
        raise ValueError("traj_index and turn_index must be integer tensors")
    if traj_index.numel() == 0:
        return traj_index.long()
    if int(traj_index.min()) < 0 or int(traj_index.max()) >= n_traj:
        raise ValueError(
            f"traj_index out of range [0, {n_traj}): min {int(traj_index.min())}, max {int(traj_index.max())}"
        )
    if int(turn_index.min()) < 0 or int(turn_index.max()) >= t_max:
        raise ValueError(
            f"turn_index out of range [0, {t_max}): min {int(turn_index.min())}, max {int(turn_index.max())}"
        )
    return traj_index.long() * t_max + turn_index.long()


def pad_turns(
    values_flat: Tensor,
    traj_index: Tensor,
    turn_index: Tensor,
    n_traj: int,
    t_max: int,
    fill: float | bool | int = 0,
) -> Tensor:
    """Scatter flat per-turn values into the padded layout.

    Args:
        values_flat: ``[M, ...]`` one row per turn sample (any dtype; trailing dims are kept).
        traj_index: ``[M]`` long, trajectory of each row, in ``[0, n_traj)``.
        turn_index: ``[M]`` long, turn of each row within its trajectory, in ``[0, t_max)``.
        n_traj, t_max: layout size.
        fill: value of the padding entries.

    Returns:
        ``[n_traj, t_max, ...]`` with ``out[traj_index[m], turn_index[m]] = values_flat[m]``.

    Raises:
        ValueError: indices out of range or a (trajectory, turn) pair given twice -- the official trainer's
            duplicate-row padding (spec §7 #15) silently double-counted rewards; here it is an error.
    """
    key = _check_index(traj_index, turn_index, n_traj, t_max)
    if values_flat.shape[:1] != key.shape:
        raise ValueError(f"values_flat has {values_flat.shape[0]} rows but the indices have {key.numel()}")
    if key.numel() and torch.unique(key).numel() != key.numel():
        raise ValueError(
            "duplicate (traj_index, turn_index) pairs: each turn sample must appear once (spec §7 #15)"
        )
    out = torch.full(
        (n_traj * t_max, *values_flat.shape[1:]), fill, dtype=values_flat.dtype, device=values_flat.device
    )
    out[key] = values_flat
    return out.view(n_traj, t_max, *values_flat.shape[1:])


def unpad(x: Tensor, traj_index: Tensor, turn_index: Tensor) -> Tensor:
    """Gather padded ``x [N, T, ...]`` back to flat rows ``[M, ...]``: ``out[m] = x[traj_index[m], turn_index[m]]``."""
    if x.dim() < 2:
        raise ValueError(f"x must be at least [N, T], got shape {tuple(x.shape)}")
    _check_index(traj_index, turn_index, x.shape[0], x.shape[1])
    return x[traj_index.long(), turn_index.long()]


def turn_mask_from_index(
    traj_index: Tensor, turn_index: Tensor, n_traj: int, t_max: int | None = None
) -> Tensor:
    """Build the left-aligned ``turn_mask [n_traj, t_max]`` from flat indices and check it is left-aligned.

    ``t_max`` defaults to the longest trajectory. Raises ``ValueError`` if some trajectory's turns are not exactly
    ``0 .. T_i - 1`` (a gap or a duplicate).
    """
    if t_max is None:
        t_max = int(turn_index.max()) + 1 if turn_index.numel() else 1
    ones = torch.ones(traj_index.shape[0], dtype=torch.bool, device=traj_index.device)
    mask = pad_turns(ones, traj_index, turn_index, n_traj, t_max, fill=False)
    check_left_aligned(mask)
    return mask


def check_left_aligned(turn_mask: Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``turn_mask [N, T]`` is ``True`` then ``False`` (no gaps)."""
    if turn_mask.dtype != torch.bool or turn_mask.dim() != 2:
        raise ValueError(
            f"turn_mask must be a bool [N, T] tensor, got {turn_mask.dtype} {tuple(turn_mask.shape)}"
        )
    if turn_mask.shape[1] > 1 and bool((turn_mask[:, 1:] & ~turn_mask[:, :-1]).any()):
        bad = torch.nonzero((turn_mask[:, 1:] & ~turn_mask[:, :-1]).any(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"turn_mask must be left-aligned (turns 0..T_i-1 valid, no gaps); bad rows {bad}")


def check_turn_tensors(turn_mask: Tensor, **tensors: Tensor | None) -> None:
    """Validate per-turn tensors against ``turn_mask [N, T]``.

    Every given tensor must have shape ``[N, T]``. Names starting with ``v_``, ``rewards`` or ``beta`` must be
    floating point and finite on valid turns; the others (``dones``, ``switch`` ...) must be bool.
    ``None`` entries are skipped.
    """
    check_left_aligned(turn_mask)
    shape = turn_mask.shape
    if shape[1] == 0:
        raise ValueError("the layout needs at least one turn column (T_max >= 1)")
    for name, x in tensors.items():
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != shape:
            raise ValueError(f"{name} must have the turn_mask shape {tuple(shape)}, got {tuple(x.shape)}")
        if name.startswith(("v_", "rewards", "beta")):
            if not x.dtype.is_floating_point:
                raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
            # elementwise only: boolean-mask indexing (nonzero) is parallelised by torch and stalls under load
            if not bool((torch.isfinite(x) | ~turn_mask).all()):
                raise ValueError(f"{name} has non-finite values on valid turns")
        elif x.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {x.dtype}")


def last_turn_mask(turn_mask: Tensor) -> Tensor:
    """``[N, T]`` bool: True at each trajectory's last valid turn (left-aligned mask)."""
    nxt = torch.zeros_like(turn_mask)
    nxt[:, :-1] = turn_mask[:, 1:]
    return turn_mask & ~nxt


def check_dones(dones: Tensor, turn_mask: Tensor) -> None:
    """``dones`` may be True only at a trajectory's last valid turn (an episode ends once)."""
    early = dones & turn_mask & ~last_turn_mask(turn_mask)
    if bool(early.any()):
        rows = torch.nonzero(early.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"dones is True before the last valid turn in rows {rows}; an episode can end only once"
        )
