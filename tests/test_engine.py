"""HFEngine: exact log-probs, stop strings, EOS, length cap, batching, and the engine-backed policy."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hiper.envs import InProcessBatch  # noqa: E402
from hiper.envs.base import TaskSpec  # noqa: E402
from hiper.rollout.engine import GenerationEngine, GenerationOutput  # noqa: E402
from hiper.rollout.hf import HFEngine  # noqa: E402
from hiper.rollout.loop import run_episodes  # noqa: E402
from hiper.rollout.manager import EnvManager  # noqa: E402
from hiper.rollout.policies import EnginePolicy  # noqa: E402


class ScriptedLM(torch.nn.Module):
    """A fake causal LM that emits a fixed token script per prompt (chosen by the prompt's last token).

    The row's script id and prompt length ride in the KV cache, so cache compaction is exercised for real.
    ``calls`` counts forward passes; ``batch_sizes`` records the batch of each pass.
    """

    def __init__(self, vocab_size: int, scripts: dict[int, list[int]], fallback: int) -> None:
        super().__init__()
        self.vocab_size, self.scripts, self.fallback = vocab_size, scripts, fallback
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.batch_sizes: list[int] = []

    def forward(
        self, input_ids, attention_mask, position_ids, past_key_values, use_cache=True, logits_to_keep=0
    ):
        b, s = input_ids.shape
        self.batch_sizes.append(b)
        if past_key_values.get_seq_length() == 0:  # prefill
            sid = input_ids[:, -1].float()
            plen = attention_mask.sum(-1).float()
        else:
            keys, values = past_key_values.layers[0].keys, past_key_values.layers[0].values
            sid, plen = keys[:, 0, -1, 0], values[:, 0, -1, 0]
        past_key_values.update(
            sid[:, None, None, None].expand(b, 1, s, 1).contiguous(),
            plen[:, None, None, None].expand(b, 1, s, 1).contiguous(),
            0,
        )
        index = (position_ids[:, -1] - (plen.long() - 1)).tolist()
        logits = torch.full((b, 1, self.vocab_size), -20.0)
        for row, (k, i) in enumerate(zip(sid.long().tolist(), index)):
            script = self.scripts.get(k, [])
            logits[row, 0, script[i] if i < len(script) else self.fallback] = 20.0
        return transformers.modeling_outputs.CausalLMOutputWithPast(logits=logits)


def teacher_forced(model: Any, out: GenerationOutput) -> torch.Tensor:
    ids = torch.tensor([out.prompt_ids + out.response_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    p = len(out.prompt_ids)
    return logp[p - 1 : -1].gather(-1, torch.tensor(out.response_ids)[:, None]).squeeze(-1)


PROMPTS = [
    "hello world",
    "a much longer prompt with many more tokens in it than the first",
    "x",
    "go to the desk",
]


def test_engine_satisfies_protocol(tokenizer: Any, tiny_model: Any) -> None:
    assert isinstance(HFEngine(tiny_model, tokenizer), GenerationEngine)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_logprobs_equal_teacher_forcing(
    tokenizer: Any, tiny_model: Any, temperature: float, top_p: float
) -> None:
    engine = HFEngine(tiny_model, tokenizer, max_batch_size=4, seed=1)
    outs = engine.generate(PROMPTS[:3], temperature=temperature, top_p=top_p, max_new_tokens=6)
    for out in outs:
        assert len(out.response_ids) == len(out.logprobs) == len(out.sampling_logprobs) == 6
        assert out.finish_reason == "length"
        tf = teacher_forced(tiny_model, out)
        assert torch.allclose(tf, torch.tensor(out.logprobs), atol=1e-4)
        if temperature == 0:
            assert out.sampling_logprobs == [0.0] * 6
        elif temperature == 1 and top_p == 1:
            assert out.sampling_logprobs == pytest.approx(out.logprobs, abs=1e-5)
        else:  # sampled from a sharper distribution: its log-probs are higher than the raw ones
            assert all(s > r for s, r in zip(out.sampling_logprobs, out.logprobs))


def test_batch_equals_one_by_one_greedy(tokenizer: Any, tiny_model: Any) -> None:
    engine = HFEngine(tiny_model, tokenizer, max_batch_size=3)  # 4 prompts -> 2 chunks
    batch = engine.generate(PROMPTS, temperature=0, max_new_tokens=5)
    for prompt, b in zip(PROMPTS, batch):
        (single,) = engine.generate([prompt], temperature=0, max_new_tokens=5)
        assert b.prompt_ids == single.prompt_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert b.response_ids == single.response_ids and b.text == single.text
        assert b.logprobs == pytest.approx(single.logprobs, abs=1e-4)


def test_sampling_reproducible_with_seed(tokenizer: Any, tiny_model: Any) -> None:
    engine = HFEngine(tiny_model, tokenizer)
    a = engine.generate(PROMPTS[:2], temperature=1.0, max_new_tokens=4, seed=7)
    b = engine.generate(PROMPTS[:2], temperature=1.0, max_new_tokens=4, seed=7)
    c = engine.generate(PROMPTS[:2], temperature=1.0, max_new_tokens=4, seed=8)
    assert [o.response_ids for o in a] == [o.response_ids for o in b] != [o.response_ids for o in c]
    # a vanishing top_p keeps only the most likely token: same as greedy
    greedy = engine.generate(PROMPTS[:2], temperature=0, max_new_tokens=4)
    nucleus = engine.generate(PROMPTS[:2], temperature=1.0, top_p=1e-6, max_new_tokens=4, seed=3)
    assert [o.response_ids for o in greedy] == [o.response_ids for o in nucleus]


def scripted_engine(
    tokenizer: Any, scripts: dict[str, str], eos_after: set[str] = frozenset()
) -> tuple[HFEngine, Any]:
    """Engine over a ScriptedLM: prompt text (one token) -> response text (+ <|im_end|> if in ``eos_after``)."""
    table = {}
    for prompt, response in scripts.items():
        (pid,) = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        table[pid] = ids + ([tokenizer.eos_token_id] if prompt in eos_after else [])
    filler = tokenizer(" blah", add_special_tokens=False)["input_ids"][0]
    model = ScriptedLM(len(tokenizer), table, fallback=filler)
    return HFEngine(model, tokenizer, max_batch_size=8), model


RESPONSE = "<switch>KEEP</switch>\n<subgoal>find the key</subgoal>\n<action>go to desk 1</action>"


def test_stop_eos_and_length(tokenizer: Any) -> None:
    scripts = {
        "a": RESPONSE + " and then some more text after it",
        "b": "<switch>SWITCH</switch><subgoal>x</subgoal><action>look",  # no stop: runs to the cap
        "c": "short answer",  # ends with EOS
        "d": "<action>open drawer 2</action></action>",  # stop string completed mid-script
    }
    engine, model = scripted_engine(tokenizer, scripts, eos_after={"c"})
    outs = engine.generate(["a", "b", "c", "d"], temperature=0, max_new_tokens=40)
    a, b, c, d = outs
    assert a.finish_reason == "stop" and a.text == RESPONSE
    assert a.response_ids == tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    assert b.finish_reason == "length" and len(b.response_ids) == 40 and b.text.endswith(" blah")
    assert (
        c.finish_reason == "eos" and c.response_ids[-1] == tokenizer.eos_token_id and c.text == "short answer"
    )
    # the token completing the stop string is kept whole (here BPE merged "></"), and nothing after it
    assert d.finish_reason == "stop" and d.text.startswith("<action>open drawer 2</action>")
    assert "</action>" not in tokenizer.decode(d.response_ids[:-1])
    assert d.text == tokenizer.decode(d.response_ids)
    # logprobs of a scripted (one-hot at 20 vs -20) model: ~0 for every emitted token
    assert all(lp > -1e-3 for o in outs for lp in o.logprobs)
    # rows stop growing: the cache is compacted as rows finish and the loop runs only until b hits the cap
    assert len(model.batch_sizes) == 40 and model.batch_sizes[0] == 4 and model.batch_sizes[-1] == 1


def test_loop_ends_when_all_rows_stop(tokenizer: Any) -> None:
    engine, model = scripted_engine(tokenizer, {"a": RESPONSE, "c": "ok"}, eos_after={"c"})
    outs = engine.generate(["a", "c"], temperature=0, max_new_tokens=100)
    assert [o.finish_reason for o in outs] == ["stop", "eos"]
    assert len(model.batch_sizes) == len(outs[0].response_ids)  # prefill + one pass per token but the last
    # a custom stop string, and no stop strings at all
    (o,) = engine.generate(["a"], temperature=0, max_new_tokens=100, stop=("</subgoal>",))
    assert o.finish_reason == "stop" and o.text.rstrip().endswith("<subgoal>find the key</subgoal>")
    (o,) = engine.generate(["a"], temperature=0, max_new_tokens=30, stop=())
    assert o.finish_reason == "length" and o.text.startswith(RESPONSE)


def test_generate_validates(tokenizer: Any, tiny_model: Any) -> None:
    engine = HFEngine(tiny_model, tokenizer)
    for kwargs in ({"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            engine.generate(["hi"], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]])
    assert engine.generate([]) == []
    # token-id prompts give the same as text prompts
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert (
        engine.generate([ids], temperature=0, max_new_tokens=3)[0].response_ids
        == engine.generate(["hello world"], temperature=0, max_new_tokens=3)[0].response_ids
    )


def test_update_weights(tokenizer: Any, tiny_model: Any) -> None:
    import copy

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    engine = HFEngine(copy.deepcopy(tiny_model), tokenizer)
    before = engine.generate(["hello"], temperature=0, max_new_tokens=4)[0]
    engine.update_weights(other)
    after = engine.generate(["hello"], temperature=0, max_new_tokens=4)[0]
    assert after.logprobs != before.logprobs
    assert torch.allclose(teacher_forced(other, after), torch.tensor(after.logprobs), atol=1e-4)
    engine.update_weights(engine.model)  # sharing the model: no-op
    engine.sync()


class ActionEnv:
    """Episode ends after ``1 + index`` steps; records the actions it received."""

    family = "household"

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        self.left, self.steps = 1 + task.index, 0
        return "a room", self._info(False)

    def _info(self, won: bool) -> dict[str, Any]:
        return {
            "admissible": ["go to desk 1", "look"],
            "task": "find the key",
            "task_type": "t",
            "won": won,
            "score": float(won),
            "truncated": False,
            "truncation_reason": None,
            "step": self.steps,
        }

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        self.steps += 1
        self.left -= action == "go to desk 1"
        won = self.left == 0
        return "a room", 10.0 * won, won, self._info(won)

    def close(self) -> None:
        pass


def test_engine_policy_prompts_only_active_envs(tokenizer: Any) -> None:
    class Recording:
        def __init__(self, inner: HFEngine) -> None:
            self.inner, self.calls = inner, []

        def generate(self, prompts: list[str], **kw: Any) -> list[GenerationOutput]:
            self.calls.append(list(prompts))
            return self.inner.generate(prompts, **kw)

    # whatever the chat-formatted prompt, its last token is "\n" (after "assistant"): one script for all
    (nl,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    model = ScriptedLM(len(tokenizer), {nl: tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]}, 0)
    engine = Recording(HFEngine(model, tokenizer))
    policy = EnginePolicy(engine, tokenizer, temperature=0.0, max_new_tokens=64)
    manager = EnvManager(InProcessBatch(ActionEnv), family="household")
    trajs = run_episodes(manager, policy, [TaskSpec("t", "s", i) for i in range(3)])
    assert [len(c) for c in engine.calls] == [3, 2, 1]
    assert all(
        p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n")
        for c in engine.calls
        for p in c
    )
    assert [t.length for t in trajs] == [1, 2, 3] and all(t.won for t in trajs)
    for t in trajs:
        for rec in t.turns:
            assert rec.valid and rec.action == "go to desk 1" and rec.response == RESPONSE
            x = rec.extras
            assert x["finish_reason"] == "stop" and len(x["response_ids"]) == len(x["logprobs"]) > 0
            assert tokenizer.decode(x["prompt_ids"]) == engine.calls[rec.turn][0]
