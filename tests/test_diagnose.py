"""``hiper diagnose variance``: paired estimators on the same rollouts of one frozen policy."""

from __future__ import annotations

import json
import statistics

import torch

from hiper import cli
from hiper.diagnose import gradient_variance, t_interval

TINY = ["env.n_envs=4", "env.max_steps=4", "sft.episodes=8", "sft.epochs=1", "rollout.max_new_tokens=12",
        "trainer.num_threads=null"]


def test_variance_diagnostic_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "var.json"
    argv = ["diagnose", "variance", "--estimators", "hae,gae,token_gae,grpo", "--batches", "3", "--fit-batches", "1",
            "--group-size", "2", "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["estimator"]: r for r in result["estimators"]}
    assert set(rows) == {"hae", "gae", "token_gae", "grpo"} and result["batches"] == 3
    for r in rows.values():
        assert 0 <= r["grad_var_ci95"][0] <= r["grad_var"] * 1.0001 and r["token_adv_var"] >= 0
    for name in ("hae", "gae", "token_gae"):  # critic-based credit is never all-zero, even when every episode fails
        assert rows[name]["grad_var"] > 0 and rows[name]["noise_to_signal"] > 0
    # GRPO: when every group ties (all fail in 4 steps) its gradient is exactly zero, and the table says so
    g = rows["grpo"]
    assert g["grad_signal"] > 0 or (g["grad_var"] == 0 and g["noise_to_signal"] == float("inf")
                                    and "no gradient" in out.with_suffix(".md").read_text())
    assert "| hae |" in out.with_suffix(".md").read_text()


def test_gradient_variance_and_t_interval() -> None:
    gs = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]), torch.tensor([2.0, 0.0])]
    v = gradient_variance(gs, n_boot=200)
    assert abs(v["grad_var"] - 0.5) < 1e-12  # var of (1, 3, 2) is 1, over dim 2
    assert abs(v["grad_signal"] - 2.0) < 1e-12 and abs(v["noise_to_signal"] - 0.25) < 1e-12
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(hi - 2.0 - 4.303 / 3**0.5) < 1e-9 and abs(lo + hi - 4.0) < 1e-12
    # 17 samples (16 degrees of freedom): t = 2.120, not the normal 1.96; beyond 30 samples the normal quantile
    xs = [float(i % 2) for i in range(17)]
    half = t_interval(xs)[2] - statistics.fmean(xs)
    assert abs(half - 2.120 * statistics.stdev(xs) / 17**0.5) < 1e-9
    xs = [float(i % 2) for i in range(31)]
    assert abs(t_interval(xs)[2] - statistics.fmean(xs) - 1.96 * statistics.stdev(xs) / 31**0.5) < 1e-9
