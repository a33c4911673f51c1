"""Policy / reference model building and the response forward pass (tokenizers: :mod:`hiper.models.tokenizer`).

Sequence layout used everywhere in the trainer (verl's): each turn sample is
``[prompt, left-padded to P | response, right-padded to L]``, so response token ``j`` sits at input
position ``P + j`` and its log-prob comes from the hidden state at ``P + j - 1``. Position ids are
``cumsum(attention_mask) - 1`` so left padding does not shift RoPE positions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hiper.config.schema import LoraConfig, ModelConfig
from hiper.models.tokenizer import split_gguf
from hiper.rollout.weights import _is_adapter_key, has_lora, merge_lora, merged_state_dict, unwrap

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """Map a config dtype name ("float32", "bf16", ...) to a torch dtype (float32 when None)."""
    if name is None or name == "auto":
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def from_pretrained_dtype(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword for ``dtype`` (empty for None): transformers 5 names it ``dtype``,
    4.x (pyproject allows >= 4.45, and 4.45-4.55 know only this name) ``torch_dtype``; the wrong name is
    not an error there, the model silently loads in float32."""
    import transformers

    if dtype is None:
        return {}
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: dtype}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def build_tiny_model(
    tokenizer: Any, tiny: Mapping[str, Any], seed: int = 0, dtype: Any = "float32"
) -> nn.Module:
    """A randomly initialised Qwen2 causal LM built from a config dict (tests and the CPU demo).

    ``tiny`` keys are ``Qwen2Config`` fields (``hidden_size``, ``num_hidden_layers``, ...); the vocab and
    special token ids come from ``tokenizer``. Initialisation uses a private generator seeded by ``seed``.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    params = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
    }
    params.update(dict(tiny))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **params,
    )
    with torch.random.fork_rng(devices=[]):  # CPU RNG only; the global stream is restored afterwards
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(resolve_dtype(dtype))


def load_pretrained_policy(path: str, dtype: Any = "float32") -> nn.Module:
    """Load a causal LM from a hub id, a local folder, or a ``.gguf`` file (dequantised by transformers)."""
    from transformers import AutoModelForCausalLM

    folder, gguf_file = split_gguf(path)
    kwargs = from_pretrained_dtype(resolve_dtype(dtype))
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def apply_lora(model: nn.Module, lora_cfg: LoraConfig, seed: int = 0) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``r``, ``alpha``, ``dropout``, ``target_modules``).

    peft initialises ``lora_A`` randomly (``lora_B = 0``, so the wrapped model starts equal to the base);
    that draw uses a private CPU stream seeded by ``seed``, so the adapter is a function of the seed and
    the global RNG is left untouched. ``model`` is modified in place (layers injected) and wrapped.
    """
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as exc:  # the extra is optional
        raise ImportError("LoRA needs the optional 'peft' package: pip install 'hiper[lora]'") from exc
    config = PeftLoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def build_policy(model_cfg: ModelConfig, tokenizer: Any, seed: int = 0) -> nn.Module:
    """Build the policy from the ``model`` config section: ``tiny`` dict -> config-built Qwen2, else ``path``.

    Applies dtype, gradient checkpointing and (if ``lora.enabled``) LoRA.
    """
    if model_cfg.tiny:
        model = build_tiny_model(tokenizer, model_cfg.tiny, seed=seed, dtype=model_cfg.dtype)
    elif model_cfg.path:
        model = load_pretrained_policy(model_cfg.path, dtype=model_cfg.dtype)
    else:
        raise ValueError("model config needs either 'tiny' (a Qwen2Config dict) or 'path' (hub id/folder/.gguf)")
    if model_cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.25 (the old name warns)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model_cfg.lora.enabled:
        model = apply_lora(model, model_cfg.lora, seed=seed + 1)
    return model


def make_reference(model: nn.Module) -> nn.Module:
    """The frozen KL reference: the policy as it is now, in eval mode, never trained.

    A full model: a deep copy. A peft LoRA policy: a :class:`LoraReference` (the policy's own frozen base
    with a copy of the adapter as it is now), so the reference costs adapter-sized memory, not a second
    model; with a fresh adapter (``lora_B = 0``, peft's init) it is exactly the base without adapters.
    """
    if hasattr(model, "disable_adapter") and has_lora(model):
        return LoraReference(model)
    ref = copy.deepcopy(unwrap(model))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class LoraReference(nn.Module):
    """KL reference of a peft LoRA policy: the policy's (frozen) base + a frozen copy of its adapter.

    Holds only the adapter snapshot (buffers named after the policy's adapter parameters, ``.`` written
    as ``/``), so ``state_dict()`` / checkpoints are adapter-sized. Forward passes go
    through :func:`response_logprobs`, which calls :meth:`response_logprobs` here: an all-zero snapshot
    (a fresh adapter) runs the policy under ``disable_adapter()`` (the base, bit for bit); otherwise the
    snapshot is swapped into the adapter parameters for the call and the live ones are put back after.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.__dict__["policy"] = policy  # not a submodule: its weights are not the reference's state
        self.adapter_names = [n for n, _ in policy.named_parameters() if _is_adapter_key(n)]
        if not self.adapter_names:
            raise ValueError("LoraReference needs a policy with LoRA adapter parameters")
        params = dict(policy.named_parameters())
        for name in self.adapter_names:
            self.register_buffer(name.replace(".", "/"), params[name].detach().clone())

    def snapshot(self) -> dict[str, Tensor]:
        """The frozen adapter tensors by the policy's parameter names."""
        return {n: getattr(self, n.replace(".", "/")) for n in self.adapter_names}

    @torch.no_grad()
    def response_logprobs(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """:func:`response_logprobs` of the reference (same arguments; no gradient, eval mode)."""
        policy = self.policy
        was_training = policy.training
        policy.eval()
        snapshot = self.snapshot()
        try:
            if not any(bool(t.any()) for t in snapshot.values()):
                with policy.disable_adapter():
                    return response_logprobs(policy, *args, **kwargs)
            params = dict(policy.named_parameters())
            live = {n: params[n].data for n in snapshot}
            try:
                for n, t in snapshot.items():
                    params[n].data = t
                return response_logprobs(policy, *args, **kwargs)
            finally:
                for n, t in live.items():
                    params[n].data = t
        finally:
            policy.train(was_training)


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder returning hidden states, output projection) of a causal LM, peft-wrapped or not."""
    base = unwrap(model)
    decoder = getattr(base, "model", None)
    if decoder is None and hasattr(base, "get_decoder"):
        decoder = base.get_decoder()
    head = base.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"cannot find decoder/lm_head of {type(base).__name__}")
    return decoder, head


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """``[B, S]`` position ids counting only attended tokens (left padding keeps RoPE positions 0..)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def hidden_states(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Last-layer hidden states ``[B, S, H]`` of ``decoder`` (no KV cache)."""
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def response_states(h: Tensor, start: int | Tensor, length: int) -> Tensor:
    """Hidden states ``[B, length, H]`` that predict response tokens ``0 .. length - 1``: input positions
    ``start - 1 + j``. ``start`` is the prompt width of a ``[P | L]`` batch (an int) or each row's first response
    position ``[B]`` in a packed one (:meth:`hiper.batch.TurnBatch.packed_inputs`); positions past a row's end
    are clamped to the last column (their values are padding: callers mask them)."""
    if isinstance(start, int):
        return h[:, start - 1 : start - 1 + length]
    idx = ((start.to(h.device).long() - 1)[:, None] + torch.arange(length, device=h.device)).clamp(0, h.shape[1] - 1)
    return h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_width: int | Tensor,
    response_ids: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, L]`` of ``response_ids`` and optionally the per-position entropy ``[B, L]`` (nats).

    ``input_ids``/``attention_mask`` are ``[B, P + L]`` with ``P = prompt_width``, or a packed ``[B, W]`` batch with
    ``prompt_width`` the ``[B]`` start of each row's response (:func:`response_states`). Only the ``L`` needed
    hidden states go through the LM head, so memory is ``B * L * V`` rather than ``B * (P + L) * V``.
    Logits are divided by ``temperature`` (the sampling temperature, as verl does).
    """
    if isinstance(model, LoraReference):
        return model.response_logprobs(
            input_ids, attention_mask, prompt_width, response_ids, temperature=temperature, with_entropy=with_entropy
        )
    decoder, head = backbone_and_head(model)
    length = response_ids.shape[1]
    h = response_states(hidden_states(decoder, input_ids, attention_mask), prompt_width, length)
    logits = head(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


__all__ = [
    "LoraReference",
    "apply_lora",
    "backbone_and_head",
    "build_policy",
    "build_tiny_model",
    "from_pretrained_dtype",
    "has_lora",
    "hidden_states",
    "load_pretrained_policy",
    "make_reference",
    "merge_lora",
    "merged_state_dict",
    "position_ids_from_mask",
    "resolve_dtype",
    "response_logprobs",
    "response_states",
    "unwrap",
]
