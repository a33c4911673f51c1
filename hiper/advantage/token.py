"""Per-role whitening (spec §3.9) and the per-turn -> per-token broadcast with its loss mask (spec §3.8)."""

from __future__ import annotations

import torch

Tensor = torch.Tensor

WHITEN_EPS = 1e-8


def whiten(x: Tensor, mask: Tensor, eps: float = WHITEN_EPS) -> Tensor:
    """``(x - mean) / (std_pop + eps)`` over the entries where ``mask`` is True (spec §3.9).

    Args:
        x: float tensor of any shape.
        mask: bool tensor of the same shape.

    Returns:
        Tensor like ``x``: whitened on masked entries, 0 elsewhere (also all 0 when ``mask`` is empty). Statistics
        are population (biased) mean/std over the masked entries, as the official code.
    """
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool with x's shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    n = mask.sum()
    if int(n) == 0:
        return torch.zeros_like(x)
    m = mask.to(x.dtype)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return torch.where(mask, (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


def to_token_level(
    adv_action: Tensor,
    adv_subgoal: Tensor,
    adv_switch: Tensor,
    subgoal_in_loss: Tensor,
    action_mask: Tensor,
    subgoal_mask: Tensor,
    switch_mask: Tensor,
    response_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Broadcast per-turn advantages to their token spans (spec §3.8).

    adv[i, j] = AL_i [j in action_i] + AH_i [j in subgoal_i and subgoal_in_loss_i] + AT_i [j in switch_i];
    overlapping spans (the action-span fallback covers the whole response) **add**.
    loss_mask = union of the three masks used. Tokens outside them (newlines, EOS, stray text) get no loss.

    Args:
        adv_action, adv_subgoal, adv_switch: ``[B]`` float, one per turn sample (flat, e.g. ``unpad`` output).
        subgoal_in_loss: ``[B]`` bool, whether the subgoal span is trained (HAE: boundary turns; flat estimators:
            every turn).
        action_mask, subgoal_mask, switch_mask: ``[B, L]`` bool token masks (tags included).
        response_mask: optional ``[B, L]`` bool, ANDed into every mask.

    Returns:
        ``(token_adv [B, L] float, loss_mask [B, L] bool)``.
    """
    b = adv_action.shape[0]
    for name, a in (
        ("adv_action", adv_action),
        ("adv_subgoal", adv_subgoal),
        ("adv_switch", adv_switch),
        ("subgoal_in_loss", subgoal_in_loss),
    ):
        if a.shape != (b,):
            raise ValueError(f"{name} must be [B]={b}, got {tuple(a.shape)}")
    if subgoal_in_loss.dtype != torch.bool:
        raise ValueError("subgoal_in_loss must be bool")
    for name, m in (
        ("action_mask", action_mask),
        ("subgoal_mask", subgoal_mask),
        ("switch_mask", switch_mask),
        ("response_mask", response_mask),
    ):
        if m is None:
            continue
        if m.dtype != torch.bool or m.dim() != 2 or m.shape[0] != b or m.shape != action_mask.shape:
            raise ValueError(
                f"{name} must be bool [B, L] like action_mask {tuple(action_mask.shape)}, "
                f"got {m.dtype} {tuple(m.shape)}"
            )
    sub = subgoal_mask & subgoal_in_loss.unsqueeze(1)
    act, sw = action_mask, switch_mask
    if response_mask is not None:
        act, sub, sw = act & response_mask, sub & response_mask, sw & response_mask
    dtype = adv_action.dtype
    token_adv = (
        adv_action.unsqueeze(1) * act.to(dtype)
        + adv_subgoal.unsqueeze(1) * sub.to(dtype)
        + adv_switch.unsqueeze(1) * sw.to(dtype)
    )
    return token_adv, act | sub | sw
