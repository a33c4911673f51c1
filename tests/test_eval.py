"""hiper eval (statistics, expert/random/oracle/checkpoint policies, JSON) and hiper play (stdin-driven)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hiper import cli
from hiper import evaluate as hiper_evaluate
from hiper.envs import InProcessBatch, task_panel
from hiper.evaluate import bootstrap_interval, resolve_policy_dir, wilson_interval
from hiper.play import expand_shorthand, play
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy
from hiper.rollout.records import is_admissible

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIPER_SHARED", REPO / ".." / "shared"))


def run_eval(tmp_path: Path, *argv: str) -> dict[str, Any]:
    out = tmp_path / "results.json"
    assert cli.main(["eval", *argv, "--no-progress", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_wilson_and_bootstrap() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert bootstrap_interval([0.5] * 7) == pytest.approx((0.5, 0.5))
    lo, hi = bootstrap_interval([0.0, 1.0] * 50, seed=1)
    assert lo < 0.5 < hi and (lo, hi) == bootstrap_interval([0.0, 1.0] * 50, seed=1)
    assert bootstrap_interval([]) == (0.0, 0.0)


def test_is_admissible_templates() -> None:
    adm = ["search[<your query>]", "click[buy now]"]
    assert is_admissible("search[red shoes]", adm) and is_admissible("click[buy now]", adm)
    assert not is_admissible("search[]", adm) and not is_admissible("click[back]", adm)
    assert not is_admissible("search red shoes", adm)


def test_eval_household_expert_is_perfect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = run_eval(tmp_path, "--env", "household", "--policy", "expert", "--n", "12")
    s = res["summary"]
    assert res["split"] == "valid_seen" and s["n_episodes"] == 12 and len(res["episodes"]) == 12
    assert s["success"] == 1.0 and s["invalid_rate"] == 0.0 and s["keep_inconsistent_rate"] == 0.0
    assert len(s["per_type"]) == 6 and all(d["success"] == 1.0 for d in s["per_type"].values())
    assert 0 < s["switch_rate"] < 1 and s["success_ci95"][1] == 1.0
    printed = capsys.readouterr().out
    assert "pick_two_obj" in printed and "95% CI" in printed and "invalid-format rate 0.0%" in printed


def test_eval_household_random_and_max_steps(tmp_path: Path) -> None:
    res = run_eval(
        tmp_path, "--env", "household", "--policy", "random", "--n", "6", "--max-steps", "5", "--seed", "3"
    )
    s = res["summary"]
    assert res["env_kwargs"] == {"max_steps": 5} and s["invalid_rate"] == 0.0
    assert all(e["length"] <= 5 for e in res["episodes"]) and s["inadmissible_rate"] == 0.0
    again = run_eval(
        tmp_path, "--env", "household", "--policy", "random", "--n", "6", "--max-steps", "5", "--seed", "3"
    )
    assert again["episodes"] == res["episodes"]


def test_eval_env_kwarg_parsing(tmp_path: Path) -> None:
    res = run_eval(
        tmp_path,
        "--policy",
        "expert",
        "--n",
        "3",
        "--env-kwarg",
        "difficulty=tiny",
        "--env-kwarg",
        "max_steps=20",
    )
    assert res["env_kwargs"] == {"difficulty": "tiny", "max_steps": 20} and res["summary"]["success"] == 1.0
    with pytest.raises(SystemExit):
        cli.main(["eval", "--env-kwarg", "novalue"])


def test_eval_webshop_oracle(tmp_path: Path) -> None:
    if not (SHARED / "data" / "webshop").exists():
        pytest.skip(f"WebShop data not found under {SHARED} (set HIPER_SHARED)")
    res = run_eval(tmp_path, "--env", "webshop", "--policy", "oracle", "--n", "5")
    assert res["split"] == "test" and res["summary"]["n_episodes"] == 5
    assert res["summary"]["score"] > 0.8 and res["summary"]["invalid_rate"] == 0.0


@pytest.mark.alfworld
def test_eval_alfworld_expert(tmp_path: Path) -> None:
    pytest.importorskip("alfworld")
    pytest.importorskip("hiper.envs.alfworld", reason="hiper.envs.alfworld not available")
    pytest.importorskip("hiper.envs.pool", reason="hiper.envs.pool not available")
    if not (SHARED / "data" / "alfworld").exists():
        pytest.skip("ALFWorld data not found")
    res = run_eval(tmp_path, "--env", "alfworld", "--split", "valid_unseen", "--policy", "expert", "--n", "2")
    assert res["summary"]["success"] == 1.0


def test_eval_checkpoint_policy(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok_dir = SHARED / "models" / "qwen2.5-instruct-tokenizer"
    if not tok_dir.exists():
        pytest.skip("Qwen2.5 tokenizer not found")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        tie_word_embeddings=True,
    )
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "iter_000001"
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(ckpt / "policy"))
    tokenizer.save_pretrained(str(ckpt / "policy"))
    (ckpt / "config.yaml").write_text(
        "env:\n  name: household\n  history_length: 1\n  kwargs: {difficulty: tiny}\n"
    )
    (run / "checkpoints" / "latest").write_text("iter_000001\n")
    for path in (run, ckpt, ckpt / "policy"):
        assert resolve_policy_dir(path) == (ckpt / "policy", ckpt / "config.yaml")
    res = run_eval(
        tmp_path,
        "--policy",
        str(run),
        "--n",
        "2",
        "--max-steps",
        "2",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    )
    s = res["summary"]
    assert res["env_kwargs"] == {"difficulty": "tiny", "max_steps": 2} and res["history_length"] == 1
    # an untrained model writes garbage: every turn is recorded as an invalid response, none crashes
    assert s["n_turns"] == 4 and s["invalid_rate"] == 1.0 and s["success"] == 0.0
    with pytest.raises(FileNotFoundError):
        resolve_policy_dir(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# play
# --------------------------------------------------------------------------------------------------


def play_args(**kw: Any) -> argparse.Namespace:
    base = dict(
        env="household",
        split=None,
        task_index=0,
        seed=0,
        max_steps=None,
        history_length=2,
        full_prompt=False,
        strict=False,
        env_kwarg=[],
    )
    base.update(kw)
    return argparse.Namespace(**base)


def run_play(lines: list[str], **kw: Any) -> tuple[int, str]:
    from rich.console import Console

    buf = io.StringIO()
    code = play(
        play_args(**kw),
        stdin=io.StringIO("".join(line + "\n" for line in lines)),
        console=Console(file=buf, width=200),
    )
    return code, buf.getvalue()


def test_play_expert_lines_win() -> None:
    task = task_panel("household", "valid_seen", n=2)[1]
    manager = EnvManager(
        InProcessBatch(lambda: __import__("hiper.envs", fromlist=["x"]).make_env("household")),
        family="household",
    )
    (traj,) = run_episodes(manager, ExpertPolicy(manager), [task])
    lines = [
        f"{'s' if t.switch else 'k'}|{t.subgoal if t.switch else ''}|{t.action}" for t in traj.turns
    ]
    code, out = run_play([":help", ":prompt", "nonsense", *lines], task_index=1)
    assert code == 0 and "episode over" in out and "won True" in out
    assert f"{traj.length} turns" in out and "INVALID" not in out and "not a response" in out
    assert "Available actions:" in out  # :prompt printed the rendered prompt


def test_play_malformed_and_eof() -> None:
    code, out = run_play(["<switch>MAYBE</switch><action>look</action>", ":expert"], full_prompt=True)
    assert code == 0 and "INVALID" in out and "bad_switch_value" in out and "expert: subgoal=" in out
    assert "end of input" in out
    code, out = run_play([":quit", "s|x|look"])
    assert code == 0 and "(quit)" in out and "parsed" not in out
    code, out = run_play([], task_index=10**6)
    assert code == 2


def test_play_without_tty_exits_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiper.cli", "play", "--env", "household", "--task-index", "2"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "admissible actions" in proc.stdout and "end of input" in proc.stdout


def test_expand_shorthand() -> None:
    from hiper.envs.base import TaskSpec
    from hiper.protocol import parse_response
    from hiper.rollout.records import TurnRequest

    req = TurnRequest(0, "p", ["look", "go to desk 1"], "find key", "t", TaskSpec("h", "s", 0), "obs", 1)
    p = parse_response(expand_shorthand("k||2", req), strict=True)
    assert p.valid and p.decision.value == "KEEP" and p.subgoal == "find key" and p.action == "go to desk 1"
    p = parse_response(expand_shorthand("S | open it | look", req), strict=True)
    assert p.decision.value == "SWITCH" and p.subgoal == "open it" and p.action == "look"
    assert expand_shorthand("<action>x</action>", req) == "<action>x</action>"
    for bad in ("look", "x|a|b", "k|a"):
        with pytest.raises(ValueError):
            expand_shorthand(bad, req)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--policy", "/no/such/run"], "neither expert/random/oracle nor an existing path"),
        (["--split", "nope"], "nope"),
        (["--n", "0"], "give at least 1 task"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, fragment, capsys) -> None:
    from hiper import cli

    assert cli.main(["eval", "--env", "household", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hiper eval: error: ") and fragment in err[0], err


def _tiny_demo_policy(transformers: Any) -> tuple[Any, Any]:
    from hiper.models.tokenizer import household_tokenizer

    tokenizer = household_tokenizer("household", {"difficulty": "tiny"})
    cfg = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)
    return transformers.Qwen2ForCausalLM(cfg), tokenizer


def test_eval_loads_a_demo_checkpoints_tokenizer_as_saved(tmp_path: Path) -> None:
    """`hiper eval` of a CPU-demo run must tokenise prompts as the trainer did: transformers' AutoTokenizer maps a
    qwen2 folder to Qwen2Tokenizer, which re-tokenises the code-built demo tokenizer (its eval then scored a demo
    run whose own held-out evaluation said 0.328 at 0 %)."""
    transformers = pytest.importorskip("transformers")
    from hiper.trainer.checkpoint import load_policy

    model, tokenizer = _tiny_demo_policy(transformers)
    folder = tmp_path / "policy"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    _, loaded = load_policy(folder)
    text = ("task: put a clean candle in cabinet.\nlast: go to countertop 1 ; take candle 1 from countertop 1\n"
            "obs: You pick up the candle 1 from the countertop 1.\nsubgoal: clean the candle\n"
            "actions: go to sinkbasin 1 | put candle 1 in/on countertop 1")
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.padding_side == "left" and loaded.pad_token_id is not None


def test_eval_checks_a_checkpoint_once_and_refuses_a_corrupt_one(tmp_path: Path, monkeypatch, capsys) -> None:
    """The manifest of a checkpoint's policy is hashed once per `hiper eval` (it was three times: a 7B policy is
    ~15 GB), and a policy file that no longer matches it is a one-line error, not an evaluation."""
    transformers = pytest.importorskip("transformers")
    from hiper.trainer import checkpoint

    model, tokenizer = _tiny_demo_policy(transformers)
    path = checkpoint.save_checkpoint(tmp_path / "run", iteration=1, models={"policy": model}, tokenizer=tokenizer,
                                      config={"env": {"name": "household", "history_length": 3}})
    policy_files = [f for f in (path / "policy").rglob("*") if f.is_file()]
    hashed: list[Path] = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda f: hashed.append(f) or real(f))
    configs_read: list[Any] = []
    real_read = hiper_evaluate.load_run_env_config
    monkeypatch.setattr(hiper_evaluate, "load_run_env_config", lambda c: configs_read.append(c) or real_read(c))
    run_eval(tmp_path, "--policy", str(tmp_path / "run"), "--n", "1", "--max-steps", "1", "--max-new-tokens", "2",
             "--device", "cpu")
    assert sorted(hashed) == sorted(policy_files)
    assert configs_read == [path / "config.yaml"]  # the run's config is read once too (it was twice)
    assert "Loading weights" not in capsys.readouterr().err  # --no-progress hides transformers' bar too

    weights = path / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert cli.main(["eval", "--policy", str(tmp_path / "run"), "--n", "1", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors does not match its sha256" in err[0], err


def test_load_policy_merges_a_bare_peft_adapter(tmp_path: Path) -> None:
    """A folder peft wrote (adapter_config.json, no config.json) loads as the base with the adapter merged."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import torch

    from hiper.trainer.checkpoint import load_policy

    torch.manual_seed(0)
    base, tokenizer = _tiny_demo_policy(transformers)
    base.save_pretrained(str(tmp_path / "base"))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))  # the adapter names its base
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))  # random B: the adapter acts
    lora.save_pretrained(str(tmp_path / "adapter"))
    tokenizer.save_pretrained(str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter" / "config.json").exists()
    merged, _ = load_policy(tmp_path / "adapter")
    ids = torch.tensor([tokenizer.encode("obs: You arrive at the dresser 1.")])
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    with torch.no_grad():
        want = lora(ids).logits
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, want, atol=1e-3)  # the adapter changes the output
