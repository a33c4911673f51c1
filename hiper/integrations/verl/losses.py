"""Role-aware loss functions for verl 0.9.1's engine workers (``set_loss_fn``), with pure-torch cores.

verl's default ``ppo_loss`` and ``value_loss`` run over ``response_mask``: every generated token gets the
advantage and every position trains the critic. HiPER trains the actor only on its role spans (spec §3.8:
action tokens, subgoal tokens of boundary turns, switch tokens) and the critic only at the value read positions
(spec §3.4, §3.12). The advantage step (:mod:`hiper.integrations.verl.trainer`) writes per row:

* ``hae_loss_mask`` (and ``loss_mask``, which verl's engine counts for the global token-mean denominator), and
  ``advantages`` (zero outside the mask);
* ``hae_value_pos`` / ``hae_value_target`` / ``hae_value_weight`` ``[3]`` (heads low, high, term).

:func:`hae_ppo_loss` is verl's ``ppo_loss`` with ``response_mask`` replaced by ``hae_loss_mask`` (so the PPO
term, the entropy bonus and the KL penalty all run over the role tokens only, as in the official trainer).
:func:`hae_value_loss` reads the critic at the per-row positions and applies the clipped value loss per head.
``response_mask`` itself is never overwritten: the old-log-prob and value passes need the full response.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hiper.losses import clipped_value_error

HEADS = ("low", "high", "term")


def gather_head_values(values: Tensor, positions: Tensor, critic_heads: int = 1) -> Tensor:
    """Values ``[B, 3]`` (heads low, high, term) read from per-position critic output.

    Args:
        values: ``[B, L]`` (one head: every head reads channel 0) or ``[B, L, 3]`` (channels low, high, term).
        positions: ``[B, 3]`` long response positions per head.
        critic_heads: 1 or 3, must match ``values``.
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [B, 3], got {tuple(positions.shape)}")
    pos = positions.long().clamp(min=0, max=values.shape[1] - 1)
    if critic_heads == 1:
        if values.dim() != 2:
            raise ValueError(f"single-head critic values must be [B, L], got {tuple(values.shape)}")
        return values.gather(1, pos)
    if critic_heads == 3:
        if values.dim() != 3 or values.shape[2] != 3:
            raise ValueError(f"three-head critic values must be [B, L, 3], got {tuple(values.shape)}")
        per_head = values.gather(1, pos.unsqueeze(-1).expand(-1, -1, 3))  # [B, 3 heads, 3 channels]
        return per_head.diagonal(dim1=1, dim2=2)
    raise ValueError(f"critic_heads must be 1 or 3, got {critic_heads}")


def position_value_loss(
    vpreds: Tensor,
    old_values: Tensor,
    positions: Tensor,
    targets: Tensor,
    weights: Tensor,
    cliprange_value: float | None,
    denominator: float,
    critic_heads: int = 1,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss at the head read positions (spec §3.12), summed with per-row head weights.

    ``loss = sum_{rows, heads} weight * 0.5 * max((v - G)^2, (clip(v, v_old +- c) - G)^2) / denominator``.
    With the weights of :func:`~hiper.integrations.verl.advantage.compute_row_advantages` and ``denominator`` =
    the mini-batch's row count this is ``sum_h coef_h * mean_{head-h rows}(...)``, the official three-head loss.

    Args:
        vpreds, old_values: ``[B, L]`` or ``[B, L, 3]`` current / rollout-time critic output.
        positions: ``[B, 3]`` long; targets, weights: ``[B, 3]`` float (heads low, high, term).
        cliprange_value: PPO value clip around the old values (paper 0.5); None = unclipped.
        denominator: divides the weighted sum (> 0).
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")
    v = gather_head_values(vpreds, positions, critic_heads)
    v_old = gather_head_values(old_values, positions, critic_heads).detach()
    targets, weights = targets.to(v.dtype), weights.to(v.dtype)
    per, clipped = clipped_value_error(v, v_old, targets, cliprange_value)
    loss = 0.5 * (per * weights).sum() / denominator
    active = weights > 0
    metrics: dict[str, float] = {}
    v_seen = v.detach()
    for i, h in enumerate(HEADS):
        m = active[:, i]
        if bool(m.any()):
            metrics[f"critic/{h}_vpred_mean"] = float(v_seen[:, i][m].mean())
            metrics[f"critic/{h}_target_mean"] = float(targets[:, i][m].mean())
            metrics[f"critic/{h}_clipfrac"] = float(clipped[:, i][m].mean())
    return loss, metrics


# ---------------------------------------------------------------------------------------------------------------
# verl adapters (verl imported lazily, inside the functions: they run in verl's engine workers)


def _scalar(data: Any, key: str, default: Any = None) -> Any:
    from verl.utils import tensordict_utils as tu

    return tu.get_non_tensor_data(data=data, key=key, default=default)


def hae_value_loss(
    config: Any, model_output: Any, data: Any, dp_group: Any = None, *, critic_heads: int = 1
) -> Any:
    """verl ``TrainingWorker`` loss: the HAE critic loss at the value read positions.

    Signature as ``verl.workers.utils.losses.value_loss`` (``config`` is the ``CriticConfig``); install with
    ``critic_wg.set_loss_fn(partial(hae_value_loss, config=critic_cfg, critic_heads=1))``. The denominator is
    verl's global mini-batch size divided by the data-parallel size, so the gradient averaged over ranks is the
    global per-row mean (verl's own convention for ``seq-mean`` losses).
    """
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    vpreds = no_padding_2_padding(model_output["values"], data)
    dp_size = int(_scalar(data, "dp_size", 1) or 1)
    global_batch_size = _scalar(data, "global_batch_size", None)
    fields = data.select("values", "hae_value_pos", "hae_value_target", "hae_value_weight").to_padded_tensor()
    n_local = fields["hae_value_pos"].shape[0]
    denominator = float(global_batch_size) / dp_size if global_batch_size else float(n_local)
    loss, stats = position_value_loss(
        vpreds, fields["values"], fields["hae_value_pos"], fields["hae_value_target"], fields["hae_value_weight"],
        config.cliprange_value, denominator, critic_heads,
    )  # fmt: skip
    aggregation = AggregationType.SUM if dp_size > 1 or global_batch_size else AggregationType.MEAN
    metrics: dict[str, Any] = {"critic/vf_loss": Metric(value=loss, aggregation=aggregation)}
    metrics.update(stats)
    return loss, metrics


def swap_loss_mask(data: Any) -> Any:
    """A shallow copy of ``data`` whose ``response_mask`` is the HAE loss mask (for verl's ``ppo_loss``)."""
    if "hae_loss_mask" not in data.keys():
        raise KeyError(
            "batch has no 'hae_loss_mask': the actor loss hae_ppo_loss needs the hiper trainer mode "
            "(trainer.v1.trainer_mode=hiper_sync) to write it"
        )
    out = data.copy() if hasattr(data, "copy") else dict(data)
    out["response_mask"] = data["hae_loss_mask"]
    return out


def hae_ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> Any:
    """verl actor loss: ``verl.workers.utils.losses.ppo_loss`` over the HAE role tokens only.

    Every term verl aggregates (clipped PPO, entropy, KL) uses ``response_mask``; this swaps in
    ``hae_loss_mask`` so KEEP turns' subgoal tokens and the text outside the blocks get no gradient (spec §3.8).
    The global token-mean denominator (``batch_num_tokens``) is counted by the engine from ``loss_mask``, which
    the hiper trainer sets to the same mask.
    """
    from verl.workers.utils.losses import ppo_loss

    return ppo_loss(config, model_output, swap_loss_mask(data), dp_group)


__all__ = [
    "HEADS",
    "gather_head_values",
    "hae_ppo_loss",
    "hae_value_loss",
    "position_value_loss",
    "swap_loss_mask",
]
