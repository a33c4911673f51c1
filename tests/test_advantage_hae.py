"""Golden and edge-case tests for ``hiper.advantage.hae`` (spec §3.3-§3.7, worked example §3.14)."""

from __future__ import annotations

import pytest
import torch

from hiper.advantage import GAEConfig, HAEConfig, hae, turn_gae

S, K = True, False


def _row(*values, dtype=torch.float64):
    return torch.tensor([list(values)], dtype=dtype)


def _worked_example():
    """Spec §3.14: q = [S, K, S, K, K], episode ends at t = 4 with r_4 = 10; distinct values per head."""
    rewards = _row(0.0, 0.0, 0.0, 0.0, 10.0)
    dones = torch.tensor([[False, False, False, False, True]])
    switch = torch.tensor([[S, K, S, K, K]])
    v_low = _row(1.5, 2.25, 3.0, 4.75, 6.5)
    v_high = _row(7.0, 99.0, 8.5, 98.0, 97.0)  # only turns 0 and 2 (boundaries) may be read
    v_term = _row(0.25, 0.5, 1.25, 2.0, 3.5)
    mask = torch.ones(1, 5, dtype=torch.bool)
    return rewards, dones, switch, v_low, v_high, v_term, mask


def test_worked_example_reproduces_every_value():
    rewards, dones, switch, VL, VH, VT, mask = _worked_example()
    res = hae(rewards, dones, switch, VL, VH, VT, mask, HAEConfig(gamma=1.0, lam=1.0, lam_seg=0.95))
    vl, vh, vt = VL[0], VH[0], VT[0]
    # segments [0, 1] and [2, 4]
    assert res.boundary[0].tolist() == [True, False, True, False, False]
    assert res.segment_id[0].tolist() == [0, 0, 1, 1, 1]
    expected_low = [vh[2] - vl[0], vh[2] - vl[1], 10 - vl[2], 10 - vl[3], 10 - vl[4]]
    torch.testing.assert_close(res.adv_low[0], torch.stack(expected_low))
    torch.testing.assert_close(res.ret_low[0], res.adv_low[0] + vl)
    ah_seg1 = 10 - vh[2]
    ah_seg0 = (vh[2] - vh[0]) + 0.95 * (10 - vh[2])
    torch.testing.assert_close(
        res.adv_high[0], torch.stack([ah_seg0, vh[0] * 0, ah_seg1, vh[0] * 0, vh[0] * 0])
    )
    torch.testing.assert_close(res.ret_high[0, [0, 2]], torch.stack([ah_seg0 + vh[0], ah_seg1 + vh[2]]))
    expected_gt = torch.stack([vh[2], vh[2], vh[2] * 0 + 10, vh[2] * 0 + 10, vh[2] * 0 + 10])
    torch.testing.assert_close(res.ret_term[0], expected_gt)
    torch.testing.assert_close(res.adv_term[0], expected_gt - vt)
    # numerically: AH(seg0) = (8.5 - 7) + 0.95 * 1.5 = 2.925
    assert float(res.adv_high[0, 0]) == pytest.approx(2.925)
    assert float(res.adv_low[0, 1]) == pytest.approx(6.25)


def test_worked_example_float32_matches_float64():
    args64 = _worked_example()
    args32 = [a.float() if a.dtype == torch.float64 else a for a in args64]
    r64 = hae(*args64, HAEConfig())
    r32 = hae(*args32, HAEConfig())
    for name in ("adv_low", "adv_high", "adv_term", "ret_low", "ret_high", "ret_term"):
        assert getattr(r32, name).dtype == torch.float32
        torch.testing.assert_close(getattr(r32, name).double(), getattr(r64, name), atol=1e-5, rtol=1e-6)


def _truncated_case():
    """Three turns q = [S, K, S], no done: segments [0, 1] and [2]; the episode was cut after turn 2."""
    rewards = _row(1.0, 2.0, 4.0)
    dones = torch.tensor([[False, False, False]])
    switch = torch.tensor([[S, K, S]])
    v_low = _row(0.5, 0.75, 1.5)
    v_high = _row(3.0, 50.0, 5.0)
    v_term = _row(0.125, 0.25, 0.375)
    return rewards, dones, switch, v_low, v_high, v_term, torch.ones(1, 3, dtype=torch.bool)


@pytest.mark.parametrize("bootstrap", [True, False])
def test_truncated_episode_hand_computed(bootstrap):
    gamma, lam, lam_seg = 0.9, 0.8, 0.5
    cfg = HAEConfig(gamma=gamma, lam=lam, lam_seg=lam_seg, bootstrap_truncated=bootstrap)
    res = hae(*_truncated_case(), cfg)
    # last segment [2]: low bootstraps from its own VL_2 (quirk), high and term from VH_{b_1} = VH_2 = 5
    low_boot = 1.5 if bootstrap else 0.0
    high_boot = 5.0 if bootstrap else 0.0
    al2 = 4.0 + gamma * low_boot - 1.5
    # first segment [0, 1] ends before a boundary: bootstrap VH_2 = 5
    al1 = 2.0 + gamma * 5.0 - 0.75
    al0 = (1.0 + gamma * 0.75 - 0.5) + gamma * lam * al1
    torch.testing.assert_close(res.adv_low[0], torch.tensor([al0, al1, al2], dtype=torch.float64))
    ah1 = 4.0 + gamma * high_boot - 5.0
    ah0 = (1.0 + gamma * 2.0) + gamma**2 * 5.0 - 3.0 + gamma**2 * lam_seg * ah1
    torch.testing.assert_close(res.adv_high[0], torch.tensor([ah0, 0.0, ah1], dtype=torch.float64))
    gt2 = 4.0 + gamma * high_boot
    gt1 = 2.0 + gamma * 5.0
    gt0 = 1.0 + gamma * gt1
    torch.testing.assert_close(res.ret_term[0], torch.tensor([gt0, gt1, gt2], dtype=torch.float64))
    torch.testing.assert_close(res.adv_term[0], res.ret_term[0] - torch.tensor([0.125, 0.25, 0.375]).double())


def test_done_cuts_the_bootstrap_even_with_bootstrap_truncated():
    rewards, _, switch, v_low, v_high, v_term, mask = _truncated_case()
    dones = torch.tensor([[False, False, True]])
    res = hae(rewards, dones, switch, v_low, v_high, v_term, mask, HAEConfig(bootstrap_truncated=True))
    assert float(res.adv_low[0, 2]) == pytest.approx(4.0 - 1.5)
    assert float(res.adv_high[0, 2]) == pytest.approx(4.0 - 5.0)
    assert float(res.ret_term[0, 2]) == pytest.approx(4.0)


def test_paper_switch_mode():
    rewards, dones, switch, VL, VH, _, mask = _worked_example()
    beta = _row(1.0, 0.25, 0.5, 0.125, 0.75)
    v_low_keep = _row(0.0, 3.0, 4.0, 5.0, 6.0)
    cfg = HAEConfig(switch_mode="paper")
    res = hae(rewards, dones, switch, VL, VH, None, mask, cfg, beta=beta, v_low_keep=v_low_keep)
    q = switch[0].double()
    torch.testing.assert_close(res.adv_term[0], (q - beta[0]) * (VH[0] - v_low_keep[0]))
    # low / high levels do not depend on the switch mode
    code = hae(*_worked_example(), HAEConfig())
    torch.testing.assert_close(res.adv_low, code.adv_low)
    torch.testing.assert_close(res.adv_high, code.adv_high)


def test_paper_mode_requires_beta_and_v_low_keep():
    rewards, dones, switch, VL, VH, VT, mask = _worked_example()
    with pytest.raises(ValueError, match="beta.*v_low_keep"):
        hae(rewards, dones, switch, VL, VH, VT, mask, HAEConfig(switch_mode="paper"))
    with pytest.raises(ValueError, match="missing: \\['v_low_keep'\\]"):
        hae(
            rewards,
            dones,
            switch,
            VL,
            VH,
            VT,
            mask,
            HAEConfig(switch_mode="paper"),
            beta=torch.zeros(1, 5).double(),
        )
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        hae(rewards, dones, switch, VL, VH, VT, mask, HAEConfig(switch_mode="paper"),
            beta=torch.full((1, 5), 1.5).double(), v_low_keep=VL)  # fmt: skip


def test_code_mode_requires_v_term():
    rewards, dones, switch, VL, VH, _, mask = _worked_example()
    with pytest.raises(ValueError, match="v_term"):
        hae(rewards, dones, switch, VL, VH, None, mask, HAEConfig())


def test_padding_and_empty_rows_are_zero_and_ignored():
    rewards, dones, switch, VL, VH, VT, mask = _worked_example()

    def pad(x, fill):
        out = torch.full((3, 7), fill, dtype=x.dtype)
        out[1, :5] = x[0]
        return out

    padded = [pad(rewards, 123.0), pad(dones, True), pad(switch, True), pad(VL, 7.0), pad(VH, -9.0),
              pad(VT, 2.0)]  # fmt: skip
    pmask = torch.zeros(3, 7, dtype=torch.bool)
    pmask[1, :5] = True
    padded[1] = padded[1] & pmask  # dones only on valid turns
    res = hae(*padded, pmask, HAEConfig())
    ref = hae(*_worked_example(), HAEConfig())
    for name in ("adv_low", "adv_high", "adv_term", "ret_low", "ret_high", "ret_term"):
        full = getattr(res, name)
        torch.testing.assert_close(full[1, :5], getattr(ref, name)[0])
        assert bool((full[~pmask] == 0).all()), name
    assert not bool(res.boundary[~pmask].any())
    assert bool((res.segment_id[~pmask] == -1).all())


def test_every_turn_switch_reduces_to_flat_turn_gae():
    """All-SWITCH: segments are single turns, so AH is flat turn GAE on V_high with lambda = lam_seg and AL is the
    one-step TD error bootstrapping from the next turn's V_high (the 'HAE = flat GAE' claim of spec §5)."""
    gen = torch.Generator().manual_seed(0)
    n, t = 16, 9
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    last = torch.zeros_like(mask)
    last[torch.arange(n), lengths - 1] = True
    dones = last & (torch.rand(n, 1, generator=gen) < 0.5)
    rewards = torch.randn(n, t, generator=gen, dtype=torch.float64)
    VL, VH, VT = (torch.randn(n, t, generator=gen, dtype=torch.float64) for _ in range(3))
    switch = torch.ones(n, t, dtype=torch.bool)
    for bootstrap in (True, False):
        cfg = HAEConfig(gamma=0.9, lam=0.7, lam_seg=0.6, bootstrap_truncated=bootstrap)
        res = hae(rewards, dones, switch, VL, VH, VT, mask, cfg)
        flat_adv, flat_ret = turn_gae(rewards, dones, VH, mask,
                                      GAEConfig(gamma=0.9, lam=0.6, bootstrap_truncated=bootstrap))  # fmt: skip
        torch.testing.assert_close(res.adv_high, flat_adv)
        torch.testing.assert_close(res.ret_high, flat_ret)
        vh_next = torch.cat([VH[:, 1:], torch.zeros(n, 1, dtype=VH.dtype)], dim=1)
        trunc = VL if bootstrap else torch.zeros_like(VL)
        nxt = torch.where(dones, 0.0, torch.where(last, trunc, vh_next))
        torch.testing.assert_close(res.adv_low, torch.where(mask, rewards + 0.9 * nxt - VL, 0.0))


def test_single_segment_low_level_is_flat_gae_on_v_low():
    """No switch after turn 0: one segment, so the low level is flat turn GAE on V_low (same truncation quirk)."""
    gen = torch.Generator().manual_seed(1)
    n, t = 8, 6
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    last = torch.zeros_like(mask)
    last[torch.arange(n), lengths - 1] = True
    dones = last & (torch.rand(n, 1, generator=gen) < 0.5)
    rewards, VL, VH, VT = (torch.randn(n, t, generator=gen, dtype=torch.float64) for _ in range(4))
    switch = torch.zeros(n, t, dtype=torch.bool)
    res = hae(
        rewards, dones, switch, VL, VH, VT, mask, HAEConfig(gamma=0.95, lam=0.9, bootstrap_truncated=True)
    )
    flat, _ = turn_gae(rewards, dones, VL, mask, GAEConfig(gamma=0.95, lam=0.9, bootstrap_truncated=True))
    torch.testing.assert_close(res.adv_low, flat)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda a: a.__setitem__(1, torch.tensor([[True, False, False, False, True]])),
            "before the last valid turn",
        ),
        (lambda a: a.__setitem__(3, a[3][:, :4]), "shape"),
        (lambda a: a.__setitem__(2, a[2].float()), "bool"),
        (lambda a: a.__setitem__(0, a[0].long()), "floating-point"),
        (lambda a: a.__setitem__(4, a[4].clone().fill_(float("nan"))), "non-finite"),
        (lambda a: a.__setitem__(6, torch.tensor([[True, False, True, True, True]])), "left-aligned"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, match):
    args = list(_worked_example())
    mutate(args)
    with pytest.raises(ValueError, match=match):
        hae(*args, HAEConfig())


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="HAEConfig"):
        hae(*_worked_example(), GAEConfig())
