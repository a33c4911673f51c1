"""The multi-head critic: a backbone plus ``Linear(hidden, n_heads)``, read at the HAE value positions.

Channels (the official code's map): 0 = ``low``, 1 = ``high``, 2 = ``term``. With the trainer's layout
``[prompt left-padded to P | response]`` (see :mod:`hiper.models.policy`):

* ``high`` and ``term`` are read at input position ``P - 1``: the hidden state after consuming the
  prompt, i.e. response position 0, ``V(s_t, o_{t-1})`` before the decision;
* ``low`` is read at input position ``P + v_low_pos - 1`` (response position ``v_low_pos`` from
  :func:`hiper.protocol.spans.token_spans`: the first token after ``</subgoal>``), ``V(s_t, o_t)``.

A one-head critic exposes a single ``turn`` value read at ``P - 1`` (turn-level PPO / GAE baseline), or, as a
``token`` critic (token-level GAE, verl's critic), the value before every response token: input positions
``P - 1 .. P + L - 2`` (verl reads ``values[:, -L - 1 : -1]``).

Paper switch mode (spec §7.1 Mode B) also needs ``V^low(s_t, o_{t-1})``: the low head on the KEEP continuation
``<switch>KEEP</switch>\n<subgoal>{o_{t-1}}</subgoal>\n`` of the same prompt. ``read_values(..., keep_ids=...)``
gets it from the main pass's prompt KV cache (the prompt is encoded once): after the ``[prompt | response]``
forward the cache is cut back to the prompt and the KEEP tokens are run on top of it
(:func:`continue_from_prompt`).

Modes: ``separate`` (the official setup: its own backbone, trained by its own optimizer) and
``shared`` (memory-saving: the heads sit on the policy's backbone, whose hidden states are detached,
so only the head is trained by the value loss and the policy is untouched by it).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import Tensor, nn

from hiper.config.schema import CriticConfig
from hiper.models.policy import (
    backbone_and_head,
    from_pretrained_dtype,
    hidden_states,
    position_ids_from_mask,
    resolve_dtype,
    response_states,
)
from hiper.rollout.hf import cache_keyword

#: channel index of each named head.
HEAD_CHANNELS = {"low": 0, "high": 1, "term": 2}


def head_names(n_heads: int, per_token: bool = False) -> tuple[str, ...]:
    """The value heads a critic with ``n_heads`` channels provides (1 -> turn, or token when ``per_token``;
    2 -> low, high; 3 -> +term)."""
    if per_token:
        if n_heads != 1:
            raise ValueError(f"a per-token critic has one channel, got {n_heads}")
        return ("token",)
    if n_heads == 1:
        return ("turn",)
    if n_heads == 2:
        return ("low", "high")
    if n_heads == 3:
        return ("low", "high", "term")
    raise ValueError(f"critic n_heads must be 1, 2 or 3, got {n_heads}")


def encode_with_cache(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor, keep: int) -> tuple[Tensor, Any]:
    """Last-layer hidden states ``[B, S, H]`` of ``decoder`` and its KV cache cut back to the first ``keep`` positions.

    With the trainer's layout (prompt left-padded to ``P``) ``keep = P`` leaves exactly the prompt in the cache,
    ready for :func:`continue_from_prompt`.
    """
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=True,
    )
    cache = out.past_key_values
    if cache is None:
        raise TypeError(f"{type(decoder).__name__} returned no KV cache; the continuation passes need one")
    extra = int(input_ids.shape[1]) - int(keep)
    if extra > 0:
        cache.crop(-extra)  # a negative count removes that many trailing positions (transformers 4.x and 5.x)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return h, cache


def continue_from_prompt(
    decoder: nn.Module, cache: Any, prompt_mask: Tensor, cont_ids: Tensor, cont_mask: Tensor, repeats: int = 1
) -> Tensor:
    """Hidden states ``[B * repeats, C, H]`` of continuations run on top of a cached (left-padded) prompt.

    Args:
        decoder: the model that filled ``cache``.
        cache: KV cache holding exactly the ``[B, P]`` prompt (see :func:`encode_with_cache`); it is consumed
            (expanded and appended to in place).
        prompt_mask: ``[B, P]`` attention mask of the prompt (left padding).
        cont_ids, cont_mask: ``[B * repeats, C]`` right-padded continuation tokens; row ``i * repeats + r`` continues
            prompt ``i``. Positions continue from each prompt's real length, so the result equals a plain
            forward over ``[prompt | continuation]`` (up to float noise) at the valid continuation positions.
    """
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
        prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    cont_mask = cont_mask.to(prompt_mask.dtype)
    positions = prompt_mask.long().sum(1, keepdim=True) + torch.arange(cont_ids.shape[1], device=cont_ids.device)
    out = decoder(
        input_ids=cont_ids,
        attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{cache_keyword(decoder): cache},
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class ValueModel(nn.Module):
    """Backbone + value head. ``shared=True`` detaches the backbone's hidden states (head-only training)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, n_heads: int, shared: bool = False,
                 per_token: bool = False) -> None:
        super().__init__()
        self.heads = head_names(n_heads, per_token)
        self.n_heads = n_heads
        self.per_token = per_token
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
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        prompt_width: int | Tensor,
        v_low_pos: Tensor,
        keep_ids: Tensor | None = None,
        keep_mask: Tensor | None = None,
        response_width: int | None = None,
    ) -> dict[str, Tensor]:
        """Values ``{head: [B]}`` at the read positions (see the module docstring); a per-token critic returns
        ``{"token": [B, L]}``, the value before each response token (padding positions hold garbage: mask them).

        ``input_ids``/``attention_mask`` are ``[B, P + L]`` with ``P = prompt_width``; ``v_low_pos`` is
        ``[B]`` long, response positions in ``[0, L)``. A packed batch (:meth:`hiper.batch.TurnBatch.packed_inputs`)
        passes each row's response start ``[B]`` as ``prompt_width`` (not with ``keep_ids``), and a per-token critic
        then needs the batch's ``response_width`` ``L``. With ``keep_ids``/``keep_mask`` (``[B, K]``, right-padded
        KEEP-continuation tokens that end at the low read position, see
        :meth:`hiper.batch.TurnBatch.with_keep_continuations`) the result also has
        ``low_keep`` = V^low(s_t, o_{t-1}): the low head after the last KEEP token, from the same prompt encoding.
        """
        with_keep = keep_ids is not None
        if with_keep and not isinstance(prompt_width, int):
            raise ValueError("KEEP continuations need the [P | L] layout (an int prompt_width), not a packed batch")
        if with_keep and (keep_mask is None or self.n_heads < 2):
            raise ValueError("low_keep needs keep_mask and a critic with a low head (n_heads >= 2)")
        # shared mode: the policy's backbone is frozen for the value loss (heads-only training)
        with torch.no_grad() if self.shared else contextlib.nullcontext():
            if with_keep:
                assert keep_ids is not None and keep_mask is not None
                h, cache = encode_with_cache(self.backbone, input_ids, attention_mask, prompt_width)
                keep_h = continue_from_prompt(self.backbone, cache, attention_mask[:, :prompt_width], keep_ids,
                                              keep_mask)
                del cache
            else:
                h = hidden_states(self.backbone, input_ids, attention_mask)
        if self.shared:
            h = h.detach()
        batch = torch.arange(input_ids.shape[0], device=input_ids.device)
        out: dict[str, Tensor] = {}
        if self.per_token:
            # [B, L, H]: the states before each response token
            if isinstance(prompt_width, int):
                length = input_ids.shape[1] - prompt_width
            elif response_width is None:
                raise ValueError("a per-token critic on a packed batch needs response_width")
            else:
                length = response_width
            states = response_states(h, prompt_width, length)
            out["token"] = self.value_head(states.to(self.value_head.weight.dtype)).float()[..., 0]
            return out
        if not isinstance(prompt_width, int):
            prompt_width = prompt_width.to(h.device).long()
        pre = h[batch, prompt_width - 1]  # [B, H] state after the prompt
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
        if with_keep:
            assert keep_mask is not None
            last = (keep_mask.long().sum(1) - 1).clamp(min=0)
            keep_last = keep_h[batch, last].detach() if self.shared else keep_h[batch, last]
            keep_values = self.value_head(keep_last.to(self.value_head.weight.dtype)).float()
            out["low_keep"] = keep_values[:, HEAD_CHANNELS["low"]]
        return out


def build_critic(critic_cfg: CriticConfig, policy: nn.Module, heads: tuple[str, ...]) -> ValueModel:
    """Build the critic from the ``critic`` config section with the value ``heads`` the estimator reads
    (``hiper.config.critic_heads``: ``("turn",)``, ``("token",)``, ``("low", "high")`` or
    ``("low", "high", "term")``).

    ``mode="separate"``: backbone from ``path`` (``AutoModel``) or, when ``path`` is null, a copy of the
    policy's backbone (the official setup initialises the critic from the same checkpoint as the actor).
    ``mode="shared"``: heads on the policy's own backbone.
    """
    n_heads = len(heads)
    per_token = tuple(heads) == ("token",)
    if head_names(n_heads, per_token) != tuple(heads):
        raise ValueError(f"a critic provides the heads {head_names(n_heads)} with {n_heads} channels, not {heads}")
    mode = critic_cfg.mode
    decoder, _ = backbone_and_head(policy)
    hidden = int(decoder.config.hidden_size)
    if mode == "shared":
        return ValueModel(decoder, hidden, n_heads, shared=True, per_token=per_token)
    if mode != "separate":
        raise ValueError(f"critic.mode must be 'separate' or 'shared', got {mode!r}")
    path = critic_cfg.path
    if path:
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(
            path, **from_pretrained_dtype(resolve_dtype(critic_cfg.dtype or "float32"))
        )
        hidden = int(backbone.config.hidden_size)
    else:
        backbone = copy.deepcopy(decoder)
        for p in backbone.parameters():
            p.requires_grad_(True)
    backbone.config.use_cache = False
    return ValueModel(backbone, hidden, n_heads, shared=False, per_token=per_token)
