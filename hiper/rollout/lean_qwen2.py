"""A lean incremental forward of a transformers ``Qwen2ForCausalLM`` for decoding (``HFEngine``'s fast path).

Why by hand: decoding a small model on a CPU is bound by per-call overhead, not arithmetic. One transformers
forward of the CPU demo's 3-layer policy at 24 rows x 1 token costs ~5.6 ms, of which the matrix products are
~1.3 ms; the rest is ~50 module calls, mask building, ``DynamicCache`` concatenation and rotary recomputation per
step. This module runs the same equations on the model's own weights with fused q/k/v and gate/up products, a
preallocated KV buffer and one additive mask per step: about half the time per decode step (measured side by side
in ``tests/test_lean_decode.py``'s module docstring and docs/scale_out.md). No maintained library offers a
low-overhead incremental forward for transformers checkpoints on CPU (vLLM's CPU backend is not installable here,
``torch.compile`` recompiles as the cache grows and rows finish).

Scope: plain ``Qwen2ForCausalLM`` (no peft wrapper, default RoPE, no sliding window, SiLU MLP) in eval mode;
:func:`supports` says whether a model qualifies, otherwise the engine uses transformers' forward. The math is
transformers' (``modeling_qwen2.py`` of 5.x): RMSNorm in float32, rotary ``q * cos + rotate_half(q) * sin``,
grouped-query attention with scale ``head_dim ** -0.5``, ``down(silu(gate(x)) * up(x))``. Logits agree with
transformers' to float rounding (~1e-6 on the demo model), not bit for bit: the products are grouped differently.
Weights are read when a :class:`LeanQwen2` is built, so build one per generation call (the engine does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def supports(model: Any) -> bool:
    """True when :class:`LeanQwen2` computes what ``model``'s own forward computes (see the module docstring)."""
    if hasattr(model, "get_base_model") or type(model).__name__ != "Qwen2ForCausalLM":
        return False
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "other"
    layer_types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    return (rope_type == "default" and layer_types == {"full_attention"} and cfg.hidden_act == "silu"
            and not getattr(cfg, "use_sliding_window", False) and not model.training)


class LeanQwen2:
    """Incremental forward with a preallocated KV buffer for ``rows`` sequences of at most ``width`` tokens.

    Call :meth:`forward` with the prompt block first (``[rows, P]``), then one token per step (``[rows, 1]``);
    :meth:`keep` drops stopped rows from the buffer. Positions and the key mask are the caller's (left padding:
    a pad key is masked, a pad query's output is unused).
    """

    def __init__(self, model: Any, rows: int, width: int) -> None:
        if not supports(model):
            raise TypeError(f"LeanQwen2 does not cover {type(model).__name__} with this config")
        cfg, decoder = model.config, model.model
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.inter = cfg.intermediate_size
        rotary = decoder.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.embed = decoder.embed_tokens.weight
        self.final_norm = decoder.norm.weight
        self.head = model.lm_head.weight
        self.layers = []
        for layer in decoder.layers:
            a, mlp = layer.self_attn, layer.mlp
            bias = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0])
                    for p in (a.q_proj, a.k_proj, a.v_proj)]
            self.layers.append((
                layer.input_layernorm.weight,
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), torch.cat(bias),
                a.o_proj.weight, a.o_proj.bias, layer.post_attention_layernorm.weight,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight,
            ))
        dtype, device = self.embed.dtype, self.embed.device
        shape = (len(self.layers), rows, self.n_kv, width, self.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # tokens in the buffer
        self.can_compact = True  # keep() drops rows (HFEngine asks; transformers' caches may not support it)

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        xf = x.float()
        return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def keep(self, rows: Tensor) -> None:
        """Keep only buffer rows ``rows`` (``[n']`` long, in the order given)."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)

    @torch.no_grad()
    def forward(self, input_ids: Tensor, position_ids: Tensor, key_mask: Tensor) -> Tensor:
        """Logits ``[B, vocab]`` (float32) of the last of ``T`` new tokens per row.

        Args:
            input_ids: ``[B, T]`` the new tokens.
            position_ids: ``[B, T]`` their RoPE positions.
            key_mask: ``[B, >= length + T]`` 1/True where a buffer position (old and new tokens) may be attended.
        """
        b, t = input_ids.shape
        hd, g, half = self.head_dim, self.n_heads // self.n_kv, self.head_dim // 2
        nq, nk = self.n_heads * hd, self.n_kv * hd
        t0, t1 = self.length, self.length + t
        if t1 > self.k.shape[3]:
            raise ValueError(f"LeanQwen2 buffer holds {self.k.shape[3]} tokens, {t1} asked")
        x = self.embed[input_ids]
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(x.dtype)[:, None]  # [B, 1, T, hd]
        sin = (emb.sin() * self.rope_scale).to(x.dtype)[:, None]
        allowed = key_mask[:, None, :t1].bool()  # [B, 1, t1]
        if t > 1:  # causal inside the new block
            allowed = allowed & torch.ones(t, t1, dtype=torch.bool, device=x.device).tril(t0)
        # additive mask [B, 1, 1, T, t1]; a fully masked (pad) query row stays finite (uniform), as in transformers
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill_(~allowed, torch.finfo(x.dtype).min)[:, None, None]
        scale = hd**-0.5
        for i, (w_in, w_qkv, b_qkv, w_o, b_o, w_post, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(self._norm(x, w_in), w_qkv, b_qkv)
            q = qkv[..., :nq].view(b, t, self.n_heads, hd).transpose(1, 2)
            k = qkv[..., nq : nq + nk].view(b, t, self.n_kv, hd).transpose(1, 2)
            v = qkv[..., nq + nk :].view(b, t, self.n_kv, hd).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            self.k[i, :, :, t0:t1] = k
            self.v[i, :, :, t0:t1] = v
            # grouped-query attention: the g query heads of a kv head share its keys (heads are kv-major, as in
            # transformers' repeat_kv)
            scores = torch.matmul(q.reshape(b, self.n_kv, g * t, hd), self.k[i, :, :, :t1].transpose(-1, -2))
            probs = (scores.view(b, self.n_kv, g, t, t1) * scale + bias).softmax(dim=-1)
            out = torch.matmul(probs.view(b, self.n_kv, g * t, t1), self.v[i, :, :, :t1])
            x = x + F.linear(out.view(b, self.n_heads, t, hd).transpose(1, 2).reshape(b, t, nq), w_o, b_o)
            gu = F.linear(self._norm(x, w_post), w_gu)
            x = x + F.linear(F.silu(gu[..., : self.inter]) * gu[..., self.inter :], w_down)
        self.length = t1
        return F.linear(self._norm(x[:, -1], self.final_norm), self.head).float()


__all__ = ["LeanQwen2", "supports"]
