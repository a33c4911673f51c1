"""The v1-trainer advantage step for verl turn rows, computed by :mod:`hiper.advantage`. No verl import.

verl 0.9.1 runs every estimator except GRPO **row by row** (``verl/trainer/ppo/v1/utils.py``), so on turn rows
even its GAE does not bootstrap across turns. :func:`compute_row_advantages` instead rebuilds the sessions from
the row keys (:mod:`hiper.integrations.verl.convert`), runs ``hiper.advantage.get(name)`` on the padded
``[n_traj, T_max]`` layout (HAE bootstraps across turns and segments of a session; GRPO/RLOO/GiGPO group the
``rollout.n`` sessions of a prompt) and maps the results back to rows:

* ``advantages`` ``[L_i]`` per row: the role-wise token advantages of spec §3.8 (action tokens get A_low,
  subgoal tokens of boundary turns A_high, switch tokens A_term), 0 elsewhere;
* ``loss_mask`` ``[L_i]``: the union of the role masks used (the actor's token-mean runs over it);
* ``value_pos``/``value_target``/``value_weight`` ``[3]`` per row, head order (low, high, term): where each
  value head is read in the response, its critic target, and the weight of its loss term on this row.

Critic variants (``critic_heads``):

* ``1`` (verl's own critic has one value head): **single-head, position-read**. V_high and V_term
  are the one head read at response position 0 (before ``<switch>``: the state and the previous subgoal), V_low
  the same head read after ``</subgoal>`` (state and the chosen subgoal). It approximates the official
  three-head critic (spec §3.11): high and term share a position, so on boundary turns that position regresses
  to a weighted mean of G_high and G_term.
* ``3`` (the recipes' default, the paper's critic): per-position values carry three channels (low, high, term),
  read as in ``hiper.models.critic`` (verl 0.9.1's FSDP critic: :mod:`hiper.integrations.verl.critic_heads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import Tensor

from hiper import advantage
from hiper.advantage import ShapingConfig
from hiper.advantage.from_batch import advantage_inputs, to_rows, token_advantages
from hiper.config.loader import from_dict
from hiper.config.schema import AlgorithmConfig
from hiper.config.schema import estimator_config as hiper_estimator_config
from hiper.integrations.verl.convert import RowIndex, VerlRows, rows_to_turn_batch

HEADS = ("low", "high", "term")
#: hiper's estimator sections of the run config's ``algorithm`` (hae, gae, token_gae, grpo, rloo, gigpo)
SECTION_NAMES = tuple(f.name for f in fields(AlgorithmConfig) if is_dataclass(f.default_factory))
CHANNELS = {"low": 0, "high": 1, "term": 2}


@dataclass
class RowAdvantages:
    """Per-row outputs of :func:`compute_row_advantages`, in the verl rows' order (padding rows: zeros).

    ``advantages``/``loss_mask``/``returns``: one tensor ``[L_i]`` per row. ``value_pos`` ``[R, 3]`` long,
    ``value_target`` ``[R, 3]`` float, ``value_weight`` ``[R, 3]`` float (head order low, high, term; weight 0 =
    the head does not train on the row). ``metrics``: scalar logs; ``batch``: the turn batch used.
    """

    advantages: list[Tensor]
    loss_mask: list[Tensor]
    returns: list[Tensor]
    value_pos: Tensor
    value_target: Tensor
    value_weight: Tensor
    metrics: dict[str, float]
    batch: Any = None
    index: RowIndex | None = None
    output: Any = None
    extras: dict[str, Tensor] = field(default_factory=dict)


def read_row_values(
    rows: VerlRows, index: RowIndex, v_low_pos: Tensor, critic_heads: int
) -> dict[str, Tensor]:
    """Per-turn values ``{head: [N]}`` (turn-batch row order) read from the rows' per-position critic output.

    ``critic_heads=1``: ``high = term = values[0]``, ``low = values[v_low_pos]``; ``critic_heads=3``: channel
    ``c`` of ``values[pos, c]`` at the same positions. ``gae`` (flat PPO) reads ``turn = values[0]``.
    """
    if rows.values is None:
        raise ValueError("the estimator needs critic values but the rows have none (critic.enable=true?)")
    vals = [rows.values[int(r)] for r in index.verl_row]
    out: dict[str, list[float]] = {"low": [], "high": [], "term": [], "turn": []}
    for v, pos in zip(vals, v_low_pos.tolist()):
        if v.dim() == 1:
            if critic_heads != 1:
                raise ValueError(f"critic_heads={critic_heads} but the rows carry one value per position")
            pre, low = float(v[0]), float(v[pos])
            out["low"].append(low)
            out["high"].append(pre)
            out["term"].append(pre)
            out["turn"].append(pre)
        else:
            if critic_heads != 3 or v.shape[-1] != 3:
                raise ValueError(f"values of shape {tuple(v.shape)} do not match critic_heads={critic_heads}")
            out["low"].append(float(v[pos, CHANNELS["low"]]))
            out["high"].append(float(v[0, CHANNELS["high"]]))
            out["term"].append(float(v[0, CHANNELS["term"]]))
            out["turn"].append(float(v[0, CHANNELS["high"]]))
    return {h: torch.tensor(x, dtype=torch.float32) for h, x in out.items()}


def compute_row_advantages(
    rows: VerlRows,
    estimator: str,
    config: Any = None,
    *,
    reward_scale: float = 1.0,
    critic_heads: int = 1,
    value_coefs: dict[str, float] | None = None,
    pad_token_id: int = 0,
) -> RowAdvantages:
    """Run ``hiper.advantage.get(estimator)`` on verl turn rows and map the results back to the rows.

    Args:
        rows: the batch's rows (any order, padding rows allowed).
        estimator: ``hae``, ``gae``, ``grpo``, ``rloo`` or ``gigpo`` (``hiper.advantage.available()``; not
            ``token_gae``: that is verl's own ``gae``).
        config: the estimator's config dataclass (None = its defaults).
        reward_scale: multiplies ``turn_reward`` (hiper ``algorithm.reward_scale``).
        critic_heads: 1 (single head, position-read) or 3 (see the module docstring).
        value_coefs: loss weight per head (spec §3.12: ``low`` 1, ``high`` = ``high_value_coef``, ``term`` =
            ``term_value_coef``); default all 1.

    The value-loss weights make ``sum_rows(weight * err) / n_rows`` equal, in expectation over mini-batches,
    the spec's per-head token mean ``sum_{head rows}(err) / n_head_rows`` times the head's coefficient:
    ``weight = coef * n_rows / n_head_rows`` on the head's rows (``n_rows`` counts padding rows, because verl
    normalises by the global mini-batch size, padding included).
    """
    if estimator == "token_gae":
        raise ValueError("token_gae is verl's own algorithm.adv_estimator=gae (token-level GAE on turn rows); "
                         "hiper's verl path computes turn-level estimators only")
    batch, index = rows_to_turn_batch(rows, pad_token_id=pad_token_id)
    est = advantage.get(estimator)
    heads = est.heads_for(config)
    values = read_row_values(rows, index, batch.v_low_pos, critic_heads) if heads else None
    inputs = advantage_inputs(batch, values, reward_scale)
    out = est(inputs, config)
    token_adv, loss_mask, _ = token_advantages(batch, out)

    def flat(padded: Tensor) -> Tensor:
        return to_rows(batch, padded)

    n_rows = len(rows)
    n_batch = len(batch)
    coefs = {"low": 1.0, "high": 1.0, "term": 1.0, **(value_coefs or {})}
    pos_b = torch.stack([batch.v_low_pos, batch.v_high_pos, batch.v_high_pos], dim=1)  # [N, 3]
    target_b = torch.zeros(n_batch, 3)
    weight_b = torch.zeros(n_batch, 3)
    returns = {h: flat(r).float() for h, r in (out.returns or {}).items()}
    value_mask = {h: flat(m).bool() for h, m in (out.value_mask or {}).items()}
    if "turn" in returns:  # flat GAE: one value per turn, read at position 0, trained as the "high" slot
        returns, value_mask = {"high": returns["turn"]}, {"high": value_mask["turn"]}
    for h, ret in returns.items():
        c = CHANNELS[h]
        m = value_mask[h]
        n_h = int(m.sum())
        if n_h == 0:
            continue
        target_b[:, c] = torch.where(m, ret, torch.zeros_like(ret))
        weight_b[:, c] = m.float() * (coefs[h] * n_rows / n_h)

    # back to verl row order; padding rows keep zeros
    lengths = [len(r) for r in rows.response_ids]
    adv_rows = [torch.zeros(n) for n in lengths]
    mask_rows = [torch.zeros(n, dtype=torch.bool) for n in lengths]
    ret_rows = [torch.zeros(n) for n in lengths]
    value_pos = torch.zeros(n_rows, 3, dtype=torch.long)
    value_target = torch.zeros(n_rows, 3)
    value_weight = torch.zeros(n_rows, 3)
    low_ret = returns.get("low", returns.get("high"))
    for b, r in enumerate(index.verl_row.tolist()):
        n = lengths[r]
        adv_rows[r] = token_adv[b, :n].float().clone()
        mask_rows[r] = loss_mask[b, :n].clone()
        if low_ret is not None:
            ret_rows[r] = torch.full((n,), float(low_ret[b]))
        value_pos[r] = pos_b[b]
        value_target[r] = target_b[b]
        value_weight[r] = weight_b[b]

    metrics = {f"hiper/{k}": float(v) for k, v in (out.metrics or {}).items()}
    metrics["hiper/loss_tokens"] = float(loss_mask.sum())
    metrics["hiper/response_tokens"] = float(batch.response_mask.sum())
    metrics["hiper/padding_rows"] = float(n_rows - n_batch)
    return RowAdvantages(
        advantages=adv_rows, loss_mask=mask_rows, returns=ret_rows, value_pos=value_pos,
        value_target=value_target, value_weight=value_weight, metrics=metrics, batch=batch, index=index,
        output=out, extras={"token_adv": token_adv, "loss_mask": loss_mask},
    )  # fmt: skip


def estimator_config(estimator: str, algorithm: Any, invalid_penalty: float = 0.0) -> ShapingConfig:
    """The estimator's config from a verl ``algorithm`` section (dict or DictConfig), through hiper's run-config
    schema and its one mapping (:func:`hiper.config.estimator_config`), exactly as the built-in trainer gets it.

    Read from ``algorithm``: ``gamma`` and ``lam`` (verl's own keys, hiper's ``algorithm.gamma``/``lam``) and
    hiper's estimator sections (``algorithm.hae``, ``algorithm.grpo`` ...); ``invalid_penalty`` is
    ``hiper.invalid_action_penalty_coef``. Other verl keys of ``algorithm`` are verl's business and ignored here;
    unknown keys inside an estimator section raise :class:`~hiper.config.ConfigError` naming them.
    """
    sections = {name: _plain(_get(algorithm, name)) for name in SECTION_NAMES}
    alg: dict[str, Any] = {"adv_estimator": estimator}
    alg.update({k: v for k, v in sections.items() if v is not None})
    for key in ("gamma", "lam"):
        if _get(algorithm, key) is not None:
            alg[key] = float(_get(algorithm, key))
    cfg = from_dict({"algorithm": alg, "actor": {"invalid_action_penalty_coef": float(invalid_penalty)}},
                    validate=False)
    return hiper_estimator_config(cfg, estimator)


def _get(obj: Any, key: str) -> Any:
    try:
        return obj.get(key, None) if obj is not None and hasattr(obj, "get") else None
    except Exception:  # noqa: BLE001 - OmegaConf struct errors on unknown keys
        return None


def _plain(obj: Any) -> Any:
    """A (DictConfig) section as a plain dict, None when absent."""
    if obj is None:
        return None
    return {str(k): v for k, v in (obj.items() if hasattr(obj, "items") else dict(obj).items())}


__all__ = [
    "CHANNELS",
    "HEADS",
    "RowAdvantages",
    "compute_row_advantages",
    "estimator_config",
    "read_row_values",
]
