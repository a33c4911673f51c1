"""Logged metrics of an iteration: rollout outcomes, advantages and critic fit, paper switch-mode diagnostics.

One definition per name (``docs/trainer.md`` lists them). The switch metrics in particular:

* ``train/switch_rate`` / ``eval/switch_rate``: share of all turns whose switch flag q_t is set (the model wrote
  SWITCH with a subgoal, so a new segment starts there; turn 0 included);
* ``train/segment_length``: turns per segment (a segment starts at turn 0 and at every later flagged turn);
* ``adv/switch/rate_after_first``: the estimator's view, the flag's share among turns ``t >= 1`` (turn 0 always
  starts a segment, whatever its flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from hiper.advantage import AdvantageOutput
from hiper.batch import TurnBatch
from hiper.losses import explained_variance
from hiper.rollout.records import Trajectory, episode_stats


def rollout_metrics(trajs: Sequence[Trajectory], batch: TurnBatch | None = None, prefix: str = "") -> dict[str, float]:
    """Success (overall and per task type), reward, length, switch / invalid / keep-consistency rates, segment
    length; with ``batch``, mean response and prompt tokens per turn."""
    st = episode_stats(trajs)
    names = {"length": "episode_length"}
    out = {f"{prefix}{names.get(k, k)}": float(v) for k, v in st.items()
           if k != "per_type" and isinstance(v, (int, float))}
    for t, d in st["per_type"].items():
        out[f"{prefix}success/{t}"] = float(d["success"])
    out[f"{prefix}reward"] = float(np.mean([t.total_reward for t in trajs])) if trajs else 0.0
    n_turns = sum(t.length for t in trajs)
    n_segments = sum(1 + sum(x.switch for x in t.turns[1:]) for t in trajs if t.turns)
    out[f"{prefix}segment_length"] = n_turns / max(n_segments, 1)
    if batch is not None:
        out[f"{prefix}response_tokens"] = float(batch.response_mask.sum(1).float().mean())
        out[f"{prefix}prompt_tokens"] = float(batch.prompt_mask.sum(1).float().mean())
    return out


def advantage_metrics(batch: TurnBatch, out: AdvantageOutput, per_row: dict[str, Tensor],
                      returns: dict[str, Tensor], value_mask: dict[str, Tensor],
                      values: dict[str, Tensor]) -> dict[str, float]:
    """Whitened advantage stats per role over the turns whose span is trained (``adv/<role>_*``), the estimator's
    own metrics (``adv/...``), and per value head the explained variance, mean return and mean value
    (``critic/...``)."""
    metrics: dict[str, float] = {}
    roles = (("action", per_row["action"], batch.action_mask.any(1)),
             ("subgoal", per_row["subgoal"], batch.subgoal_mask.any(1) & per_row["subgoal_in_loss"]),
             ("switch", per_row["switch"], batch.switch_mask.any(1)))
    for role, a, m in roles:
        if bool(m.any()):
            x = a[m].double()
            metrics.update({f"adv/{role}_mean": float(x.mean()), f"adv/{role}_std": float(x.std(unbiased=False)),
                            f"adv/{role}_min": float(x.min()), f"adv/{role}_max": float(x.max()),
                            f"adv/{role}_n": float(m.sum())})
    for k, v in out.metrics.items():
        metrics[f"adv/{k}"] = float(v)
    for h, ret in returns.items():
        m = value_mask.get(h)
        if m is not None and h in values and bool(m.any()):
            metrics[f"critic/explained_var_{h}"] = explained_variance(values[h], ret, m)
            metrics[f"critic/return_mean_{h}"] = float(ret[m].mean())
            metrics[f"critic/value_mean_{h}"] = float(values[h][m].mean())
    return metrics


def switch_metrics(batch: TurnBatch, beta: Tensor | None, values: dict[str, Tensor],
                   raw_switch_adv: Tensor | None) -> dict[str, float]:
    """Paper switch-mode diagnostics over the batch's turns (``switch/...``).

    ``beta_mean`` (mean P(SWITCH)), ``beta_on_switch``/``beta_on_keep`` (mean beta on turns with / without the
    switch flag), ``gain_abs_mean``/``gain_mean`` (|VH_t - VL^keep_t| and VH_t - VL^keep_t, the switching gain),
    ``keep_exact_rate`` (share of turns whose response starts with the exact KEEP continuation tokens),
    ``low_keep_gap_exact`` (mean |VL^keep_t - VL_t| on those turns: float noise, ~1e-6; a larger value means the two
    passes disagree), and the raw switch advantage (q_t - beta_t)(VH_t - VL^keep_t): ``adv_raw_mean/std/min/max``.
    """
    out: dict[str, float] = {}
    if beta is None or "low_keep" not in values:
        return out
    b = beta.double()
    q = batch.switch
    out["switch/beta_mean"] = float(b.mean())
    if bool(q.any()):
        out["switch/beta_on_switch"] = float(b[q].mean())
    if bool((~q).any()):
        out["switch/beta_on_keep"] = float(b[~q].mean())
    exact = batch.exact_keep()
    out["switch/keep_exact_rate"] = float(exact.double().mean())
    if bool(exact.any()):
        gap = (values["low_keep"] - values["low"]).abs()[exact]
        out["switch/low_keep_gap_exact"] = float(gap.double().mean())
    gain = (values["high"] - values["low_keep"]).double()
    out["switch/gain_abs_mean"] = float(gain.abs().mean())
    out["switch/gain_mean"] = float(gain.mean())
    if raw_switch_adv is not None and len(raw_switch_adv):
        a = raw_switch_adv.double()
        out.update({"switch/adv_raw_mean": float(a.mean()), "switch/adv_raw_std": float(a.std(unbiased=False)),
                    "switch/adv_raw_min": float(a.min()), "switch/adv_raw_max": float(a.max())})
    return out


def mean_finite(values: Sequence[float]) -> float:
    """Mean of the finite entries (NaN when there are none): grad norms of skipped steps are NaN."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def timing_metrics(times: dict[str, float], generated_tokens: int, n_update_tokens: float, ppo_epochs: int,
                   n_rows: int) -> dict[str, Any]:
    """``time/<phase>`` seconds and throughput: generated tokens/s, PPO-update tokens/s, turn samples."""
    out: dict[str, Any] = {f"time/{k}": v for k, v in times.items()}
    out["perf/generated_tokens_per_s"] = generated_tokens / max(times.get("generate", 0.0), 1e-9)
    out["perf/update_tokens_per_s"] = n_update_tokens * ppo_epochs / max(times.get("update", 0.0), 1e-9)
    out["perf/turn_samples"] = float(n_rows)
    return out


__all__ = ["advantage_metrics", "mean_finite", "rollout_metrics", "switch_metrics", "timing_metrics"]


