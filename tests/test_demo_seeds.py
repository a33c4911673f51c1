"""scripts/demo_seeds.py: the CPU demo's table over seeds (docs/results_cpu_demo.md) from demo_result.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_seeds.py"


def fake_run(folder: Path, seed: int, evals: list[float]) -> None:
    history = [{"iteration": 10 * k, "eval/success": v} for k, v in enumerate(evals)]
    history += [{"iteration": k, "train/success": 0.1} for k in range(1, 10 * (len(evals) - 1) + 1)]
    folder.mkdir()
    (folder / "demo_result.json").write_text(json.dumps({
        "seed": seed, "wall_s": 280.0, "history": history, "before": {"eval/success": evals[0]},
        "after": {"eval/success": evals[-1]}}))


def test_table_spread_and_plot(tmp_path) -> None:
    fake_run(tmp_path / "a", 1, [0.25, 0.30, 0.35])
    fake_run(tmp_path / "b", 0, [0.20, 0.20, 0.30])
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(png)],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[2] == "| 0 | 0.200 | 0.200 | 0.300 | +10.0 | 280 s |"  # seeds sorted
    assert lines[3] == "| 1 | 0.250 | 0.300 | 0.350 | +10.0 | 280 s |"
    assert "| gain (points) | +10.0 | 0.0 | +10.0 ... +10.0 |" in out
    assert "| SFT-only success | 0.225 | 0.035 | 0.050 |" in out
    assert png.stat().st_size > 0
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "demo_result.json not found" in missing.stderr


def test_plot_title_names_the_training_temperature_only_when_known(load_script) -> None:
    plot_title = load_script("demo_seeds").plot_title
    assert plot_title([{"train_temperature": 0.4}, {"train_temperature": 0.4}]).endswith("training rollouts, T = 0.4)")
    assert plot_title([{"train_temperature": 0.4}, {}]).endswith("(faint: training rollouts)")
    assert plot_title([{"train_temperature": 0.4}, {"train_temperature": 1.0}]).endswith("(faint: training rollouts)")
