"""LeanQwen2 (HFEngine's fast decode path) computes transformers' Qwen2 forward: logits per step with left padding
and row compaction, and the engine's outputs with and without it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hiper.rollout import lean_qwen2  # noqa: E402
from hiper.rollout.hf import HFEngine  # noqa: E402


def qwen2(**overrides: Any) -> Any:
    torch.manual_seed(0)
    kwargs = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96)
    kwargs.update(overrides)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs)).eval()


def reference_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """transformers' logits of the last position, full forward without a cache (left padding)."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()


@pytest.mark.parametrize("heads,kv", [(4, 2), (4, 4), (4, 1)])
def test_logits_equal_transformers_with_padding_and_compaction(heads: int, kv: int) -> None:
    model = qwen2(num_attention_heads=heads, num_key_value_heads=kv)
    gen = torch.Generator().manual_seed(1)
    rows, width, steps = 5, 9, 6
    ids = torch.randint(0, 97, (rows, width), generator=gen)
    mask = torch.ones(rows, width, dtype=torch.long)
    for r, pad in enumerate([0, 3, 1, 5, 0]):
        mask[r, :pad] = 0
    lean = lean_qwen2.LeanQwen2(model, rows, width + steps)
    logits = lean.forward(ids, (mask.cumsum(-1) - 1).clamp(min=0), mask)
    assert torch.allclose(logits, reference_logits(model, ids, mask), atol=1e-5)
    live = torch.arange(rows)
    for step in range(steps):
        token = torch.randint(0, 97, (len(live), 1), generator=gen)
        if step == 3:  # rows 1 and 3 stop: the buffer keeps the others
            keep = torch.tensor([0, 2, 4])
            lean.keep(keep)
            live, ids, mask, token = live[keep], ids[keep], mask[keep], token[keep]
        pos = mask.sum(-1, keepdim=True)  # next RoPE position = tokens attended so far
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        logits = lean.forward(token, pos, mask)
        assert torch.allclose(logits, reference_logits(model, ids, mask), atol=1e-5), step


def test_engine_outputs_equal_with_and_without_lean(tokenizer: Any) -> None:
    model = qwen2(vocab_size=len(tokenizer))
    prompts = ["<switch>", "Hello there, what now?", "go to cabinet 1", "a much longer prompt " * 4]
    lean = HFEngine(model, tokenizer, max_batch_size=3)
    plain = HFEngine(model, tokenizer, max_batch_size=3, lean=False)
    assert lean_qwen2.supports(model)
    for temperature in (0.0, 1.0):
        a = lean.generate(prompts, temperature=temperature, max_new_tokens=12, stop=("e",), seed=5)
        b = plain.generate(prompts, temperature=temperature, max_new_tokens=12, stop=("e",), seed=5)
        assert [o.response_ids for o in a] == [o.response_ids for o in b]
        assert [o.finish_reason for o in a] == [o.finish_reason for o in b]
        for x, y in zip(a, b):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)


def test_supports_only_what_it_computes() -> None:
    model = qwen2()
    assert lean_qwen2.supports(model)
    assert not lean_qwen2.supports(copy.deepcopy(model).train())  # dropout may be on
    scaled = qwen2(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert not lean_qwen2.supports(scaled)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96)).eval()
    assert not lean_qwen2.supports(llama)
    with pytest.raises(TypeError, match="does not cover"):
        lean_qwen2.LeanQwen2(llama, 1, 4)
    lean = lean_qwen2.LeanQwen2(model, 1, 3)
    with pytest.raises(ValueError, match="buffer holds 3"):
        lean.forward(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None], torch.ones(1, 4))
