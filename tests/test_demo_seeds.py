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
    assert lines[-3] == "measured on not recorded: seeds 0, 1"  # files written before the demo recorded it
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "demo_result.json not found" in missing.stderr


def test_plot_title_names_the_training_temperature_only_when_known(load_script) -> None:
    plot_title = load_script("demo_seeds").plot_title
    assert plot_title([{"train_temperature": 0.4}, {"train_temperature": 0.4}]).endswith("training rollouts, T = 0.4)")
    assert plot_title([{"train_temperature": 0.4}, {}]).endswith("(faint: training rollouts)")
    assert plot_title([{"train_temperature": 0.4}, {"train_temperature": 1.0}]).endswith("(faint: training rollouts)")


def test_many_seeds_plot_their_mean_with_a_t_band(load_script, tmp_path) -> None:
    """Beyond MAX_SEED_LINES seeds the plot shows the mean and its 95 % t-interval at iterations every run has."""
    mod = load_script("demo_seeds")
    runs = [{"history": [{"iteration": 0, "eval/success": 0.2 + 0.01 * k}, {"iteration": 10, "eval/success": 0.3}]
             + ([{"iteration": 20, "eval/success": 0.4}] if k else [])} for k in range(mod.MAX_SEED_LINES + 1)]
    band = mod.mean_band(runs)
    assert [b[0] for b in band] == [0, 10]  # iteration 20 is missing from one run
    xs = [0.2 + 0.01 * k for k in range(9)]
    assert abs(band[0][1] - sum(xs) / 9) < 1e-12 and band[0][2] < band[0][1] < band[0][3]
    assert band[1][1:] == (0.3, 0.3, 0.3)  # all equal: no spread
    for k in range(mod.MAX_SEED_LINES + 1):
        fake_run(tmp_path / f"r{k}", k, [0.2 + 0.01 * k, 0.3])
    png = tmp_path / "many.png"
    subprocess.run([sys.executable, str(SCRIPT), *(str(tmp_path / f"r{k}") for k in range(mod.MAX_SEED_LINES + 1)),
                    "--plot", str(png)], capture_output=True, text=True, check=True)
    assert png.stat().st_size > 0


def test_machines_groups_seeds_by_what_decides_float_rounding(load_script) -> None:
    machines = load_script("demo_seeds").machines

    def run(seed: int, cpu: str, cap: str = "AVX512") -> dict:
        return {"seed": seed, "machine": {"cpu": cpu, "torch_cpu_capability": cap,
                                          "packages": {"torch": "2.13.0+cpu", "transformers": "5.25.0"}}}

    forced = run(4, "AMD EPYC", "AVX2")
    forced["machine"]["kernel_env"] = {"ATEN_CPU_CAPABILITY": "avx2"}
    lines = machines([run(0, "AMD EPYC"), run(1, "Intel Xeon", "AVX2"), run(2, "AMD EPYC"), {"seed": 3}, forced])
    assert lines == ["measured on AMD EPYC (AVX512), torch 2.13.0+cpu, transformers 5.25.0: seeds 0, 2",
                     "measured on Intel Xeon (AVX2), torch 2.13.0+cpu, transformers 5.25.0: seed 1",
                     "measured on not recorded: seed 3",
                     "measured on AMD EPYC (AVX2), torch 2.13.0+cpu, transformers 5.25.0, ATEN_CPU_CAPABILITY=avx2: "
                     "seed 4"]
