"""The trainer's optimizer: AdamW, with float32 master weights when the model's parameters are bfloat16/float16.

Why: a bfloat16 weight has 8 significant bits, so near a typical magnitude of 0.02 one step of it is about 6e-5. The
paper's actor learning rate is 1e-6, and AdamW moves each weight by about ``lr`` per step, so a pure-bf16 AdamW
rounds almost every update away (measured: one step at lr 1e-6 changed 1.9 % of a bf16 1536x1536 layer's weights,
100 % in float32). The official code trains under FSDP mixed precision, which keeps float32 master weights and
computes in bf16; :class:`MasterAdamW` does the same for hiper's single-process trainer: the model keeps its bf16
parameters (bf16 forward and backward, half the memory traffic), the optimizer keeps a float32 copy, applies AdamW
to it with the gradients cast to float32, and writes the rounded result back into the model after every step.
torch has no such optimizer (``torch.amp`` keeps float32 parameters and casts per op), hence this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

BETAS = (0.9, 0.999)  # torch's defaults, as the official fork's FSDP optimizer


class MasterAdamW(torch.optim.AdamW):
    """AdamW over float32 master copies of (low-precision) model parameters.

    ``param_groups`` hold the masters; ``model_params`` the model's own tensors, in the same order. ``step`` reads
    the model's gradients (cast to float32), steps the masters and copies them back (rounded to the model's dtype).
    If a model weight was changed outside this optimizer (a checkpoint load, an SFT stage with another optimizer, a
    rolled-back step), its master is re-seeded from the model before the step, so the two never drift apart.
    ``state_dict`` carries the masters, so a resumed run continues from the same float32 weights.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> None:
        self.model_params = [p for p in params]
        masters = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
        super().__init__(masters, lr=lr, weight_decay=weight_decay, betas=BETAS)

    def masters(self) -> list[torch.Tensor]:
        return [m for g in self.param_groups for m in g["params"]]

    @torch.no_grad()
    def _resync(self) -> None:
        for p, m in zip(self.model_params, self.masters()):
            if not torch.equal(m.to(p.dtype), p):
                m.copy_(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        self._resync()
        for p, m in zip(self.model_params, self.masters()):
            m.grad = None if p.grad is None else p.grad.detach().float()
        loss = super().step(closure)
        for p, m in zip(self.model_params, self.masters()):
            p.copy_(m)
            m.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.model_params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
        super().zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        out = super().state_dict()
        out["master_params"] = [m.detach().clone() for m in self.masters()]
        return out

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state = dict(state_dict)
        saved = state.pop("master_params", None)
        super().load_state_dict(state)
        if saved is None:  # a checkpoint of a plain AdamW: start the masters from the model
            for p, m in zip(self.model_params, self.masters()):
                m.copy_(p)
            return
        if len(saved) != len(self.model_params):
            raise ValueError(
                f"optimizer state has {len(saved)} master weights, the model {len(self.model_params)}"
            )
        for m, s in zip(self.masters(), saved):
            m.copy_(s)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The trainer's AdamW: :class:`MasterAdamW` when any parameter is not float32 (e.g. ``model.dtype=bfloat16``),
    else ``torch.optim.AdamW`` (betas 0.9, 0.999)."""
    params = list(params)
    if any(p.dtype != torch.float32 for p in params):
        return MasterAdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=BETAS)


__all__ = ["BETAS", "MasterAdamW", "adamw"]
