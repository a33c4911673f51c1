"""``hiper bench rollout`` on CPU: a scripted stand-in for ``vllm.LLM`` runs the whole measurement path.

Checked: the prompts come from real env states (with history), raw vLLM and our engine receive the same
prompt ids and the same SamplingParams, token counts come from the outputs, the records are JSON with the
summary fields, and the error paths (no vLLM, missing ALFWorld data, bad arguments, a backend that breaks
the log-prob contract) end with clear messages. No timing is asserted: speed lives in the benchmark itself.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from fakes import ScriptedLLM, ScriptedSamplingParams

from hiper.bench import rollout as rb
from hiper.rollout.vllm_engine import backend_output_from_vllm

N, CAP = 6, 48


def _records(**kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out: list[dict[str, Any]] = []
    summary = rb.bench_rollout(emit=out.append, **kwargs)
    return out, summary


def _params(sp_list: list[Any]) -> list[dict[str, Any]]:
    return [sp.as_dict() for sp in sp_list]


# -- the stand-in has vLLM's cut semantics (otherwise the bench tests below would prove nothing) --------


def test_scripted_llm_cuts_like_vllm(tokenizer: Any) -> None:
    llm = ScriptedLLM(tokenizer)
    eos = tokenizer.eos_token_id
    sp = ScriptedSamplingParams(
        temperature=0.0, max_tokens=64, stop=["</action>"], stop_token_ids=[eos], logprobs=0
    )
    prompts = [{"prompt_token_ids": [100 + i, 7, 8]} for i in range(40)]
    outs = llm.generate(prompts, sampling_params=sp, use_tqdm=False)
    kinds = set()
    for o in outs:
        c = o.outputs[0]
        text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert len(c.token_ids) <= 64 and len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "length":
            assert c.stop_reason is None and len(c.token_ids) == 64 and "</action>" not in text
        elif isinstance(c.stop_reason, str):  # stop string kept, nothing generated after its token
            assert "</action>" in text
            assert "</action>" not in tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
        else:
            assert c.stop_reason == eos and c.token_ids[-1] == eos
        kinds.add((c.finish_reason, type(c.stop_reason).__name__))
        assert backend_output_from_vllm(o).token_ids == list(c.token_ids)
    assert kinds == {("length", "NoneType"), ("stop", "str"), ("stop", "int")}
    again = llm.generate(prompts, sampling_params=sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]  # greedy: same
    with pytest.raises(TypeError, match="unexpected"):
        ScriptedSamplingParams(temperature=1.0, best_of=2)
    with pytest.raises(ValueError, match="SamplingParams for"):
        llm.generate(prompts, sampling_params=[sp], use_tqdm=False)


# -- the measurement path ----------------------------------------------------------------------------


def test_prompts_come_from_env_states_with_history(tokenizer: Any) -> None:
    deep = rb.build_prompts("household", N, tokenizer, seed=3, max_depth=4)
    flat = rb.build_prompts("household", N, tokenizer, seed=3, max_depth=0)
    assert len(deep.prompt_ids) == N and flat.depths == [0] * N
    assert [t.index for t in deep.tasks] == [t.index for t in flat.tasks]
    assert max(deep.depths) > 0
    for d, p_deep, p_flat in zip(deep.depths, deep.prompt_ids, flat.prompt_ids):
        text = tokenizer.decode(p_deep)
        assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")
        assert (p_deep == p_flat) == (d == 0)  # a prompt after expert turns differs from the reset prompt
        if d > 0:
            assert f"Step {d} action:" in text and f"observation (step {d + 1})" in text  # history shown
    assert rb.build_prompts("household", N, tokenizer, seed=3, max_depth=4).digest == deep.digest
    with pytest.raises(ValueError, match="n_prompts"):
        rb.build_prompts("household", 0, tokenizer)
    with pytest.raises(ValueError, match="unknown env"):
        rb.build_prompts("nowhere", 2, tokenizer)


def test_raw_and_ours_get_the_same_prompts_and_params(tokenizer: Any) -> None:
    llm = ScriptedLLM(tokenizer)
    records, summary = _records(
        llm=llm, sampling_params_cls=ScriptedSamplingParams, tokenizer=tokenizer, n_prompts=N,
        max_new_tokens=CAP, repeats=2, temperature=1.0, seed=5, loop_turns=2, info={"model": "scripted"},
    )  # fmt: skip
    assert [r["measure"] for r in records] == ["prompts", "raw_vllm", "ours_engine", "ours_loop"]
    for r in [*records, summary]:
        assert json.loads(json.dumps(r)) == r and r["bench"] == "rollout" and r["model"] == "scripted"

    prompts = rb.build_prompts("household", N, tokenizer, seed=5, max_depth=4)
    assert records[0]["prompts_sha1"] == prompts.digest == summary["prompts_sha1"]
    assert records[0]["prompt_tokens"] == prompts.prompt_tokens
    # warm-up raw + ours, then 2 raw + 2 ours timed calls on exactly the bench prompts
    bench_calls = [(ids, sps) for ids, sps in llm.calls if ids == prompts.prompt_ids]
    timed = [sps for _, sps in bench_calls if sps[0].max_tokens == CAP]
    assert len(bench_calls) == 6 and len(timed) == 4
    assert all(_params(s) == _params(timed[0]) for s in timed)  # raw and ours: identical SamplingParams
    p0 = timed[0][0]
    assert p0.stop == ["</action>"] and p0.stop_token_ids == [tokenizer.eos_token_id]
    assert p0.logprobs == 0 and p0.include_stop_str_in_output is True and p0.temperature == 1.0
    assert [sp.seed for sp in timed[0]] == [5 + i for i in range(N)]
    assert llm.prefix_cache_resets >= 6

    # token counts come from the outputs: recount them here
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts.prompt_ids], sampling_params=timed[0])
    n_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    raw, ours, loop = records[1], records[2], records[3]
    assert raw["generated_tokens_runs"] == ours["generated_tokens_runs"] == [n_tokens, n_tokens]
    assert raw["n_prompts"] == ours["n_prompts"] == N and raw["repeats"] == 2
    assert sum(raw["finish_reasons"].values()) == sum(ours["finish_reasons"].values()) == N
    assert set(ours["finish_reasons"]) <= {"stop", "eos", "length"}

    assert summary["raw_generated_tokens"] == summary["ours_generated_tokens"] == 2 * n_tokens
    assert summary["token_count_mismatch"] is False and summary["identical_responses"] == 1.0
    assert summary["ours_vs_raw"] == pytest.approx(ours["tokens_per_s"] / raw["tokens_per_s"], rel=1e-2)
    assert summary["goal_met"] is (summary["ours_vs_raw"] >= rb.GOAL) and summary["goal"] == rb.GOAL

    assert loop["turns"] == N * 2 and loop["loop_turns"] == 2  # the scripted actions never end an episode
    assert sum(loop["finish_reasons"].values()) == N * 2 and loop["generated_tokens"] > 0
    assert 0.0 <= loop["env_share"] <= 1.0 and loop["engine_seconds"] <= loop["policy_seconds"] + 1e-6
    assert summary["loop_env_share"] == loop["env_share"] and "loop_vs_raw" in summary


def test_greedy_is_comparable_and_hf_reference(tokenizer: Any, tiny_model: Any) -> None:
    from hiper.rollout.hf import HFEngine

    hf = HFEngine(tiny_model, tokenizer, max_batch_size=2, eos_token_ids=[tokenizer.eos_token_id])
    records, summary = _records(
        llm=ScriptedLLM(tokenizer), sampling_params_cls=ScriptedSamplingParams, tokenizer=tokenizer,
        n_prompts=2, max_new_tokens=4, repeats=1, temperature=0.0, loop_turns=0, hf_engine=hf, dry_run=True,
    )  # fmt: skip
    assert [r["measure"] for r in records] == ["prompts", "raw_vllm", "ours_engine", "hf_engine"]
    assert records[3]["generated_tokens"] <= 2 * 4 and records[3]["n_prompts"] == 2
    assert summary["goal_met"] is None and summary["dry_run"] is True  # a stand-in proves no speed
    assert "hf_tokens_per_s" in summary and "loop_tokens_per_s" not in summary
    assert summary["identical_responses"] == 1.0 and summary["temperature"] == 0.0


def test_summary_flags_token_count_mismatch() -> None:
    raw = [rb.Run(1.0, [[1] * 50, [2] * 50])]
    ours = [rb.Run(2.0, [[1] * 50, [2] * 60])]
    s = rb.summarize(raw, ours, token_tolerance=0.05)
    assert s["raw_generated_tokens"] == 100 and s["ours_generated_tokens"] == 110
    assert (
        s["token_count_rel_diff"] == pytest.approx(10 / 110, abs=1e-4) and s["token_count_mismatch"] is True
    )
    assert s["identical_responses"] == 0.5 and s["ours_vs_raw"] == pytest.approx(55 / 100)
    assert s["ours_overhead_ms"] == pytest.approx(1000.0)
    assert s["goal_met"] is False
    assert rb.summarize(raw, ours, token_tolerance=0.2)["token_count_mismatch"] is False
    fast = rb.summarize(raw, [rb.Run(1.05, [[1] * 50, [2] * 50])])
    assert fast["goal_met"] is True and fast["token_count_mismatch"] is False
    with pytest.raises(RuntimeError, match="not the same prompts"):
        rb.summarize(raw, [rb.Run(1.0, [[1]])])
    with pytest.raises(ValueError):
        rb.summarize([], ours)


# -- error paths -------------------------------------------------------------------------------------


class _NoLogprobLLM(ScriptedLLM):
    """Breaks the contract the engine relies on: no log-probs in the outputs."""

    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        outs = super().generate(prompts, sampling_params, use_tqdm)
        for o in outs:
            o.outputs[0].logprobs = None
        return outs


class _ShortLLM(ScriptedLLM):
    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        return super().generate(prompts, sampling_params, use_tqdm)[:-1]


def test_bench_errors_are_loud(tokenizer: Any) -> None:
    kw = dict(
        sampling_params_cls=ScriptedSamplingParams, tokenizer=tokenizer, n_prompts=2, max_new_tokens=8
    )
    with pytest.raises(RuntimeError, match="logprobs=0"):  # ours checks what raw vLLM does not
        _records(llm=_NoLogprobLLM(tokenizer), **kw)
    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        _records(llm=_ShortLLM(tokenizer), **kw)
    for bad, match in [({"repeats": 0}, "repeats"), ({"temperature": -1.0}, "temperature"),
                       ({"max_new_tokens": 0}, "max_new_tokens"), ({"loop_turns": -1}, "loop_turns")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _records(llm=ScriptedLLM(tokenizer), **{**kw, **bad})


def _args(model: str, *extra: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    rb.add_arguments(parser)
    return parser.parse_args(["--model", model, *extra])


def test_missing_vllm_names_the_extra(tokenizer: Any) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(SystemExit, match=r"pip install 'hiper\[vllm\]'"):
        rb.run(_args(tokenizer.name_or_path))
    with pytest.raises(ImportError, match=r"pip install 'hiper\[vllm\]'"):
        rb.load_vllm("some/model")


def test_cli_argument_errors(tokenizer: Any) -> None:
    with pytest.raises(SystemExit, match="needs --tokenizer"):
        rb.run(_args("random:tiny"), stand_in=_scripted)
    pytest.importorskip("alfworld")
    bad_dir = ("--env", "alfworld", "--data-dir", "/nonexistent/alfworld", "--n-prompts", "2")
    with pytest.raises(SystemExit, match="ALFWorld data_dir"):
        rb.run(_args(tokenizer.name_or_path, *bad_dir), stand_in=_scripted)


# -- command line and helpers ------------------------------------------------------------------------


def _scripted(tokenizer: Any) -> tuple[Any, Any]:
    return ScriptedLLM(tokenizer), ScriptedSamplingParams


def test_cli_path_prints_json_lines(tokenizer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The command's own path (argument parsing -> prompts -> the three measurements -> summary) with the stand-in."""
    argv = ["--model", tokenizer.name_or_path, "--n-prompts", "3", "--max-new-tokens", "16", "--repeats", "1",
            "--loop-turns", "1"]  # fmt: skip
    rb.print_json(rb.run(_args(*argv[1:2], *argv[2:]), stand_in=_scripted))
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["measure"] for x in lines] == ["prompts", "raw_vllm", "ours_engine", "ours_loop", "summary"]
    summary = lines[-1]
    for key in ("raw_tokens_per_s", "ours_tokens_per_s", "ours_vs_raw", "goal", "goal_met", "token_count_mismatch",
                "loop_tokens_per_s", "loop_env_share", "prompts_sha1", "n_prompts", "max_new_tokens"):  # fmt: skip
        assert key in summary, key
    assert summary["n_prompts"] == 3 and summary["dry_run"] is True and summary["goal_met"] is None


def test_random_model_dir(tokenizer: Any, tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    out = rb.random_model_dir("tiny", tokenizer, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["vocab_size"] >= len(tokenizer) and cfg["num_hidden_layers"] == 2
    assert transformers.AutoTokenizer.from_pretrained(str(out)).encode("look") == tokenizer.encode("look")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="unknown random model"):
        rb.random_model_dir("huge", tokenizer, tmp_path / "x")


def test_alfworld_prompts_when_data_present(tokenizer: Any) -> None:
    pytest.importorskip("alfworld")
    from hiper.envs.data import alfworld_data_available

    if not alfworld_data_available():
        pytest.skip("ALFWorld data not found (set HIPER_SHARED)")
    records, summary = _records(
        llm=ScriptedLLM(tokenizer), sampling_params_cls=ScriptedSamplingParams, tokenizer=tokenizer,
        env="alfworld", split="valid_seen", n_prompts=2, max_new_tokens=16, repeats=1, loop_turns=1, seed=1,
        max_depth=3,
    )  # fmt: skip
    assert records[0]["env"] == "alfworld" and records[0]["depth_mean"] > 0
    assert records[3]["turns"] == 2 and summary["token_count_mismatch"] is False
