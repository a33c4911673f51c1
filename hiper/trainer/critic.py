"""The multi-head critic: a backbone plus ``Linear(hidden, n_heads)``, read at the HAE value positions.

Channels (the official code's map): 0 = ``low``, 1 = ``high``, 2 = ``term``. With the trainer's layout
``[prompt left-padded to P | response]`` (see :mod:`hiper.trainer.models`):

* ``high`` and ``term`` are read at input position ``P - 1``: the hidden state after consuming the
  prompt, i.e. response position 0, ``V(s_t, o_{t-1})`` before the decision;
* ``low`` is read at input position ``P + v_low_pos - 1`` (response position ``v_low_pos`` from
  :func:`hiper.spans.token_spans`: the first token after ``</subgoal>``), ``V(s_t, o_t)``.

A one-head critic exposes a single ``turn`` value read at ``P - 1`` (turn-level PPO / GAE baseline).

Modes: ``separate`` (the official setup: its own backbone, trained by its own optimizer) and
``shared`` (memory-saving: the heads sit on the policy's backbone, whose hidden states are detached,
so only the head is trained by the value loss and the policy is untouched by it).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from hiper.trainer.models import backbone_and_head, cfg_get, hidden_states, resolve_dtype

#: channel index of each named head.
HEAD_CHANNELS = {"low": 0, "high": 1, "term": 2}


def head_names(n_heads: int) -> tuple[str, ...]:
    """The value heads a critic with ``n_heads`` channels provides (1 -> turn; 2 -> low, high; 3 -> +term)."""
    if n_heads == 1:
        return ("turn",)
    if n_heads == 2:
        return ("low", "high")
    if n_heads == 3:
        return ("low", "high", "term")
    raise ValueError(f"critic n_heads must be 1, 2 or 3, got {n_heads}")


class ValueModel(nn.Module):
    """Backbone + value head. ``shared=True`` detaches the backbone's hidden states (head-only training)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, n_heads: int, shared: bool = False) -> None:
        super().__init__()
        self.heads = head_names(n_heads)
        self.n_heads = n_heads
        self.shared = shared
        if shared:
            # keep the policy's backbone out of this module's parameters (and state_dict/optimizer)
            self.__dict__["backbone"] = backbone
        else:
            self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, n_heads)
        # small random weights, zero bias: values start near 0 and the heads differ (verl's score layer
        # is randomly initialised too); the generator keeps global RNG untouched
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            self.value_head.weight.copy_(torch.randn(self.value_head.weight.shape, generator=gen) * 0.01)
            self.value_head.bias.zero_()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the critic optimizer updates (the head only, in shared mode)."""
        if self.shared:
            return list(self.value_head.parameters())
        return [p for p in self.parameters() if p.requires_grad]

    def read_values(
        self, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, v_low_pos: Tensor
    ) -> dict[str, Tensor]:
        """Values ``{head: [B]}`` at the read positions (see the module docstring).

        ``input_ids``/``attention_mask`` are ``[B, P + L]`` with ``P = prompt_width``; ``v_low_pos`` is
        ``[B]`` long, response positions in ``[0, L)``.
        """
        if self.shared:
            with torch.no_grad():
                h = hidden_states(self.backbone, input_ids, attention_mask)
            h = h.detach()
        else:
            h = hidden_states(self.backbone, input_ids, attention_mask)
        batch = torch.arange(input_ids.shape[0], device=input_ids.device)
        pre = h[:, prompt_width - 1]  # [B, H] state after the prompt
        out: dict[str, Tensor] = {}
        pre_values = self.value_head(pre.to(self.value_head.weight.dtype)).float()  # [B, n_heads]
        if self.n_heads == 1:
            out["turn"] = pre_values[:, 0]
            return out
        low_idx = (prompt_width - 1 + v_low_pos.long()).clamp(max=input_ids.shape[1] - 1)
        low_h = h[batch, low_idx]
        out["low"] = self.value_head(low_h.to(self.value_head.weight.dtype)).float()[:, HEAD_CHANNELS["low"]]
        out["high"] = pre_values[:, HEAD_CHANNELS["high"]]
        if self.n_heads == 3:
            out["term"] = pre_values[:, HEAD_CHANNELS["term"]]
        return out


def build_critic(critic_cfg: Any, policy: nn.Module) -> ValueModel:
    """Build the critic from the ``critic`` config section.

    ``mode="separate"``: backbone from ``path`` (``AutoModel``) or, when ``path`` is null, a copy of the
    policy's backbone (the official setup initialises the critic from the same checkpoint as the actor).
    ``mode="shared"``: heads on the policy's own backbone.
    """
    n_heads = int(cfg_get(critic_cfg, "n_heads", 3))
    mode = cfg_get(critic_cfg, "mode", "separate")
    decoder, _ = backbone_and_head(policy)
    hidden = int(decoder.config.hidden_size)
    if mode == "shared":
        return ValueModel(decoder, hidden, n_heads, shared=True)
    if mode != "separate":
        raise ValueError(f"critic.mode must be 'separate' or 'shared', got {mode!r}")
    path = cfg_get(critic_cfg, "path", None)
    if path:
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(
            path, dtype=resolve_dtype(cfg_get(critic_cfg, "dtype", "float32"))
        )
        hidden = int(backbone.config.hidden_size)
    else:
        backbone = copy.deepcopy(decoder)
        for p in backbone.parameters():
            p.requires_grad_(True)
    backbone.config.use_cache = False
    return ValueModel(backbone, hidden, n_heads, shared=False)
