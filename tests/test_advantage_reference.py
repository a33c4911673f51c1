"""Vectorised estimators vs the slow per-turn reference loops (``hiper.advantage.reference``) on random batches.

Hypothesis draws the structure (batch size, lengths via a seed, switch / done rates, gamma, lambdas, truncation
setting, shaping options); tensors are generated from a drawn seed, so each example is a whole random batch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiper.advantage import (
    GAEConfig,
    GiGPOConfig,
    GRPOConfig,
    HAEConfig,
    ShapingConfig,
    gigpo,
    grpo,
    hae,
    rloo,
    shape_rewards,
    turn_gae,
)
from hiper.advantage.reference import (
    reference_gigpo,
    reference_grpo,
    reference_hae,
    reference_rloo,
    reference_shape_rewards,
    reference_turn_gae,
)

TOL = {"atol": 1e-5, "rtol": 0.0}
unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
gamma_st = st.one_of(st.just(1.0), st.floats(0.5, 1.0))


def random_batch(
    seed: int, n_traj: int, t_max: int, p_switch: float, p_done: float, allow_empty: bool = True
):
    """A random padded batch: lengths in [0 or 1, t_max], dones only at last turns, float64 values."""
    gen = torch.Generator().manual_seed(seed)
    low = 0 if allow_empty else 1
    lengths = torch.randint(low, t_max + 1, (n_traj,), generator=gen)
    mask = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)
    last = torch.zeros_like(mask)
    rows = torch.nonzero(lengths > 0).flatten()
    last[rows, lengths[rows] - 1] = True
    dones = last & (torch.rand(n_traj, 1, generator=gen) < p_done)
    switch = torch.rand(n_traj, t_max, generator=gen) < p_switch

    def values():
        v = torch.randn(n_traj, t_max, generator=gen, dtype=torch.float64) * 3.0
        return torch.where(mask, v, torch.randn(n_traj, t_max, generator=gen, dtype=torch.float64) * 100)

    # sparse, larger rewards like the envs (10 * won) plus dense noise
    rewards = torch.randn(n_traj, t_max, generator=gen, dtype=torch.float64)
    rewards = rewards + 10.0 * (torch.rand(n_traj, t_max, generator=gen) < 0.1)
    return {
        "rewards": rewards, "dones": dones, "switch": switch, "mask": mask, "v_low": values(), "v_high": values(),
        "v_term": values(), "beta": torch.rand(n_traj, t_max, generator=gen, dtype=torch.float64),
        "v_low_keep": values(), "valid": torch.rand(n_traj, t_max, generator=gen) < 0.8,
        "keep_inconsistent": torch.rand(n_traj, t_max, generator=gen) < 0.3,
        "group": torch.randint(0, max(1, n_traj // 3), (n_traj,), generator=gen),
        "state_id": torch.randint(0, 4, (n_traj, t_max), generator=gen),
    }  # fmt: skip


batch_st = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n_traj": st.integers(1, 8),
    "t_max": st.integers(1, 14),
    "p_switch": st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    "p_done": st.sampled_from([0.0, 0.5, 1.0]),
})  # fmt: skip


def _compare(fast, ref: dict, names):
    for name in names:
        got = getattr(fast, name)
        want = ref[name]
        if want.dtype == torch.float64:
            torch.testing.assert_close(got, want, **TOL, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(got, want), name


HAE_FIELDS = ("adv_low", "adv_high", "adv_term", "ret_low", "ret_high", "ret_term", "boundary", "segment_id")


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(batch=batch_st, gamma=gamma_st, lam=unit, lam_seg=unit, bootstrap=st.booleans())
def test_hae_code_mode_matches_reference(batch, gamma, lam, lam_seg, bootstrap):
    b = random_batch(**batch)
    cfg = HAEConfig(gamma=gamma, lam=lam, lam_seg=lam_seg, bootstrap_truncated=bootstrap)
    args = (b["rewards"], b["dones"], b["switch"], b["v_low"], b["v_high"], b["v_term"], b["mask"], cfg)
    _compare(hae(*args), reference_hae(*args), HAE_FIELDS)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(batch=batch_st, gamma=gamma_st, lam=unit, lam_seg=unit, bootstrap=st.booleans())
def test_hae_paper_mode_matches_reference(batch, gamma, lam, lam_seg, bootstrap):
    b = random_batch(**batch)
    cfg = HAEConfig(gamma=gamma, lam=lam, lam_seg=lam_seg, bootstrap_truncated=bootstrap, switch_mode="paper")
    args = (b["rewards"], b["dones"], b["switch"], b["v_low"], b["v_high"], None, b["mask"], cfg)
    kw = {"beta": b["beta"], "v_low_keep": b["v_low_keep"]}
    _compare(hae(*args, **kw), reference_hae(*args, **kw), HAE_FIELDS)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(batch=batch_st)
def test_hae_float32_close_to_reference(batch):
    b = random_batch(**batch)
    cfg = HAEConfig(gamma=0.99, lam=0.95)
    f32 = (
        [b[k].float() for k in ("rewards",)]
        + [b["dones"], b["switch"]]
        + [b[k].float() for k in ("v_low", "v_high", "v_term")]
    )
    res = hae(*f32, b["mask"], cfg)
    ref = reference_hae(
        b["rewards"], b["dones"], b["switch"], b["v_low"], b["v_high"], b["v_term"], b["mask"], cfg
    )
    for name in ("adv_low", "adv_high", "adv_term"):
        torch.testing.assert_close(getattr(res, name).double(), ref[name], atol=2e-4, rtol=1e-5)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(batch=batch_st, gamma=gamma_st, lam=unit, bootstrap=st.booleans())
def test_turn_gae_matches_reference(batch, gamma, lam, bootstrap):
    b = random_batch(**batch)
    cfg = GAEConfig(gamma=gamma, lam=lam, bootstrap_truncated=bootstrap)
    adv, ret = turn_gae(b["rewards"], b["dones"], b["v_low"], b["mask"], cfg)
    ref = reference_turn_gae(b["rewards"], b["dones"], b["v_low"], b["mask"], cfg)
    torch.testing.assert_close(adv, ref["adv"], **TOL)
    torch.testing.assert_close(ret, ref["ret"], **TOL)


shaping_st = st.builds(
    ShapingConfig,
    keep_penalty=st.sampled_from([0.0, -0.3, -3.5]),
    keep_penalty_mode=st.sampled_from(["fixed", "normalized", "last_step"]),
    keep_penalty_skip_first=st.booleans(),
    keep_consistency_penalty=st.sampled_from([0.0, -0.1, -0.3]),
    invalid_penalty=st.sampled_from([0.0, 0.1, 0.5]),
    switch_rate_floor=st.sampled_from([0.0, 0.25, 1.0]),
    switch_rate_floor_coef=st.sampled_from([0.0, 5.0]),
)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(batch=batch_st, cfg=shaping_st)
def test_shaping_matches_reference(batch, cfg):
    b = random_batch(**batch)
    args = (b["rewards"], b["switch"], b["valid"], b["keep_inconsistent"], b["mask"], cfg)
    shaped = shape_rewards(*args)
    ref = reference_shape_rewards(*args)
    torch.testing.assert_close(shaped.total, ref["total"], **TOL)
    for name, term in shaped.terms.items():
        torch.testing.assert_close(term, ref[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@settings(max_examples=500, deadline=None, derandomize=True)
@given(batch=batch_st, norm=st.booleans(), stats=st.sampled_from(["trajectory", "turn"]))
def test_grpo_and_rloo_match_reference(batch, norm, stats):
    b = random_batch(**batch)
    cfg = GRPOConfig(norm_by_std=norm, group_stats=stats)
    torch.testing.assert_close(grpo(b["rewards"], b["mask"], b["group"], cfg),
                               reference_grpo(b["rewards"], b["mask"], b["group"], cfg), **TOL)  # fmt: skip
    torch.testing.assert_close(rloo(b["rewards"], b["mask"], b["group"]),
                               reference_rloo(b["rewards"], b["mask"], b["group"]), **TOL)  # fmt: skip


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    batch=batch_st,
    gamma=gamma_st,
    w=st.sampled_from([0.0, 0.5, 1.0]),
    mode=st.sampled_from(["mean_norm", "mean_std_norm"]),
    stats=st.sampled_from(["trajectory", "turn"]),
)
def test_gigpo_matches_reference(batch, gamma, w, mode, stats):
    b = random_batch(**batch)
    cfg = GiGPOConfig(gamma=gamma, step_advantage_w=w, mode=mode, group_stats=stats)
    got = gigpo(b["rewards"], b["mask"], b["group"], b["state_id"], cfg)
    want = reference_gigpo(b["rewards"], b["mask"], b["group"], b["state_id"], cfg)
    torch.testing.assert_close(got, want, **TOL)


def test_reference_is_independent_of_fast_path():
    """The reference module must not import the vectorised implementation (else agreement proves nothing)."""
    import hiper.advantage.reference as ref

    source = open(ref.__file__).read()
    for forbidden in (
        "from hiper.advantage.hae",
        "from hiper.advantage.baselines",
        "from hiper.advantage.shaping",
    ):
        assert forbidden not in source
    assert "linear_recurrence_reverse" not in source


@pytest.mark.parametrize("p_switch", [0.0, 1.0])
def test_reference_agrees_on_a_full_size_batch(p_switch):
    """One benchmark-sized batch (128 x 50) as a last sanity check at scale."""
    b = random_batch(7, 128, 50, p_switch, 0.5)
    cfg = HAEConfig()
    args = (b["rewards"], b["dones"], b["switch"], b["v_low"], b["v_high"], b["v_term"], b["mask"], cfg)
    _compare(hae(*args), reference_hae(*args), HAE_FIELDS)
