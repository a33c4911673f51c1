"""Model loading helpers: tiny config-built policy, dtype, gradient checkpointing, LoRA, reference, gguf paths."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hiper.config import LoraConfig, ModelConfig
from hiper.models.policy import (
    build_policy,
    load_pretrained_policy,
    make_reference,
    resolve_dtype,
    response_logprobs,
)
from hiper.models.tokenizer import build_demo_tokenizer, split_gguf

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer(["<switch>KEEP</switch> go to fridge 1, take apple 2 from countertop 1"] * 8,
                                vocab_size=300, entity_tokens=True)


def test_tiny_policy_dtype_and_determinism(tok) -> None:
    a = build_policy(ModelConfig(tiny=TINY, dtype="float32"), tok, seed=1)
    b = build_policy(ModelConfig(tiny=TINY, dtype="float32"), tok, seed=1)
    c = build_policy(ModelConfig(tiny=TINY, dtype="bf16"), tok, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert next(c.parameters()).dtype == torch.bfloat16
    assert a.config.vocab_size == len(tok)
    with pytest.raises(ValueError):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="tiny"):
        build_policy(ModelConfig(tiny=None, path=None), tok)


def test_pretrained_dtype_uses_the_installed_transformers_keyword(tok, tmp_path, monkeypatch) -> None:
    build_policy(ModelConfig(tiny=TINY), tok, seed=0).save_pretrained(tmp_path)
    assert next(load_pretrained_policy(str(tmp_path), dtype="bf16").parameters()).dtype == torch.bfloat16
    # imported only now: transformers' lazy module replaces itself in sys.modules on first use, and a module
    # object taken before that would be patched to no effect (the test then failed when run on its own)
    import transformers
    # transformers 4.45-4.55 know only torch_dtype and would load float32 without a word if given dtype=
    seen: dict = {}
    monkeypatch.setattr(transformers, "__version__", "4.46.3")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.update(k))
    load_pretrained_policy(str(tmp_path), dtype="bf16")
    assert seen == {"torch_dtype": torch.bfloat16}
    # a separate critic's backbone from a path goes through the same keyword
    from hiper.config import CriticConfig
    from hiper.models.critic import build_critic

    seen.clear()
    real = transformers.AutoModel.from_pretrained
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda p, **k: seen.update(k) or real(p))
    policy = build_policy(ModelConfig(tiny=TINY), tok, seed=0)
    build_critic(CriticConfig(path=str(tmp_path), dtype="bf16"), policy, ("low", "high"))
    assert seen == {"torch_dtype": torch.bfloat16}


def test_gradient_checkpointing_gives_same_logprobs(tok) -> None:
    plain = build_policy(ModelConfig(tiny=TINY), tok, seed=2)
    ckpt = build_policy(ModelConfig(tiny=TINY, gradient_checkpointing=True), tok, seed=2)
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.modules())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.ones_like(ids)
    ckpt.train()
    lp1, _ = response_logprobs(plain, ids, mask, 3, ids[:, 3:])
    lp2, _ = response_logprobs(ckpt, ids, mask, 3, ids[:, 3:])
    assert torch.allclose(lp1, lp2, atol=1e-6)
    lp2.sum().backward()
    assert any(p.grad is not None for p in ckpt.parameters())


def test_left_padding_does_not_change_logprobs(tok) -> None:
    model = build_policy(ModelConfig(tiny=TINY), tok, seed=3)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    padded = torch.tensor([[tok.pad_token_id, tok.pad_token_id, 5, 6, 7, 8, 9]])
    pmask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    lp1, _ = response_logprobs(model, ids, torch.ones_like(ids), 3, ids[:, 3:])
    lp2, _ = response_logprobs(model, padded, pmask, 5, padded[:, 5:])
    assert torch.allclose(lp1, lp2, atol=1e-5)


def test_reference_is_frozen_copy(tok) -> None:
    model = build_policy(ModelConfig(tiny=TINY), tok, seed=4)
    ref = make_reference(model)
    assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(ref.parameters()))


def test_lora(tok) -> None:
    cfg = ModelConfig(tiny=TINY, lora=LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    if importlib.util.find_spec("peft") is None:
        with pytest.raises(ImportError, match="peft"):
            build_policy(cfg, tok)
        return
    model = build_policy(cfg, tok)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


def test_split_gguf() -> None:
    assert split_gguf("/models/qwen/qwen2.5-0.5b-q8_0.gguf") == ("/models/qwen", "qwen2.5-0.5b-q8_0.gguf")
    assert split_gguf("Qwen/Qwen2.5-1.5B-Instruct") == ("Qwen/Qwen2.5-1.5B-Instruct", None)
