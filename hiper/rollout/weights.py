"""The weights a generation engine loads: a model's HF-named state dict, with peft LoRA adapters merged.

:func:`merged_state_dict` is what a vLLM engine syncs after every update and what a checkpoint saves for a LoRA
policy; it lives with the engines because they are its lowest user (the models package builds on it).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a peft wrapper (LoRA layers stay injected), else ``model``."""
    get_base_model = getattr(model, "get_base_model", None)
    return model if get_base_model is None else get_base_model()


# ----------------------------------------------------------------------------------------------


def has_lora(model: nn.Module) -> bool:
    """True when peft LoRA layers are injected in ``model`` (a ``PeftModel`` or its base)."""
    return any(hasattr(m, "lora_A") for m in model.modules())


def _is_adapter_key(name: str) -> bool:
    return ".lora_" in name


def _check_plain_lora(name: str, module: nn.Module) -> None:
    """peft features whose merged weights are not ``W + B A * scaling`` are refused, not mis-merged."""
    if any(getattr(module, "use_dora", {}).values()):
        raise NotImplementedError(f"{name}: DoRA adapters are not supported by merged_state_dict")


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of ``model`` with its LoRA adapters merged, under the base model's HF names.

    ``W_merged = W + (B @ A) * alpha / r`` for every LoRA layer (peft's ``get_delta_weight``, active
    adapters only; nothing is added when the adapters are disabled or already merged). Keys are what
    ``save_pretrained`` / vLLM's ``load_weights`` expect (``model.layers.0.self_attn.q_proj.weight``):
    the peft prefix (``base_model.model.``), ``.base_layer`` and the adapter tensors are removed.
    ``model`` is not modified. A model without LoRA returns its own ``state_dict()`` (base names).
    Tensors are detached; unchanged ones share storage with the model.
    """
    base = unwrap(model)
    if not has_lora(base):
        return dict(base.state_dict())
    deltas: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")):
            continue
        _check_plain_lora(name, module)
        if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                delta = module.get_delta_weight(adapter)
                key = f"{name}.weight"
                deltas[key] = delta if key not in deltas else deltas[key] + delta
    out: dict[str, Tensor] = {}
    for key, tensor in base.state_dict().items():
        if _is_adapter_key(key):
            continue
        if ".modules_to_save." in key or ".original_module." in key:
            raise NotImplementedError(f"{key}: peft modules_to_save are not supported by merged_state_dict")
        hf_key = key.replace(".base_layer.", ".")
        if hf_key in deltas:
            tensor = tensor + deltas[hf_key].to(tensor.dtype)
        out[hf_key] = tensor
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """A plain transformers model with the LoRA adapters merged (``model`` itself is left unchanged).

    For export (``save_pretrained`` -> vLLM, ``hiper eval``); a model without LoRA is returned as is.
    Memory: one more full copy of the model.
    """
    if not has_lora(model):
        return model
    if not hasattr(model, "merge_and_unload"):
        raise TypeError(f"merge_lora needs a peft PeftModel, got {type(model).__name__}")
    merged = getattr(copy.deepcopy(model), "merge_and_unload")()  # noqa: B009 - peft API, not nn.Module's
    merged.eval()
    return merged


__all__ = ["has_lora", "merge_lora", "merged_state_dict", "unwrap"]
