"""Smoke test of ``hiper bench advantage`` on a tiny batch (no timing assertions)."""

from __future__ import annotations

import argparse
import json

from hiper.bench import advantage as bench


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = []
    for k, v in {"n_traj": 6, "max_turns": 5, "repeats": 1, "reference_repeats": 1, **kw}.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_bench_runs_and_agrees_with_reference():
    result = bench.run(_args())
    json.dumps(result)  # the dispatcher prints it as one JSON line
    assert result["bench"] == "advantage" and result["n_turns"] > 0
    assert result["max_abs_diff_vs_reference"] < 1e-4
    assert result["hae_ms"] > 0 and result["reference_ms"] > 0
    if result["masks_ms"] is None:  # no tokenizer / spans here: the reason is reported
        assert result["masks_skipped"]
    else:
        assert result["token_level_ms"] is not None and result["response_tokens_mean"] > 0


def test_bench_reports_missing_tokenizer(tmp_path):
    result = bench.run(_args(tokenizer=tmp_path / "nowhere"))
    assert result["masks_ms"] is None and "not found" in result["masks_skipped"]
    assert result["meets_targets"]["masks_ms"] is False
