"""PPO losses (a policy-loss registry, k3 KL, entropy, clipped value loss) and safe optimizer steps.

Policy losses are pure per-token functions in a registry, as verl's ``core_algos.register_policy_loss``:
``get_policy_loss(name)(logp, old_logp, adv, cfg) -> (losses, clipped, lower_clipped)``, all ``[B, L]``.
``dual_clip`` (the paper's, spec §3.12) is the default; ``clip`` is vanilla PPO. Add one with
``@register_policy_loss("name")`` and select it with ``actor.policy_loss``.

All losses are **token sums**: they return ``sum over masked tokens`` and the caller divides by the
number of loss tokens of the whole mini-batch, so a mini-batch split into padding-aware micro-batches
gives exactly the token-mean of the un-split mini-batch (verl's ``token-mean`` aggregation, without
the per-micro-batch averaging bias).

Shapes: ``B`` = turn samples in a micro-batch, ``L`` = response length (tokens). Log-probs are natural
logs of the probability of the sampled token.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hiper.settings import setting


@dataclass
class PPOLossConfig:
    """Actor loss hyperparameters (verl names); the run config's ``actor`` section extends it."""

    policy_loss: str = setting("dual_clip", "policy loss from the registry: dual_clip (paper) or clip (vanilla PPO)",
                               "spec §3.12")
    clip_ratio_low: float = setting(0.2, "PPO clip epsilon below 1", "paper 0.2 (spec §4.1)")
    clip_ratio_high: float = setting(0.2, "PPO clip epsilon above 1", "paper 0.2 (spec §4.1)")
    clip_ratio_c: float = setting(3.0, "dual-clip constant (> 1): caps the loss of negative-advantage tokens",
                                  "paper 3.0 (spec §4.1)")
    kl_coef: float = setting(0.01, "weight of the k3 KL to the frozen reference policy (0 = no reference model)",
                             "paper 0.01 (spec §4.1)")
    entropy_coeff: float = setting(0.001, "entropy bonus weight", "paper 0.001 (spec §4.1)")


#: per-token policy loss: ``(logp, old_logp, adv, cfg) -> (losses, clipped, lower_clipped)``, each ``[B, L]``
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, PPOLossConfig], tuple[Tensor, Tensor, Tensor]]
_POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a per-token policy loss under ``name`` (``ValueError`` on a duplicate)."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in _POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        _POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossFn:
    """The registered policy loss ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; known: {policy_losses()}") from None


def policy_losses() -> list[str]:
    """Sorted names of the registered policy losses."""
    return sorted(_POLICY_LOSSES)


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x`` over ``mask`` (same shape, bool or 0/1). Masked-out entries never propagate NaN/inf."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask``; 0 when the mask is empty."""
    n = mask.bool().sum()
    return masked_sum(x, mask) / n.clamp(min=1)


def dual_clip_pg_losses(
    logp: Tensor, old_logp: Tensor, adv: Tensor, clip_low: float, clip_high: float, clip_c: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token dual-clip PPO loss ``[B, L]`` plus (clip-fraction indicator, lower-clip indicator).

    ``ratio = exp(logp - old_logp)`` (log-ratio clamped to [-20, 20] so exp stays finite);
    ``L1 = max(-A ratio, -A clip(ratio, 1-clip_low, 1+clip_high))``; for ``A < 0`` the loss is
    additionally capped at ``-A * clip_c`` (the dual clip of Ye et al. 2020, as in verl).
    """
    log_ratio = torch.clamp(logp - old_logp, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss_1 = torch.maximum(loss_unclipped, loss_clipped)
    clipped = (loss_clipped > loss_unclipped).float()
    if clip_c is not None and clip_c > 1.0:
        loss_3 = -adv * clip_c
        loss_2 = torch.minimum(loss_3, loss_1)
        lower_clipped = ((loss_3 < loss_1) & (adv < 0)).float()
        losses = torch.where(adv < 0, loss_2, loss_1)
    else:
        lower_clipped = torch.zeros_like(loss_1)
        losses = loss_1
    return losses, clipped, lower_clipped


@register_policy_loss("dual_clip")
def _dual_clip(logp: Tensor, old_logp: Tensor, adv: Tensor, cfg: PPOLossConfig) -> tuple[Tensor, Tensor, Tensor]:
    return dual_clip_pg_losses(logp, old_logp, adv, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c)


@register_policy_loss("clip")
def _clip(logp: Tensor, old_logp: Tensor, adv: Tensor, cfg: PPOLossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Vanilla PPO clip (no dual clip): ``clip_ratio_c`` is ignored."""
    return dual_clip_pg_losses(logp, old_logp, adv, cfg.clip_ratio_low, cfg.clip_ratio_high, 1.0)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 ("low_var_kl") estimate of KL(pi || pi_ref), clamped to [-10, 10] as in verl."""
    log_ratio = torch.clamp(ref_logp - logp, -20.0, 20.0)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    return torch.clamp(kl, -10.0, 10.0)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy (nats) of the categorical ``softmax(logits)``; ``logits`` is ``[..., V]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def actor_loss_sum(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    loss_mask: Tensor,
    cfg: PPOLossConfig,
    entropy: Tensor | None = None,
    ref_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Actor loss summed over the ``loss_mask`` tokens of one micro-batch (all inputs ``[B, L]``).

    ``pg`` is the per-token loss of ``cfg.policy_loss``; ``L = sum(pg) - entropy_coeff * sum(entropy) + kl_coef * sum(k3 KL)``; divide by the mini-batch's
    loss-token count for the token-mean. Returns the loss and detached per-term token sums for logging.
    """
    losses, clipped, lower = get_policy_loss(cfg.policy_loss)(logp, old_logp, adv, cfg)
    pg = masked_sum(losses, loss_mask)
    total = pg
    stats = {
        "pg_loss": pg.detach(),
        "pg_clipfrac": masked_sum(clipped, loss_mask).detach(),
        "pg_clipfrac_lower": masked_sum(lower, loss_mask).detach(),
        "ppo_kl": masked_sum(old_logp - logp, loss_mask).detach(),
    }
    if entropy is not None:
        ent = masked_sum(entropy, loss_mask)
        stats["entropy"] = ent.detach()
        if cfg.entropy_coeff:
            total = total - cfg.entropy_coeff * ent
    if ref_logp is not None:
        kl = masked_sum(kl_k3(logp, ref_logp), loss_mask)
        stats["kl"] = kl.detach()
        if cfg.kl_coef:
            total = total + cfg.kl_coef * kl
    return total, stats


def value_loss_terms(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange: float | None, *, scale: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss of one head summed over ``mask`` (all ``[B]`` at the head's read position).

    ``scale * max((v - G)^2, (clip(v, v_old - c, v_old + c) - G)^2)``: ``scale`` is ``critic.loss_scale`` (1.0 in
    the official HiPER fork, 0.5 in verl's convention); ``cliprange=None`` disables clipping. Returns (loss sum,
    clipped-count).
    """
    per, clipped = clipped_value_error(values, old_values, returns, cliprange)
    return scale * masked_sum(per, mask), masked_sum(clipped, mask).detach()


def clipped_value_error(
    values: Tensor, old_values: Tensor, returns: Tensor, cliprange: float | None
) -> tuple[Tensor, Tensor]:
    """Elementwise PPO value error ``max((v - G)^2, (clip(v, v_old - c, v_old + c) - G)^2)`` and a 0/1
    tensor marking where the clipped term was the larger one (same shape as ``values``); ``cliprange=None``
    gives the plain squared error and no clipping."""
    err = (values - returns) ** 2
    if cliprange is None:
        return err, torch.zeros_like(err)
    v_clip = old_values + torch.clamp(values - old_values, -cliprange, cliprange)
    err_clip = (v_clip - returns) ** 2
    return torch.maximum(err, err_clip), (err_clip > err).to(values.dtype)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var[target - pred] / Var[target]`` over ``mask`` (population variances).

    NaN when fewer than 2 points are selected or the targets are constant there up to rounding (``Var[target]`` below
    1e-12 of their squared magnitude): a batch without a single success has targets equal but for float residue, and
    dividing by that residue reported explained variances of -1e14."""
    m = mask.bool()
    if int(m.sum()) < 2:
        return float("nan")
    y = target[m].double()
    p = pred[m].double()
    var_y = y.var(unbiased=False)
    if float(var_y) <= 1e-12 * max(1.0, float(y.abs().max())) ** 2:
        return float("nan")
    return float(1.0 - (y - p).var(unbiased=False) / var_y)


def grads_finite(params: list[torch.nn.Parameter]) -> bool:
    """True when every existing gradient is finite (one fused check, no per-element Python loop)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    return bool(torch.isfinite(norms).all())


class UpdatesDiverged(RuntimeError):
    """Optimizer steps keep failing (non-finite loss, gradients, weights or model outputs); ``str(err)`` is one line
    naming the likely cause."""


def safe_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    grad_clip: float | None,
    loss_finite: bool = True,
) -> tuple[bool, float]:
    """Clip and apply one optimizer step, or roll it back: never leave non-finite weights.

    The step is skipped when the loss or any gradient is non-finite; when it is applied and leaves a non-finite
    weight (a learning rate far too high), parameters and optimizer state are restored to what they were before
    it. Returns ``(stepped, grad_norm)``; ``stepped`` is False for a skipped or rolled-back step, whose gradients
    are zeroed, so one bad batch cannot corrupt the weights.
    """
    if not loss_finite or not grads_finite(params):
        optimizer.zero_grad(set_to_none=True)
        return False, float("nan")
    norm: Tensor | float
    if grad_clip is not None and grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            if grads
            else 0.0
        )
    grad_norm = float(norm)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return False, grad_norm
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if not weights_finite(params):
        with torch.no_grad():
            for p, b in zip(params, before):
                p.copy_(b)
        optimizer.load_state_dict(state)
        return False, grad_norm
    return True, grad_norm


def weights_finite(params: list[torch.nn.Parameter] | list[Tensor]) -> bool:
    """True when every parameter is finite (one fused check)."""
    if not params:
        return True
    norms = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params])
    return bool(torch.isfinite(norms).all())
