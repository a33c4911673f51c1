"""PPO losses: golden values on hand-computed cases, k3 KL, clipped value loss, NaN-safe steps."""

from __future__ import annotations

import math

import torch

from hiper import losses as ppo


def _ratios_to_logp(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.zeros(1, len(ratios))
    return torch.log(torch.tensor([ratios])), old


def test_dual_clip_golden_values() -> None:
    # token: (ratio, adv) -> per-token loss by hand (eps 0.2/0.2, c = 3)
    #   (1.5, +1): max(-1.5, -1.2) = -1.2      (upper clip)
    #   (0.5, -1): max(0.5, 0.8) = 0.8; min(3, 0.8) = 0.8
    #   (5.0, -1): max(5, 1.2) = 5;    min(3, 5) = 3   (dual clip)
    #   (0.5, +1): max(-0.5, -0.8) = -0.5
    #   (2.0, +100) is masked out
    logp, old = _ratios_to_logp([1.5, 0.5, 5.0, 0.5, 2.0])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 100.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    losses, clipped, lower = ppo.dual_clip_pg_losses(logp, old, adv, 0.2, 0.2, 3.0)
    expected = torch.tensor([-1.2, 0.8, 3.0, -0.5])
    assert torch.allclose(losses[0, :4], expected, atol=1e-6)
    assert lower[0].tolist()[:4] == [0.0, 0.0, 1.0, 0.0]
    assert clipped[0].tolist()[:4] == [1.0, 1.0, 0.0, 0.0]
    cfg = ppo.PPOLossConfig(kl_coef=0.0, entropy_coeff=0.0)
    total, stats = ppo.actor_loss_sum(logp, old, adv, mask, cfg)
    assert math.isclose(float(total) / int(mask.sum()), 2.1 / 4, rel_tol=1e-6)
    assert math.isclose(float(stats["pg_clipfrac"]), 2.0)


def test_no_dual_clip_when_c_is_one() -> None:
    logp, old = _ratios_to_logp([5.0])
    losses, _, _ = ppo.dual_clip_pg_losses(logp, old, torch.tensor([[-1.0]]), 0.2, 0.2, 1.0)
    assert math.isclose(float(losses), 5.0, rel_tol=1e-6)


def test_kl_k3_and_entropy_terms() -> None:
    logp = torch.log(torch.tensor([[0.25, 0.5]]))
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    kl = ppo.kl_k3(logp, ref)
    # x = log(ref/pi): exp(x) - x - 1
    assert math.isclose(float(kl[0, 0]), 2.0 - math.log(2.0) - 1.0, rel_tol=1e-6)
    assert float(kl[0, 1]) == 0.0
    assert float(ppo.kl_k3(torch.tensor([[-50.0]]), torch.tensor([[0.0]]))) == 10.0  # clamped
    cfg = ppo.PPOLossConfig(kl_coef=0.5, entropy_coeff=0.1)
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.zeros(1, 2)
    entropy = torch.tensor([[1.0, 3.0]])
    total, stats = ppo.actor_loss_sum(logp, logp, adv, mask, cfg, entropy=entropy, ref_logp=ref)
    expected = 0.0 - 0.1 * 4.0 + 0.5 * float(kl.sum())
    assert math.isclose(float(total), expected, rel_tol=1e-6)
    uniform = torch.zeros(1, 4)
    assert math.isclose(float(ppo.entropy_from_logits(uniform)), math.log(4), rel_tol=1e-6)


def test_value_loss_clipped_and_unclipped() -> None:
    v, old, ret = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0])
    mask = torch.tensor([True])
    loss, n_clipped = ppo.value_loss_terms(v, old, ret, mask, 0.5, scale=0.5)
    assert math.isclose(float(loss), 0.5 * 2.25)  # clip(v) = 0.5 -> (0.5 - 2)^2 = 2.25 > (1 - 2)^2
    assert float(n_clipped) == 1.0
    loss, _ = ppo.value_loss_terms(v, old, ret, mask, None, scale=0.5)
    assert math.isclose(float(loss), 0.5)
    loss, _ = ppo.value_loss_terms(v, old, ret, mask, None, scale=1.0)  # the official fork's scale
    assert math.isclose(float(loss), 1.0)
    loss, _ = ppo.value_loss_terms(v, old, ret, torch.tensor([False]), None, scale=0.5)
    assert float(loss) == 0.0


def test_masked_sum_ignores_nan_outside_mask() -> None:
    x = torch.tensor([1.0, float("nan"), 2.0])
    assert float(ppo.masked_sum(x, torch.tensor([True, False, True]))) == 3.0


def test_safe_step_skips_non_finite() -> None:
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    before = [p.detach().clone() for p in lin.parameters()]
    loss = lin(torch.ones(1, 3)).sum() * float("nan")
    loss.backward()
    stepped, _ = ppo.safe_step(opt, list(lin.parameters()), 1.0)
    assert not stepped
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert all(p.grad is None for p in lin.parameters())
    assert not opt.state  # no Adam moments were created from the bad batch
    lin(torch.ones(1, 3)).sum().backward()
    stepped, norm = ppo.safe_step(opt, list(lin.parameters()), 1.0)
    assert stepped and math.isfinite(norm)
    assert not all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))


def test_explained_variance() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([True, True, True, False])
    assert math.isclose(ppo.explained_variance(y, y, m), 1.0)
    assert math.isclose(ppo.explained_variance(torch.full((4,), 2.0), y, m), 0.0, abs_tol=1e-12)
    assert math.isnan(ppo.explained_variance(y, y, torch.tensor([True, False, False, False])))


def test_safe_step_rolls_back_a_step_that_leaves_non_finite_weights() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    params = list(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    assert ppo.safe_step(opt, params, None)[0]  # a normal step: applied, momentum buffers exist
    before = [p.detach().clone() for p in params]
    moments = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for group in opt.param_groups:
        group["lr"] = 1e38  # finite, but lr * gradient overflows float32: the step would write -inf weights
    model(100 * torch.ones(1, 3)).sum().backward()
    stepped, norm = ppo.safe_step(opt, params, None)
    assert not stepped and norm == norm  # rolled back; the gradient itself was finite
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], m) for p, m in zip(params, moments))
    assert all(p.grad is None for p in params)
