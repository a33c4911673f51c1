"""A :class:`~hiper.batch.TurnBatch` <-> the estimators' padded ``[n_traj, T_max]`` layout.

The estimators themselves are pure tensor functions that know nothing of batches; these adapters are the one place
where a batch's rows become :class:`~hiper.advantage.registry.AdvantageInputs` and where an estimator's per-turn
output is broadcast back to the rows' tokens (spec §3.8). The built-in trainer and the verl plugin both use them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hiper.advantage.layout import pad_turns, unpad
from hiper.advantage.registry import AdvantageInputs, AdvantageOutput
from hiper.advantage.token import to_token_level
from hiper.batch import TurnBatch


def to_turns(batch: TurnBatch, per_row: Tensor, fill: float | bool | int = 0) -> Tensor:
    """Scatter per-row values ``[N, ...]`` of ``batch`` into the padded ``[n_traj, T_max, ...]`` layout."""
    return pad_turns(per_row, batch.traj_index, batch.turn_index, batch.n_traj, batch.t_max, fill)


def to_rows(batch: TurnBatch, padded: Tensor) -> Tensor:
    """Gather padded ``[n_traj, T_max, ...]`` values back to the rows ``[N, ...]`` of ``batch``."""
    return unpad(padded, batch.traj_index, batch.turn_index)


def turn_mask(batch: TurnBatch) -> Tensor:
    """``[n_traj, T_max]`` bool: which (trajectory, turn) entries of ``batch`` are real."""
    return to_turns(batch, torch.ones(len(batch), dtype=torch.bool), fill=False)


def advantage_inputs(
    batch: TurnBatch,
    values: dict[str, Tensor] | None,
    reward_scale: float = 1.0,
    beta: Tensor | None = None,
) -> AdvantageInputs:
    """:class:`AdvantageInputs` of ``batch`` in the padded ``[n_traj, T_max]`` layout.

    Args:
        batch: the rollout's turn batch.
        values: per-row critic values by head (``low``, ``high``, ``term``, ``turn``, and ``low_keep`` =
            V^low(s_t, o_{t-1}) in paper switch mode; each ``[N]``, value-head units, i.e. scaled rewards; ``token``
            ``[N, L]`` for a per-token critic), or None for critic-free estimators.
        reward_scale: multiplies the env rewards.
        beta: ``[N]`` P(SWITCH | s_t, o_{t-1}) from the actor (paper switch mode), else None.

    GiGPO's anchor states are the exact observation texts (``state_keys``), numbered in order of first appearance.
    """
    keys: dict[str, int] = {}
    state_ids = torch.tensor([keys.setdefault(k, len(keys)) for k in batch.state_keys], dtype=torch.long)

    def head(name: str) -> Tensor | None:
        return None if values is None or name not in values else to_turns(batch, values[name].float(), 0.0)

    return AdvantageInputs(
        rewards=to_turns(batch, batch.rewards * reward_scale, 0.0),
        dones=to_turns(batch, batch.dones, False),
        turn_mask=turn_mask(batch),
        switch=to_turns(batch, batch.switch, False),
        valid=to_turns(batch, batch.valid, True),
        keep_inconsistent=to_turns(batch, batch.keep_inconsistent, False),
        v_low=head("low"),
        v_high=head("high"),
        v_term=head("term"),
        v_turn=head("turn"),
        beta=None if beta is None else to_turns(batch, beta.float(), 0.0),
        v_low_keep=head("low_keep"),
        group=batch.group,
        state_id=to_turns(batch, state_ids, -1),
        has_subgoal_span=to_turns(batch, batch.subgoal_mask.any(1), False),
        has_switch_span=to_turns(batch, batch.switch_mask.any(1), False),
        v_token=head("token"),
        token_mask=to_turns(batch, batch.response_mask, False) if values is not None and "token" in values else None,
    )


def token_advantages(batch: TurnBatch, out: AdvantageOutput) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Broadcast an estimator's per-turn output (padded ``[n_traj, T_max]``) to the tokens of ``batch``'s rows.

    A token-level estimator (``out.extras["token_adv"]``, ``[n_traj, T_max, L]``) gives each token its own
    advantage; the loss mask is then the same union of the role spans, so every estimator trains the same tokens.

    Returns:
        ``(token_adv [N, L] float, loss_mask [N, L] bool, per_row)`` where ``per_row`` holds the row-level
        ``action``/``subgoal``/``switch`` advantages ``[N]`` float and ``subgoal_in_loss`` ``[N]`` bool.
    """
    per_row = {
        "action": to_rows(batch, out.adv_action).float(),
        "subgoal": to_rows(batch, out.adv_subgoal).float(),
        "switch": to_rows(batch, out.adv_switch).float(),
        "subgoal_in_loss": to_rows(batch, out.subgoal_in_loss).bool(),
    }
    token_adv, loss_mask = to_token_level(
        per_row["action"], per_row["subgoal"], per_row["switch"], per_row["subgoal_in_loss"],
        batch.action_mask, batch.subgoal_mask, batch.switch_mask, batch.response_mask,
    )  # fmt: skip
    if "token_adv" in out.extras:
        per_token = to_rows(batch, out.extras["token_adv"]).float()
        token_adv = torch.where(loss_mask, per_token, torch.zeros_like(per_token))
    return token_adv, loss_mask, per_row


__all__ = ["advantage_inputs", "to_rows", "to_turns", "token_advantages", "turn_mask"]
