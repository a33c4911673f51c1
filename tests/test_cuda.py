"""The CUDA path (skipped without a GPU; ``scripts/gpu_check.sh`` runs it on the GPU machine): estimators on CUDA
tensors equal the CPU result, the HF engine decodes the same greedy tokens on CUDA as on CPU, and one training
iteration per estimator, in float32 and bfloat16, runs on CUDA with finite numbers and moves the weights."""

from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from test_advantage_registry import _inputs  # noqa: E402
from test_trainer import tiny_config  # noqa: E402

from hiper.advantage import AdvantageInputs, available, get  # noqa: E402
from hiper.models.policy import build_tiny_model  # noqa: E402
from hiper.models.tokenizer import household_tokenizer  # noqa: E402
from hiper.rollout.hf import HFEngine  # noqa: E402
from hiper.trainer.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return household_tokenizer("household", {"difficulty": "tiny"})


def _to(inputs: AdvantageInputs, device: str) -> AdvantageInputs:
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(inputs).items()}
    return AdvantageInputs(**fields)


@pytest.mark.parametrize("name", sorted(available()))
def test_estimator_on_cuda_equals_cpu(name: str) -> None:
    inputs = _inputs(seed=5, n=16, t=9)
    cpu = get(name)(inputs)
    gpu = get(name)(_to(inputs, "cuda"))
    for role in ("adv_action", "adv_subgoal", "adv_switch"):
        a, b = getattr(cpu, role), getattr(gpu, role)
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-5)
    for head, ret in cpu.returns.items():
        torch.testing.assert_close(gpu.returns[head].cpu(), ret, atol=1e-5, rtol=1e-5)


def test_hf_engine_greedy_on_cuda_matches_cpu(tokenizer) -> None:
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}
    model = build_tiny_model(tokenizer, tiny, seed=1).eval()
    prompts = ["<|user|>You are in a kitchen. Go to the fridge.<|end|><|assistant|>", "<|user|>Find a mug<|end|>"]
    cpu = HFEngine(model, tokenizer).generate(prompts, temperature=0.0, max_new_tokens=12)
    gpu = HFEngine(model.to("cuda"), tokenizer).generate(prompts, temperature=0.0, max_new_tokens=12)
    for a, b in zip(cpu, gpu):
        assert b.response_ids == a.response_ids
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-3, rtol=0)


@pytest.mark.parametrize("estimator,dtype", [("hae", "float32"), ("hae", "bfloat16"), ("gae", "float32"),
                                             ("grpo", "bfloat16"), ("gigpo", "float32")])
def test_one_iteration_on_cuda(estimator: str, dtype: str, tokenizer) -> None:
    cfg = tiny_config(estimator, trainer={"total_iterations": 1, "eval_every": 0, "num_threads": 1,
                                          "device": "cuda"})
    cfg["model"]["dtype"] = dtype
    trainer = Trainer(cfg, tokenizer=tokenizer)
    assert next(trainer.policy.parameters()).device.type == "cuda"
    before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    metrics = trainer.iteration()
    assert metrics["perf/turn_samples"] > 0
    # explained variance is NaN by definition when a head's targets are constant (a 4-episode batch)
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, float) and not math.isfinite(v) and "explained_var" not in k}
    assert not bad, f"non-finite metrics on CUDA: {bad}"
    moved = [k for k, v in trainer.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "no policy weight changed after one CUDA iteration"
    assert torch.isfinite(trainer.last.targets.advantages).all()


def test_sft_on_cuda(tokenizer) -> None:
    cfg = tiny_config("hae", sft={"enabled": True, "episodes": 4, "epochs": 1, "lr": 1e-3, "batch_size": 8},
                      trainer={"total_iterations": 1, "eval_every": 0, "num_threads": 1, "device": "cuda"})
    trainer = Trainer(cfg, tokenizer=tokenizer)
    metrics = trainer.sft()
    assert metrics["sft/steps"] > 0 and math.isfinite(metrics["sft/nll_after"])
    assert metrics["sft/nll_after"] < metrics["sft/nll_before"]
