"""VLLMEngine contract on CPU: a fake backend with vLLM's semantics, driven by a tiny HF model, must give the
same outputs as HFEngine (greedy: identical ids, log-probs within 1e-4, same stop/EOS/length handling).

The real vLLM backend is exercised by ``tests/test_vllm_engine_gpu.py`` (skipped without vLLM and a GPU).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hiper.rollout.engine import GenerationEngine  # noqa: E402
from hiper.rollout.hf import HFEngine  # noqa: E402
from hiper.rollout.vllm_engine import (  # noqa: E402
    BackendOutput,
    SamplingSpec,
    VLLMEngine,
    backend_output_from_vllm,
    named_tensors,
    vllm_sampling_kwargs,
)


class FakeVLLMBackend:
    """vLLM semantics on a transformers model: one unpadded sequence at a time, full forward per token.

    Greedy only (what the contract test needs). Stop strings are searched in the incrementally detokenized
    text (special tokens skipped), the completing token is kept; a ``stop_token_ids`` hit keeps the token and
    reports it as ``stop_reason``; ``logprobs`` are raw-logit log-softmax values of the chosen tokens.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.loaded: list[tuple[str, Any]] = []
        self.calls: list[SamplingSpec] = []

    @torch.no_grad()
    def generate(self, prompt_token_ids: Any, sampling: SamplingSpec) -> list[BackendOutput]:
        assert sampling.temperature == 0, "the fake backend is greedy"
        self.calls.append(sampling)
        outs = []
        for prompt in prompt_token_ids:
            ids = list(prompt)
            toks: list[int] = []
            lps: list[float] = []
            finish, reason = "length", None
            for _ in range(sampling.max_new_tokens):
                logits = self.model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
                tok = int(logits.argmax())
                toks.append(tok)
                lps.append(float(logits.log_softmax(-1)[tok]))
                ids.append(tok)
                if tok in sampling.stop_token_ids:
                    finish, reason = "stop", tok
                    break
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                hit = next((s for s in sampling.stop if s in text), None)
                if hit is not None:
                    finish, reason = "stop", hit
                    break
            outs.append(BackendOutput(toks, lps, finish, reason))
        return outs

    def load_weights(self, weights: Any) -> None:
        self.loaded = list(weights)


PROMPTS = [
    "<|im_start|>user\nYou are in a kitchen. Go to the fridge.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nFind a mug<|im_end|>\n<|im_start|>assistant\n",
    "hello there, general",
]


def _compare(hf_out: list[Any], vl_out: list[Any]) -> None:
    assert len(hf_out) == len(vl_out)
    for a, b in zip(hf_out, vl_out):
        assert a.prompt_ids == b.prompt_ids
        assert a.response_ids == b.response_ids
        assert a.finish_reason == b.finish_reason
        assert a.text == b.text
        assert len(b.logprobs) == len(b.response_ids)
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
        assert b.sampling_logprobs == [0.0] * len(b.response_ids)


def test_engine_satisfies_protocol(tokenizer: Any, tiny_model: Any) -> None:
    engine = VLLMEngine(FakeVLLMBackend(tiny_model, tokenizer), tokenizer)
    assert isinstance(engine, GenerationEngine)
    with pytest.raises(TypeError, match="lacks generate"):
        VLLMEngine(object(), tokenizer)


def test_greedy_matches_hf_engine_length_cap(tokenizer: Any, tiny_model: Any) -> None:
    hf = HFEngine(tiny_model, tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    vl = VLLMEngine(FakeVLLMBackend(tiny_model, tokenizer), tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    kw = dict(temperature=0.0, max_new_tokens=10, stop=("</action>",))
    hf_out, vl_out = hf.generate(PROMPTS, **kw), vl.generate(PROMPTS, **kw)
    _compare(hf_out, vl_out)
    assert {o.finish_reason for o in vl_out} == {"length"}  # a random tiny model never writes </action>


def test_greedy_matches_hf_engine_stop_string_kept(tokenizer: Any, tiny_model: Any) -> None:
    hf = HFEngine(tiny_model, tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    # pick a stop string the model will produce: the text of prompt 0's 4th greedy token
    probe = hf.generate(PROMPTS[:1], temperature=0.0, max_new_tokens=6, stop=())
    stop = tokenizer.decode(probe[0].response_ids[3:4], skip_special_tokens=True).strip()
    if not stop:
        pytest.skip("the 4th greedy token decodes to whitespace only")
    vl = VLLMEngine(FakeVLLMBackend(tiny_model, tokenizer), tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    kw = dict(temperature=0.0, max_new_tokens=12, stop=(stop,))
    hf_out, vl_out = hf.generate(PROMPTS, **kw), vl.generate(PROMPTS, **kw)
    _compare(hf_out, vl_out)
    assert vl_out[0].finish_reason == "stop"
    assert stop in vl_out[0].text and len(vl_out[0].response_ids) <= 4


def test_greedy_matches_hf_engine_eos_kept(tokenizer: Any, tiny_model: Any) -> None:
    hf = HFEngine(tiny_model, tokenizer)
    probe = hf.generate(PROMPTS, temperature=0.0, max_new_tokens=5, stop=())
    # declare prompt 1's 3rd greedy token an EOS id: both engines must stop on it and keep it
    eos = probe[1].response_ids[2]
    hf = HFEngine(tiny_model, tokenizer, eos_token_ids=[eos])
    vl = VLLMEngine(FakeVLLMBackend(tiny_model, tokenizer), tokenizer, eos_token_ids=[eos])
    kw = dict(temperature=0.0, max_new_tokens=8, stop=("</action>",))
    hf_out, vl_out = hf.generate(PROMPTS, **kw), vl.generate(PROMPTS, **kw)
    _compare(hf_out, vl_out)
    assert vl_out[1].finish_reason == "eos" and vl_out[1].response_ids[-1] == eos


def test_token_id_prompts_and_weight_update(tokenizer: Any, tiny_model: Any) -> None:
    backend = FakeVLLMBackend(tiny_model, tokenizer)
    vl = VLLMEngine(backend, tokenizer)
    ids = tokenizer(PROMPTS[:2], add_special_tokens=False)["input_ids"]
    out_ids = vl.generate(ids, temperature=0.0, max_new_tokens=3)
    out_txt = vl.generate(PROMPTS[:2], temperature=0.0, max_new_tokens=3)
    assert [o.response_ids for o in out_ids] == [o.response_ids for o in out_txt]
    assert backend.calls[-1].stop_token_ids == tuple(vl.eos_token_ids)
    vl.update_weights(tiny_model)
    assert vl.weight_version == 1
    vl.sync()  # no source attached: nothing pushed
    assert vl.weight_version == 1
    vl.source = tiny_model
    vl.sync()
    assert vl.weight_version == 2
    names = {n for n, _ in backend.loaded}
    assert "model.embed_tokens.weight" in names and len(backend.loaded) == len(tiny_model.state_dict())
    with pytest.raises(ValueError, match="temperature"):
        vl.generate(PROMPTS[:1], temperature=-1.0)
    with pytest.raises(ValueError, match="empty"):
        vl.generate([[]])


class _BadBackend:
    def __init__(self, out: BackendOutput) -> None:
        self.out = out

    def generate(self, prompt_token_ids: Any, sampling: SamplingSpec) -> list[BackendOutput]:
        return [self.out for _ in prompt_token_ids]

    def load_weights(self, weights: Any) -> None:
        pass


@pytest.mark.parametrize(
    "out, match",
    [
        (BackendOutput([1, 2], [0.0], "length"), "log-probs"),
        (BackendOutput([1, 2], [0.0, 0.0], "stop", "</nope>"), "stopped on"),
        (BackendOutput([1, 2], [0.0, 0.0], "stop", None), "not an EOS"),
        (BackendOutput([1, 2], [0.0, 0.0], "abort"), "finish_reason"),
    ],
)
def test_backend_errors_are_loud(tokenizer: Any, out: BackendOutput, match: str) -> None:
    vl = VLLMEngine(_BadBackend(out), tokenizer, eos_token_ids=[7])
    with pytest.raises(RuntimeError, match=match):
        vl.generate(["hi"], temperature=0.0, max_new_tokens=4)


def test_sampling_logprobs_modes(tokenizer: Any) -> None:
    vl = VLLMEngine(_BadBackend(BackendOutput([5, 6], [-1.0, -2.0], "length")), tokenizer)
    assert vl.generate(["hi"], temperature=1.0, top_p=1.0, max_new_tokens=2)[0].sampling_logprobs == [
        -1.0,
        -2.0,
    ]
    assert vl.generate(["hi"], temperature=0.7, top_p=0.9, max_new_tokens=2)[0].sampling_logprobs == []


def test_vllm_sampling_kwargs() -> None:
    kw = vllm_sampling_kwargs(SamplingSpec(1.0, 0.9, 512, ("</action>",), (151645, 151643), seed=3))
    assert kw["include_stop_str_in_output"] is True
    assert kw["logprobs"] == 0 and kw["max_tokens"] == 512 and kw["stop"] == ["</action>"]
    assert kw["stop_token_ids"] == [151645, 151643] and kw["seed"] == 3 and kw["top_p"] == 0.9
    greedy = vllm_sampling_kwargs(SamplingSpec(0.0, 0.5, 8, ()))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "seed" not in greedy


def test_backend_output_from_vllm_request_output() -> None:
    lp = lambda x: SimpleNamespace(logprob=x)  # noqa: E731 - vllm.sequence.Logprob stand-in
    completion = SimpleNamespace(
        token_ids=(11, 12, 13), logprobs=[{11: lp(-0.5)}, {12: lp(-1.5), 99: lp(-0.1)}, {13: lp(-0.25)}],
        finish_reason="stop", stop_reason="</action>",
    )  # fmt: skip
    out = backend_output_from_vllm(SimpleNamespace(outputs=[completion]))
    assert out.token_ids == [11, 12, 13] and out.logprobs == [-0.5, -1.5, -0.25]
    assert out.finish_reason == "stop" and out.stop_reason == "</action>"
    completion.logprobs = None
    with pytest.raises(RuntimeError, match="logprobs=0"):
        backend_output_from_vllm(SimpleNamespace(outputs=[completion]))
    completion.logprobs = [{11: lp(-0.5)}, {99: lp(-1.5)}, {13: lp(-0.25)}]
    with pytest.raises(RuntimeError, match="lack the sampled token"):
        backend_output_from_vllm(SimpleNamespace(outputs=[completion]))


def test_named_tensors_forms() -> None:
    lin = torch.nn.Linear(2, 2)
    assert [n for n, _ in named_tensors(lin)] == ["weight", "bias"]
    assert [n for n, _ in named_tensors(lin.state_dict())] == ["weight", "bias"]
    assert [n for n, _ in named_tensors(iter([("a", torch.zeros(1))]))] == ["a"]
    with pytest.raises(TypeError):
        named_tensors([1, 2])


def test_module_imports_without_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from hiper.rollout.vllm_engine import VLLMBackend

    with pytest.raises(ImportError, match="hiper\\[vllm\\]"):
        VLLMBackend("some/model")
