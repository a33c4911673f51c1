"""LoRA end to end (``model.lora.enabled=true``): adapters, PPO through the real Trainer, the KL reference,
exact checkpoint resume, SFT, merged export and the vLLM weight sync. Needs peft (in the ``test`` extra)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs the optional peft package (pip install 'hiper[lora]')")

from hiper.config import LoraConfig, from_dict  # noqa: E402
from hiper.models.policy import LoraReference, apply_lora, build_tiny_model, response_logprobs  # noqa: E402
from hiper.models.tokenizer import household_tokenizer  # noqa: E402
from hiper.rollout.weights import has_lora, merge_lora, merged_state_dict  # noqa: E402
from hiper.trainer import algorithm, forward  # noqa: E402
from hiper.trainer.trainer import Trainer, as_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import tiny_config  # noqa: E402

LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj"]}


def lora_config(estimator: str = "hae", **sections: Any) -> dict:
    cfg = tiny_config(estimator, **sections)
    cfg["model"]["lora"] = dict(LORA)
    cfg["actor"]["lr"] = 1e-2  # adapters start at B = 0: a visible update in one iteration
    return cfg


@pytest.fixture(scope="module")
def household_tok() -> Any:
    return household_tokenizer("household", {"difficulty": "tiny"})


def _split(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights, adapter weights) of the trainer's policy, cloned."""
    state = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    adapter = {k: v for k, v in state.items() if ".lora_" in k}
    return {k: v for k, v in state.items() if k not in adapter}, adapter


def _base_model(cfg: dict, tok: Any) -> torch.nn.Module:
    """The policy's base as the trainer builds it (same tiny config and seed), without adapters."""
    return build_tiny_model(tok, cfg["model"]["tiny"], seed=cfg["seed"]).eval()


def _batch_logprobs(batch: Any, model: torch.nn.Module) -> torch.Tensor:
    ids, mask = batch.input_ids()
    with torch.no_grad():
        return response_logprobs(model, ids, mask, batch.prompt_width, batch.response_ids)[0]


# ------------------------------------------------------------------------------------------------
# (a) adapters on the tiny Qwen2 (real Qwen2.5 vocabulary)
# ------------------------------------------------------------------------------------------------


def test_apply_lora_trains_only_adapters(tiny_model) -> None:
    base = copy.deepcopy(tiny_model)  # get_peft_model injects layers in place
    n_base = sum(p.numel() for p in base.parameters())
    x = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        before = base(x).logits
    model = apply_lora(base, LoraConfig(**LORA))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    cfg, r = tiny_model.config, LORA["r"]
    head = cfg.hidden_size // cfg.num_attention_heads
    dims = {"q_proj": (cfg.hidden_size, cfg.num_attention_heads * head),
            "v_proj": (cfg.hidden_size, cfg.num_key_value_heads * head),
            "o_proj": (cfg.num_attention_heads * head, cfg.hidden_size)}
    expected = cfg.num_hidden_layers * sum(r * (d_in + d_out) for d_in, d_out in dims.values())
    assert sum(trainable.values()) == expected
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == n_base
    with torch.no_grad():  # lora_B starts at zero: the wrapped model is the base exactly
        assert torch.equal(model(x).logits, before)


def test_adapter_init_is_a_function_of_the_seed(household_tok) -> None:
    from hiper.models.policy import build_policy

    cfg = as_config({"model": {"tiny": tiny_config()["model"]["tiny"], "lora": LORA}}).model
    state = torch.get_rng_state()
    a = build_policy(cfg, household_tok, seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.rand(3)
    b = build_policy(cfg, household_tok, seed=5).state_dict()
    c = build_policy(cfg, household_tok, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if ".lora_A." in k)


# ------------------------------------------------------------------------------------------------
# (b) + (c) PPO through the real Trainer; the KL reference is the base without adapters
# ------------------------------------------------------------------------------------------------


def test_ppo_with_lora_trains_adapters_only(household_tok) -> None:
    cfg = lora_config("hae", trainer={"total_iterations": 2, "eval_every": 0, "num_threads": 1})
    trainer = Trainer(cfg, tokenizer=household_tok)
    assert has_lora(trainer.policy)
    base0, adapter0 = _split(trainer)
    trainer.setup_rl()
    assert isinstance(trainer.reference, LoraReference)
    assert set(trainer.reference.state_dict()) == {k.replace(".", "/") for k in adapter0}  # adapter-sized
    for _ in range(2):
        metrics = trainer.iteration()
        assert metrics["actor/steps"] >= 1 and metrics["actor/skipped_steps"] == 0
    base1, adapter1 = _split(trainer)
    for k in base0:
        assert torch.equal(base0[k], base1[k]), k
    assert any(not torch.equal(adapter0[k], adapter1[k]) for k in adapter0)

    # the rollout of iteration 2 ran on the adapter updated by iteration 1: the engine's log-probs equal the
    # trainer's recomputed old log-probs of the same LoRA-wrapped policy
    batch, scores = trainer.last.batch, trainer.last.scores
    m = batch.response_mask
    assert batch.rollout_logprobs is not None and m.any()
    assert torch.allclose(batch.rollout_logprobs[m], scores.old_logprobs[m], atol=1e-4)

    # the KL reference is the plain base (no adapters), bit for bit, although the adapter has moved
    base = _base_model(cfg, household_tok)
    assert torch.equal(scores.ref_logprobs[m], forward.logprobs(batch, base, 4, 1.0, trainer.device)[m])
    assert not torch.allclose(scores.old_logprobs[m], scores.ref_logprobs[m], atol=1e-4)
    assert metrics["actor/kl"] > 0


def test_reference_freezes_a_trained_adapter(household_tok) -> None:
    """After SFT the adapter is non-zero: the reference is the policy as it was then, whatever comes next."""
    trainer = Trainer(lora_config("grpo"), tokenizer=household_tok)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in trainer.policy.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    trainer.setup_rl()
    trajs, _ = algorithm.rollout(trainer.config, trainer.learner(), trainer.manager("train"),
                                 trainer.tasks_for_iteration(0), 2, 1.0, seed=1)
    from hiper.batch import TurnBatch

    batch = TurnBatch.from_trajectories(trajs, trainer.table, trainer.pad_id)
    at_setup = _batch_logprobs(batch, trainer.policy)
    assert torch.equal(_batch_logprobs(batch, trainer.reference), at_setup)
    live = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if ".lora_" in n}
    with torch.no_grad():
        for n, p in trainer.policy.named_parameters():
            if ".lora_B." in n:
                p.mul_(-1.0)
    moved = _batch_logprobs(batch, trainer.policy)
    assert not torch.allclose(moved, at_setup, atol=1e-4)
    assert torch.equal(_batch_logprobs(batch, trainer.reference), at_setup)
    # the reference swapped its snapshot in and put the live adapter back
    for n, p in trainer.policy.named_parameters():
        if ".lora_B." in n:
            assert torch.equal(p, -live[n]), n
    assert torch.equal(_batch_logprobs(batch, trainer.policy), moved)


# ------------------------------------------------------------------------------------------------
# (d) checkpoint save -> resume
# ------------------------------------------------------------------------------------------------


def test_checkpoint_resume_is_exact(household_tok, tmp_path) -> None:
    from hiper.trainer.checkpoint import load_policy

    cfg = lora_config("hae")
    straight = Trainer(cfg, tokenizer=household_tok)
    for _ in range(2):
        straight.iteration()
    first = Trainer(cfg, tokenizer=household_tok)
    first.iteration()
    path = first.save_checkpoint(str(tmp_path))
    assert (path / "policy" / "adapter" / "adapter_model.safetensors").is_file()
    assert (path / "policy" / "config.json").is_file() and not (path / "policy" / "adapter_config.json").exists()

    resumed = Trainer(copy.deepcopy(cfg), tokenizer=household_tok)
    resumed.load_checkpoint(path)
    assert resumed.iteration_count == 1 and isinstance(resumed.reference, LoraReference)
    assert all(torch.equal(a, b) for a, b in zip(_split(first)[1].values(), _split(resumed)[1].values()))
    resumed.iteration()
    for name, a, b in (("policy", straight.policy, resumed.policy), ("critic", straight.critic, resumed.critic),
                       ("reference", straight.reference, resumed.reference)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"
    assert torch.equal(straight.last.targets.advantages, resumed.last.targets.advantages)

    # policy/ is a plain HF folder with the adapter merged (hiper eval / from_pretrained / vLLM)
    plain, _ = load_policy(path)
    assert not has_lora(plain)
    batch = first.last.batch
    m = batch.response_mask
    assert torch.allclose(_batch_logprobs(batch, plain)[m], _batch_logprobs(batch, first.policy)[m], atol=1e-5)


def test_adapter_checkpoint_refuses_a_mismatched_model(household_tok, tmp_path) -> None:
    from hiper.trainer.checkpoint import load_checkpoint, save_checkpoint

    plain = Trainer(tiny_config("grpo"), tokenizer=household_tok)
    path = save_checkpoint(tmp_path, iteration=0, models={"policy": plain.policy})
    lora = Trainer(lora_config("grpo"), tokenizer=household_tok)
    with pytest.raises(FileNotFoundError, match="model.lora.enabled"):
        load_checkpoint(path, models={"policy": lora.policy})
    other = lora_config("grpo")
    other["model"]["lora"]["r"] = 2
    save_checkpoint(tmp_path / "b", iteration=0, models={"policy": lora.policy})
    with pytest.raises(RuntimeError, match="adapter does not fit"):
        load_checkpoint(tmp_path / "b", models={"policy": Trainer(other, tokenizer=household_tok).policy})


# ------------------------------------------------------------------------------------------------
# (e) SFT with LoRA
# ------------------------------------------------------------------------------------------------


def test_sft_with_lora(household_tok, tmp_path) -> None:
    from hiper.trainer.checkpoint import load_policy, save_checkpoint

    cfg = lora_config("grpo", sft={"enabled": True, "episodes": 2, "epochs": 1, "batch_size": 4, "lr": 1e-2})
    trainer = Trainer(cfg, tokenizer=household_tok)
    base0, adapter0 = _split(trainer)
    metrics = trainer.sft()
    assert metrics["sft/nll_after"] < metrics["sft/nll_before"] and metrics["sft/skipped"] == 0
    base1, adapter1 = _split(trainer)
    assert all(torch.equal(base0[k], base1[k]) for k in base0)
    assert any(not torch.equal(adapter0[k], adapter1[k]) for k in adapter0)
    # what `hiper sft` writes (hiper.trainer.cli_sft.run_sft): a merged HF folder to continue from
    path = save_checkpoint(tmp_path, iteration=0, models={"policy": trainer.policy}, tokenizer=household_tok,
                           name="sft", update_latest=False, keep=0)
    plain, _ = load_policy(path)
    text = "<|user|>\nYou see fridge 1. <switch>KEEP</switch><action>go to fridge 1</action><|end|>\n<|assistant|>\n"
    ids = torch.tensor([household_tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, trainer.policy(ids).logits, atol=1e-5)

    # and the documented next step: LoRA RL from that folder (hiper train model.path=<sft>/policy
    # model.tiny=null model.tokenizer=null model.lora.enabled=true): same tokenisation, starts at the SFT policy
    cont = lora_config("grpo")
    cont["model"].update({"path": str(path / "policy"), "tiny": None, "tokenizer": None})
    rl = Trainer(cont, tokenizer=None)
    assert rl.tokenizer(text)["input_ids"] == household_tok(text)["input_ids"]
    assert has_lora(rl.policy)
    with torch.no_grad():
        assert torch.allclose(rl.policy(ids).logits, trainer.policy(ids).logits, atol=1e-5)
    assert rl.iteration()["actor/skipped_steps"] == 0


# ------------------------------------------------------------------------------------------------
# (f) merged export and the vLLM weight sync
# ------------------------------------------------------------------------------------------------


def _trained_lora(tiny_model: Any) -> torch.nn.Module:
    model = apply_lora(copy.deepcopy(tiny_model), LoraConfig(**LORA))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def test_merge_lora_matches_the_adapter_model(tiny_model) -> None:
    model = _trained_lora(tiny_model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merge_lora(model)
    state = merged_state_dict(model)
    assert not has_lora(merged) and has_lora(model)
    assert list(state) == list(tiny_model.state_dict()) == list(merged.state_dict())  # HF names, same order
    for k, v in merged.state_dict().items():
        assert torch.allclose(state[k], v, atol=1e-6), k
    assert any(not torch.equal(state[k], tiny_model.state_dict()[k]) for k in state)
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())  # model untouched
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, model(x).logits, atol=1e-5)
    with model.disable_adapter():  # disabled adapters add nothing
        assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in merged_state_dict(model).items())


def test_vllm_sync_pushes_merged_hf_weights(tiny_model, tokenizer) -> None:
    from hiper.rollout.vllm_engine import VLLMEngine, named_tensors

    class RecordingBackend:
        loaded: list = []

        def generate(self, prompt_token_ids, sampling):  # pragma: no cover - not called
            raise AssertionError

        def load_weights(self, weights) -> None:
            self.loaded = list(weights)

    model = _trained_lora(tiny_model)
    backend = RecordingBackend()
    engine = VLLMEngine(backend, tokenizer, source=model)
    engine.sync()
    merged = merge_lora(model).state_dict()
    assert [n for n, _ in backend.loaded] == list(merged)
    for n, t in backend.loaded:
        assert torch.allclose(t, merged[n], atol=1e-6), n
    with pytest.raises(ValueError, match="peft LoRA name"):
        named_tensors(model.state_dict())


def test_trainer_vllm_engine_gets_merged_weights(household_tok, monkeypatch) -> None:
    """rollout.engine=vllm with LoRA: the engine is synced with the merged policy when built (after SFT /
    resume the policy already differs from model.path) and after every actor update."""
    from hiper.rollout import vllm_engine
    from hiper.rollout.hf import HFEngine

    class HFBackedBackend:
        """vLLM stand-in: generates with its own plain (merged) model, loaded only through load_weights."""

        def __init__(self, plain: torch.nn.Module) -> None:
            self.engine = HFEngine(plain, household_tok)
            self.plain, self.loads = plain, 0

        def generate(self, prompt_token_ids, sampling):
            outs = self.engine.generate([list(p) for p in prompt_token_ids], temperature=sampling.temperature,
                                        top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                                        stop=tuple(sampling.stop), seed=sampling.seed)
            return [vllm_engine.BackendOutput(o.response_ids, list(o.logprobs),
                                              "length" if o.finish_reason == "length" else "stop",
                                              next((s for s in sampling.stop if o.text.endswith(s)), None))
                    for o in outs]

        def load_weights(self, weights) -> None:
            self.plain.load_state_dict(dict(weights), strict=True)
            self.loads += 1

    cfg = lora_config("grpo", rollout={"engine": "vllm", "temperature": 1.0, "max_new_tokens": 12})
    cfg["model"]["path"] = "base-checkpoint-for-vllm"  # only the engine reads it (model.tiny builds the policy)
    backends = []

    def fake_from_pretrained(path, tokenizer=None, source=None, **kwargs):
        backends.append(HFBackedBackend(_base_model(cfg, household_tok)))
        return vllm_engine.VLLMEngine(backends[-1], tokenizer, source=source)

    monkeypatch.setattr(vllm_engine.VLLMEngine, "from_pretrained", staticmethod(fake_from_pretrained))
    # validation would refuse rollout.engine=vllm without vLLM installed, and model.path next to model.tiny
    trainer = Trainer(from_dict(cfg, validate=False), tokenizer=household_tok)
    with torch.no_grad():  # as after a LoRA SFT: the policy is no longer model.path's weights
        for n, p in trainer.policy.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(n)))
    engine = trainer.engine
    assert backends[0].loads == 1
    merged = merged_state_dict(trainer.policy)
    assert all(torch.equal(v, merged[k]) for k, v in backends[0].plain.state_dict().items())
    trainer.iteration()
    assert engine is trainer.engine and backends[0].loads == 2
    merged = merged_state_dict(trainer.policy)
    assert all(torch.equal(v, merged[k]) for k, v in backends[0].plain.state_dict().items())


def test_hf_engine_keeps_only_last_logits_on_a_lora_policy(tiny_model, tokenizer) -> None:
    """peft hides ``logits_to_keep`` behind ``**kwargs``: the engine must still find it (else the prefill
    materialises [batch, prompt_len, vocab] logits, ~10 GB for 32 x 1k-token Qwen2.5 prompts), and the
    LoRA-wrapped engine must generate exactly what the merged model generates."""
    from hiper.rollout.hf import HFEngine

    model = _trained_lora(tiny_model)
    engine = HFEngine(model, tokenizer, seed=0)
    assert engine._keep_kw == "logits_to_keep"
    merged = HFEngine(merge_lora(model), tokenizer, seed=0)
    prompts = ["<switch>KEEP</switch>", "hello there"]
    a = engine.generate(prompts, temperature=0.0, max_new_tokens=6)
    b = merged.generate(prompts, temperature=0.0, max_new_tokens=6)
    assert [o.response_ids for o in a] == [o.response_ids for o in b]
    for x, y in zip(a, b):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)
