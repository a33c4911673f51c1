"""MasterAdamW: float32 master weights for bf16 models (the paper's lr 1e-6 would otherwise round away)."""

from __future__ import annotations

import math

import pytest
import torch
from test_trainer import tiny_config

from hiper.losses import safe_step
from hiper.trainer.optim import MasterAdamW, adamw
from hiper.trainer.trainer import Trainer


def _layer(dtype: torch.dtype, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 64).to(dtype)


def _grads(layer: torch.nn.Linear, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 64, generator=gen).to(layer.weight.dtype)
    layer(x).float().pow(2).mean().backward()


def test_factory_picks_master_weights_only_for_low_precision() -> None:
    assert type(adamw(_layer(torch.float32).parameters(), 1e-3, 0.0)) is torch.optim.AdamW
    assert isinstance(adamw(_layer(torch.bfloat16).parameters(), 1e-3, 0.0), MasterAdamW)


def test_masters_follow_float32_adamw_on_the_same_gradients() -> None:
    """The masters take exactly the steps a float32 AdamW takes when fed the same (float-cast) gradients, and the
    bf16 model holds the masters rounded; a plain bf16 AdamW at lr 1e-6 leaves almost every weight where it was."""
    low = _layer(torch.bfloat16)
    ref = torch.nn.Linear(64, 64)
    with torch.no_grad():
        for r, p in zip(ref.parameters(), low.parameters()):
            r.copy_(p.float())
    opt = MasterAdamW(low.parameters(), lr=1e-6, weight_decay=0.01)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-6, weight_decay=0.01)
    plain = _layer(torch.bfloat16)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-6, weight_decay=0.01)
    w0 = low.weight.detach().clone()
    for step in range(20):
        _grads(low, step)
        for r, p in zip(ref.parameters(), low.parameters()):
            r.grad = p.grad.float()
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        _grads(plain, step)
        plain_opt.step()
        plain_opt.zero_grad()
    for m, r, p in zip(opt.masters(), ref.parameters(), low.parameters()):
        torch.testing.assert_close(m, r.detach(), atol=0, rtol=0)
        assert torch.equal(p, r.detach().to(torch.bfloat16))
    moved_master = float((opt.masters()[0] != w0.float()).float().mean())
    moved_plain = float((plain.weight != w0).float().mean())
    assert moved_master > 0.99 and moved_plain < 0.05, (moved_master, moved_plain)


def test_state_dict_carries_masters_and_external_changes_reseed_them() -> None:
    low = _layer(torch.bfloat16)
    opt = MasterAdamW(low.parameters(), lr=1e-3, weight_decay=0.0)
    _grads(low, 0)
    opt.step()
    state = opt.state_dict()
    assert len(state["master_params"]) == 2
    fresh = _layer(torch.bfloat16, seed=1)
    opt2 = MasterAdamW(fresh.parameters(), lr=1e-3, weight_decay=0.0)
    opt2.load_state_dict(state)
    for a, b in zip(opt.masters(), opt2.masters()):
        assert torch.equal(a, b)
    with torch.no_grad():  # e.g. a checkpoint load or an SFT stage with its own optimizer
        low.weight.fill_(0.5)
    _grads(low, 1)
    opt.step()
    assert float((low.weight.detach() - 0.5).abs().max()) < 0.01  # stepped from 0.5, not from the stale master
    with pytest.raises(ValueError, match="master weights"):
        opt2.load_state_dict({**state, "master_params": state["master_params"][:1]})


def test_rolled_back_step_restores_the_masters() -> None:
    low = _layer(torch.bfloat16)
    opt = MasterAdamW(low.parameters(), lr=1e9, weight_decay=0.0)  # a step that overflows bf16
    masters = [m.clone() for m in opt.masters()]
    weights = [p.detach().clone() for p in low.parameters()]
    _grads(low, 0)
    with torch.no_grad():
        low.weight.grad.mul_(1e30)
    stepped, _ = safe_step(opt, list(low.parameters()), grad_clip=None)
    assert not stepped
    for m, b in zip(opt.masters(), masters):
        assert torch.equal(m, b)
    for p, b in zip(low.parameters(), weights):
        assert torch.equal(p, b)


def test_bf16_trainer_accumulates_small_updates(tokenizer) -> None:
    """A bf16 policy at the paper's lr 1e-6 keeps moving: the float32 masters change even where the bf16 weight
    cannot yet show it."""
    cfg = tiny_config("hae", actor={"lr": 1e-6, "kl_coef": 0.0, "entropy_coeff": 0.0, "mini_batch_size": 6,
                                     "micro_batch_size": 4, "invalid_action_penalty_coef": 0.1},
                      trainer={"total_iterations": 2, "eval_every": 0, "num_threads": 1})
    cfg["model"]["dtype"] = "bfloat16"
    trainer = Trainer(cfg, tokenizer=tokenizer)
    assert isinstance(trainer.actor_opt, MasterAdamW)
    start = [m.clone() for m in trainer.actor_opt.masters()]
    for _ in range(2):
        metrics = trainer.iteration()
        assert math.isfinite(metrics["actor/pg_loss"])
    moved = sum(int((m != s).sum()) for m, s in zip(trainer.actor_opt.masters(), start))
    assert moved > 0.5 * sum(s.numel() for s in start)


@pytest.fixture(scope="module")
def tokenizer():
    from hiper.models.tokenizer import household_tokenizer

    return household_tokenizer("household", {"difficulty": "tiny"})
