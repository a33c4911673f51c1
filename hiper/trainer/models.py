"""Policy / reference model loading, the code-built demo tokenizer, and the response forward pass.

Sequence layout used everywhere in the trainer (verl's): each turn sample is
``[prompt, left-padded to P | response, right-padded to L]``, so response token ``j`` sits at input
position ``P + j`` and its log-prob comes from the hidden state at ``P + j - 1``. Position ids are
``cumsum(attention_mask) - 1`` so left padding does not shift RoPE positions.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: special tokens of the code-built demo tokenizer (chat roles, end of turn, padding).
DEMO_SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
#: a minimal chat template: one user message, then the assistant's turn closed by ``<|end|>``.
DEMO_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: pre-tokenizer pattern: the protocol tags as whole pieces (so BPE can learn one token per tag), then
#: GPT-2's split pattern (contractions, words, numbers, punctuation runs, whitespace).
_SPLIT_REGEX = (
    r"</?(?:switch|subgoal|action)>|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}<]+| ?<|\s+(?!\S)|\s+"
)
#: with ``entity_tokens``: a word followed by a number ("fridge 1", "apple 2") is one piece, so BPE can give
#: each object / receptacle instance its own token and copying one from the prompt is a one-token lookup.
_ENTITY_REGEX = r" ?\p{L}+ \p{N}+(?![\p{L}\p{N}])|"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, dataclass or namespace config section (``default`` when absent/None)."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """Map a config dtype name ("float32", "bf16", ...) to a torch dtype (float32 when None)."""
    if name is None or name == "auto":
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def build_demo_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, entity_tokens: bool = False
) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` in code (no downloads) and wrap it for transformers.

    The pre-tokenizer isolates the protocol tags (``<switch>`` ... ``</action>``) so each can become one
    token, then applies GPT-2 style byte-level splitting; the result is a ``PreTrainedTokenizerFast``
    with ``<|end|>`` as EOS, ``<|pad|>`` as padding and :data:`DEMO_CHAT_TEMPLATE`. Training is
    deterministic for a fixed corpus. ``entity_tokens=True`` keeps "word number" pairs together in
    pre-tokenization (see ``_ENTITY_REGEX``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX.replace("'s|", ("'s|" + _ENTITY_REGEX) if entity_tokens else "'s|", 1)),
                                 behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(DEMO_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>", unk_token=None, bos_token=None
    )
    fast.chat_template = DEMO_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def load_tokenizer(path: str, gguf_file: str | None = None) -> Any:
    """Load a tokenizer from a hub id, a local folder, or a folder + ``gguf_file`` (left padding, pad set).

    A local folder with a ``tokenizer.json`` is loaded verbatim (``PreTrainedTokenizerFast``): transformers
    5's ``AutoTokenizer`` maps ``model_type="qwen2"`` folders to ``Qwen2Tokenizer``, which rebuilds the
    pre-tokenizer from vocab + merges and so re-tokenises a code-built tokenizer (a CPU-demo checkpoint's)
    differently; for the real Qwen2.5 tokenizer both give the same ids.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not gguf_file and os.path.isfile(os.path.join(path, "tokenizer.json")):
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def split_gguf(path: str) -> tuple[str, str | None]:
    """``"dir/model.gguf"`` -> ``("dir", "model.gguf")``; any other path -> ``(path, None)``."""
    if path.endswith(".gguf"):
        return os.path.dirname(path) or ".", os.path.basename(path)
    return path, None


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
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def apply_lora(model: nn.Module, lora_cfg: Any, seed: int = 0) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``r``, ``alpha``, ``dropout``, ``target_modules``).

    peft initialises ``lora_A`` randomly (``lora_B = 0``, so the wrapped model starts equal to the base);
    that draw uses a private CPU stream seeded by ``seed``, so the adapter is a function of the seed and
    the global RNG is left untouched. ``model`` is modified in place (layers injected) and wrapped.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # the extra is optional
        raise ImportError("LoRA needs the optional 'peft' package: pip install 'hiper[lora]'") from exc
    targets = cfg_get(lora_cfg, "target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])
    config = LoraConfig(
        r=int(cfg_get(lora_cfg, "r", 8)),
        lora_alpha=int(cfg_get(lora_cfg, "alpha", 16)),
        lora_dropout=float(cfg_get(lora_cfg, "dropout", 0.0)),
        target_modules=list(targets),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def build_policy(model_cfg: Any, tokenizer: Any, seed: int = 0) -> nn.Module:
    """Build the policy from the ``model`` config section: ``tiny`` dict -> config-built Qwen2, else ``path``.

    Applies dtype, gradient checkpointing and (if ``lora.enabled``) LoRA.
    """
    dtype = cfg_get(model_cfg, "dtype", "float32")
    tiny = cfg_get(model_cfg, "tiny", None)
    if tiny:
        model = build_tiny_model(tokenizer, tiny, seed=seed, dtype=dtype)
    else:
        path = cfg_get(model_cfg, "path", None)
        if not path:
            raise ValueError(
                "model config needs either 'tiny' (a Qwen2Config dict) or 'path' (hub id/folder/.gguf)"
            )
        model = load_pretrained_policy(path, dtype=dtype)
    if cfg_get(model_cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lora = cfg_get(model_cfg, "lora", None)
    if lora is not None and cfg_get(lora, "enabled", False):
        model = apply_lora(model, lora, seed=seed + 1)
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


# ----------------------------------------------------------------------------------------------
# LoRA: adapter names, merged (HF-named) weights, the adapter-sized reference
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
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged


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


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a peft wrapper (LoRA layers stay injected), else ``model``."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


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


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_width: int,
    response_ids: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, L]`` of ``response_ids`` and optionally the per-position entropy ``[B, L]`` (nats).

    ``input_ids``/``attention_mask`` are ``[B, P + L]`` with ``P = prompt_width``. Only the ``L`` needed
    hidden states go through the LM head, so memory is ``B * L * V`` rather than ``B * (P + L) * V``.
    Logits are divided by ``temperature`` (the sampling temperature, as verl does).
    """
    if isinstance(model, LoraReference):
        return model.response_logprobs(
            input_ids, attention_mask, prompt_width, response_ids, temperature=temperature, with_entropy=with_entropy
        )
    decoder, head = backbone_and_head(model)
    length = response_ids.shape[1]
    h = hidden_states(decoder, input_ids, attention_mask)[:, prompt_width - 1 : prompt_width - 1 + length]
    logits = head(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
