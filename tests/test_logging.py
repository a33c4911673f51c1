"""Metric logger backends, explained variance at value positions, stats, timer and plotting."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from hiper.trainer import logging as hlog
from hiper.trainer.logging import (
    MetricLogger,
    StageTimer,
    advantage_stats,
    explained_variance,
    masked_stats,
    plot_learning_curve,
    read_metrics,
    track,
)


def test_jsonl_records_one_object_per_step(tmp_path):
    with MetricLogger(tmp_path, backends=["jsonl"], run_name="t") as logger:
        logger.log({"train/success": 0.25, "actor/kl": torch.tensor(0.5), "critic/ev": float("nan")}, step=1)
        logger.log({"train/success": np.float32(0.5)}, step=2)
        # flushed after every call: readable while the run goes on
        assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["train/success"] == 0.25 and records[0]["actor/kl"] == 0.5
    assert records[0]["critic/ev"] is None  # non-finite -> null: the file stays strict JSON
    assert records[1]["train/success"] == 0.5
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_console_line(tmp_path, capsys):
    logger = MetricLogger(tmp_path, backends=["console"], run_name="demo", console_keys=2)
    logger.log({"zzz": 1.0, "train/success": 0.75, "actor/kl": 1e-7}, step=3)
    logger.close()
    out = capsys.readouterr().out
    assert "demo step 3" in out and "train/success=0.75" in out and "actor/kl=1.000e-07" in out
    assert "(+1 more)" in out and "zzz" not in out
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    logger = MetricLogger(tmp_path, backends=["tensorboard", "jsonl"])
    logger.log({"train/reward": 1.5}, step=0)
    logger.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_wandb_missing_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed; the missing-package path cannot be exercised")
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricLogger(tmp_path, backends=["wandb"])


def test_unknown_backend_and_bad_metric(tmp_path):
    with pytest.raises(ValueError, match="unknown logger backend"):
        MetricLogger(tmp_path, backends=["csv"])
    logger = MetricLogger(tmp_path, backends=["jsonl"])
    with pytest.raises(ValueError, match="one element"):
        logger.log({"x": torch.zeros(2)}, step=0)
    logger.close()
    logger.close()  # idempotent


def test_explained_variance_uses_value_positions_only():
    gen = torch.Generator().manual_seed(0)
    returns = torch.randn(4, 9, generator=gen) * 5
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[:, 2] = True  # one read position per turn sample
    values = torch.randn(4, 9, generator=gen) * 100  # garbage everywhere ...
    values[mask] = returns[mask]  # ... except at the read positions
    assert explained_variance(values, returns, mask) == pytest.approx(1.0)
    assert explained_variance(values, returns) < -10  # what the official all-token metric would report
    # predicting the mean gives 0; the formula matches numpy's population variances
    pred = torch.full_like(returns, float(returns[mask].mean()))
    assert explained_variance(pred, returns, mask) == pytest.approx(0.0, abs=1e-9)
    noisy = returns + torch.randn(4, 9, generator=gen)
    r, v = returns[mask].numpy(), noisy[mask].numpy()
    assert explained_variance(noisy, returns, mask) == pytest.approx(1 - np.var(r - v) / np.var(r), rel=1e-9)


def test_explained_variance_undefined_cases():
    assert math.isnan(explained_variance(torch.zeros(5), torch.ones(5)))  # constant returns
    assert math.isnan(explained_variance(torch.zeros(3), torch.arange(3.0), torch.tensor([True, False, False])))
    with pytest.raises(ValueError, match="differ in shape"):
        explained_variance(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="mask"):
        explained_variance(torch.zeros(3), torch.zeros(3), torch.ones(4, dtype=torch.bool))


def test_masked_and_advantage_stats():
    adv = torch.tensor([[1.0, 2.0, 100.0], [3.0, -4.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    stats = masked_stats(adv, mask, prefix="a/")
    assert stats["a/mean"] == pytest.approx(0.5) and stats["a/count"] == 4.0
    assert stats["a/min"] == -4.0 and stats["a/max"] == 3.0
    assert stats["a/std"] == pytest.approx(float(np.std([1, 2, 3, -4])))
    both = advantage_stats({"low": (adv, mask), "high": (adv, torch.zeros_like(mask))})
    assert both["adv/low/mean"] == pytest.approx(0.5)
    assert both["adv/high/count"] == 0.0 and math.isnan(both["adv/high/mean"])


def test_stage_timer_accumulates(monkeypatch):
    clock = iter([0.0, 1.5, 10.0, 10.25, 20.0, 22.0])
    monkeypatch.setattr(hlog.time, "perf_counter", lambda: next(clock))
    timer = StageTimer()
    with timer("rollout"):
        pass
    with timer("update"):
        pass
    with pytest.raises(RuntimeError), timer("rollout"):  # time is recorded even when the stage raises
        raise RuntimeError
    assert timer.metrics() == {"time/rollout": 3.5, "time/update": 0.25}
    timer.reset()
    assert timer.metrics() == {}


def test_plot_learning_curve(tmp_path):
    pytest.importorskip("matplotlib")
    with MetricLogger(tmp_path, backends=["jsonl"]) as logger:
        for step in range(4):
            logger.log({"train/success": step / 4}, step=step)
        logger.log({"eval/success": 0.5}, step=4)
    png = plot_learning_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png", keys=("train/success",
                                                                                         "eval/success", "absent"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of"):
        plot_learning_curve(tmp_path / "metrics.jsonl", tmp_path / "x.png", keys=("absent",))


def test_track_yields_every_item():
    assert list(track(range(5), "count")) == [0, 1, 2, 3, 4]
    assert list(track(iter([1, 2]), "gen", disable=True)) == [1, 2]


def test_explained_variance_is_undefined_on_float_residue_targets():
    """A batch without a success: targets equal but for rounding residue. The critic metric reported -1e14 there."""
    from hiper.losses import explained_variance as critic_metric

    returns = torch.tensor([0.0, 1e-9, -1e-9, 0.0], dtype=torch.float32)
    values = torch.tensor([0.1, -0.2, 0.05, 0.0])
    assert math.isnan(explained_variance(values, returns))
    assert math.isnan(critic_metric(values, returns, torch.ones(4, dtype=torch.bool)))
    assert critic_metric(values, returns + torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.ones(4, dtype=torch.bool)) < 1
