"""Uniform estimator interface for the trainer: ``get(name)(inputs, config) -> AdvantageOutput``.

Every estimator runs the same pipeline: validate inputs -> ``shape_rewards`` (logged terms) -> estimate ->
per-role whitening where the estimator whitens -> ``AdvantageOutput`` with per-role per-turn advantages, critic
targets per value head with the turns that train each head, and scalar metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from hiper.advantage.baselines import (
    gigpo,
    grpo,
    rloo,
    token_gae,
    turn_credit_scores,
    turn_gae,
    turn_group_advantage,
)
from hiper.advantage.config import (
    GAEConfig,
    GiGPOConfig,
    GRPOConfig,
    HAEConfig,
    RLOOConfig,
    ShapingConfig,
    TokenGAEConfig,
)
from hiper.advantage.hae import hae
from hiper.advantage.layout import check_turn_tensors
from hiper.advantage.shaping import ShapedRewards, shape_rewards
from hiper.advantage.token import whiten

Tensor = torch.Tensor

#: value head -> the ``AdvantageInputs`` field holding its per-turn values
HEAD_INPUTS = {"low": "v_low", "high": "v_high", "term": "v_term", "turn": "v_turn", "token": "v_token"}


@dataclass
class AdvantageInputs:
    """Everything an estimator may read, in the padded layout ``[N, T]`` (``N`` trajectories, ``T`` turns).

    Attributes:
        rewards: float env rewards r_t (unshaped; shaping happens inside the estimator and is reported).
        dones: bool, True only at the last valid turn of episodes that ended (False there = truncated).
        turn_mask: bool, left-aligned valid turns.
        switch: bool trainer-side switch / boundary flag q_t (None: no Plan-Execute protocol; then no KEEP
            shaping is possible and HAE is unavailable).
        valid: bool format validity (for the invalid penalty).
        keep_inconsistent: bool, KEEP turn whose subgoal differs from the previous one (from the protocol).
        v_low, v_high, v_term: float critic values of the HAE heads (spec §3.4); v_turn: flat GAE's value.
        v_token: ``[N, T, L]`` float, the critic's value before each response token (token-level GAE), with
            token_mask: ``[N, T, L]`` bool, the response tokens of each turn (right-padded).
        group: ``[N]`` long group id (grouped resets; GRPO / RLOO / GiGPO).
        state_id: long anchor-state id per turn (GiGPO; e.g. a hash of the exact observation text).
        beta: float P(SWITCH | s_t, o_{t-1}); v_low_keep: float V^low(s_t, o_{t-1}) (HAE paper switch mode).
        has_subgoal_span, has_switch_span: bool, the turn's response has that token span (whitening masks of
            spec §3.9; None = every valid turn has it).
    """

    rewards: Tensor
    dones: Tensor
    turn_mask: Tensor
    switch: Tensor | None = None
    valid: Tensor | None = None
    keep_inconsistent: Tensor | None = None
    v_low: Tensor | None = None
    v_high: Tensor | None = None
    v_term: Tensor | None = None
    v_turn: Tensor | None = None
    group: Tensor | None = None
    state_id: Tensor | None = None
    beta: Tensor | None = None
    v_low_keep: Tensor | None = None
    has_subgoal_span: Tensor | None = None
    has_switch_span: Tensor | None = None
    v_token: Tensor | None = None
    token_mask: Tensor | None = None


@dataclass
class AdvantageOutput:
    """What the trainer needs from an estimator; all per-turn tensors ``[N, T]``, 0 / False on padding.

    Attributes:
        adv_action, adv_subgoal, adv_switch: per-role advantages (whitened when the estimator whitens); they go to
            the action, subgoal and switch token spans (``to_token_level``). Flat estimators give every role the same
            advantage.
        subgoal_in_loss: bool, turns whose subgoal span is trained (HAE: boundary turns; flat: every valid turn).
        returns: value head -> critic target (HAE: ``low``/``high``/``term``; gae: ``turn``; critic-free: empty).
        value_mask: value head -> bool turns that train the head (HAE: low every turn, high boundary turns, term
            every turn).
        shaped_rewards: the shaping stage's output (shaped total and each term).
        metrics: scalar logs (advantage stats per role, before whitening; switch rate; segment length; shaping).
        extras: estimator-specific tensors (HAE: ``boundary``, ``segment_id`` and the raw advantages; token-level
            estimators: ``token_adv`` ``[N, T, L]``, the advantage of each response token, which the trainer uses
            instead of broadcasting the per-role ones).
    """

    adv_action: Tensor
    adv_subgoal: Tensor
    adv_switch: Tensor
    subgoal_in_loss: Tensor
    returns: dict[str, Tensor]
    value_mask: dict[str, Tensor]
    shaped_rewards: ShapedRewards
    metrics: dict[str, float]
    extras: dict[str, Tensor] = field(default_factory=dict)


EstimatorFn = Callable[[AdvantageInputs, Any], AdvantageOutput]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator. Call it as ``est(inputs, config=None)`` (None: the default config).

    Attributes:
        name: registry name.
        fn: ``(inputs, config) -> AdvantageOutput`` (inputs already checked).
        config_cls: the config dataclass it accepts.
        needs_critic: whether it reads critic values (the trainer refuses to run it without a critic).
        heads: value heads it needs with the default config (``heads_for(config)`` for a given config).
        needs_group, needs_state_id, needs_switch: other required inputs.
    """

    name: str
    fn: EstimatorFn
    config_cls: type
    needs_critic: bool = False
    heads: tuple[str, ...] = ()
    needs_group: bool = False
    needs_state_id: bool = False
    needs_switch: bool = False
    heads_fn: Callable[[Any], tuple[str, ...]] | None = None

    def heads_for(self, config: Any = None) -> tuple[str, ...]:
        """Value heads needed with ``config`` (HAE's paper switch mode needs no ``term`` head)."""
        if self.heads_fn is None:
            return self.heads
        return self.heads_fn(self._config(config))

    def _config(self, config: Any) -> Any:
        if config is None:
            return self.config_cls()
        if not isinstance(config, self.config_cls):
            raise TypeError(
                f"estimator {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        return config

    def check_inputs(self, inputs: AdvantageInputs, config: Any = None) -> None:
        """Raise ``ValueError`` naming every input this estimator needs but did not get."""
        config = self._config(config)
        missing = [HEAD_INPUTS[h] for h in self.heads_for(config) if getattr(inputs, HEAD_INPUTS[h]) is None]
        if missing:
            raise ValueError(
                f"estimator {self.name!r} needs a critic with heads {list(self.heads_for(config))}; "
                f"missing inputs: {missing}"
            )
        for flag, attr in (
            (self.needs_group, "group"),
            (self.needs_state_id, "state_id"),
            (self.needs_switch, "switch"),
        ):
            if flag and getattr(inputs, attr) is None:
                raise ValueError(f"estimator {self.name!r} needs inputs.{attr}")
        if isinstance(config, HAEConfig) and config.switch_mode == "paper":
            lacking = [a for a in ("beta", "v_low_keep") if getattr(inputs, a) is None]
            if lacking:
                raise ValueError(f"estimator {self.name!r} with switch_mode='paper' needs inputs {lacking}")

    def __call__(self, inputs: AdvantageInputs, config: Any = None) -> AdvantageOutput:
        config = self._config(config)
        self.check_inputs(inputs, config)
        return self.fn(inputs, config)


_REGISTRY: dict[str, Estimator] = {}


def register(
    name: str,
    *,
    config_cls: type,
    needs_critic: bool = False,
    heads: tuple[str, ...] = (),
    needs_group: bool = False,
    needs_state_id: bool = False,
    needs_switch: bool = False,
    heads_fn: Callable[[Any], tuple[str, ...]] | None = None,
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator registering ``fn(inputs, config) -> AdvantageOutput`` under ``name``.

    Raises ``ValueError`` for a duplicate name, a head without a known input (``HEAD_INPUTS``), or a config class
    that is not a ``ShapingConfig`` (every estimator shapes rewards).
    """
    if name in _REGISTRY:
        raise ValueError(f"advantage estimator {name!r} is already registered")
    unknown = [h for h in heads if h not in HEAD_INPUTS]
    if unknown:
        raise ValueError(f"unknown value heads {unknown}; known: {sorted(HEAD_INPUTS)}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, ShapingConfig)):
        raise ValueError("config_cls must be a ShapingConfig subclass")

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        _REGISTRY[name] = Estimator(
            name=name, fn=fn, config_cls=config_cls, needs_critic=needs_critic or bool(heads), heads=heads,
            needs_group=needs_group, needs_state_id=needs_state_id, needs_switch=needs_switch, heads_fn=heads_fn,
        )  # fmt: skip
        return fn

    return decorator


def get(name: str) -> Estimator:
    """The registered estimator ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {available()}") from None


def available() -> list[str]:
    """Sorted names of the registered estimators."""
    return sorted(_REGISTRY)


def config_fields(name: str) -> list[str]:
    """Field names of estimator ``name``'s config (for CLI / yaml validation)."""
    return [f.name for f in fields(get(name).config_cls)]


# ---------------------------------------------------------------------------------------------------------------
# shared helpers


def _shape(inputs: AdvantageInputs, config: ShapingConfig) -> ShapedRewards:
    switch = inputs.switch
    if switch is None:
        uses_switch = (
            config.keep_penalty != 0.0
            or config.keep_consistency_penalty != 0.0
            or (config.switch_rate_floor > 0.0 and config.switch_rate_floor_coef > 0.0)
        )
        if uses_switch:
            raise ValueError(
                "KEEP / consistency / switch-rate shaping needs inputs.switch (Plan-Execute protocol)"
            )
        switch = torch.ones_like(inputs.turn_mask)  # no protocol: no KEEP turns
    return shape_rewards(
        inputs.rewards, switch, inputs.valid, inputs.keep_inconsistent, inputs.turn_mask, config
    )


def _stats_many(items: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """``{prefix: (x, mask)}`` -> ``{prefix_mean, _std (population), _min, _max, _n}`` over each mask.

    Masked reductions per item (no boolean indexing, no stacking into one big tensor: both trigger torch's
    intra-op thread pool, which stalls badly on an oversubscribed CPU), then a single host sync."""
    if not items:
        return {}
    rows = []
    for x, mask in items.values():
        values = x.double()
        n = mask.sum().double()
        zero = torch.zeros_like(values)
        mean = torch.where(mask, values, zero).sum() / n.clamp_min(1)
        var = torch.where(mask, (values - mean) ** 2, zero).sum() / n.clamp_min(1)
        low = torch.where(mask, values, torch.full_like(values, float("inf"))).min()
        high = torch.where(mask, values, torch.full_like(values, float("-inf"))).max()
        rows.append(torch.stack((mean, var.sqrt(), low, high, n)))
    table = torch.stack(rows).tolist()
    out: dict[str, float] = {}
    for prefix, (m_, s_, lo, hi, count) in zip(items, table):
        out[f"{prefix}_n"] = count
        if count > 0:
            out.update({f"{prefix}_mean": m_, f"{prefix}_std": s_, f"{prefix}_min": lo, f"{prefix}_max": hi})
    return out


def _common_metrics(inputs: AdvantageInputs, shaped: ShapedRewards) -> dict[str, float]:
    mask = inputs.turn_mask
    out = shaped.metrics(mask)
    out["batch/n_traj"] = float(mask.any(dim=1).sum())
    out["batch/n_turns"] = float(mask.sum())
    if inputs.switch is not None:
        later = mask.clone()
        later[:, 0] = False
        n_later = int(later.sum())
        # the flag's share among turns t >= 1 (turn 0 starts a segment whatever its flag); not the rollout-level
        # ``switch_rate``, which counts every turn
        out["switch/rate_after_first"] = float((inputs.switch & later).sum()) / n_later if n_later else 0.0
    return out


def _flat_output(
    inputs: AdvantageInputs,
    shaped: ShapedRewards,
    adv: Tensor,
    metrics: dict[str, float],
    returns: dict[str, Tensor] | None = None,
) -> AdvantageOutput:
    mask = inputs.turn_mask
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    returns = returns or {}
    stat_items = {"adv/flat": (adv, mask), **{f"returns/{head}": (ret, mask) for head, ret in returns.items()}}
    metrics.update(_stats_many(stat_items))
    return AdvantageOutput(
        adv_action=adv, adv_subgoal=adv, adv_switch=adv, subgoal_in_loss=mask.clone(),
        returns=returns, value_mask={h: mask.clone() for h in returns}, shaped_rewards=shaped, metrics=metrics,
    )  # fmt: skip


def _check_common(inputs: AdvantageInputs) -> None:
    check_turn_tensors(
        inputs.turn_mask, rewards=inputs.rewards, dones=inputs.dones, switch=inputs.switch, valid=inputs.valid,
        keep_inconsistent=inputs.keep_inconsistent, has_subgoal_span=inputs.has_subgoal_span,
        has_switch_span=inputs.has_switch_span,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# estimators


def _hae_heads(config: HAEConfig) -> tuple[str, ...]:
    return ("low", "high") if config.switch_mode == "paper" else ("low", "high", "term")


@register(
    "hae",
    config_cls=HAEConfig,
    needs_critic=True,
    heads=("low", "high", "term"),
    needs_switch=True,
    heads_fn=_hae_heads,
)
def _hae_estimator(inputs: AdvantageInputs, config: HAEConfig) -> AdvantageOutput:
    """HAE (spec §3): shaping -> hae() -> per-role whitening over the batch (§3.9)."""
    _check_common(inputs)
    assert inputs.switch is not None and inputs.v_low is not None and inputs.v_high is not None
    shaped = _shape(inputs, config)
    res = hae(
        shaped.total, inputs.dones, inputs.switch, inputs.v_low, inputs.v_high, inputs.v_term, inputs.turn_mask,
        config, beta=inputs.beta, v_low_keep=inputs.v_low_keep,
    )  # fmt: skip
    mask = inputs.turn_mask
    high_turns = res.boundary if inputs.has_subgoal_span is None else res.boundary & inputs.has_subgoal_span
    switch_turns = mask if inputs.has_switch_span is None else mask & inputs.has_switch_span
    if config.norm_adv:
        adv_action = whiten(res.adv_low, mask)
        adv_subgoal = whiten(res.adv_high, high_turns)
        adv_switch = whiten(res.adv_term, switch_turns)
    else:
        adv_action, adv_subgoal, adv_switch = res.adv_low, res.adv_high, res.adv_term

    metrics = _common_metrics(inputs, shaped)
    n_segments = int(res.boundary.sum())
    metrics["hae/mean_segment_length"] = float(mask.sum()) / n_segments if n_segments else 0.0
    metrics["hae/segments_per_traj"] = n_segments / max(float(mask.any(dim=1).sum()), 1.0)
    stat_items = {"adv/action": (res.adv_low, mask), "adv/subgoal": (res.adv_high, high_turns),
                  "adv/switch": (res.adv_term, switch_turns)}  # fmt: skip
    returns = {"low": res.ret_low, "high": res.ret_high}
    value_mask = {"low": mask.clone(), "high": res.boundary.clone()}
    if config.switch_mode == "code":
        returns["term"] = res.ret_term
        value_mask["term"] = mask.clone()
    stat_items.update({f"returns/{head}": (ret, value_mask[head]) for head, ret in returns.items()})
    metrics.update(_stats_many(stat_items))
    extras = {
        "boundary": res.boundary, "segment_id": res.segment_id, "adv_low_raw": res.adv_low,
        "adv_high_raw": res.adv_high, "adv_term_raw": res.adv_term, "ret_term": res.ret_term,
    }  # fmt: skip
    return AdvantageOutput(
        adv_action=adv_action, adv_subgoal=adv_subgoal, adv_switch=adv_switch, subgoal_in_loss=res.boundary.clone(),
        returns=returns, value_mask=value_mask, shaped_rewards=shaped, metrics=metrics, extras=extras,
    )  # fmt: skip


@register("gae", config_cls=GAEConfig, needs_critic=True, heads=("turn",))
def _gae_estimator(inputs: AdvantageInputs, config: GAEConfig) -> AdvantageOutput:
    """Flat turn-level GAE (PPO, one value per turn at response position 0), whitened over valid turns."""
    _check_common(inputs)
    assert inputs.v_turn is not None
    shaped = _shape(inputs, config)
    adv, ret = turn_gae(shaped.total, inputs.dones, inputs.v_turn, inputs.turn_mask, config)
    metrics = _common_metrics(inputs, shaped)
    metrics.update(_stats_many({"adv/raw": (adv, inputs.turn_mask)}))
    if config.norm_adv:
        adv = whiten(adv, inputs.turn_mask)
    return _flat_output(inputs, shaped, adv, metrics, returns={"turn": ret})


@register("token_gae", config_cls=TokenGAEConfig, needs_critic=True, heads=("token",))
def _token_gae_estimator(inputs: AdvantageInputs, config: TokenGAEConfig) -> AdvantageOutput:
    """The paper's PPO baseline (verl-agent ``gae``): token-level GAE inside each turn, every turn scored with its
    trajectory's env return plus its own penalties, whitened over every response token of the batch."""
    _check_common(inputs)
    assert inputs.v_token is not None
    if inputs.token_mask is None:
        raise ValueError("estimator 'token_gae' needs inputs.token_mask (the response tokens of each turn)")
    mask = inputs.turn_mask
    tokens = inputs.token_mask & mask.unsqueeze(-1)
    if not bool(torch.isfinite(torch.where(tokens, inputs.v_token, 0.0)).all()):
        raise ValueError("v_token has non-finite values on response tokens")
    shaped = _shape(inputs, config)
    scores = turn_credit_scores(inputs.rewards, shaped.total, mask)
    adv, ret = token_gae(scores, inputs.v_token, tokens, config)
    metrics = _common_metrics(inputs, shaped)
    metrics.update(_stats_many({"adv/raw": (adv, tokens), "returns/token": (ret, tokens)}))
    if config.norm_adv:
        adv = whiten(adv, tokens)
    # one number per turn for the per-role logs: the mean advantage of its tokens
    n_tok = tokens.sum(-1)
    per_turn = torch.where(mask, (adv * tokens).sum(-1) / n_tok.clamp_min(1), torch.zeros_like(scores))
    return AdvantageOutput(
        adv_action=per_turn, adv_subgoal=per_turn, adv_switch=per_turn, subgoal_in_loss=mask.clone(),
        returns={"token": ret}, value_mask={"token": tokens}, shaped_rewards=shaped, metrics=metrics,
        extras={"token_adv": adv},
    )  # fmt: skip


@register("grpo", config_cls=GRPOConfig, needs_group=True)
def _grpo_estimator(inputs: AdvantageInputs, config: GRPOConfig) -> AdvantageOutput:
    """GRPO: group-normalised episode return on every turn of the episode (``penalty_credit="turn"``: each turn's
    own score, env return + its penalties, normalised over the group's turns)."""
    _check_common(inputs)
    assert inputs.group is not None
    shaped = _shape(inputs, config)
    if config.penalty_credit == "turn":
        scores = turn_credit_scores(inputs.rewards, shaped.total, inputs.turn_mask)
        adv = turn_group_advantage(scores, inputs.turn_mask, inputs.group, norm_by_std=config.norm_by_std,
                                   eps=config.eps)
    else:
        adv = grpo(shaped.total, inputs.turn_mask, inputs.group, config).unsqueeze(1).expand_as(shaped.total)
    return _flat_output(inputs, shaped, adv, _common_metrics(inputs, shaped))


@register("rloo", config_cls=RLOOConfig, needs_group=True)
def _rloo_estimator(inputs: AdvantageInputs, config: RLOOConfig) -> AdvantageOutput:
    """RLOO: episode return minus the leave-one-out group mean, on every turn of the episode (``penalty_credit=
    "turn"``: each turn's own score against the leave-one-out mean of the group's turn samples)."""
    _check_common(inputs)
    assert inputs.group is not None
    shaped = _shape(inputs, config)
    if config.penalty_credit == "turn":
        scores = turn_credit_scores(inputs.rewards, shaped.total, inputs.turn_mask)
        adv = turn_group_advantage(scores, inputs.turn_mask, inputs.group, norm_by_std=False, eps=1.0,
                                   leave_one_out=True)
    else:
        adv = rloo(shaped.total, inputs.turn_mask, inputs.group).unsqueeze(1).expand_as(shaped.total)
    return _flat_output(inputs, shaped, adv, _common_metrics(inputs, shaped))


@register("gigpo", config_cls=GiGPOConfig, needs_group=True, needs_state_id=True)
def _gigpo_estimator(inputs: AdvantageInputs, config: GiGPOConfig) -> AdvantageOutput:
    """GiGPO: episode-level group advantage + step-level anchor-state advantage."""
    _check_common(inputs)
    assert inputs.group is not None and inputs.state_id is not None
    shaped = _shape(inputs, config)
    adv = gigpo(shaped.total, inputs.turn_mask, inputs.group, inputs.state_id, config, env_rewards=inputs.rewards)
    return _flat_output(inputs, shaped, adv, _common_metrics(inputs, shaped))
