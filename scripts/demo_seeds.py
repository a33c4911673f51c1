"""The CPU demo over several seeds: one markdown table, the spread, and one plot of every seed's learning curve.

    .venv/bin/python -m hiper.trainer.demo --seed 1 --output-dir runs/cpu_demo_s1     # one folder per seed
    .venv/bin/python scripts/demo_seeds.py runs/cpu_demo runs/cpu_demo_s1 ... --plot docs/cpu_demo_learning_curve.png

Each folder holds the ``demo_result.json`` a demo run writes (``before`` / ``after`` held-out metrics, the metric
``history``, ``wall_s``, ``seed``). Prints per seed the held-out success at every evaluation, the gain (after minus
before, same seed) and the wall time, then mean, sample standard deviation (n - 1) and range over seeds of the
SFT-only success, the final success and the gain, then the machines the runs were measured on (a seed's figures
depend on the CPU's float rounding; docs/results_cpu_demo.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def load(folder: str) -> dict[str, Any]:
    path = Path(folder) / "demo_result.json"
    if not path.is_file():
        raise SystemExit(f"demo_seeds: {path} not found (run the demo into {folder} first)")
    return json.loads(path.read_text())


def curve(run: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """``(iteration, value)`` of ``key`` in the run's history."""
    return [(int(r.get("iteration", r.get("step", 0))), float(r[key])) for r in run["history"] if key in r]


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} | {sd:.3f} | {max(values) - min(values):.3f}"


#: beyond this many seeds the plot shows their mean with a band instead of one labelled line per seed
MAX_SEED_LINES = 8


def mean_band(runs: list[dict[str, Any]]) -> list[tuple[int, float, float, float]]:
    """``(iteration, mean, low, high)`` of held-out success over the runs at every iteration that all of them
    evaluated; ``low``/``high``: the 95 % t-interval of the mean (:func:`hiper.diagnose.t_interval`)."""
    from hiper.diagnose import t_interval

    curves = [dict(curve(r, "eval/success")) for r in runs]
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    return [(i, *t_interval([c[i] for c in curves])) for i in shared]


def plot_title(runs: list[dict[str, Any]]) -> str:
    """The figure's title; it names the training temperature only when every run recorded the same one (files
    written before ``train_temperature`` was recorded lack it)."""
    temps = {r.get("train_temperature") for r in runs}
    at = f", T = {temps.pop():g}" if len(temps) == 1 and None not in temps else ""
    return f"CPU demo: held-out success (faint: training rollouts{at})"


def machines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per distinct machine the runs were measured on (:func:`hiper.trainer.provenance.describe`: what
    decides the float rounding a seed's figures depend on), with its seeds; files written before the demo recorded
    its ``machine`` count as "not recorded"."""
    from hiper.trainer.provenance import describe

    seeds: dict[str, list[int]] = {}
    for r in runs:
        key = "not recorded" if r.get("machine") is None else describe(r["machine"])
        seeds.setdefault(key, []).append(r["seed"])
    return [f"measured on {k}: seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for k, v in seeds.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="demo run folders (each with demo_result.json)")
    p.add_argument("--plot", default=None, help="write the learning curves of all seeds to this PNG")
    args = p.parse_args(argv)
    runs = sorted((load(f) for f in args.folders), key=lambda r: r["seed"])
    its = sorted({i for r in runs for i, _ in curve(r, "eval/success")})
    print("| seed | " + " | ".join(f"it. {i}" for i in its) + " | gain (points) | wall time |")
    print("|---" * (len(its) + 3) + "|")
    before, after, gains = [], [], []
    for r in runs:
        ev = dict(curve(r, "eval/success"))
        b, a = float(r["before"]["eval/success"]), float(r["after"]["eval/success"])
        before.append(b)
        after.append(a)
        gains.append(100 * (a - b))
        cells = " | ".join(f"{ev[i]:.3f}" if i in ev else "" for i in its)
        print(f"| {r['seed']} | {cells} | {100 * (a - b):+.1f} | {r['wall_s']:.0f} s |")
    print("\n| over seeds | mean | std | range |\n|---|---|---|---|")
    print(f"| SFT-only success | {spread(before)} |\n| final success | {spread(after)} |")
    sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    print(f"| gain (points) | {statistics.mean(gains):+.1f} | {sd:.1f} | {min(gains):+.1f} ... {max(gains):+.1f} |")
    print("\n" + "\n".join(machines(runs)))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        if len(runs) > MAX_SEED_LINES:  # many seeds: each one thin and grey, their mean with a 95 % band
            for r in runs:
                ax.plot(*zip(*curve(r, "eval/success")), color="0.6", linewidth=0.7, alpha=0.6)
            band = mean_band(runs)
            xs = [i for i, _, _, _ in band]
            ax.fill_between(xs, [lo for _, _, lo, _ in band], [hi for _, _, _, hi in band], alpha=0.25,
                            label="95 % t-interval of the mean")
            ax.plot(xs, [m for _, m, _, _ in band], marker="o", linewidth=2, label=f"mean of {len(runs)} seeds")
            ax.plot([], [], color="0.6", linewidth=0.7, label="each seed")
            ax.set_title("CPU demo: held-out success over seeds")
        else:
            for r in runs:
                (line,) = ax.plot(*zip(*curve(r, "eval/success")), marker="o", markersize=3, label=f"seed {r['seed']}")
                train = curve(r, "train/success")
                if train:
                    ax.plot(*zip(*train), color=line.get_color(), alpha=0.2, linewidth=0.8)
            ax.set_title(plot_title(runs))
        ax.set_xlabel("RL iteration")
        ax.set_ylabel("success")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
