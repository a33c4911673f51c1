"""``hiper compare``: a small grid end to end (parallel arms, the table, the curves), resumption and a failed arm."""

from __future__ import annotations

import json

from hiper import cli
from hiper.compare import Arm, arm_overrides, group_rows, summarize_arm

TINY = ["env.n_envs=4", "env.eval_episodes=4", "env.max_steps=4", "sft.episodes=4", "sft.epochs=1",
        "trainer.total_iterations=1", "trainer.eval_every=1", "rollout.max_new_tokens=12"]


def test_grid_runs_resumes_and_reports(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "-o", str(out), "--estimators", "hae,grpo", "--seeds", "0,1", "--jobs", "2",
            "--group-size", "2", *TINY]
    assert cli.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert [a["status"] for a in result["arms"]] == ["ok"] * 4
    assert {(g["estimator"], g["n_ok"]) for g in result["groups"]} == {("hae", 2), ("grpo", 2)}
    for a in result["arms"]:
        assert [step for step, _ in a["curve"]] == [0, 1] and 0.0 <= a["summary"]["final_success"] <= 1.0
        lo, hi = a["summary"]["final_ci95"]
        assert lo <= a["summary"]["final_success"] <= hi
    assert (out / "curves.png").is_file() and "| hae | compact | 2/2 |" in (out / "results.md").read_text()
    arm_cfg = (out / "grpo-compact-s0" / "config.yaml").read_text()
    assert "adv_estimator: grpo" in arm_cfg and "group_size: 2" in arm_cfg
    capsys.readouterr()
    assert cli.main(argv) == 0  # everything finished: skipped, same table
    assert capsys.readouterr().out.count(": skipped") == 4


def test_a_failed_arm_is_reported_not_dropped(tmp_path) -> None:
    out = tmp_path / "cmp"
    # GiGPO on 1-task groups cannot run (group_size 1 is refused): the arm fails, the grid still reports it
    argv = ["compare", "-o", str(out), "--estimators", "hae,gigpo", "--seeds", "0", "--jobs", "2",
            "--group-size", "1", *TINY]
    assert cli.main(argv) == 1
    result = json.loads((out / "results.json").read_text())
    status = {a["estimator"]: a["status"] for a in result["arms"]}
    assert status == {"hae": "ok", "gigpo": "failed"}
    gigpo = next(a for a in result["arms"] if a["estimator"] == "gigpo")
    assert "group_size" in gigpo["error"]
    assert next(g for g in result["groups"] if g["estimator"] == "gigpo")["failed"] == ["gigpo-compact-s0"]


def test_arm_overrides_ask_the_registry() -> None:
    assert "critic.enabled=false" in arm_overrides("grpo", "default", 0, 8)
    assert "env.group_size=8" in arm_overrides("gigpo", "default", 0, 8)
    assert not any(o.startswith(("critic", "env.group")) for o in arm_overrides("hae", "compact", 1, 8))


def test_summaries() -> None:
    arms = [Arm("hae", "p", s, "x", status="ok", curve=[(0, 0.2), (10, 0.4 + 0.1 * s), (20, 0.6)],
                eval_episodes=100) for s in range(3)]
    s = summarize_arm(arms[0], threshold=0.5)
    assert s["final_success"] == 0.6 and s["iterations_to_threshold"] == 20 and abs(s["auc"] - 0.4) < 1e-9
    (row,) = group_rows(arms, threshold=0.5)
    assert row["n_ok"] == 3 and row["final_mean"] == 0.6 and row["reached_threshold"] == "3/3"
    assert abs(row["iterations_to_threshold_mean"] - (20 + 10 + 10) / 3) < 1e-9


def test_prompt_ablation_grid_leaves_out_hae_with_a_flat_prompt(tmp_path, capsys) -> None:
    """The paper's prompt x estimator grid: gae runs with both prompts, HAE only with the Plan-Execute one."""
    out = tmp_path / "cmp"
    argv = ["compare", "-o", str(out), "--estimators", "hae,gae", "--prompts", "compact,compact_flat",
            "--seeds", "0", "--jobs", "2", *TINY]
    assert cli.main(argv) == 0
    assert "left out, needs the Plan-Execute prompt: hae x compact_flat" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert sorted((a["estimator"], a["prompt"], a["status"]) for a in result["arms"]) == [
        ("gae", "compact", "ok"), ("gae", "compact_flat", "ok"), ("hae", "compact", "ok")]
    assert "prompt: compact_flat" in (out / "gae-compact_flat-s0" / "config.yaml").read_text()
    # the tables of docs/results_ablation.md come from such a folder
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ablation_report.py"
    report = subprocess.run([sys.executable, str(script), str(out), "--reference", "hae-compact"],
                            capture_output=True, text=True, check=True).stdout
    assert "| gae-compact_flat | 0 |" in report  # the per-arm table
    hae_row = next(line for line in report.splitlines() if line.startswith("| hae-compact | 0 |"))
    assert all(f"{head} " in hae_row.split("|")[-2] for head in ("low", "high", "term"))  # per-head explained variance
    assert "| gae-compact | " in report.split("mean gain")[1]  # the paired table against hae-compact


def test_shared_sft_starts_every_estimator_from_one_policy_per_prompt_and_seed(tmp_path, capsys) -> None:
    """``--shared-sft``: one SFT per (prompt, seed); the arms load it, so their iteration-0 evaluations agree; a rerun
    skips the SFT as well as the arms."""
    out = tmp_path / "cmp"
    argv = ["compare", "-o", str(out), "--estimators", "hae,token_gae,grpo", "--prompts", "compact,compact_flat",
            "--seeds", "0", "--jobs", "2", "--group-size", "2", "--shared-sft", *TINY]
    assert cli.main(argv) == 0
    # one SFT per prompt; the flat one runs under a flat estimator (HAE with a flat prompt fails the config check)
    assert sorted(p.name for p in out.glob("sft-*")) == ["sft-compact-s0", "sft-compact_flat-s0"]
    assert json.loads((out / "sft-compact_flat-s0" / "sft.json").read_text())["estimator"] == "token_gae"
    result = json.loads((out / "results.json").read_text())
    assert result["shared_sft"] and [a["status"] for a in result["arms"]] == ["ok"] * 5
    for prompt, estimators in (("compact", ("hae", "token_gae", "grpo")), ("compact_flat", ("token_gae", "grpo"))):
        starts = {a["estimator"]: a["curve"][0][1] for a in result["arms"] if a["prompt"] == prompt}
        assert len(set(starts.values())) == 1, starts  # the same policy, the same held-out episodes
        policy = out / f"sft-{prompt}-s0" / "checkpoints" / "sft" / "policy"
        for est in estimators:
            cfg = (out / f"{est}-{prompt}-s0" / "config.yaml").read_text()
            assert f"path: {policy}" in cfg and "enabled: false" in cfg.split("sft:")[1]
    mtime = (out / "sft-compact-s0" / "sft.json").stat().st_mtime
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert (out / "sft-compact-s0" / "sft.json").stat().st_mtime == mtime  # not run again
    assert capsys.readouterr().out.count(": skipped") == 5
    # --report-only runs nothing: a seed never started is reported as "not run", the finished arms as before
    seeds = argv.index("--seeds") + 1
    assert cli.main([*argv[:seeds], "0,1", *argv[seeds + 1:], "--report-only"]) == 0
    result = json.loads((out / "results.json").read_text())
    status = {(a["estimator"], a["prompt"], a["seed"]): a["status"] for a in result["arms"]}
    assert [status[k] for k in sorted(status) if k[2] == 1] == ["not run"] * 5 and not list(out.glob("*-s1"))
    assert [status[k] for k in sorted(status) if k[2] == 0] == ["skipped"] * 5
    assert "| hae-compact-s1 | not run |" in (out / "results.md").read_text()


def test_long_horizon_ablation_recipe_loads_and_its_tasks_are_solvable() -> None:
    """``recipes/ablation/chain_cpu.yaml`` (docs/results_ablation.md): two-part chains, failures terminal, the
    paper's group statistics; the expert wins its held-out tasks well inside the step limit."""
    from pathlib import Path

    from hiper.config import load_config
    from hiper.envs.household.env import HouseholdEnv
    from hiper.envs.registry import make_env

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "recipes" / "ablation" / "chain_cpu.yaml"))
    assert cfg.env.kwargs["step_limit"] == "terminal" and cfg.env.switch_hint is False
    assert cfg.algorithm.grpo.group_stats == "turn" and cfg.algorithm.gigpo.penalty_credit == "turn"
    env = make_env(cfg.env.name, max_steps=cfg.env.max_steps, **cfg.env.kwargs)
    assert env.config.chain_length == 2
    lengths = []
    for task in HouseholdEnv.tasks(cfg.env.eval_split, 20, difficulty=cfg.env.kwargs["difficulty"]):
        env.reset(task)
        done, n, info = False, 0, {}
        while not done:
            _, _, done, info = env.step(env.expert().action)
            n += 1
        assert info["won"], task
        lengths.append(n)
    assert max(lengths) < cfg.env.max_steps and sum(lengths) / len(lengths) > 8  # long, but solvable in time


def test_ablation_report_skips_undefined_explained_variance(load_script) -> None:
    """A batch whose critic targets are all equal logs its explained variance as null (NaN in JSON terms): the
    report's per-head median is over the defined values, and a head with none reads nan."""
    mod = load_script("ablation_report")
    rows = [{"train/success": 0.0, "critic/explained_var_low": None, "critic/explained_var_high": None},
            {"train/success": 0.5, "critic/explained_var_low": 0.25, "critic/explained_var_high": None},
            {"train/success": 1.0, "critic/explained_var_low": 0.75, "critic/explained_var_high": float("nan")}]
    success, ev = mod._train_means(rows, last=5)
    assert success == 0.5
    assert ev == "high nan, low 0.50"


def test_ablation_report_t_quantiles_come_from_one_table(load_script) -> None:
    """Paired gains over n seeds use Student's t with n - 1 degrees of freedom up to 30 seeds (the normal beyond)."""
    t95 = load_script("ablation_report").t975
    assert (t95(3), t95(7), t95(17), t95(30), t95(31)) == (4.303, 2.447, 2.120, 2.045, 1.96)
