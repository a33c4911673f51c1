"""Real vLLM vs HFEngine on a GPU (skipped without vLLM or CUDA): same greedy ids, close log-probs, weight sync.

Run on a GPU machine with the vllm extra: ``VLLM_ENABLE_V1_MULTIPROCESSING=0 pytest tests/test_vllm_engine_gpu.py``
(the in-process engine lets ``update_weights`` reach the model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("vllm", reason="needs the vllm extra: pip install 'hiper[vllm]'")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from hiper.rollout.hf import HFEngine  # noqa: E402
from hiper.rollout.vllm_engine import VLLMEngine  # noqa: E402

SHARED = Path(os.environ.get("HIPER_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
TOKENIZER_DIR = SHARED / "models" / "qwen2.5-instruct-tokenizer"
PROMPTS = [
    "<|im_start|>user\nYou are in a kitchen. Go to the fridge.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nFind a mug<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: Any) -> Path:
    if not TOKENIZER_DIR.exists():
        pytest.skip(f"Qwen2.5 tokenizer not found at {TOKENIZER_DIR} (set HIPER_SHARED)")
    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_qwen2")
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_vllm_greedy_matches_hf_and_weight_sync(tiny_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).cuda().eval()
    hf = HFEngine(model, tok)
    vl = VLLMEngine.from_pretrained(
        str(tiny_dir), tokenizer=tok, dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True
    )
    assert vl.eos_token_ids == hf.eos_token_ids
    kw = dict(temperature=0.0, max_new_tokens=16, stop=("</action>",))

    def check() -> None:
        a_out, b_out = hf.generate(PROMPTS, **kw), vl.generate(PROMPTS, **kw)
        for a, b in zip(a_out, b_out):
            assert a.response_ids == b.response_ids
            assert a.finish_reason == b.finish_reason and a.text == b.text
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-3)

    check()
    with torch.no_grad():  # a different policy: vLLM must follow after update_weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vl.update_weights(model)
    check()
