"""Configuration dataclasses for the advantage estimators.

All configs are keyword-only dataclasses validated in ``__post_init__``; a bad value raises ``ValueError`` with
the field name, the bad value and what is allowed. Sign conventions follow the official HiPER code so that its
configs carry over 1:1 (spec §3.2, §4.1):

* ``keep_penalty`` and ``keep_consistency_penalty`` are **added** to rewards, so they must be ``<= 0``
  (official ALFWorld: -0.3 / -0.3, WebShop: -3.5 / -0.3);
* ``invalid_penalty`` is a coefficient that is **subtracted** on invalid-format turns, so it must be ``>= 0``
  (official: 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from hiper.settings import setting

KEEP_PENALTY_MODES = ("fixed", "normalized", "last_step")
SWITCH_MODES = ("code", "paper")
GIGPO_MODES = ("mean_norm", "mean_std_norm")
GROUP_STATS = ("trajectory", "turn")
#: how the group baselines charge shaping penalties: summed per trajectory, or to the turn that earned them
PENALTY_CREDIT = ("episode", "turn")


def _check_types(obj: object) -> None:
    """Every field must have its declared type (int accepted for float) and floats must be finite."""
    name = type(obj).__name__
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}.{f.name} must be finite, got {value!r}")
        elif f.type == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name}.{f.name} must be a bool, got {value!r}")
        elif f.type == "str" and not isinstance(value, str):
            raise ValueError(f"{name}.{f.name} must be a string, got {value!r}")


def _check_unit(obj: object, name: str, *, open_low: bool = False) -> None:
    value = getattr(obj, name)
    low_ok = value > 0.0 if open_low else value >= 0.0
    if not (low_ok and value <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{type(obj).__name__}.{name} must be in {interval}, got {value!r}")


def _check_turn_credit(obj: Any) -> None:
    _check_choice(obj, "penalty_credit", PENALTY_CREDIT)
    if obj.penalty_credit == "turn" and obj.group_stats != "turn":
        raise ValueError(f"{type(obj).__name__}: penalty_credit='turn' scores turn samples, so it needs "
                         f"group_stats='turn', got {obj.group_stats!r}")


def _check_choice(obj: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {list(choices)}, got {value!r}")


@dataclass(kw_only=True)
class ShapingConfig:
    """Reward-shaping options shared by every estimator (spec §3.2, §4.3, §7 #7).

    Attributes:
        keep_penalty: kappa, added to KEEP turns (<= 0). 0 disables it.
        keep_penalty_mode: ``"fixed"``: every KEEP turn gets kappa (turn 0 included unless
            ``keep_penalty_skip_first``). ``"normalized"`` (HEAD): trajectories with T >= 2 get kappa * m / T in
            total, spread evenly over their m KEEP turns (kappa / T each). ``"last_step"`` (CODE-INIT default):
            the same total kappa * m / T added once, to the final turn.
        keep_penalty_skip_first: exclude turn 0 from the KEEP count (and, in the normalized modes, from T).
        keep_consistency_penalty: kappa_c, added to KEEP turns at position >= 1 flagged ``keep_inconsistent``
            by the protocol (<= 0).
        invalid_penalty: c_inv, subtracted on turns with ``valid == False`` (>= 0).
        switch_rate_floor: CODE-INIT episode penalty: if (#SWITCH flags over all turns) / (T - 1) is below this
            floor, the final turn gets ``-switch_rate_floor_coef * (floor - rate)``. Removed in HEAD; off by default.
        switch_rate_floor_coef: weight of that penalty (>= 0).
    """

    keep_penalty: float = setting(0.0, "kappa added to KEEP turns' rewards (<= 0; 0 = off)",
                                  "spec §3.2; paper ALFWorld -0.3, WebShop -3.5")
    keep_penalty_mode: str = setting("normalized", "spread of kappa: normalized (kappa/T per KEEP turn), fixed "
                                     "(kappa per KEEP turn), last_step (kappa*m/T on the final turn)",
                                     "spec §3.2 (HEAD: normalized; CODE-INIT: last_step)")
    keep_penalty_skip_first: bool = setting(False, "exclude turn 0 from the KEEP count (and from T when normalized)",
                                            "spec §3.2, CODE-INIT option")
    keep_consistency_penalty: float = setting(0.0, "kappa_c added to KEEP turns whose subgoal text changed (<= 0)",
                                              "spec §3.2; paper -0.3")
    invalid_penalty: float = setting(0.0, "c_inv subtracted on invalid-format turns (>= 0)", "spec §3.2; paper 0.1",
                                     set_by="actor.invalid_action_penalty_coef")
    switch_rate_floor: float = setting(0.0, "CODE-INIT episode penalty when the switch rate is below this floor "
                                       "(0 = off)", "spec §3.2, CODE-INIT (removed in HEAD)")
    switch_rate_floor_coef: float = setting(0.0, "weight of the switch-rate floor penalty (>= 0)",
                                            "spec §3.2, CODE-INIT")

    def __post_init__(self) -> None:
        _check_types(self)
        name = type(self).__name__
        if self.keep_penalty > 0.0:
            raise ValueError(
                f"{name}.keep_penalty is added to KEEP turns' rewards, so it must be <= 0 "
                f"(official ALFWorld: -0.3), got {self.keep_penalty!r}"
            )
        if self.keep_consistency_penalty > 0.0:
            raise ValueError(
                f"{name}.keep_consistency_penalty is added to inconsistent KEEP turns, so it must be <= 0 "
                f"(official: -0.3), got {self.keep_consistency_penalty!r}"
            )
        if self.invalid_penalty < 0.0:
            raise ValueError(
                f"{name}.invalid_penalty is a coefficient subtracted on invalid turns, so it must be >= 0 "
                f"(official: 0.1), got {self.invalid_penalty!r}"
            )
        _check_choice(self, "keep_penalty_mode", KEEP_PENALTY_MODES)
        _check_unit(self, "switch_rate_floor")
        if self.switch_rate_floor_coef < 0.0:
            raise ValueError(
                f"{name}.switch_rate_floor_coef must be >= 0, got {self.switch_rate_floor_coef!r}"
            )


@dataclass(kw_only=True)
class HAEConfig(ShapingConfig):
    """Hierarchical Advantage Estimation (spec §3, Mode A defaults of §4.1 / §7.1).

    Attributes:
        gamma: discount per turn, in (0, 1].
        lam: lambda of the low-level (within-segment) GAE, in [0, 1].
        lam_seg: lambda of the high-level (segment / SMDP) GAE, in [0, 1].
        bootstrap_truncated: bootstrap a truncated last segment (last valid turn not done) with the code's quirk
            values (low: VL of that turn; high and term: VH of the segment start); else bootstrap 0.
        switch_mode: ``"code"``: adv_term = GT - VT (three-head critic). ``"paper"``:
            adv_term = (q - beta) * (V_high - V_low_keep), needing ``beta`` and ``v_low_keep``.
        norm_adv: whiten each advantage type over its turns (spec §3.9); applied by the registry estimator
            ``get("hae")``, not by the raw ``hae()`` function.
    """

    gamma: float = setting(1.0, "discount per turn, in (0, 1]", "paper 1.0 (spec §4.1)", set_by="algorithm.gamma")
    lam: float = setting(1.0, "lambda of the low-level (within-segment) GAE", "paper 1.0 (spec §4.1)",
                         set_by="algorithm.lam")
    lam_seg: float = setting(0.95, "lambda of the high-level (segment, SMDP) GAE", "paper 0.95 (spec §3.6)")
    bootstrap_truncated: bool = setting(True, "bootstrap a truncated last segment from the critic (else 0)",
                                        "spec §3.5; official ALFWorld True, WebShop False")
    switch_mode: str = setting("code", "switch advantage: code (GT - VT, 3 heads) or paper ((q - beta)(VH - VL_keep))",
                               "spec §3.7 / §7.1")
    norm_adv: bool = setting(True, "whiten each advantage type over its turns", "spec §3.9")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unit(self, "gamma", open_low=True)
        _check_unit(self, "lam")
        _check_unit(self, "lam_seg")
        _check_choice(self, "switch_mode", SWITCH_MODES)


@dataclass(kw_only=True)
class GAEConfig(ShapingConfig):
    """Flat turn-level GAE (PPO with one value per turn read at response position 0; spec §4.3 ``turn_gae``).

    ``bootstrap_truncated=False`` reproduces the official ``compute_turn_gae_advantage_return`` (a truncated last
    turn bootstraps 0); ``True`` bootstraps from the turn's own value, like HAE's low level. ``keep_penalty_mode``
    defaults to ``"fixed"``: the official baselines add the KEEP penalty to every KEEP turn (spec §4.3).
    """

    keep_penalty_mode: str = setting("fixed", "spread of kappa (see HAEConfig); the baselines charge each KEEP turn",
                                     "spec §4.3")
    gamma: float = setting(1.0, "discount per turn, in (0, 1]", "paper 1.0 (spec §4.1)", set_by="algorithm.gamma")
    lam: float = setting(1.0, "GAE lambda", "paper 1.0 (spec §4.1)", set_by="algorithm.lam")
    bootstrap_truncated: bool = setting(False, "bootstrap a truncated last turn from its own value (else 0)",
                                        "official turn_gae bootstraps 0 (spec §4.3)")
    norm_adv: bool = setting(True, "whiten the advantages over valid turns", "spec §4.3")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unit(self, "gamma", open_low=True)
        _check_unit(self, "lam")


@dataclass(kw_only=True)
class TokenGAEConfig(ShapingConfig):
    """Token-level GAE inside each turn: the paper's PPO baseline (verl-agent ``adv_estimator=gae``, spec §4.3).

    Every turn is its own sequence: its score (the trajectory's env return plus the turn's own penalties, official
    ``ray_trainer.py:204-224`` and ``reward_manager/episode.py:72-79``) sits on the turn's last response token, the
    critic gives one value per response token, and verl's ``compute_gae_advantage_return`` runs over the tokens with
    ``V`` after the last token = 0. ``gamma`` and ``lam`` are per **token** (verl's ``algorithm.gamma``/``lam``),
    not per turn, so they are this section's own keys rather than ``algorithm.gamma``/``lam``.
    """

    keep_penalty_mode: str = setting("fixed", "spread of kappa (see HAEConfig); the baselines charge each KEEP turn",
                                     "spec §4.3")
    gamma: float = setting(1.0, "discount per response token, in (0, 1]", "verl algorithm.gamma default 1.0")
    lam: float = setting(1.0, "GAE lambda per response token, in [0, 1]", "verl algorithm.lam default 1.0")
    norm_adv: bool = setting(True, "whiten the advantages over every trained token of the batch",
                             "verl compute_gae_advantage_return: masked_whiten")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unit(self, "gamma", open_low=True)
        _check_unit(self, "lam")


@dataclass(kw_only=True)
class GRPOConfig(ShapingConfig):
    """GRPO: group-normalised episode return (spec §4.3).

    Attributes:
        norm_by_std: divide by the group std (unbiased, as verl) + ``eps``; ``False`` only centres.
        eps: added to the std.
        group_stats: ``"trajectory"``: mean/std over the group's trajectories (paper definition).
            ``"turn"``: every trajectory weighted by its number of turns (verl-agent's default
            ``compute_mean_std_cross_steps=True``).
    """

    keep_penalty_mode: str = setting("fixed", "spread of kappa (see HAEConfig); the baselines charge each KEEP turn",
                                     "spec §4.3")
    norm_by_std: bool = setting(True, "divide by the group std (else only centre)", "verl default True")
    eps: float = setting(1e-6, "added to the group std", "verl 1e-6")
    group_stats: str = setting("trajectory", "group statistics per trajectory or turn-weighted (turn)",
                               "paper: trajectory; verl-agent compute_mean_std_cross_steps: turn")
    penalty_credit: str = setting("episode", "episode: shaping terms summed into the trajectory return (hiper); "
                                  "turn: each turn scored as the env return + its own penalties, statistics over "
                                  "the group's turns (verl-agent)", "official ray_trainer.py:204-224: turn")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps <= 0.0:
            raise ValueError(f"GRPOConfig.eps must be > 0, got {self.eps!r}")
        _check_choice(self, "group_stats", GROUP_STATS)
        _check_turn_credit(self)


@dataclass(kw_only=True)
class RLOOConfig(ShapingConfig):
    """RLOO: episode return minus the mean return of the other trajectories of its group (spec §4.3)."""

    keep_penalty_mode: str = setting("fixed", "spread of kappa (see HAEConfig); the baselines charge each KEEP turn",
                                     "spec §4.3")
    penalty_credit: str = setting("episode", "episode: shaping terms summed into the trajectory return (hiper); "
                                  "turn: each turn scored as the env return + its own penalties, statistics over "
                                  "the group's turns (verl-agent)", "official ray_trainer.py:204-224: turn")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(self, "penalty_credit", PENALTY_CREDIT)


@dataclass(kw_only=True)
class GiGPOConfig(ShapingConfig):
    """GiGPO: episode-level group advantage + ``step_advantage_w`` x step-level anchor-state advantage (spec §4.3).

    Attributes:
        gamma: discount of the step-level return-to-go (official baselines: 0.95).
        step_advantage_w: weight of the step-level advantage (official: 1).
        mode: ``"mean_norm"`` (centre only) or ``"mean_std_norm"`` (centre and divide by std + eps), for both
            levels.
        eps: added to the std.
        group_stats: episode-level statistics per trajectory or per turn, as in ``GRPOConfig``.
    """

    keep_penalty_mode: str = setting("fixed", "spread of kappa (see HAEConfig); the baselines charge each KEEP turn",
                                     "spec §4.3")
    gamma: float = setting(0.95, "discount of the step-level return-to-go", "official GiGPO 0.95 (spec §4.3)")
    step_advantage_w: float = setting(1.0, "weight of the step-level (anchor-state) advantage", "official 1.0")
    mode: str = setting("mean_norm", "normalisation of both levels: mean_norm or mean_std_norm", "official mean_norm")
    eps: float = setting(1e-6, "added to the std", "verl 1e-6")
    group_stats: str = setting("trajectory", "episode-level statistics per trajectory or turn-weighted (turn)",
                               "paper: trajectory; verl-agent: turn")
    penalty_credit: str = setting("episode", "episode: shaping terms summed into the trajectory return (hiper); "
                                  "turn: each turn scored as the env return + its own penalties, statistics over "
                                  "the group's turns (verl-agent)", "official ray_trainer.py:204-224: turn")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unit(self, "gamma", open_low=True)
        _check_choice(self, "mode", GIGPO_MODES)
        _check_choice(self, "group_stats", GROUP_STATS)
        _check_turn_credit(self)
        if self.eps <= 0.0:
            raise ValueError(f"GiGPOConfig.eps must be > 0, got {self.eps!r}")
        if self.step_advantage_w < 0.0:
            raise ValueError(f"GiGPOConfig.step_advantage_w must be >= 0, got {self.step_advantage_w!r}")
